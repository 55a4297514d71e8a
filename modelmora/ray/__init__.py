"""The project's lock on a Ray Serve cluster: `modelmora serve --ray`, `modelmora export ray`.

    HTTP ──► Ray proxy ──► ingress replicas (the server's own Starlette app, around a RaySupervisor)
                                │ DeploymentHandle calls
                                ▼
                           one deployment per model (per version): ModelMora's runtimes in-process

`plan` says what is deployed (no ray), `nodecache` puts a model's locked files in a node's cache,
`deployments` is the model replica, `ingress` the app's replica and the supervisor that sends to the
models' handles, `app` the application builder (`modelmora.ray.app:build`) and `serve --ray`,
`export` the Serve config of `modelmora export ray`. Only `deployments`, `ingress` and `app` import
ray; nothing outside this package imports it at module level.
"""

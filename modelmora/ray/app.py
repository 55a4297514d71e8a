"""The application builder (`modelmora.ray.app:build`, what `serve deploy` imports) and
`modelmora serve --ray`.

`build` reads the project's manifest and lock (which must match) and binds one deployment per
served name, each a `ModelReplica` of its lock entry, and the ingress, handed their handles.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import serve

from modelmora import project as use_cases
from modelmora.cache import Cache
from modelmora.project import InstalledModel, Project
from modelmora.ray import plan
from modelmora.ray.deployments import ReplicaModel, replica_class
from modelmora.ray.ingress import IngressDeployment, IngressSetup
from modelmora.runtimes import ModelSpec, pinned_runtime
from modelmora.serve import config as settings
from modelmora.serve.api.inference import is_batched
from modelmora.serve.catalog import served
from modelmora.serve.config import ServeConfig
from modelmora.serve.supervisor import ServedModel

logger = logging.getLogger("modelmora.ray")

Application = Any
"""A ray.serve.Application: what `serve.run` and `serve deploy` take."""


def build(args: dict[str, Any]) -> Application:
    """The Serve application of the project at `args["project"]` (default: the working folder)."""
    root = Path(args.get("project") or ".").resolve()
    current = Project(root)
    manifest = current.manifest()
    config = settings.resolve({}, os.environ, manifest.serve, manifest.path.name)
    planned = plan.planned_models(current)
    models = tuple(served_model(model) for model in planned)
    handles = {
        model.name: model_deployment(model, item, root)
        for model, item in zip(models, planned, strict=True)
    }
    setup = IngressSetup(models, config, str(root))
    ingress = IngressDeployment.options(
        name=plan.INGRESS, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000
    )
    return ingress.bind(setup, handles)


def served_model(model: plan.PlannedModel) -> ServedModel:
    path = Cache().snapshot_path(model.locked)
    return served(InstalledModel(model.spec, model.locked, path))


def model_deployment(model: ServedModel, item: plan.PlannedModel, root: Path) -> Application:
    """The model's deployment: its replica class, CPUs for its threads, its replica count."""
    threads = model.threads or 1
    batching = model.batching
    replica = ReplicaModel(
        spec=runtime_spec(model, threads),
        locked=item.locked,
        project_root=str(root),
        max_batch_size=batching.max_batch_size,
        batch_wait_s=batching.max_batch_delay_ms / 1000,
    )
    in_flight = max(batching.max_batch_size, 5) if is_batched(model.task) else 5
    deployment = serve.deployment(replica_class(model.task)).options(
        name=item.deployment,
        ray_actor_options={"num_cpus": threads},
        max_ongoing_requests=in_flight,
        **plan.replicas(item.spec),
    )
    return deployment.bind(replica)


def runtime_spec(model: ServedModel, threads: int) -> ModelSpec:
    """What the replica loads, as `Supervisor.model_spec` builds it for a worker."""
    return ModelSpec(
        name=model.name,
        task=model.task,
        path=str(model.path),
        device=model.device,
        dtype=model.dtype,
        threads=threads,
        runtime=pinned_runtime(model.task, model.backend, model.runtime),
        options=dict(model.options),
        backend=model.backend,
    )


def serve_on_ray(
    current: Project, config: ServeConfig, address: str | None, say: Callable[[str], None]
) -> None:
    """`modelmora serve --ray`: deploy the lock, serve until Ctrl+C or SIGTERM, then delete the
    app (and end the cluster when it was started here)."""
    use_cases.installed_models(current, frozen=True)  # the head node has every file, as locked
    address = address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        host, port = config.server.host, config.server.port
        serve.start(http_options={"host": host, "port": port})
        serve.run(build(plan.application_args(current.root)), name=plan.APP_NAME, route_prefix="/")
        where = address or "a local Ray cluster"
        say(f"Serving on Ray Serve ({where}) at http://{host}:{port}; Ctrl+C stops")
        wait_for_stop()
        bound = config.supervisor.drain_timeout
        within(bound, lambda: serve.delete(plan.APP_NAME), "deleting the Serve app", say)
    finally:
        if address is None:
            within(config.supervisor.drain_timeout, serve.shutdown, "stopping Ray Serve", say)
        ray.shutdown()


def within(
    seconds: float, action: Callable[[], object], what: str, say: Callable[[str], None]
) -> None:
    """Run `action`, but stop waiting for it after `seconds`: a cluster whose raylet has died
    answers nothing, and a Ctrl+C must still end the command."""
    done = threading.Event()

    def run() -> None:
        try:
            action()
        finally:
            done.set()

    threading.Thread(target=run, name=what, daemon=True).start()
    if not done.wait(seconds):
        say(f"warning: {what} did not finish in {seconds:g} s; stopping anyway")


def wait_for_stop() -> None:
    """Until SIGINT or SIGTERM: the handlers only record it."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.set())
    while not stop.wait(1.0):
        pass

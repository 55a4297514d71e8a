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

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

from modelmora.errors import ModelmoraError

if TYPE_CHECKING:
    from modelmora.project import Project
    from modelmora.serve.config import ServeConfig


def require_ray() -> None:
    """One line naming the extra, rather than an ImportError, where Ray Serve is not installed."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise ModelmoraError("Ray Serve is not installed", "pip install 'modelmora[ray]'")


def serve_on_ray(
    current: Project, config: ServeConfig, address: str | None, say: Callable[[str], None]
) -> None:
    """`modelmora serve --ray`: see `modelmora.ray.app.serve_on_ray`."""
    require_ray()
    from modelmora.ray import app

    app.serve_on_ray(current, config, address, say)

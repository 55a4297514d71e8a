"""The ingress replica: the server's own Starlette app (`create_app`) around a `RaySupervisor`.

Routes, schemas, errors, keys, metrics, versions and the scheduler's batching are `modelmora
serve`'s; only the supervisor differs. Where `Supervisor` starts a worker process per model and
talks to it over a socket, `RaySupervisor` sends each request to the model's deployment handle:
Ray Serve starts, scales, health-checks and replaces the replicas, so there is no template, no
keep-alive and no eviction here. A model that has no replica yet (`min_replicas = 0`) gets one on
its first request: the handle waits for it, within the request's deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ray import serve
from starlette.applications import Starlette

from modelmora.errors import ConflictError, ServeError, UnavailableError
from modelmora.project import Project
from modelmora.serve.app import create_app
from modelmora.serve.config import ServeConfig, SupervisorSettings
from modelmora.serve.protocol import FromWorker, raise_for_error
from modelmora.serve.status import ModelStatus
from modelmora.serve.supervisor import InferenceResult, ServedModel, Supervisor
from modelmora.serve.worker import first_line

Handle = Any
"""A ray.serve.handle.DeploymentHandle (ray is no dependency of the type checker's environment)."""
Reply = dict[str, Any]

ON_RAY = "on Ray Serve, replicas come and go with the deployment's min_replicas and max_replicas"


class RaySupervisor(Supervisor):
    """The models' deployments, as the API and the scheduler see a supervisor."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        settings: SupervisorSettings,
        handles: Mapping[str, Handle],
    ) -> None:
        super().__init__(models, settings)
        self.handles = dict(handles)
        self.replicas: dict[str, Reply] = {}
        """What a replica of each model said of itself (`describe`) once one answered."""

    # lifecycle: Ray Serve runs the replicas

    async def start(self) -> None:
        """Nothing to start: no worker template, and Serve health-checks the replicas."""

    async def stop(self) -> None:
        """Stop taking requests and let those in flight finish (drain_timeout)."""
        if self.is_stopping:
            return
        self.is_stopping = True
        self.notify()
        await self.wait_until(self.is_drained, self.settings.drain_timeout)

    def is_ready(self) -> tuple[bool, list[str]]:
        reasons = ["ModelMora is shutting down"] if self.is_stopping else []
        return not reasons, reasons

    def status(self, name: str) -> ModelStatus:
        seen = self.replicas.get(name)
        update: dict[str, Any] = {"state": "ready" if seen is not None else "unloaded"}
        if seen:
            update |= {k: seen[k] for k in ("device", "memory_bytes")}
            update["last_load_ms"] = seen["load_ms"]
        return self.slot(name).status().model_copy(update=update)

    async def load(self, name: str) -> ModelStatus:
        """Make sure a replica answers (scaling from zero if need be), and say where it runs."""
        self.slot(name)
        self.replicas[name] = await self.call(name, "describe")
        return self.status(name)

    async def unload(self, name: str) -> ModelStatus:
        raise ConflictError(f"model '{name}' cannot be unloaded by hand: {ON_RAY}")

    def add(self, model: ServedModel) -> None:
        raise ConflictError(
            f"model '{model.name}' cannot be registered at run time on Ray Serve",
            hint="add it to modelmora.toml, `modelmora lock`, and deploy again",
        )

    async def remove(self, name: str) -> None:
        raise ConflictError(f"model '{name}' cannot be removed at run time: {ON_RAY}")

    # requests

    async def infer(
        self,
        name: str,
        request: dict[str, Any],
        *,
        timeout: float | None = None,
        keep_alive: float | None = None,
    ) -> InferenceResult:
        slot = self.slot(name)
        deadline = self.deadline(timeout)
        async with self.request_scope(slot, keep_alive):
            slot.in_flight += 1
            try:
                call = self.call(name, "infer", request)
                reply = await deadline.run(call, name, "waiting for its Ray Serve replica")
            finally:
                slot.in_flight -= 1
            raise_for_error(cast("FromWorker", reply), name)
        self.replicas.setdefault(name, {})
        return InferenceResult(
            result=reply["result"],
            queue_ms=reply["wait_ms"],
            load_ms=0.0,
            inference_ms=reply["compute_ms"],
        )

    async def stream(
        self,
        name: str,
        request: dict[str, Any],
        *,
        timeout: float | None = None,
        keep_alive: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The replica's chunks; the deadline bounds the wait for each next one."""
        slot = self.slot(name)
        deadline = self.deadline(timeout)
        async with self.request_scope(slot, keep_alive):
            slot.in_flight += 1
            replies = self.handles[name].options(stream=True).stream.remote(request)
            try:
                while True:
                    reply = await deadline.run(next_reply(replies, name), name, "streaming")
                    raise_for_error(cast("FromWorker", reply), name)
                    if reply["kind"] != "chunk":
                        return
                    self.replicas.setdefault(name, {})
                    yield reply["data"]
                    deadline = self.deadline(timeout)
            finally:
                slot.in_flight -= 1
                replies.cancel()

    async def call(self, name: str, method: str, *args: Any) -> Reply:
        """One call to a replica of the model; Ray's own failures are 503s to retry."""
        try:
            reply: Reply = await getattr(self.handles[name], method).remote(*args)
        except (asyncio.CancelledError, ServeError):
            raise
        except Exception as error:
            raise unavailable(name, error) from None
        return reply


async def next_reply(replies: Any, name: str) -> Reply:
    try:
        reply: Reply = await replies.__anext__()
    except StopAsyncIteration:
        return {"kind": "end"}
    except (asyncio.CancelledError, ServeError):
        raise
    except Exception as error:
        raise unavailable(name, error) from None
    return reply


def unavailable(name: str, error: Exception) -> UnavailableError:
    """A replica that died, a deployment still starting, Serve's backpressure: try again soon."""
    return UnavailableError(
        f"model '{name}' on Ray Serve: {type(error).__name__}: {first_line(error)}",
        retry_after=1,
    )


@dataclass(frozen=True)
class IngressSetup:
    """What an ingress replica builds the app from; the handles come beside it."""

    models: tuple[ServedModel, ...]
    config: ServeConfig
    project_root: str | None = None


class Ingress:
    """The app's replica: Serve calls `__serve_build_asgi_app__` once the handles are set."""

    def __init__(self, setup: IngressSetup, handles: Mapping[str, Handle]) -> None:
        self.setup = setup
        self.handles = handles

    def __serve_build_asgi_app__(self) -> Starlette:
        setup = self.setup
        supervisor = RaySupervisor(setup.models, setup.config.supervisor, self.handles)
        root = Path(setup.project_root) if setup.project_root else None
        if root is None or not root.is_dir():  # a node that has no copy of the project
            return create_app(supervisor, setup.config.server)
        registry = Project(root).registry_path
        return create_app(supervisor, setup.config.server, None, registry, root)


IngressDeployment = serve.deployment(serve.ingress()(Ingress))

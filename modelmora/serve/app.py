"""The HTTP server: `create_app` puts the API together around a Supervisor, `run_server` serves it.

The server process never imports torch or transformers; the models run in worker processes that the
supervisor starts. Routes and schemas live in `modelmora.serve.api`.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import math
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from modelmora import __version__, registry, versions
from modelmora.errors import ModelmoraError, ServeError
from modelmora.project import Project
from modelmora.routing import Route
from modelmora.serve.api import images, inference, jobs, native, oip, openai, recent_errors, ui
from modelmora.serve.api import versions as version_routes
from modelmora.serve.api.auth import AuthMiddleware, KeyRing
from modelmora.serve.api.http import AppState, handle_http_exception, handle_serve_error
from modelmora.serve.api.openapi import (
    PUBLIC_PATHS,
    document_routes,
    openapi_document,
)
from modelmora.serve.api.openapi import routes as endpoint_routes
from modelmora.serve.api.schemas import NativeError, served_bodies
from modelmora.serve.api.telemetry import METRICS_ENDPOINT, Metrics, RequestMiddleware, log_config
from modelmora.serve.catalog import served, served_models
from modelmora.serve.config import ServeConfig, ServerSettings
from modelmora.serve.jobstore import JobStore
from modelmora.serve.registrations import Registrations
from modelmora.serve.scheduler import Scheduler
from modelmora.serve.supervisor import ServedModel, Supervisor
from modelmora.serve.traffic import Shadows, Traffic

if TYPE_CHECKING:
    from modelmora.kafka.bridge import Bridge
    from modelmora.kafka.config import KafkaTable
    from modelmora.serve.grpc.server import GrpcServer
    from modelmora.storage import Storage

__all__ = ["bind", "create_app", "run_server", "served", "served_models"]

ENDPOINTS = [
    *native.ENDPOINTS,
    *version_routes.ENDPOINTS,
    *jobs.ENDPOINTS,
    *openai.ENDPOINTS,
    *images.ENDPOINTS,
    *oip.ENDPOINTS,
    METRICS_ENDPOINT,
    recent_errors.ENDPOINT,
]


def create_app(
    supervisor: Supervisor,
    settings: ServerSettings | None = None,
    jobs_path: Path | None = None,
    registry_path: Path | None = None,
    project_root: Path | None = None,
    routes: Mapping[str, Route] | None = None,
    storage: Storage | None = None,
    kafka: KafkaTable | None = None,
) -> Starlette:
    """The ASGI app; its lifespan starts the supervisor and stops it (drain, end workers).

    `jobs_path` is the SQLite file of `/jobs`; without one, the job routes answer 503.
    `registry_path` is the project's registry, whose API keys the server accepts and whose audit
    log it writes; without one, only `settings.api_key` (if any) guards the API.
    `project_root` is the project served: its routes (unless `routes` are given) and the files the
    admin routes edit; without one, models cannot be registered or routed at run time.
    `storage` takes the results whose JSON is over its threshold (`[storage]`); None: all inline.
    `kafka` also takes requests from Kafka topics (modelmora/kafka); None: HTTP and gRPC only.
    """
    settings = settings or ServerSettings()
    scheduler = Scheduler(
        functools.partial(inference.dispatch, supervisor),
        lambda name: supervisor.model(name).batching,
    )
    connection = registry.connect(registry_path) if registry_path is not None else None
    keyring = KeyRing(connection, settings.api_key)
    served_project = Project(project_root) if project_root is not None else None
    if routes is None:
        routes = served_project.manifest().routes if served_project is not None else {}
    shadows = Shadows()
    state = AppState(
        supervisor=supervisor,
        settings=settings,
        scheduler=scheduler,
        keys=keyring,
        traffic=Traffic(routes, supervisor),
        shadows=shadows,
        project=served_project,
        registry=connection,
        registrations=Registrations() if served_project is not None else None,
        storage=storage,
    )
    if jobs_path is not None:
        store = JobStore(jobs_path, retention=settings.job_retention)
        state = dataclasses.replace(state, jobs=jobs.job_runner(state, store))
    groups = [*supervisor.task_groups, scheduler.tasks, shadows.tasks]
    groups += [state.registrations.tasks] if state.registrations is not None else []
    groups += [state.jobs.tasks] if state.jobs is not None else []
    metrics = Metrics(supervisor, scheduler, groups)
    shadows.record = metrics.observe_shadow
    models = {name: supervisor.model(name).task for name in supervisor.names()}
    document = openapi_document(
        ENDPOINTS,
        title="ModelMora",
        version=__version__,
        error=NativeError,
        models=models,
        bodies=served_bodies(models),
    )
    if keyring.is_guarding():  # so that /docs has "Authorize" and sends the key when trying it out
        document["components"]["securitySchemes"] = {"key": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"key": []}]
    app = Starlette(
        routes=endpoint_routes(ENDPOINTS) + document_routes(document) + ui.routes(),
        middleware=_middleware(settings, metrics, keyring, guarded=connection is not None),
        exception_handlers={ServeError: handle_serve_error, HTTPException: handle_http_exception},
        lifespan=_lifespan,
    )
    app.state.modelmora = state
    app.state.metrics = metrics
    app.state.kafka = kafka
    app.state.recent_errors = recent_errors.ErrorBuffer()
    return app


def _middleware(
    settings: ServerSettings, metrics: Metrics, keyring: KeyRing, guarded: bool
) -> list[Middleware]:
    """Request ids, logs and metrics outermost, so that they also see refused requests.

    With a registry the key check is always there: a key created later guards the server at once.
    """
    middleware = [
        Middleware(RequestMiddleware, metrics=metrics, access_log_enabled=settings.access_log)
    ]
    if guarded or settings.api_key:
        public = (
            PUBLIC_PATHS | ui.PUBLIC_PATHS | ({"/metrics"} if settings.metrics_public else set())
        )
        middleware.append(Middleware(AuthMiddleware, keyring=keyring, public=public))
    return middleware


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    state: AppState = app.state.modelmora
    if state.project is not None and state.registry is not None:
        versions.sync(state.registry, state.project.manifest(), state.project.lock_or_empty())
    bridge = None
    if app.state.kafka is not None:  # aiokafka is imported only when Kafka is configured
        from modelmora.kafka.bridge import Bridge

        bridge = Bridge(state, app.state.metrics, app.state.kafka)
    app.state.recent_errors.attach()
    await state.supervisor.start()
    if state.jobs is not None:
        await state.jobs.start()
    grpc_server = None
    try:
        if state.settings.grpc_port > 0:
            from modelmora.serve.grpc import server as grpc_server_module

            grpc_server = await grpc_server_module.start(state, app.state.metrics)
        if bridge is not None:
            await bridge.start()
        yield
    finally:
        await _shut_down(state, grpc_server, bridge)
        app.state.recent_errors.detach()


async def _shut_down(
    state: AppState, grpc_server: GrpcServer | None = None, bridge: Bridge | None = None
) -> None:
    """uvicorn has drained the HTTP requests: stop fetching from Kafka and answer what was taken,
    drain the gRPC calls (as long), fail what is queued, finish batches, end workers."""
    if state.jobs is not None:
        state.jobs.stop_taking()
    if bridge is not None:
        await bridge.stop_consuming(state.supervisor.settings.drain_timeout)
    if grpc_server is not None:
        from modelmora.serve.grpc.server import stop

        await stop(grpc_server, state.supervisor.settings.drain_timeout)
    await state.scheduler.close(state.supervisor.settings.drain_timeout)
    if state.shadows is not None:
        await state.shadows.close()
    if state.registrations is not None:
        await state.registrations.close()
    if state.jobs is not None:
        await state.jobs.close()
    await state.supervisor.stop()
    if bridge is not None:
        await bridge.close()
    if state.keys is not None:
        state.keys.close()


def bind(settings: ServerSettings) -> socket.socket:
    """The server's socket, bound as uvicorn binds it: a port in use is one line, before anything
    starts (no worker template, no model), and not a failure halfway through the start."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of a socket that says TCP,
    # and without it Nagle holds each response's body until the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as error:
        sock.close()
        raise _bind_error(settings, error) from None
    if settings.grpc_port > 0:
        from modelmora.serve.grpc.server import check

        try:
            check(settings)
        except ModelmoraError:
            sock.close()
            raise
    return sock


def _bind_error(settings: ServerSettings, error: OSError) -> ModelmoraError:
    where = f"{settings.host}:{settings.port}"
    if error.errno == errno.EADDRINUSE:
        return ModelmoraError(
            f"port {settings.port} is in use on {settings.host}",
            "pass another --port, or stop what listens there",
        )
    if error.errno == errno.EACCES:
        return ModelmoraError(f"no permission to listen on {where}", "pass a --port above 1023")
    return ModelmoraError(f"cannot listen on {where} ({error.strerror})", "check --host")


def run_server(
    models: Sequence[ServedModel],
    config: ServeConfig,
    jobs_path: Path | None = None,
    sock: socket.socket | None = None,
    registry_path: Path | None = None,
    project_root: Path | None = None,
    storage: Storage | None = None,
    kafka: KafkaTable | None = None,
) -> None:
    """Serve until SIGTERM or Ctrl+C: stop accepting, let requests finish, then end the workers.

    `sock` is what `bind` returned; without one, the server binds its own.
    """
    sock = sock or bind(config.server)
    supervisor = Supervisor(models, config.supervisor)
    app = create_app(
        supervisor,
        config.server,
        jobs_path,
        registry_path,
        project_root,
        storage=storage,
        kafka=kafka,
    )
    _Server(_uvicorn_config(app, config)).run(sockets=[sock])


class _Server(uvicorn.Server):
    """uvicorn, which says where it listens also when it is handed its socket."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or []:
            host, port = sock.getsockname()[:2]
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on %s (Press CTRL+C to quit)", url
            )


def _uvicorn_config(app: Starlette, config: ServeConfig) -> uvicorn.Config:
    """uvicorn on the stdlib event loop and h11, which need nothing beyond uvicorn itself."""
    return uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        loop="asyncio",
        http="h11",
        ws="none",
        lifespan="on",
        log_config=log_config(
            config.server.log_level, config.server.log_format, config.server.log_file
        ),
        access_log=False,  # ours is JSON, with request id and model
        server_header=False,
        timeout_graceful_shutdown=math.ceil(config.supervisor.drain_timeout),
    )

"""The HTTP server: `create_app` puts the API together around a Supervisor, `run_server` serves it.

The server process never imports torch or transformers; the models run in worker processes that the
supervisor starts. Routes and schemas live in `modelmora.api`.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from modelmora import __version__
from modelmora.api import native, openai_compat
from modelmora.api.http import (
    AppState,
    AuthMiddleware,
    NativeError,
    ServerSettings,
    handle_http_exception,
    handle_serve_error,
)
from modelmora.api.openapi import document_routes, openapi_document
from modelmora.api.telemetry import METRICS_ENDPOINT, Metrics, RequestMiddleware, log_config
from modelmora.errors import ModelmoraError, ServeError
from modelmora.settings import ServeConfig, keep_alive_seconds
from modelmora.supervisor import ServedModel, Supervisor, SupervisorSettings

if TYPE_CHECKING:
    from modelmora.project import InstalledModel

__all__ = ["ServerSettings", "create_app", "run_server", "served_models", "supervisor_settings"]

ENDPOINTS = [*native.ENDPOINTS, *openai_compat.ENDPOINTS, METRICS_ENDPOINT]


def create_app(supervisor: Supervisor, settings: ServerSettings | None = None) -> Starlette:
    """The ASGI app; its lifespan starts the supervisor and stops it (drain, end workers)."""
    settings = settings or ServerSettings()
    metrics = Metrics(supervisor)
    document = openapi_document(
        ENDPOINTS, title="ModelMora", version=__version__, error=NativeError
    )
    app = Starlette(
        routes=[endpoint.route() for endpoint in ENDPOINTS] + document_routes(document),
        middleware=_middleware(settings, metrics),
        exception_handlers={ServeError: handle_serve_error, HTTPException: handle_http_exception},
        lifespan=_lifespan,
    )
    app.state.modelmora = AppState(supervisor=supervisor, settings=settings)
    app.state.metrics = metrics
    return app


def _middleware(settings: ServerSettings, metrics: Metrics) -> list[Middleware]:
    """Request ids, logs and metrics outermost, so that they also see refused requests."""
    middleware = [
        Middleware(RequestMiddleware, metrics=metrics, access_log_enabled=settings.access_log)
    ]
    if settings.api_key:
        middleware.append(Middleware(AuthMiddleware, api_key=settings.api_key))
    return middleware


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    supervisor = app.state.modelmora.supervisor
    await supervisor.start()
    try:
        yield
    finally:
        await supervisor.stop()


def served_models(installed: Sequence[InstalledModel], preload: Sequence[str]) -> list[ServedModel]:
    """What the supervisor serves: the project's installed models and their manifest entries."""
    names = {model.spec.name for model in installed}
    unknown = sorted(set(preload) - names)
    if unknown:
        raise ModelmoraError(f"--preload {unknown[0]}: no such model", "see `modelmora list`")
    return [_served(model, model.spec.name in preload) for model in installed]


def _served(model: InstalledModel, preload: bool) -> ServedModel:
    spec = model.spec
    return ServedModel(
        name=spec.name,
        task=spec.task,
        path=model.path,
        source=model.locked.source,
        revision=model.locked.commit,
        device=spec.device,
        dtype=spec.dtype,
        preload=spec.preload or preload,
        keep_alive=keep_alive_seconds(spec.keep_alive, f"modelmora.toml: models.{spec.name}"),
        threads=spec.threads,
        runtime=spec.runtime,
        options=spec.options,
    )


def supervisor_settings(config: ServeConfig) -> SupervisorSettings:
    return SupervisorSettings(
        max_loaded_models=config.max_loaded_models,
        memory_budget=config.memory_budget,
        keep_alive=config.keep_alive,
        drain_timeout=config.drain_timeout,
        request_timeout=config.request_timeout,
    )


def run_server(
    models: Sequence[ServedModel],
    supervisor_settings: SupervisorSettings,
    server_settings: ServerSettings,
) -> None:
    """Serve until SIGTERM or Ctrl+C: stop accepting, let requests finish, then end the workers."""
    app = create_app(Supervisor(models, supervisor_settings), server_settings)
    uvicorn.Server(_uvicorn_config(app, supervisor_settings, server_settings)).run()


def _uvicorn_config(
    app: Starlette, supervisor_settings: SupervisorSettings, settings: ServerSettings
) -> uvicorn.Config:
    """uvicorn on the stdlib event loop and h11, which need nothing beyond uvicorn itself."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="asyncio",
        http="h11",
        ws="none",
        lifespan="on",
        log_config=log_config(settings.log_level),
        access_log=False,  # ours is JSON, with request id and model
        server_header=False,
        timeout_graceful_shutdown=math.ceil(supervisor_settings.drain_timeout),
    )

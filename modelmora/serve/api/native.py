"""The native API: liveness, readiness, the model table, load/unload and `POST /infer/{name}`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
import pydantic_core
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelmora import __version__
from modelmora.serve.api import images, inference
from modelmora.serve.api.auth import record_admin, require_admin
from modelmora.serve.api.http import (
    AppState,
    PydanticResponse,
    app_state,
    read_json,
    read_query,
)
from modelmora.serve.api.openapi import Endpoint
from modelmora.serve.api.schemas import (
    Health,
    ImageInferRequest,
    Index,
    InferResponse,
    ModelList,
    ModelsQuery,
    Readiness,
    ResultLocation,
    Timing,
    request_schema,
)
from modelmora.serve.scheduler import PRIORITIES
from modelmora.serve.status import ModelStatus
from modelmora.serve.supervisor import InferenceResult

_HEALTH = JSONResponse({"status": "ok"}).body


_INDEX = Index(
    version=__version__,
    links={
        "docs": "/docs",
        "ui": "/ui/",
        "openapi": "/openapi.json",
        "models": "/models",
        "openai_models": "/v1/models",
        "health": "/health",
        "ready": "/ready",
        "metrics": "/metrics",
    },
)


async def index(request: Request) -> Response:
    """The server's name and version, with links to its docs, models and health."""
    return PydanticResponse(_INDEX)


async def health(request: Request) -> Response:
    """Liveness: answers while the process serves HTTP; touches nothing else."""
    return Response(_HEALTH, media_type="application/json")


async def ready(request: Request) -> Response:
    """Readiness: 200 when every preloaded model is ready and none failed, else 503 with reasons."""
    is_ready, reasons = app_state(request).supervisor.is_ready()
    headers = None if is_ready else {"Retry-After": "5"}
    body = Readiness(ready=is_ready, reasons=reasons)
    return PydanticResponse(body, status_code=200 if is_ready else 503, headers=headers)


async def list_models(request: Request) -> Response:
    """The served models, a page at a time, filtered by task, state and device."""
    query = read_query(request, ModelsQuery)
    statuses = [s for s in app_state(request).supervisor.statuses() if _matches(request, s, query)]
    start = (query.page - 1) * query.limit
    page = [_info(request, s) for s in statuses[start : start + query.limit]]
    body = ModelList(models=page, page=query.page, limit=query.limit, total=len(statuses))
    return PydanticResponse(body)


def _matches(request: Request, status: ModelStatus, query: ModelsQuery) -> bool:
    """Whether a model passes the filters; an unloaded model's device is the configured one."""
    if query.task is not None and status.task != query.task:
        return False
    if query.state is not None and status.state != query.state:
        return False
    device = status.device or app_state(request).supervisor.model(status.name).device
    return query.device is None or device.startswith(query.device)


async def get_model(request: Request) -> Response:
    """One model's source, revision, task, state, memory, pid, timestamps and counters."""
    name = _model_name(request)
    return PydanticResponse(_info(request, app_state(request).supervisor.status(name)))


async def load_model(request: Request) -> Response:
    """Start the model's worker and wait until it is ready (admin scope; audited)."""
    return await _change_model(request, "model.load", app_state(request).supervisor.load)


async def unload_model(request: Request) -> Response:
    """End the model's worker, which gives its memory back (admin scope; audited)."""
    return await _change_model(request, "model.unload", app_state(request).supervisor.unload)


async def _change_model(
    request: Request, action: str, change: Callable[[str], Awaitable[ModelStatus]]
) -> Response:
    """An admin action on one model: the admin scope checked, the states around it audited."""
    actor = require_admin(request)
    name = _model_name(request)
    before = app_state(request).supervisor.status(name).state
    status = await change(name)
    record_admin(request, actor, action, name, {"state": before}, {"state": status.state})
    return PydanticResponse(_info(request, status))


def _info(request: Request, status: ModelStatus) -> ModelStatus:
    """The supervisor's record of the model, with what waits in its queue."""
    depth = app_state(request).scheduler.depth(status.name)
    queued = {label: depth[level] for label, level in PRIORITIES.items()}
    return status.model_copy(update={"queued": queued})


async def infer(request: Request) -> Response:
    """Run the model on the inputs; the body's schema is that of the model's task."""
    arrival = time.monotonic()
    state = app_state(request)
    found = inference.target(request, request.path_params["name"])
    served = state.supervisor.model(found.name)
    body = await read_json(request, request_schema(served.task))
    queueing = inference.admission(request, arrival, body.priority, body.timeout)
    runtime = body.to_runtime()

    async def reply(result: InferenceResult) -> InferResponse:
        record_timing(request, result)
        answer = result.result
        if served.task == images.TASK:
            answer = await images.store_images(state, answer)
        inline, location = await stored_result(state, answer)
        return InferResponse(
            model=found.name,
            revision=served.revision,
            result=inline,
            result_url=location,
            timing=_timing(result),
        )

    if isinstance(body, ImageInferRequest) and body.stream:  # never copied to a shadow
        return await images.progress_stream(
            state, request, found.name, runtime, queueing, body.keep_alive, reply
        )
    result = await inference.infer(state, found.name, runtime, queueing, body.keep_alive)
    inference.mirror(state, found, runtime, result.result)
    return PydanticResponse(await reply(result))


async def stored_result(state: AppState, result: Any) -> tuple[Any, ResultLocation | None]:
    """The result inline, or, when its JSON is over the storage's threshold, where it is stored
    (UnavailableError, 503, when it cannot be: the result is never dropped silently)."""
    if state.storage is None:
        return result, None
    data = pydantic_core.to_json(result)
    if len(data) <= state.storage.threshold:
        return result, None
    stored = await anyio.to_thread.run_sync(state.storage.put, data)
    location = ResultLocation(
        url=stored.url, expires_at=stored.expires_at, bytes=stored.bytes, sha256=stored.sha256
    )
    return None, location


def _model_name(request: Request) -> str:
    """The `{name}` of the path, checked against the served models (404 otherwise)."""
    name: str = request.path_params["name"]
    app_state(request).supervisor.model(name)
    request.state.model = name  # labels the access log line and the metrics
    return name


def record_timing(request: Request, result: InferenceResult) -> None:
    """Leave the timings where the telemetry middleware finds them once the response is sent."""
    request.state.timing = result


def _timing(result: InferenceResult) -> Timing:
    return Timing(
        queue_ms=result.queue_ms, load_ms=result.load_ms, inference_ms=result.inference_ms
    )


ENDPOINTS = [
    Endpoint("/", "GET", index, response=Index, tag="health"),
    Endpoint("/health", "GET", health, response=Health, tag="health"),
    Endpoint("/ready", "GET", ready, response=Readiness, tag="health", also=((503, Readiness),)),
    Endpoint("/models", "GET", list_models, query=ModelsQuery, response=ModelList, tag="models"),
    Endpoint("/models/{name}", "GET", get_model, response=ModelStatus, tag="models"),
    Endpoint("/models/{name}/load", "POST", load_model, response=ModelStatus, tag="models"),
    Endpoint("/models/{name}/unload", "POST", unload_model, response=ModelStatus, tag="models"),
    Endpoint(
        "/infer/{name}",
        "POST",
        infer,
        response=InferResponse,
        tag="inference",
        per_model=request_schema,
    ),
]

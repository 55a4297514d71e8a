"""Text-to-image over HTTP: `POST /v1/images/generations`, and what `/infer` and jobs do for it.

    /infer {stream: true} ──► SSE: progress {step, steps} ... then result (the /infer response)
    jobs                  ──► the same stream; each step is the job's `progress`
    /v1/images/generations ──► {created, data: [{b64_json} | {url}]}

A generation runs in its model's turn, like text generation. With a `[storage]` table every image
goes to object storage as a PNG (`store_images`) and the answer carries its presigned URL; without
one the PNG is inline, base64.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.to_thread
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from modelmora.errors import DeadlineExceededError, ServeError
from modelmora.runtimes.imageoptions import CONTENT_TYPE
from modelmora.serve.api import inference
from modelmora.serve.api.http import (
    AppState,
    PydanticResponse,
    RequestValidationError,
    app_state,
    error_response,
    read_json,
)
from modelmora.serve.api.openapi import Endpoint
from modelmora.serve.api.schemas import (
    FieldError,
    GeneratedImage,
    ImageProgress,
    ImagesRequest,
    ImagesResponse,
    OpenAIError,
)
from modelmora.serve.supervisor import InferenceResult

TASK = "text-to-image"
OnProgress = Callable[[ImageProgress], None]
Finish = Callable[[InferenceResult], Awaitable[BaseModel]]
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def generate(
    state: AppState,
    name: str,
    runtime: dict[str, Any],
    queueing: inference.Admission,
    keep_alive: float | None = None,
    on_progress: OnProgress | None = None,
) -> InferenceResult:
    """Run the model in its turn; with `on_progress`, through its stream, reporting each step."""
    if on_progress is None:
        return await inference.infer(state, name, runtime, queueing, keep_alive)
    limit = inference.seconds_until(queueing.deadline) or None  # the whole run, as infer's
    exits = AsyncExitStack()
    try:
        with anyio.fail_after(limit):
            started = time.monotonic()
            chunks = await inference.open_stream(state, name, runtime, queueing, exits, keep_alive)
            waited = time.monotonic()
            result: dict[str, Any] = {}
            async for chunk in chunks:
                if "images" in chunk:
                    result = chunk
                else:
                    on_progress(ImageProgress.model_validate(chunk))
    except TimeoutError:
        raise DeadlineExceededError(
            f"model '{name}' did not finish its images within {limit:g} s",
            hint="pass a longer timeout, or ask for fewer steps or a smaller size",
        ) from None
    finally:
        await _close(exits)
    return InferenceResult(result, (waited - started) * 1000, 0.0, _ms_since(waited))


async def store_images(state: AppState, result: dict[str, Any]) -> dict[str, Any]:
    """The result with each image in object storage, as its presigned URL, when the server has
    storage; unchanged otherwise. A storage outage is a 503 naming the reason."""
    if state.storage is None or "images" not in result:
        return result
    images = [await _stored(state, image) for image in result["images"]]
    return {**result, "images": images}


async def _stored(state: AppState, image: dict[str, Any]) -> dict[str, Any]:
    assert state.storage is not None
    png = base64.b64decode(image["b64_json"])
    stored = await anyio.to_thread.run_sync(state.storage.put, png, CONTENT_TYPE, ".png")
    location = {
        "url": stored.url,
        "expires_at": stored.expires_at.isoformat(),
        "bytes": stored.bytes,
        "sha256": stored.sha256,
    }
    return {**location, **{key: value for key, value in image.items() if key != "b64_json"}}


# --- /infer {stream: true}: server-sent events ----------------------------------------------------


async def progress_stream(
    state: AppState,
    request: Request,
    name: str,
    runtime: dict[str, Any],
    queueing: inference.Admission,
    keep_alive: float | None,
    finish: Finish,
) -> Response:
    """`event: progress` per step, then `event: result` with what `finish` makes of the result.

    The first event is awaited before the response starts, so that an unknown model, a failed load
    or bad input still gets its HTTP status instead of a 200 with an error event.
    """
    exits = AsyncExitStack()
    try:
        started = time.monotonic()
        chunks = await inference.open_stream(state, name, runtime, queueing, exits, keep_alive)
        first = await anext(chunks)
    except BaseException:
        await _close(exits)
        raise
    timing = _Timing(started)
    events = _events(first, chunks, timing, finish, request.url.path, exits)
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


class _Timing:
    def __init__(self, started: float) -> None:
        self.started, self.first = started, time.monotonic()

    def of(self, result: dict[str, Any]) -> InferenceResult:
        return InferenceResult(
            result, (self.first - self.started) * 1000, 0.0, _ms_since(self.first)
        )


async def _events(
    first: dict[str, Any],
    rest: AsyncIterator[dict[str, Any]],
    timing: _Timing,
    finish: Finish,
    path: str,
    exits: AsyncExitStack,
) -> AsyncIterator[str]:
    try:
        chunk: dict[str, Any] | None = first
        while chunk is not None:
            if "images" in chunk:
                reply = await finish(timing.of(chunk))
                yield f"event: result\ndata: {reply.model_dump_json()}\n\n"
            else:
                progress = ImageProgress.model_validate(chunk)
                yield f"event: progress\ndata: {progress.model_dump_json()}\n\n"
            chunk = await anext(rest, None)
    except ServeError as error:
        body = error_response(path, error.status, error.code, str(error)).body
        yield f"event: error\ndata: {bytes(body).decode()}\n\n"
    finally:
        await _close(exits)


async def _close(exits: AsyncExitStack) -> None:
    """End the stream and the model's turn; shielded, so that a client that left still stops
    the generation."""
    with anyio.CancelScope(shield=True):
        await exits.aclose()


def _ms_since(start: float) -> float:
    return (time.monotonic() - start) * 1000


# --- POST /v1/images/generations ------------------------------------------------------------------


async def create_images(request: Request) -> Response:
    """Generate images from a prompt; `b64_json` inline, or `url` from object storage."""
    arrival = time.monotonic()
    state = app_state(request)
    body = await read_json(request, ImagesRequest)
    found = inference.target(request, body.model, body.user)
    served = state.supervisor.model(found.name)
    if served.task != TASK:
        raise _invalid(f"{body.model!r} is a {served.task} model; this route needs {TASK}", "model")
    response_format = body.response_format or ("b64_json" if state.storage is None else "url")
    if response_format == "url" and state.storage is None:
        raise _invalid(
            "'url' needs object storage: configure [storage] in modelmora.toml, or ask for"
            " b64_json",
            "response_format",
        )
    queueing = inference.admission(request, arrival, body.priority, None)
    outcome = await generate(state, found.name, body.runtime_request(), queueing, body.keep_alive)
    request.state.timing = outcome  # read by the telemetry middleware, as native.record_timing
    images = outcome.result["images"]
    if response_format == "url":
        images = (await store_images(state, outcome.result))["images"]
    data = [GeneratedImage(**{response_format: image[response_format]}) for image in images]
    return PydanticResponse(ImagesResponse(created=int(time.time()), data=data))


def _invalid(message: str, field: str) -> RequestValidationError:
    return RequestValidationError([FieldError(field=field, message=message)])


ENDPOINTS = [
    Endpoint(
        "/v1/images/generations",
        "POST",
        create_images,
        request=(ImagesRequest,),
        response=ImagesResponse,
        tag="openai",
        error=OpenAIError,
    ),
]

"""The OpenAI-compatible API under /v1, close enough that the official `openai` client works."""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack
from typing import Any, Literal, TypeVar

import anyio
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from modelmora.errors import InvalidInputError, ServeError
from modelmora.serve.api import inference
from modelmora.serve.api.auth import record_usage
from modelmora.serve.api.http import (
    PydanticResponse,
    RequestValidationError,
    app_state,
    error_response,
    read_json,
)
from modelmora.serve.api.native import record_timing
from modelmora.serve.api.openapi import Endpoint, Handler
from modelmora.serve.api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    Embedding,
    EmbeddingsRequest,
    EmbeddingsResponse,
    FieldError,
    ModelCard,
    ModelCards,
    OpenAIError,
    OpenAIRequest,
    SamplingRequest,
    Usage,
)

Chunk = dict[str, Any]


_STARTED = int(time.time())


async def list_models(request: Request) -> Response:
    """The served models, as OpenAI lists them."""
    served = app_state(request).supervisor.names()
    names = sorted({name.partition("@")[0] for name in served} | set(served))
    return PydanticResponse(ModelCards(data=[ModelCard(id=n, created=_STARTED) for n in names]))


async def create_embeddings(request: Request) -> Response:
    """Embed one text or several; `encoding_format: base64` packs little-endian float32."""
    arrival = time.monotonic()
    body = _routed(request, await read_json(request, EmbeddingsRequest))
    texts = [body.input] if isinstance(body.input, str) else body.input
    runtime: Chunk = {"inputs": texts, "normalize": True}
    state = app_state(request)
    queueing = _admission(request, body, arrival)
    outcome = await inference.infer(state, body.model, runtime, queueing, body.keep_alive)
    record_timing(request, outcome)
    inference.mirror(state, request.state.target, runtime, outcome.result)
    result = outcome.result
    vectors = result["embeddings"]
    if body.dimensions is not None:
        vectors = _shortened(vectors, body.dimensions, result["dimensions"])
    encode = _base64 if body.encoding_format == "base64" else list
    data = [Embedding(index=i, embedding=encode(v)) for i, v in enumerate(vectors)]
    usage = Usage(prompt_tokens=result["prompt_tokens"], total_tokens=result["prompt_tokens"])
    return PydanticResponse(EmbeddingsResponse(data=data, model=body.model, usage=usage))


def _shortened(vectors: list[list[float]], dimensions: int, size: int) -> list[list[float]]:
    """OpenAI's `dimensions`: the first ones of each (normalized) vector, normalized again."""
    if dimensions > size:
        raise _invalid(f"this model has {size} dimensions; ask for {size} or fewer", "dimensions")
    if dimensions == size:
        return vectors
    return [_unit(vector[:dimensions]) for vector in vectors]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm > 0 else vector


def _base64(vector: list[float]) -> str:
    """OpenAI's base64 embedding: the vector as little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def create_completion(request: Request) -> Response:
    """Complete a prompt; `stream: true` sends server-sent events ending in `data: [DONE]`."""
    arrival = time.monotonic()
    body = _routed(request, await read_json(request, CompletionRequest))
    meta = _Meta("cmpl", body.model)
    if body.stream:
        render = _completion_chunks(meta, body.include_usage())
        return await _stream(request, body, body.runtime_request(), render, arrival)
    result = await _generate(request, body, body.runtime_request(), arrival)
    choice = CompletionChoice(text=result["text"], finish_reason=result["finish_reason"])
    return PydanticResponse(
        Completion(**meta.fields(), choices=[choice], usage=_usage(result)),
    )


async def create_chat_completion(request: Request) -> Response:
    """Answer a chat with the model's chat template; `stream: true` sends server-sent events."""
    arrival = time.monotonic()
    body = _routed(request, await read_json(request, ChatCompletionRequest))
    meta = _Meta("chatcmpl", body.model)
    if body.stream:
        render = _chat_chunks(meta, body.include_usage())
        return await _stream(request, body, body.runtime_request(), render, arrival)
    result = await _generate(request, body, body.runtime_request(), arrival)
    message = AssistantMessage(content=result["text"])
    choice = ChatChoice(message=message, finish_reason=result["finish_reason"])
    return PydanticResponse(
        ChatCompletion(**meta.fields(), choices=[choice], usage=_usage(result)),
    )


class _Meta:
    """The id, creation time and model that every object of one response repeats."""

    def __init__(self, prefix: str, model: str) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def fields(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "model": self.model}


async def _generate(
    request: Request, body: SamplingRequest, runtime: Chunk, arrival: float
) -> Chunk:
    """Run a text-generation model to the end, in its turn (generation is not batched)."""
    state = app_state(request)
    queueing = _admission(request, body, arrival)
    outcome = await inference.infer(state, body.model, runtime, queueing, body.keep_alive)
    record_timing(request, outcome)
    inference.mirror(state, request.state.target, runtime, outcome.result)
    result: Chunk = outcome.result
    return result


def _usage(result: Chunk) -> Usage:
    """Token counts; a runtime that does not count them reports zeros."""
    prompt, completion = result.get("prompt_tokens", 0), result.get("completion_tokens", 0)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


Render = Callable[[Chunk], Iterable[BaseModel]]


async def _stream(
    request: Request, body: SamplingRequest, runtime: Chunk, render: Render, arrival: float
) -> Response:
    """Server-sent events of the model's chunks; the model's turn is held until the last one.

    The first chunk is awaited before the response starts, so that an unknown model, a failed load
    or a crash before the first token still gets its HTTP status instead of a 200 with an error.
    Streams are never copied to a shadow.
    """
    exits = AsyncExitStack()
    try:
        chunks = await inference.open_stream(
            app_state(request), body.model, runtime, _admission(request, body, arrival), exits,
            body.keep_alive,
        )  # fmt: skip
        first = await anext(chunks, {"text": "", "finish_reason": "stop"})
    except BaseException:
        await _close(exits)
        raise
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    events = _events(first, chunks, _counting(request, render), request.url.path, exits)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _counting(request: Request, render: Render) -> Render:
    """`render`, which also keeps the usage of the last chunk for the key's token limit."""

    def counted(chunk: Chunk) -> Iterable[BaseModel]:
        record_usage(request, chunk)
        return render(chunk)

    return counted


async def _events(
    first: Chunk, rest: AsyncIterator[Chunk], render: Render, path: str, exits: AsyncExitStack
) -> AsyncIterator[str]:
    """`data: {...}` per object, an OpenAI error object if the model fails midway, then [DONE]."""
    try:
        for event in render(first):
            yield f"data: {event.model_dump_json()}\n\n"
        async for chunk in rest:
            for event in render(chunk):
                yield f"data: {event.model_dump_json()}\n\n"
    except ServeError as error:
        body = error_response(path, error.status, error.code, str(error)).body
        yield f"data: {bytes(body).decode()}\n\n"
    finally:
        await _close(exits)
    yield "data: [DONE]\n\n"


async def _close(exits: AsyncExitStack) -> None:
    """Close the stream, so that it stops generating for a client that left, and end the turn."""
    # Shielded: a disconnect cancels this task, and closing must still reach the worker.
    with anyio.CancelScope(shield=True):
        await exits.aclose()


def _completion_chunks(meta: _Meta, include_usage: bool) -> Render:
    """Completion chunks: the same object as the full answer, with a piece of text."""

    def render(chunk: Chunk) -> list[BaseModel]:
        choice = CompletionChoice(text=chunk["text"], finish_reason=chunk.get("finish_reason"))
        events: list[BaseModel] = [Completion(**meta.fields(), choices=[choice])]
        if include_usage and "finish_reason" in chunk:
            events.append(Completion(**meta.fields(), choices=[], usage=_usage(chunk)))
        return events

    return render


def _chat_chunks(meta: _Meta, include_usage: bool) -> Render:
    """Chat chunks: the first delta names the role, the last carries the finish reason."""
    first = True

    def render(chunk: Chunk) -> list[BaseModel]:
        nonlocal first
        delta = Delta(role="assistant" if first else None, content=chunk["text"])
        first = False
        choice = ChunkChoice(delta=delta, finish_reason=chunk.get("finish_reason"))
        events: list[BaseModel] = [ChatCompletionChunk(**meta.fields(), choices=[choice])]
        if include_usage and "finish_reason" in chunk:
            events.append(ChatCompletionChunk(**meta.fields(), choices=[], usage=_usage(chunk)))
        return events

    return render


OpenAIBody = TypeVar("OpenAIBody", bound=OpenAIRequest)


def _routed(request: Request, body: OpenAIBody) -> OpenAIBody:
    """The body with `model` as the version that answers (`minilm@v2`), which must do the route's
    task (404 or 422 otherwise); responses name that version."""
    found = inference.target(request, body.model, body.user)
    request.state.target = found
    served = app_state(request).supervisor.model(found.name)
    if served.task != body.task:
        message = f"{body.model!r} is a {served.task} model; this route needs {body.task}"
        raise _invalid(message, "model")
    return body.model_copy(update={"model": found.name})


def _admission(request: Request, body: OpenAIRequest, arrival: float) -> inference.Admission:
    """How a /v1 request waits in its model's queue: its priority, the server's deadline."""
    return inference.admission(request, arrival, body.priority, None)


def _invalid(message: str, param: str) -> InvalidInputError:
    return RequestValidationError([FieldError(field=param, message=message)])


def _endpoint(
    path: str, method: Literal["GET", "POST"], handler: Handler, **schemas: Any
) -> Endpoint:
    return Endpoint(path, method, handler, tag="openai", error=OpenAIError, **schemas)


ENDPOINTS = [
    _endpoint("/v1/models", "GET", list_models, response=ModelCards),
    _endpoint(
        "/v1/embeddings",
        "POST",
        create_embeddings,
        request=(EmbeddingsRequest,),
        response=EmbeddingsResponse,
    ),
    _endpoint(
        "/v1/completions",
        "POST",
        create_completion,
        request=(CompletionRequest,),
        response=Completion,
        stream=Completion,
    ),
    _endpoint(
        "/v1/chat/completions",
        "POST",
        create_chat_completion,
        request=(ChatCompletionRequest,),
        response=ChatCompletion,
        stream=ChatCompletionChunk,
    ),
]

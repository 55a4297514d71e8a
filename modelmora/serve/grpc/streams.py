"""ModelStreamInfer: Triton's bidirectional stream. Each request gets its own task, so that the
requests of one stream are batched together like concurrent unary calls; each response goes out
as soon as it is ready, and carries the request's `id`.

    text-generation      one response per chunk (TEXT), the last with FINISH_REASON
    embedding, classify  the result, split into responses of `chunk_rows` rows when asked

Every response has Triton's `triton_final_response` parameter, true on a request's last one; with
`triton_enable_empty_final_response` that last one is an extra response without outputs. A failed
request is one response with `error_message`; the stream goes on. When the server shuts down,
a stream stops reading requests, answers those it has, and ends with OK.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import grpc

from modelmora.errors import InvalidInputError, ServeError
from modelmora.oip import grpc_predict_v2_pb2 as pb
from modelmora.oip.tensors import task_tensors
from modelmora.serve.api import inference
from modelmora.serve.api.auth import Caller, tokens_used_by
from modelmora.serve.grpc import messages
from modelmora.serve.grpc.statuses import code_of

if TYPE_CHECKING:
    from modelmora.serve.grpc.service import Call, InferenceService

logger = logging.getLogger("modelmora.serve.grpc")
METHOD = "ModelStreamInfer"
Response = pb.ModelStreamInferResponse


async def serve_stream(
    service: InferenceService, requests: AsyncIterator[Any], context: Any, caller: Caller | None
) -> AsyncIterator[Response]:
    """The responses to a stream's requests, in the order they are ready."""
    out: asyncio.Queue[Response | None] = asyncio.Queue()
    pending: set[asyncio.Task[None]] = set()

    async def answer(request: pb.ModelInferRequest) -> None:
        async for response in responses(service, request, context, caller):
            out.put_nowait(response)

    async def read() -> None:
        try:
            async for request in requests:
                task = asyncio.create_task(answer(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:  # the client is done sending, or the server is shutting down
            for failure in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(failure, Exception):
                    logger.error("a stream request failed", exc_info=failure)
            out.put_nowait(None)

    reader = asyncio.create_task(read())
    service.readers.add(reader)
    try:
        while (response := await out.get()) is not None:
            yield response
    finally:
        service.readers.discard(reader)
        for task in (reader, *pending):
            task.cancel()


async def responses(
    service: InferenceService, request: pb.ModelInferRequest, context: Any, caller: Caller | None
) -> AsyncIterator[Response]:
    """One request's responses, or its error; counted in the metrics as one call."""
    arrival, call, code = time.monotonic(), service.new_call(caller), grpc.StatusCode.OK
    try:
        if caller is not None:
            service.admit(caller)
        found = service.resolve(request_reference(request), context)
        call.model = found.name
        if service.task(found) == "text-generation":
            answers = generate(service, request, context, call, arrival)
        else:
            answers = result(service, request, context, call, arrival)
        async for response in answers:
            yield response
    except ServeError as error:
        code = code_of(error)
        failed = pb.ModelInferResponse(id=request.id, model_name=request.model_name)
        yield Response(error_message=str(error), infer_response=failed)
    finally:
        service.record(METHOD, call, code, time.monotonic() - arrival)


def request_reference(request: pb.ModelInferRequest) -> str:
    version = request.model_version
    return f"{request.model_name}@{version}" if version else request.model_name


async def result(
    service: InferenceService,
    request: pb.ModelInferRequest,
    context: Any,
    call: Call,
    arrival: float,
) -> AsyncIterator[Response]:
    """A batched task's result, whole or in chunks of `chunk_rows` rows."""
    found, outcome = await service.infer(request, context, call, arrival)
    outputs = task_tensors(service.task(found)).outputs_of(outcome.result)
    rows = chunk_rows(request)
    parts = []
    for start, part in messages.row_chunks(outputs, rows):
        response = messages.infer_response(request, found.model, found.version or "", part)
        if rows:
            messages.set_parameter(response, messages.CHUNK_START, start)
        parts.append(response)
    for response in finals(request, parts):
        yield response


def chunk_rows(request: pb.ModelInferRequest) -> int:
    rows = messages.parameters(request.parameters).get(messages.CHUNK_ROWS, 0)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise InvalidInputError(f"{messages.CHUNK_ROWS} is a whole number of rows, not {rows!r}")
    return rows


async def generate(
    service: InferenceService,
    request: pb.ModelInferRequest,
    context: Any,
    call: Call,
    arrival: float,
) -> AsyncIterator[Response]:
    """Token streaming: one response per chunk the model makes."""
    found = service.resolve(request_reference(request), context)
    options = service.options(request, found, context)
    queueing = service.admission(options, arrival, context)
    version = found.version or ""
    async with AsyncExitStack() as exits:
        chunks = await inference.open_stream(
            service.state, found.name, options.to_runtime(), queueing, exits, options.keep_alive
        )
        previous = None
        async for chunk in chunks:
            if previous is not None:
                yield wrap(previous, final=False)
            if "finish_reason" in chunk:
                call.tokens = tokens_used_by(chunk)
            previous = messages.infer_response(request, found.model, version, chunk_outputs(chunk))
    last = previous or messages.infer_response(request, found.model, version, [])
    for response in finals(request, [last]):
        yield response


def chunk_outputs(chunk: dict[str, Any]) -> list[Any]:
    """TEXT of the chunk; the last chunk (which has a finish reason) also FINISH_REASON."""
    outputs = task_tensors("text-generation").outputs_of(chunk)
    return outputs if "finish_reason" in chunk else outputs[:1]


def finals(request: pb.ModelInferRequest, parts: list[pb.ModelInferResponse]) -> Iterable[Response]:
    """The responses, the last marked final, or followed by an empty final one if asked."""
    empty_final = messages.parameters(request.parameters).get(messages.EMPTY_FINAL) is True
    for index, part in enumerate(parts):
        yield wrap(part, final=index == len(parts) - 1 and not empty_final)
    if empty_final:
        last = parts[-1]
        empty = pb.ModelInferResponse(
            id=request.id, model_name=last.model_name, model_version=last.model_version
        )
        yield wrap(empty, final=True)


def wrap(response: pb.ModelInferResponse, final: bool) -> Response:
    messages.set_parameter(response, messages.FINAL, final)
    return Response(infer_response=response)

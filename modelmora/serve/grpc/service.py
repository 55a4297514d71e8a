"""The GRPCInferenceService servicer: the same models, queues, keys and metrics as the REST APIs.

    ModelInfer        ──► resolve ──► task body ──► request schema ──► inference.infer
    ModelStreamInfer  ──► one task per request ──► responses in the order they are ready

Health RPCs need no key; metadata and inference need the `infer` scope, the repository's load and
unload `admin`. Keys come as `authorization: Bearer KEY` metadata; a stream is authorized once
and each of its requests counts against the key's rate limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from pydantic import ValidationError

from modelmora import __version__, keys
from modelmora.errors import ForbiddenError, OverloadedError, ServeError, UnknownModelError
from modelmora.oip import grpc_predict_v2_pb2 as pb
from modelmora.oip.tensors import Spec, task_tensors
from modelmora.serve.api import inference
from modelmora.serve.api.auth import Caller, tokens_used_by
from modelmora.serve.api.http import AppState, RequestValidationError
from modelmora.serve.api.inference import ROUTE_KEY_HEADER
from modelmora.serve.api.schemas import InferOptions, request_schema
from modelmora.serve.api.telemetry import Metrics
from modelmora.serve.grpc import messages, streams
from modelmora.serve.grpc.statuses import code_of, trailers
from modelmora.serve.scheduler import NORMAL
from modelmora.serve.supervisor import InferenceResult
from modelmora.serve.traffic import Target

logger = logging.getLogger("modelmora.serve.grpc")
T = TypeVar("T")

EXTENSIONS = ["model_repository", "binary_tensor_data", "streaming"]
UNREADY = ("failed", "restarting")
MAX_TIMEOUT = 3600.0
"""The request schemas' bound on `timeout`: a longer gRPC deadline waits no longer than this."""


class Unauthenticated(ServeError):
    status = 401
    code = "invalid_api_key"


@dataclass
class Call:
    """What one RPC leaves for its metrics line and its key's token count."""

    model: str = ""
    caller: Caller | None = None
    timing: InferenceResult | None = None
    tokens: int = 0


class InferenceService:
    """The servicer; its method names are the RPCs'."""

    def __init__(self, state: AppState, metrics: Metrics | None = None) -> None:
        self.state, self.metrics = state, metrics
        self.readers: set[asyncio.Task[None]] = set()
        """What reads each open stream's requests; cancelled at shutdown."""

    @staticmethod
    def new_call(caller: Caller | None = None) -> Call:
        return Call(caller=caller)

    def stop_reading(self) -> None:
        """Shutting down: streams take no more requests, answer those they have, then end."""
        for reader in list(self.readers):
            reader.cancel()

    # --- health and metadata ---------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.supervisor.is_ready()[0])

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        try:
            name = self.resolve(reference(request.name, request.version), context).name
        except UnknownModelError:
            return pb.ModelReadyResponse(ready=False)
        state = self.state.supervisor.status(name).state
        stopping = self.state.supervisor.is_stopping
        return pb.ModelReadyResponse(ready=state not in UNREADY and not stopping)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        async def run(call: Call) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(
                name="modelmora", version=__version__, extensions=EXTENSIONS
            )

        return await self.unary(context, "ServerMetadata", "infer", run)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        async def run(call: Call) -> pb.ModelMetadataResponse:
            found = self.resolve(reference(request.name, request.version), context)
            call.model = found.name
            return self.metadata(found)

        return await self.unary(context, "ModelMetadata", "infer", run)

    def metadata(self, found: Target) -> pb.ModelMetadataResponse:
        task = self.state.supervisor.model(found.name).task
        specs = task_tensors(task)
        prefix = f"{found.model}@"
        names = self.state.supervisor.names()
        versions = [n.removeprefix(prefix) for n in names if n.startswith(prefix)]
        return pb.ModelMetadataResponse(
            name=found.model,
            versions=versions,
            platform=f"modelmora/{task}",
            inputs=[tensor_metadata(spec) for spec in specs.inputs],
            outputs=[tensor_metadata(spec) for spec in specs.outputs],
        )

    # --- inference ---------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        arrival = time.monotonic()

        async def run(call: Call) -> pb.ModelInferResponse:
            found, outcome = await self.infer(request, context, call, arrival)
            outputs = task_tensors(self.task(found)).outputs_of(outcome.result)
            return messages.infer_response(request, found.model, found.version or "", outputs)

        return await self.unary(context, "ModelInfer", "infer", run)

    async def infer(
        self, request: pb.ModelInferRequest, context: Any, call: Call, arrival: float
    ) -> tuple[Target, InferenceResult]:
        """One request through the scheduler, as `POST /infer` runs it."""
        found = self.resolve(reference(request.model_name, request.model_version), context)
        call.model = found.name
        options = self.options(request, found, context)
        queueing = self.admission(options, arrival, context)
        runtime = options.to_runtime()
        outcome = await inference.infer(
            self.state, found.name, runtime, queueing, options.keep_alive, packed=True
        )
        call.timing, call.tokens = outcome, call.tokens + tokens_used_by(outcome.result)
        inference.mirror(self.state, found, runtime, outcome.result)
        return found, outcome

    def options(self, request: pb.ModelInferRequest, found: Target, context: Any) -> InferOptions:
        """The native body of the request, validated by its task's schema (every bound the same)."""
        task = self.state.supervisor.model(found.name).task
        given = messages.parameters(request.parameters)
        body = task_tensors(task).body(messages.input_tensors(request), given)
        body.update(queueing_fields(given, context.time_remaining()))
        try:
            return request_schema(task).model_validate(body)
        except ValidationError as error:
            raise RequestValidationError.from_pydantic(error) from None

    def admission(self, options: InferOptions, arrival: float, context: Any) -> inference.Admission:
        priority = NORMAL if options.priority is None else options.priority
        return inference.admit(self.state, arrival, priority, options.timeout, context.cancelled)

    def task(self, found: Target) -> str:
        return self.state.supervisor.model(found.name).task

    def resolve(self, name: str, context: Any) -> Target:
        return inference.resolve(self.state, name, metadata(context).get(ROUTE_KEY_HEADER))

    async def ModelStreamInfer(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        try:
            caller = self.authorize(context, "infer", admit=False)
        except ServeError as error:
            await abort(context, code_of(error), error)
            raise
        async for response in streams.serve_stream(self, requests, context, caller):
            yield response

    # --- the model repository ----------------------------------------------------------------

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> Any:
        async def run(call: Call) -> pb.RepositoryIndexResponse:
            index = pb.RepositoryIndexResponse()
            for status in self.state.supervisor.statuses():
                if request.ready and status.state != "ready":
                    continue
                name, _, version = status.name.partition("@")
                state = status.state.upper()
                index.models.add(name=name, version=version, state=state, reason=status.error or "")
            return index

        return await self.unary(context, "RepositoryIndex", "infer", run)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        async def run(call: Call) -> pb.RepositoryModelLoadResponse:
            call.model = self.resolve(request.model_name, context).name
            await self.state.supervisor.load(call.model)
            self.audit(call, "model.load")
            return pb.RepositoryModelLoadResponse()

        return await self.unary(context, "RepositoryModelLoad", "admin", run)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async def run(call: Call) -> pb.RepositoryModelUnloadResponse:
            call.model = self.resolve(request.model_name, context).name
            await self.state.supervisor.unload(call.model)
            self.audit(call, "model.unload")
            return pb.RepositoryModelUnloadResponse()

        return await self.unary(context, "RepositoryModelUnload", "admin", run)

    def audit(self, call: Call, action: str) -> None:
        if self.state.keys is not None:
            actor = call.caller.name if call.caller is not None else "anonymous"
            state = self.state.supervisor.status(call.model).state
            self.state.keys.record(actor, action, call.model, None, {"state": state})

    # --- keys, errors and metrics --------------------------------------------------------------

    async def unary(
        self, context: Any, method: str, scope: keys.Scope, run: Callable[[Call], Awaitable[T]]
    ) -> T:
        """An RPC: its key checked, a ServeError turned into its status, then counted."""
        call, started, code = Call(), time.perf_counter(), grpc.StatusCode.OK
        try:
            call.caller = self.authorize(context, scope)
            return await run(call)
        except ServeError as error:
            code = code_of(error)
            await abort(context, code, error)
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.UNKNOWN
            logger.exception("unhandled error in %s", method)
            raise
        finally:
            self.record(method, call, code, time.perf_counter() - started)

    def record(self, method: str, call: Call, code: grpc.StatusCode, seconds: float) -> None:
        if call.caller is not None:
            call.caller.charge(call.tokens)
        if self.metrics is not None:
            name = f"grpc:{method}"
            self.metrics.observe_request(name, call.model, code.name, seconds, call.timing)

    def authorize(self, context: Any, scope: keys.Scope, admit: bool = True) -> Caller | None:
        """The caller of a guarded server (None on an open one); refusals raise."""
        keyring = self.state.keys
        if keyring is None or not keyring.is_guarding():
            return None
        scheme, _, secret = metadata(context).get("authorization", "").partition(" ")
        caller = keyring.caller(secret.strip()) if scheme.lower() == "bearer" else None
        if caller is None:
            raise Unauthenticated(
                "missing, unknown or revoked API key", "send `authorization: Bearer KEY` metadata"
            )
        if not caller.allows(scope):
            raise ForbiddenError(
                f"the key {caller.name!r} has the infer scope; this RPC needs admin",
                "use an admin key (`modelmora keys create NAME --scope admin`)",
            )
        if admit:
            self.admit(caller)
        return caller

    @staticmethod
    def admit(caller: Caller) -> None:
        refusal = caller.admit()
        if refusal is not None:
            raise OverloadedError(
                f"the key {caller.name!r} is over its rate limit",
                retry_after=refusal.retry_after,
            )


async def abort(context: Any, code: grpc.StatusCode, error: ServeError) -> None:
    """End the RPC with `code`; a refusal that may pass later says when to retry."""
    retry = error.retry_after if error.status in (429, 503) else None
    await context.abort(code, str(error), trailing_metadata=trailers(code, str(error), retry))


def tensor_metadata(spec: Spec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def reference(name: str, version: str) -> str:
    """`name@version`, as the REST APIs name a version; the name alone without one."""
    return f"{name}@{version}" if version else name


def metadata(context: Any) -> dict[str, str]:
    return {key: value for key, value in context.invocation_metadata() or () if key[-4:] != "-bin"}


def queueing_fields(given: dict[str, Any], deadline: float | None) -> dict[str, Any]:
    """`priority` (0-3 or low..critical), `keep_alive`, and the deadline in seconds: Triton's
    `timeout` parameter (microseconds), else the call's gRPC deadline."""
    fields: dict[str, Any] = {
        name: given[name] for name in ("priority", "keep_alive") if name in given
    }
    if isinstance(given.get("timeout"), int) and given["timeout"] > 0:
        fields["timeout"] = given["timeout"] / 1_000_000
    elif deadline is not None:
        fields["timeout"] = min(max(deadline, 0.001), MAX_TIMEOUT)
    return fields

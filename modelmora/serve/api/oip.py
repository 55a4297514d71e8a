"""The Open Inference Protocol over REST (KServe v2 / Triton), under `/v2`.

    POST /v2/models/{name}/infer ──► tensors (JSON or binary) ──► TASKS[task].body ──► the native
    request schema (same bounds) ──► inference.infer (same scheduler, batching) ──► output tensors

A version is `/v2/models/{name}/versions/{version}`, served as `name@version`; without one, the
model's route picks it. Errors are Triton's `{"error": "..."}` (http.error_response), bad input 400.
"""

from __future__ import annotations

import functools
import operator
import time
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.requests import Request
from starlette.responses import Response

from modelmora import __version__
from modelmora.errors import InvalidInputError, UnknownModelError
from modelmora.oip.schemas import (
    ErrorBody,
    InferRequest,
    InferResponse,
    InputTensor,
    LoadRequest,
    ModelMetadata,
    ModelReady,
    NoParameters,
    OutputTensor,
    RepositoryIndex,
    RepositoryIndexRequest,
    RepositoryModel,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorMetadata,
    UnloadRequest,
)
from modelmora.oip.tensors import (
    IMAGE_OPTIONS,
    SAMPLING,
    TASKS,
    Spec,
    TaskTensors,
    Tensor,
    conform,
    decode_binary,
    encode_binary,
    from_json,
    invalid,
    task_tensors,
    to_json,
)
from modelmora.routing import VERSION
from modelmora.serve.api import inference
from modelmora.serve.api.auth import record_admin, require_admin
from modelmora.serve.api.http import (
    PydanticResponse,
    RequestValidationError,
    app_state,
    read_body,
    read_json,
)
from modelmora.serve.api.native import record_timing
from modelmora.serve.api.openapi import Endpoint
from modelmora.serve.api.schemas import InferOptions, request_schema
from modelmora.serve.scheduler import CRITICAL, HIGH, LOW, NORMAL
from modelmora.serve.status import ModelStatus

EXTENSIONS = ["binary_tensor_data", "model_repository"]
HEADER_LENGTH = "Inference-Header-Content-Length"
OPTIONS: dict[str, tuple[str, ...]] = {
    "embedding": ("normalize",),
    "text-classification": ("top_k",),
    "text-generation": ("max_tokens", *SAMPLING),
    "text-to-image": IMAGE_OPTIONS,
}
"""The request parameters each task takes besides the protocol's own (`PROTOCOL`)."""
PROTOCOL = ("priority", "timeout", "binary_data_output")
TRITON_PRIORITIES = {1: CRITICAL, 2: HIGH, 3: NORMAL}
"""Triton's priority: 1 is the highest level; 0 is the default; 4 and above are our low."""
MAX_TIMEOUT_US = 3_600_000_000
"""Triton's `timeout` is in microseconds; the native schema's bound is 3600 s."""
NONEMPTY = ("text-generation", "text-to-image")
"""Tasks whose TEXT element must not be empty (a prompt)."""
UNAVAILABLE = {"unloaded": "unloaded: loads on its first request", "restarting": "restarting"}

_METADATA = ServerMetadata(name="modelmora", version=__version__, extensions=EXTENSIONS)


async def server_metadata(request: Request) -> Response:
    """Server metadata: name, version and the protocol extensions it supports."""
    return PydanticResponse(_METADATA)


async def server_live(request: Request) -> Response:
    """Liveness: 200 while the process serves HTTP."""
    return PydanticResponse(ServerLive(live=True))


async def server_ready(request: Request) -> Response:
    """Readiness, as `/ready` counts it: 200 when ready, else 400 (the protocol's 4xx)."""
    is_ready, _ = app_state(request).supervisor.is_ready()
    return PydanticResponse(ServerReady(ready=is_ready), status_code=200 if is_ready else 400)


def _reference(request: Request) -> str:
    """The served name the path names: `name`, or `name@version` under `/versions/{version}`."""
    name: str = request.path_params["name"]
    version = request.path_params.get("version")
    if version is not None and not VERSION.match(version):
        raise UnknownModelError(f"model '{name}' has no version '{version}'")
    return f"{name}@{version}" if version else name


async def model_metadata(request: Request) -> Response:
    """A model's versions, platform and the tensors it takes and gives."""
    found = inference.target(request, _reference(request))
    supervisor = app_state(request).supervisor
    task = supervisor.model(found.name).task
    tensors = TASKS.get(task)
    prefix = f"{found.model}@"
    versions = sorted(n.removeprefix(prefix) for n in supervisor.names() if n.startswith(prefix))
    body = ModelMetadata(
        name=found.model,
        versions=versions,
        platform=f"modelmora/{task}",
        inputs=_metadata(tensors.inputs if tensors else ()),
        outputs=_metadata(tensors.outputs if tensors else ()),
    )
    return PydanticResponse(body)


def _metadata(specs: Sequence[Spec]) -> list[TensorMetadata]:
    return [TensorMetadata(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in specs]


async def model_ready(request: Request) -> Response:
    """200 when the model can take a request now (an unloaded one loads on its first), else 400."""
    found = inference.target(request, _reference(request))
    state = app_state(request).supervisor.status(found.name).state
    is_ready = state not in ("failed", "restarting")
    body = ModelReady(name=found.model, ready=is_ready)
    return PydanticResponse(body, status_code=200 if is_ready else 400)


# --- inference ----------------------------------------------------------------------------------


async def infer(request: Request) -> Response:
    """Run the model on input tensors (JSON, or the binary tensor data extension)."""
    return await _infer(request)


async def infer_version(request: Request) -> Response:
    """Run one version of the model on input tensors (JSON, or binary tensor data)."""
    return await _infer(request)


async def _infer(request: Request) -> Response:
    arrival = time.monotonic()
    state = app_state(request)
    found = inference.target(request, _reference(request))
    task = state.supervisor.model(found.name).task
    tensors = task_tensors(task)
    body, binary = await _read_infer(request)
    parameters = dict(body.parameters or {})
    wanted = _wanted(tensors, body, parameters)
    native = _native_body(task, tensors, _inputs(tensors, body, binary), parameters)
    queueing = inference.admission(request, arrival, native.priority, native.timeout)
    runtime = native.to_runtime()
    outcome = await inference.infer(state, found.name, runtime, queueing, packed=True)
    record_timing(request, outcome)
    inference.mirror(state, found, runtime, outcome.result)
    produced = {tensor.name: tensor for tensor in tensors.outputs_of(outcome.result)}
    header = InferResponse(
        model_name=found.model, model_version=found.version, id=body.id, outputs=[]
    )
    return _respond(header, [(produced[name], as_binary) for name, as_binary in wanted.items()])


async def _read_infer(request: Request) -> tuple[InferRequest, bytes]:
    """The JSON part of the body, validated, and the binary part after it (maybe empty)."""
    raw = await read_body(request, app_state(request).settings.max_body_bytes)
    length = _header_length(request, len(raw))
    try:
        return InferRequest.model_validate_json(raw[:length]), raw[length:]
    except ValidationError as error:
        raise RequestValidationError.from_pydantic(error) from None


def _header_length(request: Request, size: int) -> int:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return size
    if not value.isdigit() or int(value) > size:
        raise InvalidInputError(
            f"{HEADER_LENGTH} {value!r} is not a length within the body's {size} bytes",
            "send the length of the JSON part of the body",
        )
    return int(value)


def _inputs(tensors: TaskTensors, body: InferRequest, binary: bytes) -> dict[str, Tensor]:
    """The input tensors by name, each checked against what the model declares."""
    declared = {spec.name: spec for spec in tensors.inputs}
    found: dict[str, Tensor] = {}
    at = 0
    for item in body.inputs:
        spec = declared.get(item.name)
        if spec is None:
            raise InvalidInputError(
                f"unknown input tensor '{item.name}'", f"this model takes {', '.join(declared)}"
            )
        if item.name in found:
            raise invalid(item.name, "sent twice; send each input once")
        conform(spec, item.datatype, item.shape)
        found[item.name], at = _tensor(item, binary, at)
    if at != len(binary):
        raise InvalidInputError(
            f"the body has {len(binary) - at} bytes that no input's binary_data_size covers",
            f"set {HEADER_LENGTH} to the length of the JSON part",
        )
    return found


def _tensor(item: InputTensor, binary: bytes, at: int) -> tuple[Tensor, int]:
    """One input from its JSON `data`, or from the binary part at offset `at`; the next offset."""
    parameters = dict(item.parameters or {})
    size = parameters.pop("binary_data_size", None)
    if parameters:
        raise invalid(item.name, f"unknown parameter '{next(iter(parameters))}'")
    if size is None:
        if item.data is None:
            raise invalid(item.name, "no data: send `data`, or `parameters.binary_data_size`")
        return from_json(item.name, item.datatype, item.shape, item.data), at
    if item.data is not None:
        raise invalid(item.name, "send `data` or `binary_data_size`, not both")
    if not _is_whole(size) or at + size > len(binary):
        left = len(binary) - at
        raise invalid(item.name, f"binary_data_size {size!r} is not within the {left} bytes left")
    return decode_binary(item.name, item.datatype, item.shape, binary[at : at + size]), at + size


def _is_whole(value: Any) -> bool:
    """A JSON whole number >= 0 (`2.0` is one, `true` is not)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _native_body(
    task: str, tensors: TaskTensors, inputs: Mapping[str, Tensor], parameters: Mapping[str, Any]
) -> InferOptions:
    """The native request for the tensors and parameters, validated by the task's own schema."""
    allowed = (*OPTIONS.get(task, ()), *PROTOCOL)
    unknown = [name for name in parameters if name not in allowed]
    if unknown:
        raise InvalidInputError(
            f"parameters: unknown parameter '{unknown[0]}'",
            f"this model takes {', '.join(allowed)}",
        )
    fields = {**tensors.body(inputs, parameters), **_queueing(parameters)}
    try:
        if "max_tokens" in parameters and "max_new_tokens" in parameters:  # the latter counts
            request_schema(task).model_validate(
                {**fields, "max_new_tokens": parameters["max_tokens"]}
            )
        return request_schema(task).model_validate(fields)
    except ValidationError as error:
        raise RequestValidationError.from_pydantic(error) from None


def _queueing(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Triton's `priority` (1 highest, 0 default) and `timeout` (microseconds, 0 none), native."""
    fields: dict[str, Any] = {}
    priority = parameters.get("priority", 0)
    if not _is_whole(priority) or priority >= 2**64:
        raise InvalidInputError(
            f"parameters.priority: {priority!r} is not a whole number >= 0",
            "1 is the highest priority, 0 the default",
        )
    if priority:
        fields["priority"] = TRITON_PRIORITIES.get(int(priority), LOW)
    timeout = parameters.get("timeout", 0)
    if not _is_whole(timeout) or timeout > MAX_TIMEOUT_US:
        raise InvalidInputError(
            f"parameters.timeout: {timeout!r} is not microseconds from 0 to {MAX_TIMEOUT_US}",
            "0 (or none) is the server's default deadline",
        )
    if timeout:
        fields["timeout"] = timeout / 1e6
    return fields


def _wanted(
    tensors: TaskTensors, body: InferRequest, parameters: Mapping[str, Any]
) -> dict[str, bool]:
    """The outputs to send, each with whether it goes as binary data."""
    default = parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidInputError(f"parameters.binary_data_output: {default!r} is not true or false")
    names = [spec.name for spec in tensors.outputs]
    if not body.outputs:
        return dict.fromkeys(names, default)
    wanted: dict[str, bool] = {}
    for output in body.outputs:
        if output.name not in names:
            raise InvalidInputError(
                f"unknown output tensor '{output.name}'", f"this model gives {', '.join(names)}"
            )
        options = dict(output.parameters or {})
        as_binary = options.pop("binary_data", default)
        if options or not isinstance(as_binary, bool):
            raise invalid(output.name, f"outputs take `binary_data` (true or false), not {options}")
        wanted[output.name] = as_binary
    return wanted


def _respond(header: InferResponse, outputs: Sequence[tuple[Tensor, bool]]) -> Response:
    """JSON, or with binary outputs the JSON part and then their bytes, in the outputs' order."""
    described, chunks = [], []
    for tensor, as_binary in outputs:
        if as_binary:
            raw = encode_binary(tensor)
            chunks.append(raw)
            described.append(_output(tensor, parameters={"binary_data_size": len(raw)}))
        else:
            described.append(_output(tensor, data=to_json(tensor)))
    part = header.model_copy(update={"outputs": described})
    content = part.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return Response(content, media_type="application/json")
    headers = {HEADER_LENGTH: str(len(content))}
    return Response(
        b"".join([content, *chunks]), media_type="application/octet-stream", headers=headers
    )


def _output(tensor: Tensor, **fields: Any) -> OutputTensor:
    return OutputTensor(
        name=tensor.name, shape=list(tensor.shape), datatype=tensor.datatype, **fields
    )


# --- the model repository extension -------------------------------------------------------------


async def repository_index(request: Request) -> Response:
    """Every served model and version with its state (READY, LOADING, UNAVAILABLE)."""
    raw = await read_body(request, app_state(request).settings.max_body_bytes)
    query = _optional_body(raw, RepositoryIndexRequest)
    entries = [_entry(status) for status in app_state(request).supervisor.statuses()]
    chosen = [entry for entry in entries if entry.state == "READY" or not query.ready]
    return PydanticResponse(RepositoryIndex(chosen))


def _optional_body(raw: bytes, schema: type[BaseModel]) -> Any:
    """An empty body is `{}`: tritonclient's index request has none."""
    try:
        return schema.model_validate_json(raw or b"{}")
    except ValidationError as error:
        raise RequestValidationError.from_pydantic(error) from None


def _entry(status: ModelStatus) -> RepositoryModel:
    model, _, version = status.name.partition("@")
    if status.state in ("ready", "loading"):
        return RepositoryModel(name=model, version=version or None, state=status.state.upper())
    reason = status.error or UNAVAILABLE.get(status.state, status.state)
    return RepositoryModel(name=model, version=version or None, state="UNAVAILABLE", reason=reason)


async def load_model(request: Request) -> Response:
    """Load a model (a served name: `minilm`, or `minilm@v2`) and wait until it is ready (admin)."""
    return await _change(request, "model.load")


async def unload_model(request: Request) -> Response:
    """Unload a model (a served name), which ends its worker (admin scope; audited)."""
    return await _change(request, "model.unload")


async def _change(request: Request, action: Literal["model.load", "model.unload"]) -> Response:
    actor = require_admin(request)
    schema = LoadRequest if action == "model.load" else UnloadRequest
    await read_json(request, schema)  # `{}` at least, as tritonclient sends
    supervisor = app_state(request).supervisor
    name: str = request.path_params["name"]
    before = supervisor.status(name).state
    request.state.model = name
    change = supervisor.load if action == "model.load" else supervisor.unload
    status = await change(name)
    record_admin(request, actor, action, name, {"state": before}, {"state": status.state})
    return PydanticResponse(_entry(status))


# --- what the document says the inference bodies are -------------------------------------------


@functools.cache
def documented_request(task: str) -> type[BaseModel]:
    """The infer body of one model's task as `/openapi.json` publishes it.

    JSON tensors of shape [1]: a schema cannot tie `shape` to the length of `data`, so the document
    gives the form whose every instance the server accepts (it also takes [n] and binary data).
    """
    tensors = TASKS.get(task)
    if tensors is None:
        return InferRequest
    title = task.title().replace("-", "")
    names = tuple(spec.name for spec in tensors.outputs)
    output = _model(
        f"{title}RequestedOutput",
        name=(_one_of(names), ...),
        parameters=(_OutputParameters | None, None),
    )
    return _model(
        f"{title}OipInferRequest",
        id=(str | None, None),
        parameters=(_documented_parameters(title, task) | None, None),
        inputs=_documented_inputs(title, tensors.inputs, task),
        outputs=(list[output] | None, None),  # type: ignore[valid-type]
    )


_FORBID = ConfigDict(extra="forbid")
_ONE = Field(min_length=1, max_length=1)


def _model(title: str, /, **fields: Any) -> type[BaseModel]:
    return create_model(title, __config__=_FORBID, **fields)


def _one_of(values: tuple[str, ...]) -> Any:
    return Literal[values]


class _OutputParameters(BaseModel):
    model_config = _FORBID
    binary_data: bool = False


def _documented_input(title: str, spec: Spec, task: str) -> type[BaseModel]:
    item: Any = Annotated[str, Field(min_length=1)] if task in NONEMPTY else str
    return _model(
        f"{title}InputTensor",
        name=(_one_of((spec.name,)), ...),
        shape=(list[Literal[1]], _ONE),
        datatype=(_one_of((spec.datatype,)), ...),
        parameters=(NoParameters | None, None),
        data=(list[item], _ONE),
    )


def _documented_inputs(title: str, specs: Sequence[Spec], task: str) -> tuple[Any, Any]:
    """The first input, then each later one optional (text-to-image's NEGATIVE_PROMPT)."""
    first = _documented_input(title, specs[0], task)
    if len(specs) == 1:
        return list[first], _ONE  # type: ignore[valid-type]
    rest = [
        _documented_input(f"{title}{spec.name.title().replace('_', '')}", spec, task)
        for spec in specs[1:]
    ]
    forms = [types.GenericAlias(tuple, (first, *rest[:count])) for count in range(len(rest) + 1)]
    return functools.reduce(operator.or_, forms), ...


def _documented_parameters(title: str, task: str) -> type[BaseModel]:
    """The task's options, with the native schema's types and bounds, and the protocol's own."""
    native = request_schema(task).model_fields
    fields: dict[str, Any] = {
        name: (native[_native_name(name)].annotation, native[_native_name(name)])
        for name in OPTIONS.get(task, ())
    }
    return _model(
        f"{title}InferParameters",
        **fields,
        priority=(int, Field(0, ge=0, lt=2**64, description="Triton's: 1 highest, 0 default")),
        timeout=(int, Field(0, ge=0, le=MAX_TIMEOUT_US, description="microseconds; 0: none")),
        binary_data_output=(bool, False),
    )


def _native_name(name: str) -> str:
    return "max_new_tokens" if name == "max_tokens" else name


_TAG = "open inference protocol"
ENDPOINTS = [
    Endpoint("/v2", "GET", server_metadata, response=ServerMetadata, tag=_TAG, error=ErrorBody),
    Endpoint(
        "/v2/health/live", "GET", server_live, response=ServerLive, tag=_TAG, error=ErrorBody
    ),
    Endpoint(
        "/v2/health/ready",
        "GET",
        server_ready,
        response=ServerReady,
        tag=_TAG,
        error=ErrorBody,
        also=((400, ServerReady),),
    ),
    *(
        Endpoint(path, "GET", model_metadata, response=ModelMetadata, tag=_TAG, error=ErrorBody,
                 operation_id=operation)
        for path, operation in (
            ("/v2/models/{name}", "model_metadata"),
            ("/v2/models/{name}/versions/{version}", "model_version_metadata"),
        )
    ),
    *(
        Endpoint(path, "GET", model_ready, response=ModelReady, tag=_TAG, error=ErrorBody,
                 also=((400, ModelReady),), operation_id=operation)
        for path, operation in (
            ("/v2/models/{name}/ready", "model_ready"),
            ("/v2/models/{name}/versions/{version}/ready", "model_version_ready"),
        )
    ),
    Endpoint(
        "/v2/models/{name}/infer",
        "POST",
        infer,
        response=InferResponse,
        tag=_TAG,
        error=ErrorBody,
        per_model=documented_request,
        binary=True,
    ),
    Endpoint(
        "/v2/models/{name}/versions/{version}/infer",
        "POST",
        infer_version,
        response=InferResponse,
        tag=_TAG,
        error=ErrorBody,
        per_model=documented_request,
        binary=True,
    ),
    Endpoint(
        "/v2/repository/index",
        "POST",
        repository_index,
        request=(RepositoryIndexRequest,),
        body_optional=True,
        response=RepositoryIndex,
        tag=_TAG,
        error=ErrorBody,
    ),
    *(
        Endpoint(f"/v2/repository/models/{{name}}/{verb}", "POST", handler,
                 request=(schema,), response=RepositoryModel, tag=_TAG, error=ErrorBody)
        for verb, handler, schema in (
            ("load", load_model, LoadRequest), ("unload", unload_model, UnloadRequest)
        )
    ),
]  # fmt: skip

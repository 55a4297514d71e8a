"""The native API: liveness, readiness, the model table, load/unload and `POST /infer/{name}`."""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelmora.errors import InvalidInputError
from modelmora.serve.api import inference
from modelmora.serve.api.http import PydanticResponse, app_state, read_json, read_query
from modelmora.serve.api.openapi import Endpoint
from modelmora.serve.scheduler import CRITICAL, LOW, PRIORITIES, Scheduler, parse_priority
from modelmora.serve.supervisor import InferenceResult, ModelStatus
from modelmora.units import DURATION_PATTERN, parse_duration

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string", "pattern": DURATION_PATTERN}],
            "description": "seconds, or text like '30s', '5m'; 0 unloads after the request, "
            "negative never unloads",
        }
    ),
]
Texts = str | Annotated[list[str], Field(min_length=1, max_length=2048)]


def to_priority(value: object) -> int:
    """0-3 or low/normal/high/critical, as a pydantic error naming the field when it is not."""
    try:
        return parse_priority(value if isinstance(value, (int, str)) else repr(value))
    except InvalidInputError as error:
        raise ValueError(error.message) from None


Priority = Annotated[
    int,
    BeforeValidator(to_priority),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": LOW, "maximum": CRITICAL},
                {"enum": list(PRIORITIES)},
            ],
            "description": "3 (critical) goes first, then 2 (high), 1 (normal, the default), "
            "0 (low); FIFO within a level. Also read from the X-Priority header.",
        }
    ),
]


class InferOptions(BaseModel):
    """Options every `/infer` request accepts, whatever the task."""

    model_config = ConfigDict(extra="forbid")

    timeout: float | None = Field(None, gt=0, le=3600, description="deadline in seconds")
    keep_alive: Duration | None = None
    priority: Priority | None = None

    def to_runtime(self) -> dict[str, Any]:
        """The request the runtime receives (see the serving contract)."""
        raise NotImplementedError


def as_list(texts: str | list[str]) -> list[str]:
    """One text or several, as a list."""
    return [texts] if isinstance(texts, str) else texts


class EmbeddingInferRequest(InferOptions):
    """`/infer` on an embedding model."""

    inputs: Texts
    normalize: bool = True

    def to_runtime(self) -> dict[str, Any]:
        return {"inputs": as_list(self.inputs), "normalize": self.normalize}


class ClassificationInferRequest(InferOptions):
    """`/infer` on a text-classification model; `top_k: null` returns every label."""

    inputs: Texts
    top_k: int | None = Field(1, ge=1)

    def to_runtime(self) -> dict[str, Any]:
        return {"inputs": as_list(self.inputs), "top_k": self.top_k}


class ChatMessage(BaseModel):
    """One chat turn."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class GenerationOptions(BaseModel):
    """Sampling options of text generation, shared with the OpenAI routes."""

    max_new_tokens: int = Field(64, ge=1, le=32768)
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] = Field(default_factory=list)
    seed: int | None = None

    def sampling(self) -> dict[str, Any]:
        """The options as the runtime reads them."""
        stop = as_list(self.stop)
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": stop,
            "seed": self.seed,
        }


class GenerationInferRequest(GenerationOptions, InferOptions):
    """`/infer` on a text-generation model: a prompt in `inputs`, or chat `messages`."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | None = Field(None, min_length=1)
    messages: list[ChatMessage] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerationInferRequest:
        if (self.inputs is None) == (self.messages is None):
            raise ValueError("send either `inputs` (a prompt) or `messages` (a chat), not both")
        return self

    def to_runtime(self) -> dict[str, Any]:
        if self.messages is not None:
            return {"messages": [m.model_dump() for m in self.messages], **self.sampling()}
        return {"prompt": self.inputs, **self.sampling()}


class CustomInferRequest(InferOptions):
    """`/infer` on a plugin task: every field but the common options goes to the runtime as is."""

    model_config = ConfigDict(extra="allow")

    def to_runtime(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


REQUEST_SCHEMAS: dict[str, type[InferOptions]] = {
    "embedding": EmbeddingInferRequest,
    "text-classification": ClassificationInferRequest,
    "text-generation": GenerationInferRequest,
}


def request_schema(task: str) -> type[InferOptions]:
    """What `/infer` (and a job's `input`) takes for a model of `task`."""
    return REQUEST_SCHEMAS.get(task, CustomInferRequest)


class Timing(BaseModel):
    """Where the time of one request went, in milliseconds."""

    queue_ms: float
    load_ms: float
    inference_ms: float


class InferResponse(BaseModel):
    """The runtime's result with the model and revision that produced it."""

    model: str
    revision: str
    result: Any = Field(
        description="embedding: {embeddings, dimensions, prompt_tokens}; text-classification: "
        "{predictions, prompt_tokens}; text-generation: {text, prompt_tokens, completion_tokens, "
        "finish_reason}; plugin tasks: what the runtime returns"
    )
    timing: Timing


class Batching(BaseModel):
    """The scheduling settings in effect for a model (manifest fields of the same names)."""

    model_config = ConfigDict(extra="ignore")

    max_batch_size: int
    max_batch_delay_ms: float
    max_batch_tokens: int
    max_queue: int


class ModelInfo(BaseModel):
    """One served model: what it is and what its worker is doing."""

    model_config = ConfigDict(extra="ignore")

    name: str
    task: str
    source: str
    revision: str
    state: Literal["unloaded", "loading", "ready", "failed"]
    pid: int | None
    device: str | None
    memory_bytes: int | None
    loaded_at: float | None = Field(description="unix time")
    last_used: float | None = Field(description="unix time")
    expires_at: float | None = Field(description="unix time of the idle unload")
    in_flight: int
    requests_total: int
    requests_failed: int
    loads: int
    unloads: int
    crashes: int
    last_load_ms: float | None
    error: str | None
    queued: dict[str, int] = Field(description="requests waiting in the queue, per priority")
    batching: Batching

    @classmethod
    def from_status(cls, status: ModelStatus, scheduler: Scheduler) -> ModelInfo:
        """The API view of the supervisor's record and the model's queue."""
        depth = scheduler.depth(status.name)
        queued = {label: depth[level] for label, level in PRIORITIES.items()}
        batching = Batching.model_validate(dataclasses.asdict(scheduler.settings(status.name)))
        return cls.model_validate(
            {**dataclasses.asdict(status), "queued": queued, "batching": batching}
        )


class ModelList(BaseModel):
    """One page of the model table."""

    models: list[ModelInfo]
    page: int
    limit: int
    total: int


class ModelsQuery(BaseModel):
    """Query of `GET /models`: a page, filtered by task, state and device (prefix: `cuda`)."""

    page: int = Field(1, ge=1)
    limit: int = Field(100, ge=1, le=1000)
    task: str | None = None
    state: Literal["unloaded", "loading", "ready", "failed"] | None = None
    device: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Ready when preloaded models are loaded and none has failed; otherwise the reasons."""

    ready: bool
    reasons: list[str]


_HEALTH = JSONResponse({"status": "ok"}).body


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
    """Start the model's worker and wait until it is ready."""
    name = _model_name(request)
    return PydanticResponse(_info(request, await app_state(request).supervisor.load(name)))


async def unload_model(request: Request) -> Response:
    """End the model's worker, which gives its memory back."""
    name = _model_name(request)
    status = await app_state(request).supervisor.unload(name)
    return PydanticResponse(_info(request, status))


def _info(request: Request, status: ModelStatus) -> ModelInfo:
    return ModelInfo.from_status(status, app_state(request).scheduler)


async def infer(request: Request) -> Response:
    """Run the model on the inputs; the body's schema depends on the model's task."""
    arrival = time.monotonic()
    state = app_state(request)
    name = _model_name(request)
    served = state.supervisor.model(name)
    body = await read_json(request, request_schema(served.task))
    queueing = inference.admission(request, arrival, body.priority, body.timeout)
    result = await inference.infer(state, name, body.to_runtime(), queueing, body.keep_alive)
    record_timing(request, result)
    return PydanticResponse(
        InferResponse(
            model=name, revision=served.revision, result=result.result, timing=_timing(result)
        )
    )


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
    Endpoint("/health", "GET", health, response=Health, tag="health"),
    Endpoint("/ready", "GET", ready, response=Readiness, tag="health"),
    Endpoint("/models", "GET", list_models, query=ModelsQuery, response=ModelList, tag="models"),
    Endpoint("/models/{name}", "GET", get_model, response=ModelInfo, tag="models"),
    Endpoint("/models/{name}/load", "POST", load_model, response=ModelInfo, tag="models"),
    Endpoint("/models/{name}/unload", "POST", unload_model, response=ModelInfo, tag="models"),
    Endpoint(
        "/infer/{name}",
        "POST",
        infer,
        request=(EmbeddingInferRequest, ClassificationInferRequest, GenerationInferRequest),
        response=InferResponse,
        tag="inference",
    ),
]

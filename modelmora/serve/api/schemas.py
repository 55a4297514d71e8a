"""The API's pydantic schemas, for bodies in and out: what `/openapi.json` publishes.

native   /infer requests per task, model status, readiness
openai   /v1: embeddings, completions, chat completions, models
jobs     /jobs requests, job records, pages
errors   the native and OpenAI error shapes

Each fact is defined here once: sampling bounds come from `modelmora.runtimes.sampling`, durations
from `modelmora.units`, priorities from the scheduler, model states from `ModelState`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from modelmora.errors import InvalidInputError
from modelmora.serve.jobstore import Job, JobPage, JobState
from modelmora.serve.scheduler import CRITICAL, LOW, PRIORITIES, parse_priority
from modelmora.serve.status import ModelState, ModelStatus
from modelmora.units import DURATION_PATTERN, parse_duration


class FieldError(BaseModel):
    """One invalid field: its dotted path and what is wrong with it."""

    field: str
    message: str


class NativeErrorBody(BaseModel):
    code: str
    message: str
    detail: Any = None


class NativeError(BaseModel):
    """The native API's error: `{"error": {"code", "message", "detail"}}`."""

    error: NativeErrorBody


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error: `{"error": {"message", "type", "param", "code"}}`."""

    error: OpenAIErrorBody


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


class ModelList(BaseModel):
    """One page of the model table."""

    models: list[ModelStatus]
    page: int
    limit: int
    total: int


class ModelsQuery(BaseModel):
    """Query of `GET /models`: a page, filtered by task, state and device (prefix: `cuda`)."""

    page: int = Field(1, ge=1)
    limit: int = Field(100, ge=1, le=1000)
    task: str | None = None
    state: ModelState | None = None
    device: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Ready when preloaded models are loaded and none has failed; otherwise the reasons."""

    ready: bool
    reasons: list[str]


class OpenAIRequest(BaseModel):
    """Fields every /v1 request has; unknown fields are ignored, as OpenAI's clients send many."""

    model_config = ConfigDict(extra="ignore")

    model: str
    keep_alive: Duration | None = Field(None, description="ModelMora extension (Ollama semantics)")
    priority: Priority | None = Field(None, description="ModelMora extension; or X-Priority")
    user: str | None = None


class EmbeddingsRequest(OpenAIRequest):
    """`POST /v1/embeddings`; token-id inputs are not supported."""

    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(OpenAIRequest):
    """Sampling fields shared by completions and chat completions."""

    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = Field(1, description="only one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self) -> dict[str, Any]:
        """The runtime's sampling options; unset ones keep the runtime's defaults."""
        options = {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            "seed": self.seed,
        }
        return {key: value for key, value in options.items() if value is not None}

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingRequest):
    """`POST /v1/completions`: one prompt (a list of one is accepted)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def runtime_request(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return {"prompt": prompt, **self.sampling()}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatCompletionMessage(BaseModel):
    """A chat turn; content parts other than text are not supported."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingRequest):
    """`POST /v1/chat/completions`."""

    messages: list[ChatCompletionMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)

    def runtime_request(self) -> dict[str, Any]:
        messages = [{"role": m.role, "content": m.text()} for m in self.messages]
        sampling = self.sampling()
        if self.max_completion_tokens is not None:
            sampling["max_new_tokens"] = self.max_completion_tokens
        return {"messages": messages, **sampling}


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "modelmora"


class ModelCards(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


JobInput = str | list[str] | dict[str, Any]


class JobRequest(BaseModel):
    """`POST /jobs`: `input` is what `POST /infer/{model}` takes (a text or list: its `inputs`)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: JobInput
    priority: Priority | None = None
    timeout: float | None = Field(
        None, gt=0, le=86400, description="seconds the job may take once started"
    )


class JobInfo(BaseModel):
    """A job: its state, timings and, once done, its result or error."""

    id: str
    model: str
    state: JobState
    priority: int
    timeout: float | None
    input: Any
    created_at: float = Field(description="unix time")
    started_at: float | None = Field(description="unix time")
    finished_at: float | None = Field(description="unix time")
    queue_ms: float | None = Field(description="from creation to start")
    run_ms: float | None = Field(description="from start to finish")
    attempts: int = Field(description="more than 1 when a restart ran it again")
    result: Any = Field(description="what `/infer/{model}` returns as `result`")
    error: dict[str, Any] | None = Field(description="{code, message} of a failed job")

    @classmethod
    def from_job(cls, job: Job) -> JobInfo:
        fields = {name: getattr(job, name) for name in cls.model_fields}
        return cls.model_validate(fields)


class JobList(BaseModel):
    """One page of jobs, newest first."""

    jobs: list[JobInfo]
    page: int
    limit: int
    total: int

    @classmethod
    def from_page(cls, page: JobPage) -> JobList:
        jobs = [JobInfo.from_job(job) for job in page.jobs]
        return cls(jobs=jobs, page=page.page, limit=page.limit, total=page.total)


class JobsQuery(BaseModel):
    """Query of `GET /jobs`: a page, filtered by model and state."""

    model: str | None = None
    state: JobState | None = None
    page: int = Field(1, ge=1)
    limit: int = Field(50, ge=1, le=1000)

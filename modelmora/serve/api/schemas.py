"""The API's pydantic schemas, for bodies in and out: what `/openapi.json` publishes.

native   /infer requests per task, model status, readiness
openai   /v1: embeddings, completions, chat completions, models
jobs     /jobs requests, job records, pages
errors   the native and OpenAI error shapes
served   the bodies that name a model, as the document of one server shows them

Each fact is defined here once: sampling bounds come from `modelmora.runtimes.sampling`, durations
from `modelmora.units`, priorities from the scheduler, model states from `ModelState`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from modelmora.errors import ModelmoraError
from modelmora.runtimes import imageoptions, sampling
from modelmora.serve.jobstore import Job, JobInput, JobPage, JobState
from modelmora.serve.scheduler import CRITICAL, LOW, PRIORITIES
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


class RequestBody(BaseModel):
    """A JSON request body, validated as its schema reads: no `"5"` for 5 nor `0` for false.

    pydantic's default (lax) mode would accept both, which the published schema refuses.
    """

    model_config = ConfigDict(strict=True)


def integral(value: object) -> object:
    """`2.0` as 2: JSON Schema's integers include the numbers written with a zero fraction."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def within(bounds: sampling.Bounds) -> Any:
    """pydantic's constraints for `bounds`, which the generation runtime checks again."""
    if bounds.exclusive_minimum:
        return Field(gt=bounds.minimum, le=bounds.maximum)
    return Field(ge=bounds.minimum, le=bounds.maximum)


# Constraints go before the validator: after it, pydantic leaves them out of the JSON schema.
Positive = Annotated[int, Field(ge=1), BeforeValidator(integral)]
NewTokens = Annotated[int, within(sampling.MAX_NEW_TOKENS), BeforeValidator(integral)]
Seed = Annotated[int, within(sampling.SEED), BeforeValidator(integral)]
Temperature = Annotated[float, within(sampling.TEMPERATURE)]
TopP = Annotated[float, within(sampling.TOP_P)]


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
    """0-3 (`2.0` is the JSON integer 2) or low/normal/high/critical, exactly as the schema says.

    Other spellings (`"2"`, `"HIGH"`) are for the X-Priority header, which is text.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in PRIORITIES.values():
        return value
    raise ValueError(f"priority {value!r} is not one of 0-3 or {', '.join(PRIORITIES)}")


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


class InferOptions(RequestBody):
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
    top_k: Positive | None = 1

    def to_runtime(self) -> dict[str, Any]:
        return {"inputs": as_list(self.inputs), "top_k": self.top_k}


class ChatMessage(RequestBody):
    """One chat turn."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


StopString = Annotated[str, Field(min_length=1)]
Stop = StopString | Annotated[list[StopString], Field(max_length=sampling.MAX_STOP_STRINGS)]


class GenerationOptions(RequestBody):
    """Sampling options of text generation; their bounds are `modelmora.runtimes.sampling`'s."""

    max_new_tokens: NewTokens = sampling.DEFAULT_MAX_NEW_TOKENS
    temperature: Temperature = Field(sampling.DEFAULT_TEMPERATURE, description="0 is greedy")
    top_p: TopP = sampling.DEFAULT_TOP_P
    stop: Stop = Field(default_factory=list)
    seed: Seed | None = None

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


Prompt = Annotated[str, Field(min_length=1)]


def _prompt_or_chat(schema: dict[str, Any]) -> None:
    """Exactly one of `inputs` and `messages`, which have no default (null is not allowed)."""
    for field in ("inputs", "messages"):
        schema["properties"][field].pop("default", None)
    schema["oneOf"] = [{"required": ["inputs"]}, {"required": ["messages"]}]


class GenerationInferRequest(GenerationOptions, InferOptions):
    """`/infer` on a text-generation model: a prompt in `inputs`, or chat `messages`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_prompt_or_chat)

    inputs: Prompt | SkipJsonSchema[None] = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | SkipJsonSchema[None] = None

    @field_validator("inputs", "messages", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("leave the field out rather than sending null")
        return value

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerationInferRequest:
        if (self.inputs is None) == (self.messages is None):
            raise ValueError("send either `inputs` (a prompt) or `messages` (a chat), not both")
        return self

    def to_runtime(self) -> dict[str, Any]:
        if self.messages is not None:
            return {"messages": [m.model_dump() for m in self.messages], **self.sampling()}
        return {"prompt": self.inputs, **self.sampling()}


# The pattern is published but checked by `parse_size`, whose error is one readable line.
ImageSize = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": imageoptions.SIZE_PATTERN,
            "description": f"WIDTHxHEIGHT, each a multiple of {imageoptions.SIZE_MULTIPLE} from"
            f" {imageoptions.SIZE_MULTIPLE} to {imageoptions.MAX_SIDE}; the model's own size if"
            " left out",
        }
    ),
]
ImageCount = Annotated[int, within(imageoptions.IMAGES), BeforeValidator(integral)]
Steps = Annotated[int, within(imageoptions.STEPS), BeforeValidator(integral)]
Guidance = Annotated[float, within(imageoptions.GUIDANCE)]
ImageSeed = Annotated[int, within(imageoptions.SEED), BeforeValidator(integral)]
ImagePrompt = Annotated[str, Field(min_length=1, max_length=imageoptions.MAX_PROMPT_CHARS)]


class ImageOptions(RequestBody):
    """The options of text-to-image; their bounds are `modelmora.runtimes.imageoptions`'s."""

    size: ImageSize | None = None
    n: ImageCount = 1
    steps: Steps = imageoptions.DEFAULT_STEPS
    guidance: Guidance = Field(imageoptions.DEFAULT_GUIDANCE, description="1 or less: none")
    seed: ImageSeed | None = Field(None, description="image i is drawn from seed + i")
    negative_prompt: ImagePrompt | None = None

    @field_validator("size")
    @classmethod
    def _size_in_bounds(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                imageoptions.parse_size(value)
            except ModelmoraError as error:
                raise ValueError(str(error).removeprefix("size: ")) from None
        return value

    def image_options(self) -> dict[str, Any]:
        """The options as the runtime reads them."""
        return {
            "size": self.size,
            "n": self.n,
            "steps": self.steps,
            "guidance": self.guidance,
            "seed": self.seed,
            "negative_prompt": self.negative_prompt,
        }


class ImageInferRequest(ImageOptions, InferOptions):
    """`/infer` on a text-to-image model: the prompt in `inputs`; PNG images out."""

    inputs: ImagePrompt = Field(description="the prompt")
    stream: bool = Field(
        False,
        description="server-sent events: `progress` ({step, steps}) after each denoising step,"
        " then `result` (this route's response)",
    )

    def to_runtime(self) -> dict[str, Any]:
        return {"prompt": self.inputs, **self.image_options()}


class ImageProgress(BaseModel):
    """One `progress` event of a text-to-image stream, and a running job's `progress`."""

    step: int
    steps: int


class CustomInferRequest(InferOptions):
    """`/infer` on a plugin task: every field but the common options goes to the runtime as is."""

    model_config = ConfigDict(extra="allow")

    def to_runtime(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


REQUEST_SCHEMAS: dict[str, type[InferOptions]] = {
    "embedding": EmbeddingInferRequest,
    "text-classification": ClassificationInferRequest,
    "text-generation": GenerationInferRequest,
    "text-to-image": ImageInferRequest,
}


def request_schema(task: str) -> type[InferOptions]:
    """What `/infer` (and a job's `input`) takes for a model of `task`."""
    return REQUEST_SCHEMAS.get(task, CustomInferRequest)


class Timing(BaseModel):
    """Where the time of one request went, in milliseconds."""

    queue_ms: float
    load_ms: float
    inference_ms: float


class ResultLocation(BaseModel):
    """A result kept in the server's object storage: fetch it with a plain GET of `url`."""

    url: str = Field(description="a presigned GET URL; no API key needed, until `expires_at`")
    expires_at: datetime
    bytes: int = Field(description="the size of the result's JSON")
    sha256: str = Field(description="of the result's JSON, to check the download")


class InferResponse(BaseModel):
    """The runtime's result with the model and revision that produced it; a result whose JSON
    is over the server's `[storage] threshold` is in object storage, and `result_url` says where
    (then `result` is absent)."""

    model: str
    revision: str
    result: Any = Field(
        None,
        description="embedding: {embeddings, dimensions, prompt_tokens}; text-classification: "
        "{predictions, prompt_tokens}; text-generation: {text, prompt_tokens, completion_tokens, "
        "finish_reason}; text-to-image: {images: [{b64_json, seed} or {url, expires_at, bytes,"
        " sha256, seed}], width, height, steps}; plugin tasks: what the runtime returns",
        exclude_if=lambda value: value is None,
    )
    result_url: ResultLocation | None = Field(None, exclude_if=lambda value: value is None)
    timing: Timing


class ModelList(BaseModel):
    """One page of the model table."""

    models: list[ModelStatus]
    page: int
    limit: int
    total: int


MAX_PAGE = 1_000_000
"""The last page a list serves: it keeps a page's offset within what SQLite can count."""


def page_field() -> Any:
    return Field(1, ge=1, le=MAX_PAGE, description=f"from 1 to {MAX_PAGE}")


class ModelsQuery(BaseModel):
    """Query of `GET /models`: a page, filtered by task, state and device (prefix: `cuda`)."""

    page: int = page_field()
    limit: int = Field(100, ge=1, le=1000)
    task: str | None = None
    state: ModelState | None = None
    device: str | None = None


class Index(BaseModel):
    """`GET /`: what this server is, and where to go next."""

    name: Literal["ModelMora"] = "ModelMora"
    version: str
    links: dict[str, str] = Field(description="the API's description, its models, its health")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Ready when preloaded models are loaded and none has failed; otherwise the reasons."""

    ready: bool
    reasons: list[str]


def no_op_only(*neutral: object) -> BeforeValidator:
    """An OpenAI parameter that ModelMora does not implement: taken only at its no-op value.

    Clients that spell out OpenAI's defaults (`"presence_penalty": 0`) keep working; any other
    value is refused, rather than ignored as if it had been applied.
    """
    allowed = " or ".join(json.dumps(value) for value in neutral)

    def check(value: object) -> object:
        if value is None or any(_same(value, each) for each in neutral):
            return value
        raise ValueError(f"not supported by ModelMora; leave it out or send {allowed}")

    return BeforeValidator(check)


def no_op_schema(*neutral: object) -> WithJsonSchema:
    return WithJsonSchema({"enum": [*neutral, None], "description": "not supported: no-op only"})


def _same(value: object, neutral: object) -> bool:
    """Equal and of the same kind: `false` is not `0`, though Python says they are equal."""
    return isinstance(value, bool) == isinstance(neutral, bool) and value == neutral


Zero = Annotated[Any, no_op_only(0), no_op_schema(0)]
One = Annotated[Any, no_op_only(1), no_op_schema(1)]
No = Annotated[Any, no_op_only(False), no_op_schema(False)]
Empty = Annotated[Any, no_op_only({}), no_op_schema({})]


class OpenAIRequest(RequestBody):
    """Fields every /v1 request has; an unknown field is refused, as OpenAI does."""

    model_config = ConfigDict(extra="forbid")
    task: ClassVar[str]
    """The task of the models that the route serves."""

    model: str
    keep_alive: Duration | None = Field(None, description="ModelMora extension (Ollama semantics)")
    priority: Priority | None = Field(None, description="ModelMora extension; or X-Priority")
    user: str | None = None


class EmbeddingsRequest(OpenAIRequest):
    """`POST /v1/embeddings`; token-id inputs are not supported."""

    task: ClassVar[str] = "embedding"

    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Positive | None = None


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


class StreamOptions(RequestBody):
    include_usage: bool = False


class SamplingRequest(OpenAIRequest):
    """Sampling fields shared by completions and chat completions."""

    task: ClassVar[str] = "text-generation"

    max_tokens: NewTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: Stop | None = None
    seed: Seed | None = None
    n: Annotated[Literal[1], BeforeValidator(integral)] = Field(
        1, description="only one choice per request"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: Zero = None
    presence_penalty: Zero = None
    logit_bias: Empty = None

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
    logprobs: Zero = None
    echo: No = None
    best_of: One = None

    def runtime_request(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return {"prompt": prompt, **self.sampling()}


class TextPart(RequestBody):
    type: Literal["text"]
    text: str


class ChatCompletionMessage(RequestBody):
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
    max_completion_tokens: NewTokens | None = None
    logprobs: No = None
    top_logprobs: Zero = None

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


class ImagesRequest(ImageOptions, OpenAIRequest):
    """`POST /v1/images/generations`; `steps`, `guidance`, `seed` and `negative_prompt` are
    ModelMora extensions. `response_format` defaults to `url` when the server has object storage
    (`[storage]`), else to `b64_json`."""

    task: ClassVar[str] = "text-to-image"

    prompt: ImagePrompt
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png"] | None = None
    quality: Annotated[Any, no_op_only("auto", "standard"), no_op_schema("auto", "standard")] = None

    def runtime_request(self) -> dict[str, Any]:
        return {"prompt": self.prompt, **self.image_options()}


class GeneratedImage(BaseModel):
    b64_json: str | None = Field(None, exclude_if=lambda value: value is None)
    url: str | None = Field(None, exclude_if=lambda value: value is None)


class ImagesResponse(BaseModel):
    created: int
    data: list[GeneratedImage]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "modelmora"


class ModelCards(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class JobRequest(RequestBody):
    """`POST /jobs`: `input` is what `POST /infer/{model}` takes (a text or list: its `inputs`)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: JobInput
    priority: Priority | None = None
    timeout: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="seconds the job may take, counted from when the runner takes it for its"
        " model (it may still wait in the model's queue then)",
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
    progress: ImageProgress | None = Field(
        None, description="a running text-to-image job's last finished step, of how many"
    )

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
    page: int = page_field()
    limit: int = Field(50, ge=1, le=1000)


# --- the bodies as one server documents them ----------------------------------------------------

TASK_INPUTS: dict[str, Any] = {
    "embedding": Texts,
    "text-classification": Texts,
    "text-generation": Prompt,
    "text-to-image": ImagePrompt,
}
"""What `inputs` takes per built-in task: alone, it is a whole job `input`."""

Variants = dict[type[BaseModel], tuple[type[BaseModel], ...]]


def served_bodies(models: Mapping[str, str]) -> Variants:
    """The request bodies that name a model, as the document of a server of `models` shows them.

    `models` maps the served names to their tasks. In each body `model` is one of the served models
    of the task its route serves, and a job's `input` is the body of its model's task (or that
    body's `inputs` alone): what the routes accept, since they answer 404 for another name and 422
    for a model of another task or an input that its task does not take.
    """
    variants: Variants = {JobRequest: tuple(_job_request(n, task) for n, task in models.items())}
    for body in (EmbeddingsRequest, CompletionRequest, ChatCompletionRequest, ImagesRequest):
        names = [name for name, task in models.items() if task == body.task]
        variants[body] = (_naming(body, names),) if names else ()
    return {body: bodies or (body,) for body, bodies in variants.items()}


def _one_of(names: list[str]) -> Any:
    return cast(Any, Literal)[tuple(names)]


def _naming(body: type[OpenAIRequest], names: list[str]) -> type[BaseModel]:
    description = f"one of the served {body.task} models"
    model = (_one_of(names), Field(description=description))
    return create_model(body.__name__, __base__=body, __doc__=body.__doc__, model=model)


def _job_request(name: str, task: str) -> type[BaseModel]:
    body = request_schema(task)
    job_input: Any = TASK_INPUTS[task] | body if task in TASK_INPUTS else JobInput
    return create_model(
        "JobRequest_" + re.sub(r"\W", "_", name),  # a dot would read as a module path
        __base__=JobRequest,
        __doc__=f"`POST /jobs` for the {task} model `{name}`",
        model=(_one_of([name]), ...),
        input=(job_input, ...),
    )


# --- registering and removing models at run time (POST /models, DELETE /models/{name}) ---------


class RegisterRequest(BaseModel):
    """A model to add to the project and serve, as `modelmora add` would."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="The model's name, e.g. minilm."
    )
    source: str = Field(min_length=1, description="hf://ORG/REPO[@REV], https://..., a folder")
    task: str | None = Field(None, description="Its task; guessed from config.json if left out.")
    version: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="A new version of a model with versions; it gets no traffic until routed.",
    )
    revision: str | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    allow_pickle: bool = False

    @property
    def reference(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


class Registration(BaseModel):
    """`POST /models`: 201 once served, or 202 while it locks and downloads (see `Location`)."""

    id: str
    name: str = Field(description="What it is served as: minilm, or minilm@v3.")
    state: Literal["running", "done", "failed"]
    error: str | None = Field(description="Why it failed: the source's answer, the check.")
    created_at: float
    finished_at: float | None


class Removed(BaseModel):
    """`DELETE /models/{name}`: the served names that are gone, and the route left."""

    removed: list[str]
    route: dict[str, int] | None = Field(description="The model's weights now, if versions remain.")

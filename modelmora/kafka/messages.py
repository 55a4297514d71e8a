"""The JSON records on the topics, declared once: their schemas are in docs/kafka.md.

request topic      RequestMessage   what a pipeline asks (the model, its input, priority, ...)
result topic       ResultMessage    the answer, with the request's id and key
dead-letter topic  DeadLetter       why a request was given up, and its original bytes
event topics       LifecycleEvent, MetricsEvent, AuditEvent
"""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from modelmora.errors import InvalidInputError
from modelmora.serve.api.http import RequestValidationError
from modelmora.serve.api.schemas import Priority, ResultLocation, Timing


class MalformedMessage(InvalidInputError):
    """A request record that is not JSON or not a request: it goes to the dead-letter topic."""

    code = "malformed_message"


class RequestMessage(BaseModel):
    """A request record's value (its Kafka key partitions it: one key, one partition, in order)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256, description="`name` or `name@version`")
    input: str | list[str] | dict[str, Any] = Field(
        description="the model's `/infer` body, or just its `inputs` (a text or a list of texts)"
    )
    id: str | None = Field(
        None, max_length=256, description="echoed in the result; default TOPIC:PARTITION:OFFSET"
    )
    key: str | None = Field(
        None, max_length=1024, description="echoed in the result and routes versions; default "
        "the record's key"
    )  # fmt: skip
    priority: Priority | None = None
    deadline: AwareDatetime | None = Field(
        None, description="when the answer is no use any more: RFC 3339 or Unix seconds"
    )
    timeout: float | None = Field(
        None, gt=0, le=86400, description="seconds from when the server takes the message"
    )


class Source(BaseModel):
    """Where a request record lay."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None = Field(None, description="the record's, milliseconds since the epoch")


class ResultMessage(BaseModel):
    """A result record's value; its Kafka key is the request record's."""

    id: str
    key: str | None
    model: str = Field(description="the model that answered (a version's own name)")
    version: str | None
    revision: str
    result: Any = Field(description="as `/infer` answers it; null when it is at `result_url`")
    result_url: ResultLocation | None = None
    timing: Timing
    attempts: int = Field(description="tries it took in this server (redeliveries start again)")
    source: Source
    server: str = Field(description="HOST:PORT of the HTTP API of the server that answered")
    answered_at: float = Field(description="Unix seconds")


class DeadLetter(BaseModel):
    """A dead-letter record's value; its key and headers are the request record's."""

    id: str | None
    key: str | None
    code: str = Field(description="`malformed_message`, or the error code of the last failure")
    reason: str
    attempts: int
    source: Source
    value_base64: str = Field(description="the request record's value, byte for byte")
    failed_at: float = Field(description="Unix seconds")


LifecycleType = Literal["model.loaded", "model.unloaded", "model.crashed", "model.failed"]


class LifecycleEvent(BaseModel):
    type: LifecycleType
    model: str
    server: str = Field(description="HOST:PORT of the server's HTTP API")
    at: float = Field(description="Unix seconds")
    reason: str = Field(description="what the supervisor did: load, unload, evict, crash, ...")
    seconds: float = Field(description="how long a load took; 0 for the others")


class ModelMetrics(BaseModel):
    model: str
    state: str
    queued: int
    in_flight: int
    submitted: int
    completed: int
    failed: int
    rejected: int
    expired: int
    batches: int
    mean_batch_size: float
    queue_seconds: float = Field(description="summed over completed requests since the start")
    compute_seconds: float = Field(description="summed over batches since the start")


class ConsumerMetrics(BaseModel):
    messages_in: int
    results_out: int
    dead_lettered: int
    retries: int
    lag: int = Field(description="records behind the end of the assigned partitions")


class MetricsEvent(BaseModel):
    type: Literal["metrics"] = "metrics"
    server: str
    at: float
    models: list[ModelMetrics]
    kafka: ConsumerMetrics


class AuditEvent(BaseModel):
    type: Literal["audit"] = "audit"
    server: str
    at: float
    actor: str
    action: str
    target: str
    before: Any
    after: Any


def parse_request(value: bytes | None) -> RequestMessage:
    """A request record's value; MalformedMessage says what is wrong with it."""
    if value is None:
        raise MalformedMessage("the record has no value; send a JSON request")
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedMessage(f"the value is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise MalformedMessage('the value is not a JSON object; send {"model": ..., "input": ...}')
    try:
        return RequestMessage.model_validate(data)
    except ValidationError as error:
        raise MalformedMessage(str(RequestValidationError.from_pydantic(error))) from None


def encode(record: BaseModel) -> bytes:
    return record.model_dump_json().encode()


def original_bytes(value: bytes | None) -> str:
    return base64.b64encode(value or b"").decode()


def now() -> float:
    return time.time()


def deadline_seconds(deadline: datetime) -> float:
    """Seconds left until an absolute deadline (negative once it has passed)."""
    return deadline.timestamp() - time.time()


DOCUMENTED = (RequestMessage, ResultMessage, DeadLetter, LifecycleEvent, MetricsEvent, AuditEvent)
"""The records whose JSON schemas docs/kafka.md shows (tests/test_kafka.py keeps them the same)."""

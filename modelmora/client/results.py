"""What the client's calls return: plain frozen records, each saying which version answered."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    model: str
    version: str | None
    """The version that answered (`X-ModelMora-Model-Version`); None without versions."""
    tokens: int


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


class Predictions(list[Prediction]):
    """A text's labels, best first, with the model and version that answered."""

    def __init__(
        self, predictions: Iterable[Prediction], model: str, version: str | None, tokens: int
    ) -> None:
        super().__init__(predictions)
        self.model, self.version, self.tokens = model, version, tokens


@dataclass(frozen=True)
class Generation:
    text: str
    model: str
    version: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


@dataclass(frozen=True)
class Inference:
    """Any task's answer as the server sent it (`POST /infer/{name}`)."""

    model: str
    revision: str
    version: str | None
    result: Any
    body: Mapping[str, Any]
    """The whole JSON reply: model, revision, result, timing."""


@dataclass(frozen=True)
class Job:
    id: str
    model: str
    state: JobState
    priority: int
    result: Any
    error: Mapping[str, Any] | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    is_replayed: bool = False
    """True when the server had this submission already (same `Idempotency-Key`)."""

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED

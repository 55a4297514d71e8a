"""The sampling options of text generation: their names, defaults and bounds, defined once.

The API's schemas (`modelmora.serve.api.schemas`) publish and enforce these bounds; the generation
runtime reads a request with `SamplingParams.from_request`, which enforces the same ones: what the
API accepts the runtime runs, and a request that reaches a worker another way is held to the same
rules. This module imports neither torch nor pydantic, so the server process may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from modelmora.errors import InvalidInputError

Number = TypeVar("Number", int, float)


@dataclass(frozen=True)
class Bounds:
    """A range of numbers, inclusive unless `exclusive_minimum` (top_p must be above 0)."""

    minimum: float
    maximum: float
    exclusive_minimum: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.minimum if self.exclusive_minimum else value >= self.minimum
        return above and value <= self.maximum

    def __str__(self) -> str:
        low = "above" if self.exclusive_minimum else "at least"
        return f"{low} {self.minimum} and at most {self.maximum}"


MAX_NEW_TOKENS = Bounds(1, 32768)
DEFAULT_MAX_NEW_TOKENS = 64
TEMPERATURE = Bounds(0.0, 2.0)
"""OpenAI's range; 0 is greedy decoding."""
DEFAULT_TEMPERATURE = 1.0
GREEDY_BELOW = 1e-5
"""Lower temperatures decode greedily too: sampling at them differs from greedy decoding only in
near-ties, and float32 logits divided by one that rounds to 0 are infinite (a 500, not a token)."""
TOP_P = Bounds(0.0, 1.0, exclusive_minimum=True)
DEFAULT_TOP_P = 1.0
SEED = Bounds(-(2**63), 2**64 - 1)
"""What `torch.manual_seed` takes."""
MAX_STOP_STRINGS = 16
"""Stop strings are non-empty, and at most this many."""


@dataclass(frozen=True)
class SamplingParams:
    """The sampling options of one generation request, checked against the bounds above."""

    max_new_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @classmethod
    def from_request(cls, request: Mapping[str, Any]) -> SamplingParams:
        """The options of a runtime request; a missing or null option takes its default."""
        max_new_tokens = integer_option(request, "max_new_tokens", MAX_NEW_TOKENS)
        return cls(
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens,
            temperature=number_option(request, "temperature", TEMPERATURE, DEFAULT_TEMPERATURE),
            top_p=number_option(request, "top_p", TOP_P, DEFAULT_TOP_P),
            stop=stop_strings(request.get("stop")),
            seed=integer_option(request, "seed", SEED),
        )


def integer_option(request: Mapping[str, Any], name: str, bounds: Bounds) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name}: expected an integer, got {value!r}")
    return _within(name, value, bounds)


def number_option(request: Mapping[str, Any], name: str, bounds: Bounds, default: float) -> float:
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{name}: expected a number, got {value!r}")
    return float(_within(name, value, bounds))


def _within(name: str, value: Number, bounds: Bounds) -> Number:
    if value not in bounds:  # NaN is in no range
        raise InvalidInputError(f"{name}: must be {bounds}, got {value}")
    return value


def stop_strings(value: Any) -> tuple[str, ...]:
    """`stop` as a tuple: one string or a list, every string non-empty, at most MAX_STOP_STRINGS."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InvalidInputError("stop: expected a non-empty string or a list of them")
    if len(value) > MAX_STOP_STRINGS:
        raise InvalidInputError(f"stop: at most {MAX_STOP_STRINGS} stop strings")
    return tuple(value)

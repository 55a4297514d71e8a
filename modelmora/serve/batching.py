"""How a batch is planned: which queued inputs go together, in what order. Pure functions.

The scheduler owns the queues, the clock and the futures; it asks this module whether a batch
should leave now (`is_batch_ready`), which requests and how many of their inputs it takes
(`plan_batch`), and in what order the inputs travel (`sending_order`, `unsort`). Nothing here
awaits or reads the time, so each rule is tested with plain values.

A batch takes queued inputs highest priority first, up to `max_batch_size` inputs and
`max_batch_tokens` padded tokens (longest estimate x count; tokens are estimated as characters / 4,
the worker tokenizes for real). Only requests with equal options share a batch.

A batch leaves when it is full, or when no more company is expected, or once the wait for company
reaches `max_batch_delay_ms`. Company is expected from the clients just answered: most clients
send their next request as soon as they have the last answer, so after a batch of n requests the
next batch waits for n requests to come in (`returning`), counting the delay from when the worker
freed up. Without that, under load, the next batch leaves with the few requests that came in while
the last one computed, and the batches alternate between large and small. Once every client
answered is back, the batch leaves at once: a lone client never waits for company.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from modelmora.serve.config import BatchSettings

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Batch:
    """What the dispatch sends to the worker as one request."""

    model: str
    inputs: tuple[str, ...]
    options: Mapping[str, Any]
    priority: int
    """The highest priority in the batch."""
    deadline: float
    """time.monotonic() after which no request of the batch waits for it any more."""


@dataclass(frozen=True)
class BatchOutput:
    outputs: Sequence[Any]
    """One result per input of the batch, in the batch's order."""
    timing: Mapping[str, float] = field(default_factory=dict)
    """What the dispatch measured (load_ms, inference_ms...); summed into every request's timing."""


class Queued(Protocol):
    """What planning reads of a queued request."""

    @property
    def group(self) -> str: ...
    @property
    def exclusive(self) -> bool:
        """It holds the model alone (a turn): never batched with others."""

    @property
    def tokens(self) -> Sequence[int]: ...
    @property
    def taken(self) -> int:
        """Inputs already handed to batches; the rest are still queued."""


class QueueLoad(Protocol):
    """What planning reads of a model's queue."""

    @property
    def settings(self) -> BatchSettings: ...
    @property
    def queued_inputs(self) -> int: ...
    @property
    def queued_tokens(self) -> int: ...
    @property
    def last_batch_size(self) -> int | None: ...
    @property
    def returning(self) -> int:
        """Requests answered since the last batch left, and not yet followed by a new one."""

    @property
    def freed_at(self) -> float:
        """When a batch last finished (the worker freed up); 0.0 before the first."""

    def oldest_enqueued_at(self) -> float: ...


QueuedT = TypeVar("QueuedT", bound=Queued)


def estimate_tokens(text: str) -> int:
    """About what a subword tokenizer makes of English text, cheap enough for the server process."""
    return len(text) // CHARS_PER_TOKEN + 1


def options_group(options: Mapping[str, Any]) -> str:
    """Requests share a batch only when their options are equal."""
    if not options:
        return ""
    # repr, not json.dumps: this runs for every request, and json took 5% of the server's CPU.
    return repr(sorted(options.items()))


def ready_at(queue: QueueLoad) -> float:
    """When the batch leaves even if it is not full.

    While clients just answered are still to come back, it waits for them, at most the delay
    counted from when the worker freed up (or from the oldest request, if younger). Once all are
    back it leaves at once; before the first batch, it waits the delay for company.
    """
    delay = queue.settings.max_batch_delay_ms / 1000
    oldest = queue.oldest_enqueued_at()
    if queue.returning > 0:
        return max(oldest, queue.freed_at) + delay
    if queue.last_batch_size is not None:
        return oldest
    return oldest + delay


def is_batch_ready(queue: QueueLoad, head: Queued, now: float) -> bool:
    """Full, or the oldest request has waited long enough, or the head will not batch anyway."""
    settings = queue.settings
    return (
        head.exclusive
        or queue.queued_inputs >= settings.max_batch_size
        or queue.queued_tokens >= settings.max_batch_tokens
        or now >= ready_at(queue)
    )


def plan_batch(
    in_priority_order: Iterable[QueuedT], head: QueuedT, settings: BatchSettings
) -> list[tuple[QueuedT, int]]:
    """Which requests, and how many of their inputs, the next batch takes."""
    if head.exclusive:
        return [(head, len(head.tokens) - head.taken)]
    plan: list[tuple[QueuedT, int]] = []
    size, longest = 0, 0
    for request in in_priority_order:
        if request.exclusive or request.group != head.group:
            continue  # it heads a batch of its own later
        count, longest = inputs_that_fit(request, size, longest, settings)
        if count == 0:
            break
        plan.append((request, count))
        size += count
        if size >= settings.max_batch_size:
            break
    return plan


def inputs_that_fit(
    request: Queued, size: int, longest: int, settings: BatchSettings
) -> tuple[int, int]:
    """How many of the request's next inputs fit the batch so far, and the longest then."""
    count = 0
    for tokens in request.tokens[request.taken :]:
        if size + count >= settings.max_batch_size:
            break
        padded = max(longest, tokens) * (size + count + 1)
        if padded > settings.max_batch_tokens and size + count > 0:
            break
        longest = max(longest, tokens)
        count += 1
    return count, longest


def sending_order(tokens: Sequence[int]) -> list[int]:
    """Positions of the batch's inputs as sent longest first (`sort_by_length`); ties keep order."""
    return sorted(range(len(tokens)), key=lambda i: -tokens[i])


def unsort(outputs: Sequence[Any], order: list[int]) -> list[Any]:
    """Results in queued order again, from results in the order the batch was sent."""
    restored: list[Any] = [None] * len(order)
    for position, index in enumerate(order):
        restored[index] = outputs[position]
    return restored

"""Per-model priority queues, deadlines, backpressure and dynamic batching: pure asyncio, no torch.

    submit() ──► ModelQueue: one FIFO per priority ──pump──► Batch ──dispatch()──► BatchOutput
                 bounded by max_queue inputs (429)            at most max_in_flight per model

Priorities are LOW 0, NORMAL 1 (the default), HIGH 2, CRITICAL 3: the higher number goes first,
FIFO within a level. Priority is strict: a level waits while a higher one has work; its deadline
bounds that wait.

Every request has a deadline. A timer per request (`loop.call_later`) fails it with
DeadlineExceededError at that moment: a queued request is then never computed, and a computing
one gets its answer (504) now while the batch finishes for the others. A request whose client has
gone (its awaiting task was cancelled, or its `is_disconnected` says so just before dispatch) is
dropped before it is computed.

Batching: what goes in a batch and when it leaves is planned in `modelmora.serve.batching`
(pure functions); here the queues, timers and tasks carry the plan out. A request counts by its
inputs and may be split across batches; its results are put back in order. While `max_in_flight`
batches compute, the next one fills.

Background requests (jobs) queue with the others, by priority, but never count against
`max_queue` and are never refused: the job runner bounds them (a few per model), so a backlog of
jobs can slow live requests but never make them 429. `on_start` is called, synchronously, when a
request's computation starts (its first batch is dispatched, or its turn is granted): until then
its caller may still withdraw it by cancelling its task.

`turn()` is the unbatched path (streaming generation): a request that queues like the others, then
holds one in-flight slot of its model while the caller talks to the worker itself.

Batches run as tasks of one TaskGroup: a batch task that fails is logged and counted, and
`close()` gives them the drain time, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelmora.errors import (
    ClientDisconnectedError,
    DeadlineExceededError,
    InvalidInputError,
    OverloadedError,
    ServeError,
    UnavailableError,
)
from modelmora.serve.batching import (
    Batch,
    BatchOutput,
    estimate_tokens,
    is_batch_ready,
    options_group,
    plan_batch,
    ready_at,
    sending_order,
    unsort,
)
from modelmora.serve.config import BatchSettings
from modelmora.serve.tasks import TaskGroup

logger = logging.getLogger("modelmora.serve.scheduler")

LOW, NORMAL, HIGH, CRITICAL = 0, 1, 2, 3
PRIORITIES = {"low": LOW, "normal": NORMAL, "high": HIGH, "critical": CRITICAL}
MAX_RETRY_AFTER = 60


def parse_priority(value: int | str | None) -> int:
    """A priority from a request field or the X-Priority header: 0-3 or low/normal/high/critical."""
    if value is None:
        return NORMAL
    text = str(value).strip().lower()
    priority = PRIORITIES.get(text, int(text) if text.isdigit() else -1)
    if priority not in PRIORITIES.values():
        raise InvalidInputError(
            f"priority {value!r} is not one of 0-3 or {', '.join(PRIORITIES)}",
            hint="3 (critical) goes first, 1 (normal) is the default",
        )
    return priority


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitResult:
    outputs: list[Any]
    """One result per input, in the order submitted."""
    queue_ms: float
    """From submit to the dispatch of the request's first batch."""
    compute_ms: float
    """From that dispatch to the last result."""
    batch_sizes: tuple[int, ...]
    """The size of each batch the request's inputs went in."""
    timing: Mapping[str, float]


@dataclass(frozen=True)
class Turn:
    """A granted `turn()`: the caller may now use the model's worker."""

    queue_ms: float


@dataclass
class ModelStats:
    submitted: int = 0
    """Requests accepted into the queue."""
    inputs: int = 0
    completed: int = 0
    failed: int = 0
    """Requests whose batch raised."""
    rejected: int = 0
    """Requests refused with 429 because the queue was full (never a background one)."""
    expired_queued: int = 0
    expired_computing: int = 0
    dropped: int = 0
    """Requests whose client left before they were computed."""
    batches: int = 0
    batched_inputs: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    queue_seconds: float = 0.0
    """Summed over completed requests."""
    compute_seconds: float = 0.0
    """Summed over batches."""

    def snapshot(self) -> ModelStats:
        return dataclasses.replace(self, batch_sizes=dict(self.batch_sizes))


Dispatch = Callable[[Batch], Awaitable[BatchOutput]]
IsDisconnected = Callable[[], bool]
"""Whether the client has gone, known now: called just before its batch is dispatched."""
OnStart = Callable[[], None]


# --- queued requests ----------------------------------------------------------------------------


@dataclass(eq=False)
class Request:
    """One submitted request while it lives in the scheduler; `future` is what submit awaits."""

    model: str
    inputs: Sequence[str]
    tokens: list[int]
    options: Mapping[str, Any]
    group: str
    priority: int
    deadline: float
    is_disconnected: IsDisconnected | None
    future: asyncio.Future[Any]
    enqueued_at: float
    exclusive: bool = False
    background: bool = False
    """A job's request: it never counts against max_queue and is never refused."""
    on_start: OnStart | None = None
    """Called once, synchronously, when its first batch is dispatched or its turn granted."""
    taken: int = 0
    """Inputs handed to batches so far."""
    computing: int = 0
    """Batches holding some of its inputs now."""
    outputs: list[Any] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    dispatched_at: float | None = None
    timer: asyncio.TimerHandle | None = None
    in_queue: bool = True
    is_dropped: bool = False

    @property
    def remaining(self) -> int:
        return len(self.inputs) - self.taken

    @property
    def is_done(self) -> bool:
        return self.future.done()


@dataclass(frozen=True)
class Chunk:
    """`count` inputs of a request, from `start`, in one batch."""

    request: Request
    start: int
    count: int

    @property
    def inputs(self) -> Sequence[str]:
        return self.request.inputs[self.start : self.start + self.count]

    @property
    def tokens(self) -> list[int]:
        return self.request.tokens[self.start : self.start + self.count]


class ModelQueue:
    """One model's queued requests, one FIFO per priority, and the counters batching reads."""

    def __init__(self, name: str, settings: BatchSettings) -> None:
        self.name = name
        self.settings = settings
        self.levels: dict[int, deque[Request]] = {p: deque() for p in sorted(PRIORITIES.values())}
        self.highest_first = [self.levels[p] for p in sorted(self.levels, reverse=True)]
        self.queued_inputs = 0
        self.background_inputs = 0
        """The part of queued_inputs that belongs to background requests."""
        self.queued_tokens = 0
        self.in_flight = 0
        self.delay_timer: asyncio.TimerHandle | None = None
        self.inputs_per_second: float | None = None
        self.last_batch_size: int | None = None
        self.returning = 0
        """Requests answered since the last batch left: their clients may be about to send again."""
        self.freed_at = 0.0
        self.stats = ModelStats()

    def add(self, request: Request) -> None:
        if not request.background:
            self.returning = max(0, self.returning - 1)
        self.levels[request.priority].append(request)
        self.queued_inputs += request.remaining
        self.queued_tokens += sum(request.tokens)
        if request.background:
            self.background_inputs += request.remaining

    def remove(self, request: Request) -> None:
        """Take a request out with whatever it has not had computed; safe to call twice."""
        if not request.in_queue:
            return
        request.in_queue = False
        self.levels[request.priority].remove(request)
        self.queued_inputs -= request.remaining
        self.queued_tokens -= sum(request.tokens[request.taken :])
        if request.background:
            self.background_inputs -= request.remaining

    def take(self, request: Request, count: int) -> Chunk:
        chunk = Chunk(request, request.taken, count)
        self.queued_inputs -= count
        self.queued_tokens -= sum(chunk.tokens)
        if request.background:
            self.background_inputs -= count
        request.taken += count
        request.computing += 1
        if request.remaining == 0:
            request.in_queue = False
            self.levels[request.priority].remove(request)  # the head of its level: cheap
        return chunk

    def in_priority_order(self) -> Iterator[Request]:
        for level in self.highest_first:
            yield from (r for r in level if not r.is_done)

    def head(self) -> Request | None:
        """The request the next batch starts with: the oldest of the highest priority."""
        for level in self.highest_first:
            for request in level:
                if not request.is_done:  # a cancelled one leaves when its caller wakes up
                    return request
        return None

    def oldest_enqueued_at(self) -> float:
        return min(level[0].enqueued_at for level in self.levels.values() if level)

    def is_full_for(self, count: int) -> bool:
        """Whether a live request of `count` inputs finds no room; background inputs don't count."""
        live = self.queued_inputs - self.background_inputs
        return live > 0 and live + count > self.settings.max_queue

    def depth(self) -> dict[int, int]:
        return {priority: len(level) for priority, level in self.levels.items()}

    def retry_after(self) -> int:
        """Seconds until the queue has room, from the recent rate: what Retry-After says."""
        if not self.inputs_per_second:
            return 1
        return max(1, min(MAX_RETRY_AFTER, math.ceil(self.queued_inputs / self.inputs_per_second)))

    def note_rate(self, inputs: int, seconds: float) -> None:
        rate = inputs / max(seconds, 1e-6)
        previous = self.inputs_per_second
        self.inputs_per_second = rate if previous is None else 0.8 * previous + 0.2 * rate


# --- the scheduler ------------------------------------------------------------------------------


class Scheduler:
    """Every model's queue; `dispatch` runs one batch (the supervisor's call to a worker)."""

    def __init__(self, dispatch: Dispatch, settings_for: Callable[[str], BatchSettings]) -> None:
        self.dispatch = dispatch
        self.settings_for = settings_for
        self.queues: dict[str, ModelQueue] = {}
        self.tasks = TaskGroup("scheduler", logger)
        """The batches under way, one task each."""
        self.is_closed = False

    # queries

    def settings(self, model: str) -> BatchSettings:
        return self.queue(model).settings

    def depth(self, model: str) -> dict[int, int]:
        """Queued requests per priority."""
        return self.queue(model).depth()

    def stats(self, model: str) -> ModelStats:
        return self.queue(model).stats.snapshot()

    # requests

    async def submit(
        self,
        model: str,
        inputs: Sequence[str],
        options: Mapping[str, Any] | None = None,
        *,
        priority: int = NORMAL,
        deadline: float = math.inf,
        is_disconnected: IsDisconnected | None = None,
        background: bool = False,
        on_start: OnStart | None = None,
    ) -> SubmitResult:
        """Queue the inputs, wait for their batches, return one result per input in order.

        `deadline` is a time.monotonic() value. Raises OverloadedError (queue full; never for a
        `background` request), DeadlineExceededError, ClientDisconnectedError, UnavailableError
        (closed) or whatever the dispatch raised for the request's batch.
        """
        if not inputs:
            raise InvalidInputError("a request needs at least one input", hint="send inputs")
        options = options or {}
        tokens = [estimate_tokens(text) for text in inputs]
        request = self.enqueue(
            model,
            inputs,
            tokens,
            options,
            priority,
            deadline,
            is_disconnected,
            background=background,
            on_start=on_start,
        )
        result: SubmitResult = await self.wait_for(request)
        return result

    @contextlib.asynccontextmanager
    async def turn(
        self,
        model: str,
        *,
        priority: int = NORMAL,
        deadline: float = math.inf,
        is_disconnected: IsDisconnected | None = None,
        background: bool = False,
        on_start: OnStart | None = None,
    ) -> AsyncIterator[Turn]:
        """Wait in the queue like one input, then hold one in-flight slot until the block ends."""
        request = self.enqueue(
            model,
            ("",),
            [0],
            {},
            priority,
            deadline,
            is_disconnected,
            exclusive=True,
            background=background,
            on_start=on_start,
        )
        queue = self.queue(model)
        granted: Turn = await self.wait_for(request)
        try:
            yield granted
        finally:
            self.release(queue)

    async def close(self, drain_timeout: float | None = None) -> None:
        """Refuse new requests, fail queued ones (503), let batches in flight finish or cancel.

        Batches get `drain_timeout` seconds (None: as long as they take), then are cancelled.
        """
        self.is_closed = True
        for queue in self.queues.values():
            self.cancel_delay_timer(queue)
            for request in list(queue.in_priority_order()):
                self.fail(queue, request, shutting_down())
        await self.tasks.close(math.inf if drain_timeout is None else drain_timeout)

    # queueing

    def queue(self, model: str) -> ModelQueue:
        queue = self.queues.get(model)
        if queue is None:
            queue = self.queues[model] = ModelQueue(model, self.settings_for(model))
        return queue

    def enqueue(
        self,
        model: str,
        inputs: Sequence[str],
        tokens: list[int],
        options: Mapping[str, Any],
        priority: int,
        deadline: float,
        is_disconnected: IsDisconnected | None,
        *,
        exclusive: bool = False,
        background: bool = False,
        on_start: OnStart | None = None,
    ) -> Request:
        if self.is_closed:
            raise shutting_down()
        if priority not in PRIORITIES.values():
            raise InvalidInputError(f"priority {priority} is not one of 0-3", hint="3 goes first")
        queue = self.queue(model)
        if deadline <= time.monotonic():
            queue.stats.expired_queued += 1
            raise past_deadline(model, "before it was queued")
        if not background:
            self.refuse_if_full(queue, len(inputs))
        loop = asyncio.get_running_loop()
        request = Request(
            model=model,
            inputs=inputs,
            tokens=tokens,
            options=options,
            group=options_group(options),
            priority=priority,
            deadline=deadline,
            is_disconnected=is_disconnected,
            future=loop.create_future(),
            enqueued_at=loop.time(),
            exclusive=exclusive,
            background=background,
            on_start=on_start,
            outputs=[None] * len(inputs),
        )
        queue.add(request)
        queue.stats.submitted += 1
        queue.stats.inputs += len(inputs)
        self.start_deadline_timer(queue, request)
        self.pump(queue)
        return request

    def refuse_if_full(self, queue: ModelQueue, count: int) -> None:
        if queue.is_full_for(count):
            queue.stats.rejected += 1
            retry_after = queue.retry_after()
            live = queue.queued_inputs - queue.background_inputs
            raise OverloadedError(
                f"model '{queue.name}' has a full queue (inputs queued: {live},"
                f" at most {queue.settings.max_queue})",
                hint=f"retry after {retry_after} s, or raise max_queue for the model",
                retry_after=retry_after,
            )

    async def wait_for(self, request: Request) -> Any:
        """The request's answer; a cancelled caller takes its request out of the queue."""
        try:
            return await request.future
        except asyncio.CancelledError:
            self.note_abandoned(request)
            raise

    def note_abandoned(self, request: Request) -> None:
        """The caller is gone: drop what is queued, and give back a turn granted meanwhile."""
        queue = self.queues[request.model]
        if request.exclusive and request.future.done() and not request.future.cancelled():
            self.release(queue)
        else:
            self.drop(queue, request)

    def drop(self, queue: ModelQueue, request: Request) -> None:
        """The client left: what it asked for is not computed (what already is goes to waste)."""
        if request.dispatched_at is None and not request.is_dropped:
            queue.stats.dropped += 1
        request.is_dropped = True
        self.fail(
            queue, request, ClientDisconnectedError(f"the client of a '{queue.name}' request left")
        )

    def start_deadline_timer(self, queue: ModelQueue, request: Request) -> None:
        if math.isinf(request.deadline):
            return
        delay = max(0.0, request.deadline - time.monotonic())
        loop = asyncio.get_running_loop()
        request.timer = loop.call_later(delay, self.expire, queue, request)

    def expire(self, queue: ModelQueue, request: Request) -> None:
        if request.is_done:
            return
        if request.taken == 0:
            queue.stats.expired_queued += 1
            self.fail(queue, request, past_deadline(queue.name, "in the queue"))
        else:
            queue.stats.expired_computing += 1
            self.fail(queue, request, past_deadline(queue.name, "while computing"))

    # batching

    def pump(self, queue: ModelQueue) -> None:
        """Start batches while a slot is free and one is ready; else wake up when it will be."""
        loop = asyncio.get_running_loop()
        while queue.in_flight < queue.settings.max_in_flight:
            head = queue.head()
            if head is None:
                return
            if not is_batch_ready(queue, head, loop.time()):
                self.arm_delay_timer(queue)
                return
            plan = plan_batch(queue.in_priority_order(), head, queue.settings)
            chunks = [queue.take(request, count) for request, count in plan]
            queue.in_flight += 1
            queue.returning = 0
            self.tasks.start(self.run_batch(queue, chunks), queue.name)

    def arm_delay_timer(self, queue: ModelQueue) -> None:
        if queue.delay_timer is None:
            when = ready_at(queue)
            queue.delay_timer = asyncio.get_running_loop().call_at(when, self.on_delay, queue)

    def on_delay(self, queue: ModelQueue) -> None:
        queue.delay_timer = None
        self.pump(queue)

    def cancel_delay_timer(self, queue: ModelQueue) -> None:
        if queue.delay_timer is not None:
            queue.delay_timer.cancel()
            queue.delay_timer = None

    async def run_batch(self, queue: ModelQueue, chunks: list[Chunk]) -> None:
        granted = False
        try:
            chunks = self.without_disconnected(queue, chunks)
            if chunks and chunks[0].request.exclusive:
                granted = self.grant_turn(queue, chunks[0].request)  # released by its holder
            elif chunks:
                outputs, timing = await self.compute(queue, chunks)
                # Answered before the next batch is planned, which then waits for their clients.
                # (Sending the next batch first was measured 1-2% slower: on a machine whose
                # cores the worker uses, answering during its compute slows it as much.)
                queue.returning += sum(finishes_with(chunk) for chunk in chunks)
                self.deliver(queue, chunks, outputs, timing)
        except BaseException as error:
            for chunk in chunks:
                self.fail(queue, chunk.request, as_request_error(error), counts_as_failed=True)
            if not isinstance(error, Exception):
                raise
        finally:
            if not granted:
                self.release(queue)

    def without_disconnected(self, queue: ModelQueue, chunks: list[Chunk]) -> list[Chunk]:
        """The chunks still wanted. The checks do not await: nothing runs between them and the
        dispatch, so a batch leaves as soon as the worker is free."""
        for chunk in chunks:
            request = chunk.request
            is_disconnected = request.is_disconnected
            if is_disconnected is not None and not request.is_done and is_disconnected():
                self.drop(queue, request)
        return [chunk for chunk in chunks if not chunk.request.is_done]

    async def compute(
        self, queue: ModelQueue, chunks: list[Chunk]
    ) -> tuple[Sequence[Any], Mapping[str, float]]:
        """Run the chunks as one batch: one result per input in queued order, and the timing."""
        inputs = [text for chunk in chunks for text in chunk.inputs]
        order = None
        if queue.settings.sort_by_length:
            order = sending_order([count for chunk in chunks for count in chunk.tokens])
        batch = Batch(
            model=queue.name,
            inputs=tuple(inputs) if order is None else tuple(inputs[i] for i in order),
            options=chunks[0].request.options,
            priority=max(chunk.request.priority for chunk in chunks),
            deadline=max(chunk.request.deadline for chunk in chunks),
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        for chunk in chunks:
            if chunk.request.dispatched_at is None:
                self.note_started(chunk.request, started)
        output = await self.dispatch(batch)
        if len(output.outputs) != len(inputs):
            raise ServeError(
                f"model '{queue.name}' answered the wrong number of results"
                f" (inputs: {len(inputs)}, results: {len(output.outputs)})"
            )
        self.note_batch(queue, len(inputs), loop.time() - started)
        outputs = output.outputs if order is None else unsort(output.outputs, order)
        return outputs, output.timing

    def note_started(self, request: Request, now: float) -> None:
        """The request's computation starts: tell its caller, who may no longer withdraw it."""
        request.dispatched_at = now
        if request.on_start is not None:
            try:
                request.on_start()
            except Exception:  # the caller's bookkeeping must not fail the others' batch
                logger.exception("on_start of a '%s' request failed", request.model)

    def note_batch(self, queue: ModelQueue, size: int, seconds: float) -> None:
        stats = queue.stats
        stats.batches += 1
        stats.batched_inputs += size
        stats.batch_sizes[size] = stats.batch_sizes.get(size, 0) + 1
        stats.compute_seconds += seconds
        queue.last_batch_size = size
        queue.freed_at = asyncio.get_running_loop().time()
        queue.note_rate(size, seconds)

    def deliver(
        self,
        queue: ModelQueue,
        chunks: list[Chunk],
        outputs: Sequence[Any],
        timing: Mapping[str, float],
    ) -> None:
        offset = 0
        for chunk in chunks:
            request = chunk.request
            request.outputs[chunk.start : chunk.start + chunk.count] = outputs[
                offset : offset + chunk.count
            ]
            offset += chunk.count
            request.computing -= 1
            request.batch_sizes.append(len(outputs))
            for key, value in timing.items():
                request.timing[key] = request.timing.get(key, 0.0) + value
            if not request.is_done and request.remaining == 0 and request.computing == 0:
                self.succeed(queue, request)

    # endings: every way out of the scheduler goes through finish()

    def succeed(self, queue: ModelQueue, request: Request) -> None:
        now = asyncio.get_running_loop().time()
        dispatched_at = request.dispatched_at if request.dispatched_at is not None else now
        queue.stats.completed += 1
        queue.stats.queue_seconds += dispatched_at - request.enqueued_at
        request.future.set_result(
            SubmitResult(
                outputs=request.outputs,
                queue_ms=(dispatched_at - request.enqueued_at) * 1000,
                compute_ms=(now - dispatched_at) * 1000,
                batch_sizes=tuple(request.batch_sizes),
                timing=dict(request.timing),
            )
        )
        self.finish(queue, request)

    def grant_turn(self, queue: ModelQueue, request: Request) -> bool:
        now = asyncio.get_running_loop().time()
        self.note_started(request, now)
        queue.stats.completed += 1
        queue.stats.queue_seconds += now - request.enqueued_at
        request.future.set_result(Turn(queue_ms=(now - request.enqueued_at) * 1000))
        self.finish(queue, request)
        return True

    def fail(
        self,
        queue: ModelQueue,
        request: Request,
        error: BaseException,
        counts_as_failed: bool = False,
    ) -> None:
        if not request.is_done:
            queue.stats.failed += counts_as_failed
            request.future.set_exception(error)
        self.finish(queue, request)

    def finish(self, queue: ModelQueue, request: Request) -> None:
        if request.timer is not None:
            request.timer.cancel()
            request.timer = None
        queue.remove(request)

    def release(self, queue: ModelQueue) -> None:
        queue.in_flight -= 1
        if not self.is_closed:
            self.pump(queue)


def finishes_with(chunk: Chunk) -> bool:
    """Whether the chunk's batch answers its request, whose client may then send again."""
    request = chunk.request
    return not (request.background or request.is_done or request.remaining or request.computing > 1)


def as_request_error(error: BaseException) -> BaseException:
    """What each request of a failed batch raises: a cancelled batch means shutdown."""
    return shutting_down() if isinstance(error, asyncio.CancelledError) else error


def shutting_down() -> UnavailableError:
    return UnavailableError("ModelMora is shutting down", retry_after=5)


def past_deadline(model: str, where: str) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"model '{model}' did not answer before the request's deadline ({where})",
        hint="pass a longer timeout, or send fewer requests at once",
    )

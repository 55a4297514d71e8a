"""One request record through the server: the same scheduler as `/infer` and jobs, so priorities,
batching and backpressure apply; retries with backoff; a result or a dead letter at the end.

    permanent (dead-lettered at once)   malformed record, unknown model, invalid input, a refused
                                        version, the record's own deadline passed
    transient (tried again, backoff)    model unavailable or crashed, the server's timeout, other
                                        errors; dead-lettered after `max_retries` more tries
    full queue (waits, not counted)     the model's queue is full: fetching pauses meanwhile
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from modelmora.errors import (
    ConflictError,
    DeadlineExceededError,
    ForbiddenError,
    InvalidInputError,
    OverloadedError,
    PayloadTooLargeError,
    ServeError,
    UnknownModelError,
)
from modelmora.kafka.config import KafkaTable
from modelmora.kafka.messages import (
    DeadLetter,
    MalformedMessage,
    RequestMessage,
    ResultMessage,
    Source,
    deadline_seconds,
    encode,
    now,
    original_bytes,
    parse_request,
)
from modelmora.kafka.stats import KafkaStats
from modelmora.serve.api import inference, jobs, native
from modelmora.serve.api.http import AppState
from modelmora.serve.api.schemas import InferOptions, Timing
from modelmora.serve.scheduler import NORMAL
from modelmora.serve.supervisor import InferenceResult

logger = logging.getLogger("modelmora.kafka")

PERMANENT = (
    InvalidInputError,
    UnknownModelError,
    ForbiddenError,
    ConflictError,
    PayloadTooLargeError,
)
FULL_QUEUE_WAIT = (0.01, 0.5)
"""The first and the longest wait before trying a full queue again."""
ENDPOINT = "kafka"
"""The `endpoint` label of Kafka requests in modelmora_requests and its latency histogram."""

Observe = Callable[[str, str, int | str, float, InferenceResult | None], None]
Blocked = Callable[[], AbstractAsyncContextManager[None]]
"""Held while a request waits for room in a full queue: the consumer pauses fetching."""


@dataclass(frozen=True)
class Received:
    """A request record as the consumer got it."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def source(self) -> Source:
        return Source(
            topic=self.topic, partition=self.partition, offset=self.offset, timestamp=self.timestamp
        )

    def default_id(self) -> str:
        """Stable across redeliveries, so that a reader can drop the duplicates."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    def text_key(self) -> str | None:
        return None if self.key is None else self.key.decode("utf-8", "replace")


@dataclass(frozen=True)
class Outcome:
    """What to publish for a record: its result, or its dead letter."""

    topic: str
    value: bytes
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    dead: bool


class Handler:
    def __init__(
        self,
        state: AppState,
        table: KafkaTable,
        stats: KafkaStats,
        blocked: Blocked,
        server: str,
        observe: Observe | None = None,
    ) -> None:
        self.state, self.table, self.stats, self.server = state, table, stats, server
        self.blocked, self.observe = blocked, observe

    async def handle(self, record: Received) -> Outcome:
        """Never raises but for cancellation: every record ends as a result or a dead letter."""
        try:
            request = parse_request(record.value)
        except MalformedMessage as error:
            return self.dead_letter(record, None, error, attempts=0)
        attempts = waits = 0
        while True:
            attempts += 1
            try:
                return await self.answer(record, request, attempts)
            except OverloadedError:
                attempts -= 1  # a full queue is no failure of the request: wait for room
                waits += 1
                await self.wait_for_room(waits)
            except Exception as error:
                if self.is_final(error, request, attempts):
                    return self.dead_letter(record, request, error, attempts)
                self.stats.retries += 1
                logger.warning("kafka %s: try %d failed: %s", record.default_id(), attempts, error)
                await asyncio.sleep(self.backoff(attempts))

    def is_final(self, error: Exception, request: RequestMessage, attempts: int) -> bool:
        if isinstance(error, PERMANENT) or attempts > self.table.max_retries:
            return True
        own_deadline = request.deadline is not None or request.timeout is not None
        return isinstance(error, DeadlineExceededError) and own_deadline

    def backoff(self, attempts: int) -> float:
        delay = self.table.retry_backoff * 2 ** (attempts - 1)
        return float(min(delay, self.table.max_retry_backoff))

    async def wait_for_room(self, waits: int) -> None:
        first, longest = FULL_QUEUE_WAIT
        async with self.blocked():
            await asyncio.sleep(min(first * 2 ** (waits - 1), longest))

    async def answer(self, record: Received, request: RequestMessage, attempts: int) -> Outcome:
        arrival = time.monotonic()
        key = request.key if request.key is not None else record.text_key()
        found = inference.resolve(self.state, request.model, key)
        body = jobs.job_body(self.state, found.name, request.input)
        priority = next(p for p in (request.priority, body.priority, NORMAL) if p is not None)
        queueing = inference.admit(self.state, arrival, priority, self.timeout(request, body))
        runtime = body.to_runtime()
        try:
            outcome = await inference.infer(
                self.state, found.name, runtime, queueing, body.keep_alive
            )
        except ServeError as error:
            self.note(found.name, error.status, arrival, None)
            raise
        self.note(found.name, 200, arrival, outcome)
        inference.mirror(self.state, found, runtime, outcome.result)
        inline, location = await native.stored_result(self.state, outcome.result)
        reply = ResultMessage(
            id=request.id or record.default_id(),
            key=key,
            model=found.name,
            version=found.version,
            revision=self.state.supervisor.model(found.name).revision,
            result=inline,
            result_url=location,
            timing=Timing(
                queue_ms=outcome.queue_ms,
                load_ms=outcome.load_ms,
                inference_ms=outcome.inference_ms,
            ),
            attempts=attempts,
            source=record.source(),
            server=self.server,
            answered_at=now(),
        )
        return Outcome(self.table.result_topic, encode(reply), record.key, (), dead=False)

    def timeout(self, request: RequestMessage, body: InferOptions) -> float | None:
        """The tightest of the record's deadline, its timeout and the body's; DeadlineExceeded
        when the deadline has passed already."""
        limits = [t for t in (request.timeout, body.timeout) if t is not None]
        if request.deadline is not None:
            left = deadline_seconds(request.deadline)
            if left <= 0:
                raise DeadlineExceededError(
                    f"the request's deadline {request.deadline.isoformat()} has passed",
                    hint="send it with a later deadline",
                )
            limits.append(left)
        return min(limits) if limits else None

    def note(
        self, model: str, status: int, arrival: float, outcome: InferenceResult | None
    ) -> None:
        if self.observe is not None:
            self.observe(ENDPOINT, model, status, time.monotonic() - arrival, outcome)

    def dead_letter(
        self, record: Received, request: RequestMessage | None, error: Exception, attempts: int
    ) -> Outcome:
        code = error.code if isinstance(error, ServeError) else "internal_error"
        letter = DeadLetter(
            id=(request.id if request else None) or record.default_id(),
            key=(request.key if request else None) or record.text_key(),
            code=code,
            reason=str(error) or type(error).__name__,
            attempts=attempts,
            source=record.source(),
            value_base64=original_bytes(record.value),
            failed_at=now(),
        )
        logger.warning("kafka %s: dead-lettered (%s): %s", record.default_id(), code, error)
        headers = (*record.headers, ("modelmora-error", code.encode()))
        return Outcome(self.table.dead_letter_topic, encode(letter), record.key, headers, True)

"""Retries and the circuit breaker: what to do after each attempt, the same for both clients.

    attempt ──► answer 2xx/4xx ──► done (the breaker closes; a 4xx is the caller's mistake)
       │──► 429, 502, 503, 504, connection error, timeout ──► wait, try again, until the deadline
       └──► while the breaker is open: CircuitOpenError at once, nothing sent

A wait is the server's `Retry-After` when it sends one, else "full jitter": a random time between 0
and `base_delay * 2**retry`, at most `max_delay`. Nothing waits past the deadline: the last error
is raised instead, as it is once the breaker has opened. Only calls that change nothing when sent
twice are retried after they may have reached the server (an idempotent method, or a POST /jobs
with its `Idempotency-Key`); a refused connection never reached it, so any call is tried again.

The breaker counts failures in a row (a connection error, a timeout, a 5xx); at
`failure_threshold` it opens, and calls fail fast for `cool_down` seconds; then it half-opens and
lets one call through as a probe: a success closes it, a failure opens it again.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import httpx

from modelmora.client.calls import retry_after
from modelmora.client.errors import CircuitOpenError

BreakerState = Literal["closed", "open", "half_open"]
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
BREAKER_STATUSES = frozenset(range(500, 600))
Clock = Callable[[], float]


@dataclass(frozen=True)
class RetryEvent:
    """One retry about to happen, as `on_retry` receives it."""

    method: str
    path: str
    retry: int
    """1 for the first retry."""
    delay: float
    """Seconds it waits first: the `Retry-After`, or the jittered backoff."""
    reason: str
    """The status (`"503"`) or the error's type (`"ConnectError"`) that caused it."""


@dataclass
class RetryCounters:
    """What a client did, since it was made; the application reads them."""

    calls: int = 0
    attempts: int = 0
    retries: int = 0
    gave_up: int = 0
    """Calls that failed after a retryable error: out of attempts or out of time."""


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to retry. `max_attempts=1` turns retries off."""

    max_attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0
    deadline: float = 120.0
    """Seconds for a whole call, its attempts and waits together."""
    statuses: frozenset[int] = RETRIED_STATUSES
    on_retry: Callable[[RetryEvent], None] | None = None

    def backoff(self, retry: int, retry_after: float | None) -> float:
        """The wait before retry number `retry` (1, 2, ...)."""
        if retry_after is not None:
            return max(retry_after, 0.0)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (retry - 1)))


@dataclass
class BreakerCounters:
    failures: int = 0
    """Failures in a row, now."""
    opened: int = 0
    half_opened: int = 0
    closed: int = 0
    rejected: int = 0
    """Calls failed fast while it was open."""


@dataclass
class CircuitBreaker:
    """One server's breaker. A client makes its own; pass one to several clients of the same
    server so that they share it. Safe across threads."""

    failure_threshold: int = 5
    cool_down: float = 10.0
    on_state_change: Callable[[BreakerState, BreakerState], None] | None = None
    """Called with (old, new) on every change of state."""
    clock: Clock = time.monotonic
    counters: BreakerCounters = field(default_factory=BreakerCounters)
    state: BreakerState = "closed"
    opened_at: float = 0.0
    is_probing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def before_call(self, url: str) -> None:
        """Let a call through, or raise CircuitOpenError."""
        with self._changing() as changes:
            if self.state == "open" and self.clock() - self.opened_at >= self.cool_down:
                changes.append(self._become("half_open"))
            if self.state == "closed" or (self.state == "half_open" and not self.is_probing):
                self.is_probing = self.state == "half_open"
                return
            self.counters.rejected += 1
            left = max(self.cool_down - (self.clock() - self.opened_at), 0.0)
        raise CircuitOpenError(url, self.counters.failures, left)

    def record_success(self) -> None:
        with self._changing() as changes:
            self.counters.failures = 0
            self.is_probing = False
            if self.state != "closed":
                changes.append(self._become("closed"))

    def record_failure(self) -> None:
        with self._changing() as changes:
            self.counters.failures += 1
            self.is_probing = False
            if self.state == "half_open" or (
                self.state == "closed" and self.counters.failures >= self.failure_threshold
            ):
                self.opened_at = self.clock()
                changes.append(self._become("open"))

    def release_probe(self) -> None:
        """A call that ended with neither an answer nor a failure (cancelled, say): if it was the
        probe, the next call may probe instead."""
        with self._lock:
            self.is_probing = False

    @contextlib.contextmanager
    def _changing(self) -> Iterator[list[tuple[BreakerState, BreakerState]]]:
        """Under the lock; the hook hears of the changes after it, so that it may call us."""
        changes: list[tuple[BreakerState, BreakerState]] = []
        try:
            with self._lock:
                yield changes
        finally:
            for old, new in changes:
                if self.on_state_change is not None:
                    self.on_state_change(old, new)

    def _become(self, state: BreakerState) -> tuple[BreakerState, BreakerState]:
        old, self.state = self.state, state
        counter = _COUNTER_OF[state]
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        return old, state


_COUNTER_OF: dict[BreakerState, str] = {
    "open": "opened",
    "half_open": "half_opened",
    "closed": "closed",
}


@dataclass
class Attempts:
    """One call's attempts: asks the breaker before each, and after each says whether to wait
    and try again (the seconds to wait) or not (None)."""

    url: str
    method: str
    path: str
    may_resend: bool
    """True when sending it twice does no harm: an idempotent call."""
    policy: RetryPolicy
    breaker: CircuitBreaker
    counters: RetryCounters
    timeout: float
    clock: Clock = time.monotonic
    started: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.counters.calls += 1

    def begin(self) -> float:
        """Before an attempt: the breaker's leave, and this attempt's timeout."""
        self.breaker.before_call(self.url)
        self.count += 1
        self.counters.attempts += 1
        return max(min(self.timeout, self.time_left()), 0.001)

    def abandon(self) -> None:
        """The attempt ended otherwise (an exception of the caller's, a cancellation)."""
        self.breaker.release_probe()

    def time_left(self) -> float:
        return self.policy.deadline - (self.clock() - self.started)

    def after_answer(self, response: httpx.Response) -> float | None:
        """After a response: None to keep it, else the wait before the next attempt."""
        return self.after_status(response.status_code, retry_after(response))

    def after_status(self, status: int, retry_after: float | None) -> float | None:
        """After an answer with this HTTP status (a gRPC code maps to one): None or the wait."""
        if status in BREAKER_STATUSES:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        if status not in self.policy.statuses or not self.may_resend:
            return None
        return self._retry(str(status), retry_after)

    def after_error(self, error: httpx.TransportError) -> float | None:
        """After a connection error or a timeout: None to raise it, else the wait."""
        never_sent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
        return self.after_failure(type(error).__name__, never_sent)

    def after_failure(self, reason: str, never_sent: bool) -> float | None:
        """After no answer at all: None to raise, else the wait."""
        self.breaker.record_failure()
        if not (self.may_resend or never_sent):
            return None
        return self._retry(reason, None)

    def _retry(self, reason: str, retry_after: float | None) -> float | None:
        delay = self.policy.backoff(self.count, retry_after)
        out_of_time = delay >= self.time_left()
        if self.count >= self.policy.max_attempts or out_of_time or self.breaker.state == "open":
            self.counters.gave_up += 1
            return None
        self.counters.retries += 1
        if self.policy.on_retry is not None:
            self.policy.on_retry(RetryEvent(self.method, self.path, self.count, delay, reason))
        return delay

"""Token buckets: the per-key request and token limits (pure; the clock is passed in).

A bucket holds up to `capacity` tokens and refills at `rate` per second. A request takes one
token or is refused with the time until one is back. Token usage is known only after a
response, so it is charged afterwards and may take the bucket below zero: the key is then
refused until the bucket has refilled past zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """A bucket's answer, with what the `RateLimit-*` headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset: float
    """Seconds until the bucket is full again."""
    retry_after: float
    """Seconds until the refused request could pass; 0 when allowed."""

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


class TokenBucket:
    def __init__(
        self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a bucket needs a rate and a capacity above 0")
        self.rate, self.capacity, self.clock = rate, capacity, clock
        self.level = capacity
        self.updated = clock()

    def take(self, amount: float = 1.0) -> Decision:
        """Take `amount` tokens if the bucket holds them; else refuse and take nothing."""
        self._refill()
        if self.level >= amount:
            self.level -= amount
            return self._decision(True, 0.0)
        return self._decision(False, (amount - self.level) / self.rate)

    def check(self) -> Decision:
        """Whether the bucket is at or above zero, taking nothing (for usage charged later)."""
        self._refill()
        if self.level >= 0:
            return self._decision(True, 0.0)
        return self._decision(False, -self.level / self.rate)

    def charge(self, amount: float) -> None:
        """Take `amount` tokens whatever the level: usage already spent."""
        self._refill()
        self.level -= amount

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def _decision(self, allowed: bool, retry_after: float) -> Decision:
        reset = (self.capacity - self.level) / self.rate
        remaining = max(0, math.floor(self.level))
        return Decision(allowed, math.floor(self.capacity), remaining, reset, retry_after)

"""Wait for a condition, not for the clock: the tests' one polling helper.

    url = eventually(lambda: server.url, what="the server to listen")
    await eventually_async(lambda: supervisor.status("a").state == "unloaded")

Both return the predicate's first truthy value. They fail the test when `timeout` passes first,
saying what they waited for and what they saw last. An exception of a type in `ignoring` counts
as "not yet"; any other one (a failed assert inside the predicate, say) fails the test at once.
The default timeout is generous: a loaded 2-core CI machine is slow, and a wait that succeeds
costs only as long as its condition takes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
TIMEOUT = 30.0
FIRST_PAUSE, LONGEST_PAUSE = 0.005, 0.1


def eventually(
    predicate: Callable[[], T],
    timeout: float = TIMEOUT,
    *,
    ignoring: tuple[type[BaseException], ...] = (),
    what: str = "",
) -> T:
    """Call `predicate` until it returns a truthy value, sleeping a little longer each time."""
    poll = _Poll(predicate, timeout, ignoring, what)
    while not poll.has_succeeded():
        time.sleep(poll.pause())
    return poll.value


async def eventually_async(
    predicate: Callable[[], T],
    timeout: float = TIMEOUT,
    *,
    ignoring: tuple[type[BaseException], ...] = (),
    what: str = "",
) -> T:
    """`eventually` for a test on an event loop: the loop runs while it waits."""
    poll = _Poll(predicate, timeout, ignoring, what)
    while not poll.has_succeeded():
        await asyncio.sleep(poll.pause())
    return poll.value


class _Poll(Generic[T]):
    def __init__(
        self,
        predicate: Callable[[], T],
        timeout: float,
        ignoring: tuple[type[BaseException], ...],
        what: str,
    ) -> None:
        self.predicate, self.ignoring = predicate, ignoring
        self.what = what or _describe(predicate)
        self.timeout, self.give_up_at = timeout, time.monotonic() + timeout
        self.next_pause = FIRST_PAUSE
        self.value: T
        self.last_seen: object = None

    def has_succeeded(self) -> bool:
        try:
            self.value = self.predicate()
        except self.ignoring as error:
            self.last_seen = error
            return False
        self.last_seen = self.value
        return bool(self.value)

    def pause(self) -> float:
        """How long to sleep before the next try; fails the test once the time is up."""
        left = self.give_up_at - time.monotonic()
        assert left > 0, f"waited {self.timeout} s for {self.what}; last saw {self.last_seen!r}"
        pause, self.next_pause = self.next_pause, min(2 * self.next_pause, LONGEST_PAUSE)
        return min(pause, left)


def _describe(predicate: Callable[[], object]) -> str:
    """The predicate's source line: a lambda's name says nothing."""
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)

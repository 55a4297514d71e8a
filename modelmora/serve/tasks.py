"""Background tasks owned by the component that starts them: one scope, no task left behind.

Starlette's lesson (`async with anyio.create_task_group() as tg: tg.start_soon(...)`) is that a
scope owns its tasks and their errors surface. A server needs one difference: a failing task must
not cancel its siblings (one job's bookkeeping failing must not end every request in flight), and
some tasks are shared (many requests await one model's load), so they need handles.

A `TaskGroup` therefore keeps every task it starts, logs each failure the moment it happens with
the task's name (whoever awaits the handle gets the error too), counts failures for `/metrics`,
and `close()` gives its tasks a grace period, cancels the rest and waits for all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class TaskGroup:
    """The background tasks of one component (supervisor, scheduler, job runner)."""

    def __init__(
        self,
        name: str,
        logger: logging.Logger,
        expected: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.name = name
        self.logger = logger
        self.expected = expected
        """Errors that are answers, not failures: delivered to whoever awaits, not logged."""
        self.tasks: set[asyncio.Task[Any]] = set()
        self.failures = 0

    def start(self, coroutine: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run `coroutine` in the background, owned by this group."""
        task = asyncio.create_task(coroutine, name=f"{self.name}: {name}")
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None or isinstance(error, self.expected):
            return
        self.failures += 1
        self.logger.error("background task %r failed", task.get_name(), exc_info=error)

    async def close(self, grace: float = 0.0) -> None:
        """Wait up to `grace` seconds for the tasks, cancel what is left, wait for everything."""
        if self.tasks and grace > 0:
            await asyncio.wait(set(self.tasks), timeout=grace)
        await cancel_and_wait(self.tasks)


async def cancel_and_wait(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until each has ended; their errors were logged when they ended."""
    pending = set(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)

"""Models registered at run time (`POST /models`): locked and installed in a thread, then served.

A registration is answered at once; its record says whether it is still running, done or failed
(with the reason). Records live in memory: the manifest and the lock are written only once the
model is installed, so a server stopped midway leaves the project as it was, and nothing to resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from modelmora.errors import JobNotFoundError, ModelmoraError
from modelmora.serve.tasks import TaskGroup

logger = logging.getLogger("modelmora.serve")

KEEP = 1000
"""Finished registrations remembered; older ones are forgotten first."""


@dataclass
class Registration:
    name: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: Literal["running", "done", "failed"] = "running"
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None


class Registrations:
    """The registrations of this server, each run as one owned task."""

    def __init__(self) -> None:
        self.records: dict[str, Registration] = {}
        self.tasks = TaskGroup("registrations", logger)

    def get(self, id: str) -> Registration:
        try:
            return self.records[id]
        except KeyError:
            raise JobNotFoundError(f"no registration '{id}'", "see POST /models") from None

    def start(
        self, name: str, run: Callable[[], Awaitable[None]]
    ) -> tuple[Registration, asyncio.Task[None]]:
        record = Registration(name)
        self.records[record.id] = record
        self._forget_old()
        return record, self.tasks.start(self._run(record, run), f"register {name}")

    async def _run(self, record: Registration, run: Callable[[], Awaitable[None]]) -> None:
        try:
            await run()
            record.state = "done"
        except ModelmoraError as error:
            record.state, record.error = "failed", str(error)
            logger.warning("registering '%s' failed: %s", record.name, error)
        finally:
            record.finished_at = time.time()

    def _forget_old(self) -> None:
        finished = [r for r in self.records.values() if r.finished_at is not None]
        for record in sorted(finished, key=lambda r: r.created_at)[: max(len(finished) - KEEP, 0)]:
            del self.records[record.id]

    async def close(self) -> None:
        await self.tasks.close()

"""One assigned partition: its records are computed at once (so that they batch), but their
answers are published in offset order, and the offset to commit moves past a record only once the
broker has acknowledged its answer.

    add(record) ──► handle task ──► (in offset order) send ──► (in order) ack ──► committable
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from modelmora.kafka.clients import Publisher
from modelmora.kafka.handling import Outcome, Received
from modelmora.kafka.stats import KafkaStats
from modelmora.serve.tasks import TaskGroup

logger = logging.getLogger("modelmora.kafka")

Handle = Callable[[Received], Coroutine[Any, Any, Outcome]]


class Lane:
    def __init__(
        self,
        topic: str,
        partition: int,
        handle: Handle,
        publisher: Publisher,
        stats: KafkaStats,
        on_done: Callable[[], None],
    ) -> None:
        self.topic, self.partition = topic, partition
        self.handle, self.publisher, self.stats, self.on_done = handle, publisher, stats, on_done
        self.tasks = TaskGroup(f"kafka {topic}[{partition}]", logger)
        self.computing: asyncio.Queue[tuple[int, asyncio.Task[Outcome]]] = asyncio.Queue()
        self.sent: asyncio.Queue[tuple[int, Outcome, asyncio.Future[Any]]] = asyncio.Queue()
        self.received = self.done = 0
        self.committable: int | None = None
        """The offset to commit: every record before it has its answer acknowledged."""
        self.committed: int | None = None
        self.first: int | None = None
        """The first offset received: where the lag counts from until one is committable."""
        self.tasks.start(self.publish_in_order(), "publish")
        self.tasks.start(self.confirm_in_order(), "confirm")

    @property
    def in_flight(self) -> int:
        return self.received - self.done

    def add(self, record: Received) -> None:
        self.first = record.offset if self.first is None else self.first
        task = self.tasks.start(self.handle(record), f"offset {record.offset}")
        self.computing.put_nowait((record.offset, task))
        self.received += 1

    async def publish_in_order(self) -> None:
        while True:
            offset, task = await self.computing.get()
            outcome = await task
            self.sent.put_nowait((offset, outcome, await self.publisher.send(outcome)))

    async def confirm_in_order(self) -> None:
        while True:
            offset, outcome, ack = await self.sent.get()
            await self.publisher.confirm(outcome, ack)
            if outcome.dead:
                self.stats.count_dead(outcome_code(outcome))
            else:
                self.stats.results_out += 1
            self.committable = offset + 1
            self.done += 1
            self.on_done()

    @property
    def position(self) -> int | None:
        """Where the partition's unfinished records start."""
        return self.committable if self.committable is not None else self.first

    def to_commit(self) -> int | None:
        """The offset to commit now, if it moved since the last commit."""
        if self.committable is None or self.committable == self.committed:
            return None
        return self.committable

    async def close(self) -> None:
        """Stop at once: what is not acknowledged yet is not committed, and comes again."""
        await self.tasks.close()


def outcome_code(outcome: Outcome) -> str:
    for name, value in outcome.headers:
        if name == "modelmora-error":
            return value.decode()
    return "unknown"

"""Events on their topics, best effort (an event that cannot be published is logged, never
retried for ever): model lifecycle from the supervisor's listener, audit entries from
`modelmora.audit`'s listener, and each model's performance every `metrics_interval`.

Listeners only queue an event (a bounded queue: a broker that is down costs memory no longer than
the queue); one task publishes them in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import BaseModel

from modelmora.kafka.config import EventsTable
from modelmora.kafka.messages import (
    AuditEvent,
    LifecycleEvent,
    LifecycleType,
    MetricsEvent,
    ModelMetrics,
    encode,
    now,
)
from modelmora.kafka.stats import KafkaStats
from modelmora.serve.api.http import AppState

logger = logging.getLogger("modelmora.kafka")

MAX_QUEUED_EVENTS = 10_000
LIFECYCLE: dict[str, LifecycleType] = {
    "load": "model.loaded",
    "load_failed": "model.failed",
    "crash": "model.crashed",
    "unload": "model.unloaded",
    "evict": "model.unloaded",
}
"""The supervisor's events (`Supervisor.emit`) as lifecycle event types."""


class Events:
    def __init__(
        self,
        table: EventsTable,
        state: AppState,
        server: str,
        stats: KafkaStats,
        lag: Callable[[], int],
    ) -> None:
        self.table, self.state, self.server, self.stats, self.lag = table, state, server, stats, lag
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(MAX_QUEUED_EVENTS)
        self.loop = asyncio.get_running_loop()

    def on_model_event(self, event: str, model: str, seconds: float) -> None:
        """The supervisor's listener (called in the event loop)."""
        kind = LIFECYCLE.get(event)
        if kind is None or not self.table.lifecycle:
            return
        record = LifecycleEvent(
            type=kind, model=model, server=self.server, at=now(), reason=event, seconds=seconds
        )
        self.put(self.table.lifecycle, record)

    def on_audit(self, actor: str, action: str, target: str, before: Any, after: Any) -> None:
        """`modelmora.audit`'s listener: called in whatever thread recorded the entry."""
        if not self.table.audit:
            return
        record = AuditEvent(
            server=self.server,
            at=now(),
            actor=actor,
            action=action,
            target=target,
            before=before,
            after=after,
        )
        try:
            self.loop.call_soon_threadsafe(self.put, self.table.audit, record)
        except RuntimeError:  # the loop has closed: the server is gone
            logger.warning("kafka: the audit event of %s %s came too late", action, target)

    def put(self, topic: str, record: BaseModel) -> None:
        try:
            self.queue.put_nowait((topic, encode(record)))
        except asyncio.QueueFull:
            logger.warning(
                "kafka: %d events wait already; dropped one for %s", self.queue.qsize(), topic
            )

    def metrics(self) -> MetricsEvent:
        return MetricsEvent(
            server=self.server,
            at=now(),
            models=[self.model_metrics(name) for name in self.state.supervisor.names()],
            kafka=self.stats.summary(self.lag()),
        )

    def model_metrics(self, name: str) -> ModelMetrics:
        stats = self.state.scheduler.stats(name)
        status = self.state.supervisor.status(name)
        return ModelMetrics(
            model=name,
            state=status.state,
            queued=sum(self.state.scheduler.depth(name).values()),
            in_flight=status.in_flight,
            submitted=stats.submitted,
            completed=stats.completed,
            failed=stats.failed,
            rejected=stats.rejected,
            expired=stats.expired_queued + stats.expired_computing,
            batches=stats.batches,
            mean_batch_size=stats.batched_inputs / stats.batches if stats.batches else 0.0,
            queue_seconds=stats.queue_seconds,
            compute_seconds=stats.compute_seconds,
        )

    async def report_metrics(self) -> None:
        while True:
            await asyncio.sleep(self.table.metrics_interval)
            self.put(self.table.metrics, self.metrics())

    async def publish(self, producer: AIOKafkaProducer) -> None:
        while True:
            topic, value = await self.queue.get()
            try:
                await producer.send_and_wait(topic, value)
            except KafkaError as error:
                logger.warning("kafka: an event for %s was not published: %s", topic, error)
            finally:
                self.queue.task_done()

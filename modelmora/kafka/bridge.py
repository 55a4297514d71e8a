"""What the server's lifespan starts and stops when Kafka is configured.

Bridge(...)        before the supervisor starts: its listeners see the preloads
start()            the producer; the group's join then the fetch loop, in the background; events
stop_consuming()   first at shutdown: stop fetching, answer and commit what is in flight
close()            last: publish the shutdown's events, stop the producer
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from aiokafka.errors import KafkaError

from modelmora import audit
from modelmora.errors import ModelmoraError
from modelmora.kafka.clients import Publisher, make_producer
from modelmora.kafka.config import KafkaTable
from modelmora.kafka.consumer import Consumer
from modelmora.kafka.events import Events
from modelmora.kafka.handling import Handler
from modelmora.kafka.stats import KafkaCollector, KafkaStats
from modelmora.serve.api.http import AppState
from modelmora.serve.api.telemetry import Metrics
from modelmora.serve.tasks import TaskGroup, cancel_and_wait

logger = logging.getLogger("modelmora.kafka")

EVENT_FLUSH_TIMEOUT = 5.0


class Bridge:
    def __init__(self, state: AppState, metrics: Metrics, table: KafkaTable) -> None:
        self.table = table
        self.stats = KafkaStats()
        self.producer = make_producer(table)
        publisher = Publisher(self.producer, table, self.stats)
        server = f"{socket.gethostname()}:{state.settings.port}"
        handler = Handler(
            state, table, self.stats, self.waiting_for_room, server, metrics.observe_request
        )
        self.consumer = Consumer(table, handler.handle, publisher, self.stats)
        self.events = Events(table.events, state, server, self.stats, self.total_lag)
        self.tasks = TaskGroup("kafka", logger)
        self.is_consuming = False
        self.has_joined = False
        metrics.registry.register(KafkaCollector(self.stats, self.consumer.lag))
        state.supervisor.add_listener(self.events.on_model_event)
        audit.LISTENERS.append(self.events.on_audit)

    def waiting_for_room(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.consumer.waiting_for_room()

    def total_lag(self) -> int:
        return sum(self.consumer.lag().values())

    async def start(self) -> None:
        """Start the producer (a broker that does not answer fails the start), then join the
        group in the background: a join takes seconds (the broker waits for other members to
        join too), and the HTTP API must not wait for it."""
        try:
            await self.producer.start()
        except KafkaError as error:
            raise ModelmoraError(
                f"cannot use the Kafka broker at {self.table.bootstrap}: {error}",
                "check --kafka and the [kafka] table",
            ) from None
        self.is_consuming = True
        self.tasks.start(self.join_then_fetch(), "fetch")
        self.tasks.start(self.events.publish(self.producer), "events")
        if self.table.events.metrics:
            self.tasks.start(self.events.report_metrics(), "metrics events")

    async def join_then_fetch(self) -> None:
        try:
            await self.consumer.start()
        except KafkaError as error:
            logger.error(
                "kafka: could not join the group %s, no request is consumed: %s; restart the "
                "server once the broker answers",
                self.table.group_id,
                error,
            )
            return
        self.has_joined = True
        logger.info(
            "kafka: consuming %s as group %s",
            ", ".join(self.table.request_topics),
            self.table.group_id,
        )
        await self.fetch()

    async def fetch(self) -> None:
        """The consumer's loop; a broker error pauses it, it never ends it."""
        while not self.consumer.is_stopping:
            try:
                await self.consumer.run()
            except KafkaError as error:
                logger.warning("kafka: fetching failed, trying again: %s", error)
                await asyncio.sleep(self.table.retry_backoff)

    async def stop_consuming(self, drain_timeout: float) -> None:
        if not self.is_consuming:
            return
        self.is_consuming = False
        self.consumer.is_stopping = True
        fetching = [t for t in self.tasks.tasks if t.get_name().endswith(": fetch")]
        if not self.has_joined:  # still joining: nothing was taken, nothing to answer
            await cancel_and_wait(set(fetching))
        elif fetching:  # it ends within one fetch wait (FETCH_WAIT_MS)
            await asyncio.wait(fetching, timeout=drain_timeout)
        await self.consumer.stop(drain_timeout)

    async def close(self) -> None:
        """Publish the events queued by the shutdown (a few seconds at most), then stop."""
        with contextlib.suppress(ValueError):
            audit.LISTENERS.remove(self.events.on_audit)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.events.queue.join(), EVENT_FLUSH_TIMEOUT)
        await self.tasks.close()
        await self.producer.stop()

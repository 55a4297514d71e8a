"""The consumer group's loop: fetch request records while there is room, hand each to its
partition's lane, commit what the lanes say is done; on a rebalance, commit what is done and let
the rest go (the partition's next owner reads it again: at least once, never lost).

Fetching pauses while this server works on `max_in_flight` records, or while a request waits for
room in its model's full queue: the backlog stays in Kafka rather than being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from modelmora.kafka.clients import Publisher, make_consumer
from modelmora.kafka.config import KafkaTable
from modelmora.kafka.handling import Received
from modelmora.kafka.lanes import Handle, Lane
from modelmora.kafka.stats import KafkaStats

logger = logging.getLogger("modelmora.kafka")

FETCH_WAIT_MS = 100


class Consumer:
    def __init__(
        self, table: KafkaTable, handle: Handle, publisher: Publisher, stats: KafkaStats
    ) -> None:
        self.table, self.handle, self.publisher, self.stats = table, handle, publisher, stats
        self.consumer: AIOKafkaConsumer = make_consumer(table)
        self.lanes: dict[TopicPartition, Lane] = {}
        self.blocked = 0
        """Requests waiting for room in a full queue (see `handling.Blocked`)."""
        self.is_paused = False
        self.is_stopping = False
        self.progress = asyncio.Event()
        self.last_commit = time.monotonic()

    @property
    def in_flight(self) -> int:
        return sum(lane.in_flight for lane in self.lanes.values())

    async def start(self) -> None:
        self.consumer.subscribe(self.table.request_topics, listener=_Rebalance(self))
        await self.consumer.start()

    @contextlib.asynccontextmanager
    async def waiting_for_room(self) -> AsyncIterator[None]:
        self.blocked += 1
        self.pause_or_resume()  # at once: the fetch loop may be waiting for records
        try:
            yield
        finally:
            self.blocked -= 1

    async def run(self) -> None:
        while not self.is_stopping:
            self.pause_or_resume()
            room = max(self.table.max_in_flight - self.in_flight, 1)
            fetched = await self.consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=room)
            for partition, records in fetched.items():
                for record in records:
                    self.take(partition, record)
            if time.monotonic() - self.last_commit >= self.table.commit_interval:
                await self.commit()

    def pause_or_resume(self) -> None:
        full = self.in_flight >= self.table.max_in_flight or self.blocked > 0
        if full and not self.is_paused:
            self.stats.paused += 1
            self.consumer.pause(*self.consumer.assignment())
        elif not full and self.is_paused:
            self.consumer.resume(*self.consumer.assignment())
        self.is_paused = full

    def take(self, partition: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        self.stats.count_in(record.topic)
        lane = self.lanes.get(partition)
        if lane is None:
            lane = Lane(
                partition.topic,
                partition.partition,
                self.handle,
                self.publisher,
                self.stats,
                self.progress.set,
            )
            self.lanes[partition] = lane
        lane.add(received(record))

    async def commit(self, lanes: dict[TopicPartition, Lane] | None = None) -> None:
        """Commit each lane's acknowledged offset; a commit the group refuses (it is
        rebalancing) is let go: those records come again."""
        self.last_commit = time.monotonic()
        lanes = self.lanes if lanes is None else lanes
        offsets = {tp: offset for tp, lane in lanes.items() if (offset := lane.to_commit())}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as error:
            logger.warning("kafka: commit refused, those records will come again: %s", error)
            return
        for tp, offset in offsets.items():
            lanes[tp].committed = offset

    async def revoke(self, partitions: list[TopicPartition]) -> None:
        """Another member takes these partitions: commit what is done, drop the rest."""
        gone = {tp: self.lanes.pop(tp) for tp in partitions if tp in self.lanes}
        for lane in gone.values():
            await lane.close()
        await self.commit(gone)

    async def stop(self, drain_timeout: float) -> None:
        """Stop fetching, give the records in flight `drain_timeout` seconds to be answered,
        commit, and leave the group (its partitions go to the others at once)."""
        self.is_stopping = True
        deadline = time.monotonic() + drain_timeout
        while self.in_flight and time.monotonic() < deadline:
            self.progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.progress.wait(), deadline - time.monotonic())
        for lane in self.lanes.values():
            await lane.close()
        await self.commit()
        await self.consumer.stop()

    def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: records between the first unfinished one and the end (0
        until a fetch has said where the end is)."""
        behind = {}
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            lane = self.lanes.get(tp)
            done = lane.position if lane is not None else end
            behind[(tp.topic, tp.partition)] = max(end - done, 0) if end and done else 0
        return behind


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.consumer.revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.consumer.is_paused:  # a newly assigned partition waits for room too
            self.consumer.consumer.pause(*assigned)


def received(record: ConsumerRecord[bytes, bytes]) -> Received:
    return Received(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        key=record.key,
        value=record.value,
        headers=tuple(record.headers),
    )

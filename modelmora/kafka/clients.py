"""aiokafka's consumer and producer as the `[kafka]` table configures them, and the publisher that
sends an answer and confirms the broker has it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from modelmora.kafka.config import KafkaTable, SecurityTable
from modelmora.kafka.handling import Outcome
from modelmora.kafka.stats import KafkaStats

logger = logging.getLogger("modelmora.kafka")


def security_options(security: SecurityTable) -> dict[str, Any]:
    """aiokafka's keyword arguments for the table's protocol, SASL and TLS settings."""
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.protocol.startswith("SASL_"):
        options |= {
            "sasl_mechanism": security.sasl_mechanism,
            "sasl_plain_username": security.sasl_username,
            "sasl_plain_password": security.sasl_password,
        }
    if security.protocol.endswith("SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=security.ssl_cafile,
            certfile=security.ssl_certfile,
            keyfile=security.ssl_keyfile,
        )
    return options


def make_consumer(table: KafkaTable) -> AIOKafkaConsumer:
    """Offsets committed by hand, after the answers are acknowledged (never auto-committed)."""
    session_ms = int(table.session_timeout * 1000)
    return AIOKafkaConsumer(
        bootstrap_servers=table.bootstrap,
        client_id=table.client_id,
        group_id=table.group_id,
        enable_auto_commit=False,
        auto_offset_reset=table.auto_offset_reset,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(session_ms // 3, 100),
        fetch_max_wait_ms=int(table.fetch_max_wait * 1000),
        **security_options(table.security),
    )


def make_producer(table: KafkaTable) -> AIOKafkaProducer:
    """acks='all': an answer counts as published once every in-sync replica has it."""
    return AIOKafkaProducer(
        bootstrap_servers=table.bootstrap,
        client_id=table.client_id,
        acks="all",
        linger_ms=1,
        **security_options(table.security),
    )


class Publisher:
    """Sends outcomes; `confirm` waits for the broker's ack and sends again until it comes."""

    def __init__(self, producer: AIOKafkaProducer, table: KafkaTable, stats: KafkaStats) -> None:
        self.producer, self.table, self.stats = producer, table, stats

    async def send(self, outcome: Outcome) -> asyncio.Future[Any]:
        """Queue the record in the producer; the future is its acknowledgement."""
        while True:
            try:
                return await self._send(outcome)
            except KafkaError as error:
                await self._pause_after(error, outcome)

    async def confirm(self, outcome: Outcome, ack: asyncio.Future[Any]) -> None:
        while True:
            try:
                await ack
                return
            except KafkaError as error:
                await self._pause_after(error, outcome)
                ack = await self.send(outcome)

    async def _send(self, outcome: Outcome) -> asyncio.Future[Any]:
        ack: asyncio.Future[Any] = await self.producer.send(
            outcome.topic, outcome.value, key=outcome.key, headers=list(outcome.headers)
        )
        return ack

    async def _pause_after(self, error: KafkaError, outcome: Outcome) -> None:
        self.stats.retries += 1
        logger.warning("kafka: publishing to %s failed, trying again: %s", outcome.topic, error)
        await asyncio.sleep(self.table.retry_backoff)

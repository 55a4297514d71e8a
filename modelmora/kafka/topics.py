"""Before the server starts: the `[kafka]` table's topics exist, or are created when
`create_topics = true`; a missing topic otherwise stops `serve` with one line naming it.

Some brokers (Tansu, and Kafka with `auto.create.topics.enable`) create a topic the first time a
client asks for its metadata, with the broker's default partitions; so the check lists the topics
and never names one in a metadata request.
"""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from modelmora.errors import ModelmoraError
from modelmora.kafka.clients import security_options
from modelmora.kafka.config import KafkaTable

TIMEOUT_MS = 10_000


def wanted(table: KafkaTable) -> dict[str, int]:
    """Every topic the table names, with the partitions it is created with."""
    topics = dict.fromkeys(table.request_topics, table.partitions)
    outputs = [table.result_topic, table.dead_letter_topic]
    events = table.events
    outputs += [name for name in (events.lifecycle, events.metrics, events.audit) if name]
    return topics | dict.fromkeys(outputs, table.output_partitions)


def ensure_topics(table: KafkaTable) -> list[str]:
    """The topics created now; raises when one is missing and `create_topics` is false."""
    try:
        return asyncio.run(_ensure(table))
    except KafkaError as error:
        raise ModelmoraError(
            f"cannot list or create the Kafka topics at {table.bootstrap}: {error}",
            "check the broker, --kafka and the [kafka] table",
        ) from None


async def _ensure(table: KafkaTable) -> list[str]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=table.bootstrap,
        client_id=table.client_id,
        request_timeout_ms=TIMEOUT_MS,
        **security_options(table.security),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = {name: n for name, n in wanted(table).items() if name not in existing}
        if missing and not table.create_topics:
            raise _missing(sorted(missing), table.bootstrap)
        if missing:
            await _create(admin, table, missing)
        return sorted(missing)
    finally:
        await admin.close()


def _missing(names: list[str], bootstrap: str) -> ModelmoraError:
    quoted = ", ".join(f"'{name}'" for name in names)
    if len(names) == 1:
        return ModelmoraError(
            f"Kafka topic {quoted} does not exist at {bootstrap}",
            "create it, or set create_topics = true in [kafka]",
        )
    return ModelmoraError(
        f"Kafka topics {quoted} do not exist at {bootstrap}",
        "create them, or set create_topics = true in [kafka]",
    )


async def _create(admin: AIOKafkaAdminClient, table: KafkaTable, topics: dict[str, int]) -> None:
    """Create the topics; one another server created meanwhile is left as it is."""
    new = [NewTopic(name, n, table.replication_factor) for name, n in topics.items()]
    response = await admin.create_topics(new, timeout_ms=TIMEOUT_MS)
    for name, code, *rest in response.topic_errors:
        error = for_code(code)
        if code == 0 or error is TopicAlreadyExistsError:
            continue
        message = rest[0] if rest and rest[0] else error.__name__
        raise ModelmoraError(
            f"cannot create the Kafka topic '{name}': {message}",
            "create it by hand, or check partitions, output_partitions and replication_factor "
            "in [kafka]",
        )

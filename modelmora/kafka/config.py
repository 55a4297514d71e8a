"""The `[kafka]` table of modelmora.toml and `serve --kafka HOST:PORT`, validated; no aiokafka here.

`${VAR}` in any value is expanded when the manifest is read (`manifest.expand_variables`), so that
passwords stay in the environment: `sasl_password = "${KAFKA_PASSWORD}"`.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from modelmora.errors import ModelmoraError
from modelmora.units import parse_duration

DEFAULT_REQUEST_TOPIC = "modelmora.requests"
DEFAULT_RESULT_TOPIC = "modelmora.results"
DEFAULT_DEAD_LETTER_TOPIC = "modelmora.dead-letter"


def _seconds(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration; write e.g. 500ms, 10s or 1m")
    return seconds


def _names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Seconds = Annotated[float, BeforeValidator(_seconds)]
Topic = Annotated[str, Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")]
OptionalTopic = Annotated[str, Field(max_length=249, pattern=r"^[A-Za-z0-9._-]*$")]


def check_bootstrap(servers: list[str]) -> list[str]:
    """Each server as `host:port`, at least one; the message says how to write one."""
    if not servers:
        raise ValueError("no bootstrap server; write e.g. 'broker:9092'")
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"'{server}' is not HOST:PORT; write e.g. 'broker:9092'")
    return servers


class SecurityTable(BaseModel):
    """`[kafka.security]`: how the clients authenticate and encrypt (aiokafka's options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _check_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"there is no file '{value}'")
        return value

    @model_validator(mode="after")
    def _check_sasl(self) -> SecurityTable:
        sasl = self.protocol.startswith("SASL_")
        given = [self.sasl_mechanism, self.sasl_username, self.sasl_password]
        if sasl and any(value is None for value in given):
            raise ValueError(
                f"{self.protocol} needs sasl_mechanism, sasl_username and sasl_password"
            )
        if not sasl and any(value is not None for value in given):
            raise ValueError("the sasl_* keys need protocol = 'SASL_SSL' or 'SASL_PLAINTEXT'")
        return self


class EventsTable(BaseModel):
    """`[kafka.events]`: a topic per kind of event; an empty name (the default) turns it off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lifecycle: OptionalTopic = ""
    metrics: OptionalTopic = ""
    audit: OptionalTopic = ""
    metrics_interval: Seconds = 60.0


class KafkaTable(BaseModel):
    """`[kafka]`: where requests come from and results go; see docs/kafka.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: Annotated[list[str], BeforeValidator(_names)] | None = None
    request_topics: Annotated[list[Topic], BeforeValidator(_names), Field(min_length=1)] = [
        DEFAULT_REQUEST_TOPIC
    ]
    result_topic: Topic = DEFAULT_RESULT_TOPIC
    dead_letter_topic: Topic = DEFAULT_DEAD_LETTER_TOPIC
    group_id: str = Field("modelmora", min_length=1)
    client_id: str = Field("modelmora", min_length=1)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group without a committed offset starts reading a partition."""
    max_in_flight: int = Field(128, ge=1, le=100_000)
    """Records this server works on at once (received, not committed); fetching pauses above."""
    max_retries: int = Field(5, ge=0, le=1000)
    """Tries after the first of a request that failed transiently, before it is dead-lettered."""
    retry_backoff: Seconds = 0.5
    max_retry_backoff: Seconds = 30.0
    session_timeout: Seconds = 10.0
    """How long the group waits for a silent member before giving its partitions to others."""
    commit_interval: Seconds = 1.0
    create_topics: bool = False
    """At start, create the topics that do not exist yet (else a missing topic stops `serve`)."""
    partitions: int = Field(4, ge=1, le=10_000)
    """Partitions of a request topic `create_topics` creates: at most this many servers share it."""
    output_partitions: int = Field(1, ge=1, le=10_000)
    """Partitions of a result, dead-letter or event topic `create_topics` creates."""
    replication_factor: int = Field(1, ge=1, le=100)
    """Copies of each partition of a topic `create_topics` creates, on as many brokers."""
    fetch_max_wait: Seconds = 0.05
    """How long the broker may hold a fetch that found no new records: a request that arrives
    in a quiet spell waits up to this long (lower answers sooner, higher fetches less often)."""
    security: SecurityTable = SecurityTable()
    events: EventsTable = EventsTable()

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_bootstrap(value)

    @model_validator(mode="after")
    def _check_topics(self) -> KafkaTable:
        outputs = {self.result_topic, self.dead_letter_topic}
        looped = sorted(outputs & set(self.request_topics))
        if looped:
            raise ValueError(
                f"topic '{looped[0]}' is both a request topic and an output; give it another name"
            )
        if self.max_retry_backoff < self.retry_backoff:
            raise ValueError("max_retry_backoff is below retry_backoff; raise it")
        return self

    @property
    def bootstrap(self) -> str:
        return ",".join(self.bootstrap_servers or [])


def resolve(flag: str | None, table: KafkaTable | None, filename: str) -> KafkaTable | None:
    """Kafka's settings when `--kafka` or a `[kafka]` table asks for it; None: Kafka is off.

    `--kafka` names the bootstrap servers (comma-separated), over the table's.
    """
    if flag is None and table is None:
        return None
    table = table or KafkaTable.model_validate({})
    if flag is not None:
        servers = [server.strip() for server in flag.split(",") if server.strip()]
        try:
            check_bootstrap(servers)
        except ValueError as error:
            raise ModelmoraError(f"--kafka: {error}") from None
        table = table.model_copy(update={"bootstrap_servers": servers})
    if not table.bootstrap_servers:
        raise ModelmoraError(
            f"{filename}: kafka.bootstrap_servers: missing",
            "add it to the [kafka] table, or pass --kafka HOST:PORT",
        )
    return table


def kafka_keys(location: tuple[int | str, ...]) -> list[str]:
    """The keys of the `[kafka]` (sub)table an unknown key was found in, for the manifest's hint."""
    tables: dict[str, type[BaseModel]] = {"security": SecurityTable, "events": EventsTable}
    if len(location) == 3 and location[1] in tables:
        return list(tables[str(location[1])].model_fields)
    return list(KafkaTable.model_fields) if len(location) == 2 else []


def check(table: KafkaTable, timeout: float = 5.0) -> None:
    """Before the server starts: aiokafka is installed and a bootstrap server answers on TCP."""
    if importlib.util.find_spec("aiokafka") is None:
        raise ModelmoraError("Kafka needs aiokafka", "pip install 'modelmora[kafka]'")
    for server in table.bootstrap_servers or []:
        host, _, port = server.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
            return
        except OSError:
            continue
    raise ModelmoraError(
        f"cannot reach the Kafka broker at {table.bootstrap}",
        "start it, or check --kafka and kafka.bootstrap_servers",
    )

"""Every setting of `modelmora serve` and its default, defined once.

    ServeConfig ── server: ServerSettings          how the HTTP server listens and what it accepts
                ├─ supervisor: SupervisorSettings  the models' lifecycle: room, keep-alive, crashes
                └─ preload                         models loaded at start
    BatchSettings                                  one model's queue and batches (manifest fields)

`resolve` merges the layers a user can set, first match wins: command-line flags, `MODELMORA_*`
variables, the manifest's `[serve]` table, then the defaults of the records below. Each bad value
is reported with where it came from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from modelmora.errors import ModelmoraError
from modelmora.units import parse_duration, parse_size

WorkerStart = Literal["auto", "fork", "spawn"]
LogFormat = Literal["auto", "json", "text"]

TEMPLATE_IMPORTS = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.bert.modeling_bert",  # most sentence-embedding models are BERT-like
    "modelmora.runtimes.embedding",
    "modelmora.runtimes.classification",
    "modelmora.runtimes.generation",
)


@dataclass(frozen=True)
class ServerSettings:
    """How the server listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 0
    """The Open Inference Protocol's gRPC service listens there too (on `host`); 0: it is off."""
    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    log_level: str = "info"
    log_format: LogFormat = "auto"
    """text (lines for a person) on a terminal, else json; or either, by name."""
    log_file: str | None = None
    """Also write the log there, as JSON lines (appended)."""
    metrics_public: bool = False
    """Serve /metrics without the API key (for a Prometheus that has none)."""
    access_log: bool = True
    job_retention: float = 24 * 3600.0
    """Seconds a finished job (and its result) is kept."""


@dataclass(frozen=True)
class MemoryFloor:
    """RAM the machine must keep available: a number of bytes or a percent of all of it."""

    bytes: int = 0
    percent: float = 0.0

    def of(self, total: int) -> int:
        """The floor in bytes on a machine with `total` bytes of RAM (the larger of the two)."""
        return max(self.bytes, int(total * self.percent / 100))

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else f"{self.bytes} bytes"


@dataclass(frozen=True)
class SupervisorSettings:
    """The models' lifecycle: how many run at once, when they unload, how crashes are handled."""

    max_loaded_models: int = 0
    """How many workers may run at once; 0 means no limit."""
    memory_budget: int | None = None
    """Bytes all workers together may hold (measured after load); None means no limit."""
    min_available_memory: MemoryFloor = MemoryFloor(percent=5.0)
    """Below this much available RAM, idle models are evicted and loads refused (503)."""
    max_gpu_memory_fraction: float | None = None
    """Above this share of a GPU's memory in use, the same; None: GPUs are not watched."""
    keep_alive: float = 300.0
    """Idle seconds before a model is unloaded: 0 right after each request, negative never."""
    drain_timeout: float = 30.0
    request_timeout: float = 60.0
    """Default deadline of a request, load included; 0 or less means none."""
    restart_backoff: float = 1.0
    """Wait before restarting a worker that crashed twice in a row; doubles with each crash."""
    max_restart_backoff: float = 60.0
    """The longest wait between restarts of a crash-looping worker."""
    stable_after: float = 60.0
    """A worker that has served this long without crashing starts its backoff afresh."""
    stop_timeout: float = 5.0
    """How long a worker has to exit after SIGTERM before it gets SIGKILL."""
    load_timeout: float = 600.0
    """How long a load may take (process start, weights, warm-up) before it counts as failed."""
    health_interval: float = 10.0
    health_timeout: float = 30.0
    """A worker that does not answer a ping within this is killed and counted as a crash."""
    worker_start: WorkerStart = "auto"
    """fork from a template process with the imports done (auto on Linux), or spawn afresh."""
    template_imports: tuple[str, ...] = TEMPLATE_IMPORTS
    """Modules imported once before workers are forked (or by each spawned worker)."""

    def deadline_after(self, start: float, timeout: float | None) -> float:
        """A request's deadline (a time.monotonic() value): `timeout` seconds after `start`, else
        `request_timeout`; 0 or less means none (math.inf)."""
        seconds = self.request_timeout if timeout is None else timeout
        return start + seconds if seconds > 0 else math.inf


@dataclass(frozen=True)
class BatchSettings:
    """How the scheduler queues and batches one model's requests (manifest fields, same names)."""

    max_batch_size: int = 32
    """Inputs per batch; 1 turns batching off."""
    max_batch_delay_ms: float = 10.0
    """How long a batch may wait for company: for the clients of the last batch to send again
    (counted from when the worker freed up), or, before the first batch, from its oldest request.
    A lone client never waits (it is all the company expected); 10 ms won over 2 ms at 8, 32 and
    128 clients (docs/benchmarks.md)."""
    max_batch_tokens: int = 8192
    """Padded tokens per batch (longest input x inputs); one input over it still goes, alone."""
    max_queue: int = 256
    """Inputs of live requests queued per model before new ones get 429; a larger request is
    taken only when the queue is empty. Jobs queue beside them and never count against it."""
    max_in_flight: int = 1
    """Batches sent to the worker at once; 2 lets the next batch wait in the worker, but on a
    machine whose cores the worker already uses, the server's work then slows its compute as much
    as the overlap saves (docs/benchmarks.md)."""
    sort_by_length: bool = False
    """Send a batch's inputs longest first (results still come back in order): helps a runtime
    that splits a batch into padded sub-batches; a single padded batch does not care."""

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_batch_tokens", "max_queue", "max_in_flight")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_batch_delay_ms < 0:
            raise ValueError("max_batch_delay_ms must not be negative")


BATCH_FIELDS = (
    "max_batch_size",
    "max_batch_delay_ms",
    "max_batch_tokens",
    "max_queue",
    "max_in_flight",
)
"""The BatchSettings a model's manifest entry may set."""


@dataclass(frozen=True)
class ServeConfig:
    server: ServerSettings = field(default_factory=ServerSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    preload: tuple[str, ...] = ()

    def quiet(self) -> ServeConfig:
        """Only warnings and errors in the server's log (`modelmora --quiet serve`)."""
        return dataclasses.replace(
            self, server=dataclasses.replace(self.server, log_level="warning")
        )


# --- the layers -----------------------------------------------------------------------------------


def _port(value: Any) -> int:
    port = _integer(value, "a port number")
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port number (0-65535)")
    return port


def _log_format(value: Any) -> LogFormat:
    if value not in ("auto", "json", "text"):
        raise ValueError(f"'{value}' is not a log format: json, text or auto")
    return cast(LogFormat, value)


def _log_file(value: Any) -> str | None:
    path = Path(str(value)).expanduser()
    if not str(value):
        return None
    if not path.parent.is_dir():
        raise ValueError(f"'{value}': there is no folder {path.parent}")
    return str(path)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return str(value).lower() in ("1", "true", "yes", "on")
    raise ValueError(f"'{value}' is not true or false")


def _count(value: Any) -> int:
    count = _integer(value, "a count")
    if count < 0:
        raise ValueError(f"{count} is negative; use 0 for no limit")
    return count


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"'{value}' is not {what}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{value}' is not {what}") from None


def _names(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in items if str(item).strip())


def _optional_size(value: Any) -> int | None:
    return None if value in (None, "", 0, "0") else parse_size(value)


def _memory_floor(value: Any) -> MemoryFloor:
    text = str(value).strip()
    if text.endswith("%"):
        percent = float(text[:-1])
        if not 0 <= percent < 100:
            raise ValueError(f"'{value}' is not a percent between 0 and 100")
        return MemoryFloor(percent=percent)
    return MemoryFloor(bytes=_optional_size(value) or 0)


def _fraction(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{value}' is not a fraction like 0.95") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"{fraction} is not a fraction above 0 and at most 1")
    return fraction


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError(f"'{value}' is negative; write a duration like 30s, 5m or 7d")
    return seconds


Section = Literal["server", "supervisor", "config"]

KEYS: dict[str, tuple[Section, Callable[[Any], Any]]] = {
    "host": ("server", str),
    "port": ("server", _port),
    "grpc_port": ("server", _port),
    "api_key": ("server", lambda value: str(value) or None),
    "max_body_bytes": ("server", parse_size),
    "job_retention": ("server", _positive_duration),
    "log_format": ("server", _log_format),
    "log_file": ("server", _log_file),
    "metrics_public": ("server", _flag),
    "max_loaded_models": ("supervisor", _count),
    "memory_budget": ("supervisor", _optional_size),
    "min_available_memory": ("supervisor", _memory_floor),
    "max_gpu_memory_fraction": ("supervisor", _fraction),
    "keep_alive": ("supervisor", parse_duration),
    "drain_timeout": ("supervisor", _positive_duration),
    "request_timeout": ("supervisor", parse_duration),
    "restart_backoff": ("supervisor", _positive_duration),
    "max_restart_backoff": ("supervisor", _positive_duration),
    "preload": ("config", _names),
}
"""Each `[serve]` key (also a flag and a `MODELMORA_*` variable): the record it sets, its parser."""


def resolve(
    flags: Mapping[str, Any], env: Mapping[str, str], table: Mapping[str, Any], filename: str
) -> ServeConfig:
    """Merge the three layers over the defaults; each bad value names where it came from."""
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ModelmoraError(
            f"{filename}: serve.{unknown[0]}: unknown key", f"known keys: {', '.join(KEYS)}"
        )
    chosen: dict[Section, dict[str, Any]] = {"server": {}, "supervisor": {}, "config": {}}
    for name, (section, parser) in KEYS.items():
        raw, where = _pick(name, flags, env, table, filename)
        if raw is not None:
            chosen[section][name] = _parse(parser, raw, where)
    return ServeConfig(
        server=ServerSettings(**chosen["server"]),
        supervisor=SupervisorSettings(**chosen["supervisor"]),
        **chosen["config"],
    )


def _pick(
    name: str,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    table: Mapping[str, Any],
    filename: str,
) -> tuple[Any, str]:
    variable = f"MODELMORA_{name.upper()}"
    if flags.get(name) not in (None, ()):
        return flags[name], f"--{name.replace('_', '-')}"
    if variable in env:
        return env[variable], variable
    return table.get(name), f"{filename}: serve.{name}"


def _parse(parser: Callable[[Any], Any], raw: Any, where: str) -> Any:
    try:
        return parser(raw)
    except (TypeError, ValueError) as error:
        raise ModelmoraError(f"{where}: {error}") from None


def keep_alive_seconds(value: str | float | None, where: str) -> float | None:
    """A model's own keep_alive from the manifest, in seconds (None: the server's default)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise ModelmoraError(f"{where}: {error}") from None


def batch_settings(fields: Mapping[str, Any]) -> BatchSettings:
    """A model's BatchSettings: the manifest's scheduling fields that are set, over the defaults."""
    return BatchSettings(
        **{name: fields[name] for name in BATCH_FIELDS if fields.get(name) is not None}
    )

"""One served model as the supervisor sees it: its record, its worker, and its state.

The supervisor decides; the slot carries out. Its `state` changes only through the named
transitions below (`begin_load`, `mark_loaded`, `record_crash` ...), each of which also keeps the
counters and the error that go with it, so no caller can move a model into a state and forget
the rest. The crash policy is the pure function `restart_delay`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelmora.serve.config import BatchSettings, SupervisorSettings
from modelmora.serve.placement import Occupant
from modelmora.serve.resources import Usage
from modelmora.serve.status import Batching, ModelState, ModelStatus

if TYPE_CHECKING:
    from modelmora.serve.launcher import Worker


@dataclass(frozen=True)
class ServedModel:
    """A model the server offers, built from the project's lock and manifest."""

    name: str
    task: str
    path: Path
    source: str = ""
    revision: str = ""
    device: str = "auto"
    dtype: str = "auto"
    preload: bool = False
    keep_alive: float | None = None
    threads: int | None = None
    runtime: str | None = None
    backend: str = "torch"
    options: Mapping[str, Any] = field(default_factory=dict)
    batching: BatchSettings = field(default_factory=BatchSettings)
    """How the server's scheduler queues and batches this model's requests."""


def restart_delay(crash_streak: int, settings: SupervisorSettings) -> float:
    """How long a crashed worker waits before it starts again, as Kubernetes' crash-loop backoff:
    at once after a first crash, then `restart_backoff`, doubling each time, capped."""
    if crash_streak <= 1:
        return 0.0
    delay = settings.restart_backoff * 2 ** (crash_streak - 2)
    return float(min(delay, settings.max_restart_backoff))


@dataclass(eq=False)
class Slot:
    """What the supervisor knows about one model, loaded or not."""

    model: ServedModel
    keep_alive: float
    state: ModelState = "unloaded"
    worker: Worker | None = None
    loading: asyncio.Task[Worker] | None = None
    unloading: asyncio.Task[None] | None = None
    holds_room: bool = False
    """Room is reserved for a load in progress that has no worker yet."""
    waiting: int = 0
    in_flight: int = 0
    idle_timer: asyncio.TimerHandle | None = None
    expires_at: float | None = None
    loaded_at: float | None = None
    loaded_since: float | None = None
    """time.monotonic() of the last load: how long the worker has served when it crashes."""
    last_used: float | None = None
    requests_total: int = 0
    requests_failed: int = 0
    loads: int = 0
    unloads: int = 0
    crashes: int = 0
    crash_streak: int = 0
    restart_at: float | None = None
    """time.monotonic() at which a crashed worker starts again."""
    last_load_ms: float | None = None
    memory_bytes: int | None = None
    usage: Usage | None = None
    """The worker's resources at the last health check."""
    error: str | None = None
    last_crash: str | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def serving_worker(self) -> Worker | None:
        worker = self.worker
        return worker if worker is not None and worker.is_serving else None

    @property
    def is_idle(self) -> bool:
        return self.in_flight == 0 and self.waiting == 0 and self.unloading is None

    @property
    def occupies_room(self) -> bool:
        return self.worker is not None or self.holds_room

    def status(self) -> ModelStatus:
        """The public record of this model (its queue is the scheduler's to add)."""
        worker = self.serving_worker
        restart_in = self.restart_in() if self.state == "restarting" else None
        usage = self.usage if worker and self.usage and self.usage.pid == worker.pid else None
        return ModelStatus(
            name=self.name,
            task=self.model.task,
            source=self.model.source,
            revision=self.model.revision,
            state=self.state,
            pid=self.worker.pid if self.worker else None,
            device=worker.device if worker else None,
            memory_bytes=worker.memory_bytes if worker else None,
            cpu_percent=usage.cpu_percent if usage else None,
            rss_bytes=usage.rss_bytes if usage else None,
            uss_bytes=usage.uss_bytes if usage else None,
            gpu_memory_bytes=usage.gpu_memory_bytes if usage else None,
            gpu_utilization=usage.gpu_utilization if usage else None,
            loaded_at=self.loaded_at if worker else None,
            last_used=self.last_used,
            expires_at=self.expires_at if worker else None,
            in_flight=self.in_flight,
            requests_total=self.requests_total,
            requests_failed=self.requests_failed,
            loads=self.loads,
            unloads=self.unloads,
            crashes=self.crashes,
            crash_streak=self.crash_streak,
            restart_at=None if restart_in is None else time.time() + restart_in,
            last_crash=self.last_crash,
            last_load_ms=self.last_load_ms,
            error=self.error,
            batching=Batching.model_validate(dataclasses.asdict(self.model.batching)),
        )

    def restart_in(self) -> float:
        """Seconds until a crashed worker starts again (0 when it is not waiting to)."""
        if self.state != "restarting" or self.restart_at is None:
            return 0.0
        return max(0.0, self.restart_at - time.monotonic())

    def occupant(self, measure: bool) -> Occupant:
        """This model as the room policy sees it; its memory only when `measure` (a budget is set:
        the estimate may stat its weight files)."""
        evictable = self.serving_worker is not None and self.is_idle
        memory = self.memory_estimate() if measure else 0
        return Occupant(self.name, memory, self.last_used or 0.0, evictable)

    def memory_estimate(self) -> int:
        """Memory measured at its last load, or else the size of its weight files."""
        if self.memory_bytes is not None:
            return self.memory_bytes
        folder = Path(self.model.path)
        weights = itertools.chain(folder.glob("*.safetensors"), folder.glob("*.bin"))
        return sum(path.stat().st_size for path in weights if path.is_file())

    # transitions

    def begin_load(self) -> None:
        self.state = "loading"

    def mark_loaded(self, worker: Worker, seconds: float) -> None:
        self.state, self.error, self.restart_at = "ready", None, None
        self.loads += 1
        self.loaded_at = self.last_used = time.time()
        self.loaded_since = time.monotonic()
        self.last_load_ms = seconds * 1000
        self.memory_bytes = worker.memory_bytes

    def mark_load_failed(self, message: str) -> None:
        """A load error repeats if tried again: the model stays failed until loaded by hand."""
        self.state, self.error, self.restart_at = "failed", message, None

    def abandon_load(self) -> None:
        """A load that did not finish (no room, shutdown, unloaded meanwhile): try again later."""
        if self.state == "loading":
            self.state = "unloaded"

    def mark_unloaded(self) -> bool:
        """The worker was ended on purpose; True when that unloaded a ready model."""
        if self.state != "ready":
            return False
        self.state = "unloaded"
        self.unloads += 1
        return True

    def record_crash(self, how: str, settings: SupervisorSettings) -> float:
        """The serving worker died: count it, and return the wait before it starts again.

        A worker that had served `stable_after` seconds starts a new streak; within a streak
        each crash doubles the wait (`restart_delay`)."""
        now = time.monotonic()
        stable = self.loaded_since is not None and now - self.loaded_since >= settings.stable_after
        self.crash_streak = 1 if stable else self.crash_streak + 1
        self.crashes += 1
        delay = restart_delay(self.crash_streak, settings)
        self.state, self.restart_at = "restarting", now + delay
        streak = f"crash {self.crash_streak} in a row; " if self.crash_streak > 1 else ""
        self.last_crash = f"worker for '{self.name}' crashed ({how})"
        self.error = f"{self.last_crash}; {streak}restarts in {delay:g} s"
        return delay

    def forget_failure(self) -> None:
        """Someone loads or unloads it by hand: a failed or crash-looping model starts afresh."""
        if self.state in ("failed", "restarting"):
            self.state = "unloaded"
        self.error, self.restart_at, self.crash_streak = None, None, 0

    def note_request(self, failed: bool) -> None:
        self.requests_total += 1
        self.requests_failed += failed
        self.last_used = time.time()

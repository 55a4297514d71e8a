"""Worker processes, one per model: start on demand, health-check, restart with backoff, evict.

The supervisor lives in the server's event loop and never imports torch. A model is loaded by
starting a worker process (`modelmora.serve.worker`) and unloaded by ending it: only the end of a
process gives all its memory, RAM and GPU, back. Workers are forked from a template process that
has torch and transformers imported already (Linux), or spawned afresh elsewhere.

    unloaded ──request / load()──► loading ──► ready ──idle, evicted, unload()──► unloaded
                                      │          │
                                      │          └──crash──► unloaded (retry after a backoff)
                                      └──load error──► failed ◄──max_crashes in crash_window

A failed model stays failed until someone loads (or unloads) it explicitly. Each worker has a
socket of its own; a reader task routes replies to requests by id, and the end of that socket means
the worker is gone: its in-flight requests fail at once with the reason (exit code or signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from modelmora.errors import DeadlineExceededError, ServeError, UnavailableError, UnknownModelError
from modelmora.runtimes import ModelSpec
from modelmora.serve.config import BatchSettings, SupervisorSettings
from modelmora.serve.launcher import Call, Launcher, Worker
from modelmora.serve.status import Batching, ModelState, ModelStatus
from modelmora.serve.worker import EXIT_LOAD_FAILED, Message

logger = logging.getLogger("modelmora.serve.supervisor")

Listener = Callable[[str, str, float], None]
T = TypeVar("T")

MAX_BACKOFF = 30.0
EXIT_REPORT_TIMEOUT = 5.0


# --- records ------------------------------------------------------------------------------------


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
    options: Mapping[str, Any] = field(default_factory=dict)
    batching: BatchSettings = field(default_factory=BatchSettings)
    """How the server's scheduler queues and batches this model's requests."""


@dataclass(frozen=True)
class InferenceResult:
    result: Any
    queue_ms: float
    load_ms: float
    inference_ms: float


# --- the supervisor -----------------------------------------------------------------------------


class LoadFailed(UnavailableError):
    """The model could not be loaded: missing file, bad weights, out of memory, crash, timeout."""


@dataclass
class Deadline:
    seconds: float
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float | None:
        if self.seconds <= 0:
            return None
        return max(0.0, self.started + self.seconds - time.monotonic())

    async def run(self, awaitable: Awaitable[T], name: str, doing: str) -> T:
        """Await with what time is left; DeadlineExceededError naming what took too long."""
        try:
            return await asyncio.wait_for(awaitable, self.remaining())
        except TimeoutError:
            raise DeadlineExceededError(
                f"model '{name}' did not answer within {self.seconds:g} s ({doing})",
                hint="pass a longer timeout, or raise the server's request timeout",
            ) from None


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
    waiting: int = 0
    in_flight: int = 0
    idle_timer: asyncio.TimerHandle | None = None
    expires_at: float | None = None
    loaded_at: float | None = None
    last_used: float | None = None
    requests_total: int = 0
    requests_failed: int = 0
    loads: int = 0
    unloads: int = 0
    crashes: int = 0
    recent_crashes: deque[float] = field(default_factory=deque)
    retry_at: float = 0.0
    last_load_ms: float | None = None
    memory_bytes: int | None = None
    error: str | None = None

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


ENDINGS = {
    "unload": ("unload", "model '{name}' was unloaded"),
    "idle": ("unload", "model '{name}' was unloaded after its keep-alive"),
    "evict": ("evict", "model '{name}' was evicted to make room for another"),
    "shutdown": ("unload", "ModelMora is shutting down"),
}


class Supervisor:
    """All the models a server offers and their worker processes; see the module docstring."""

    def __init__(self, models: Sequence[ServedModel], settings: SupervisorSettings) -> None:
        self.settings = settings
        self.slots = {model.name: Slot(model, self.default_keep_alive(model)) for model in models}
        self.launcher = Launcher(
            settings.worker_start, settings.template_imports, settings.stop_timeout
        )
        self.default_threads = default_threads(settings, len(models))
        self.listeners: list[Listener] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.watchers: set[asyncio.Task[Any]] = set()
        """One per worker: it sees the worker's end through, so stop() never cancels it."""
        self.changed = asyncio.Event()
        self.health: asyncio.Task[None] | None = None
        self.is_stopping = False

    # queries

    def names(self) -> list[str]:
        return list(self.slots)

    def model(self, name: str) -> ServedModel:
        return self.slot(name).model

    def status(self, name: str) -> ModelStatus:
        slot = self.slot(name)
        worker = slot.serving_worker
        return ModelStatus(
            name=slot.name,
            task=slot.model.task,
            source=slot.model.source,
            revision=slot.model.revision,
            state=slot.state,
            pid=slot.worker.pid if slot.worker else None,
            device=worker.device if worker else None,
            memory_bytes=worker.memory_bytes if worker else None,
            loaded_at=slot.loaded_at if worker else None,
            last_used=slot.last_used,
            expires_at=slot.expires_at if worker else None,
            in_flight=slot.in_flight,
            requests_total=slot.requests_total,
            requests_failed=slot.requests_failed,
            loads=slot.loads,
            unloads=slot.unloads,
            crashes=slot.crashes,
            last_load_ms=slot.last_load_ms,
            error=slot.error,
            batching=Batching.model_validate(dataclasses.asdict(slot.model.batching)),
        )

    def statuses(self) -> list[ModelStatus]:
        return [self.status(name) for name in self.slots]

    def is_ready(self) -> tuple[bool, list[str]]:
        """Ready: no model failed, every preloaded model came up once, the template imported."""
        reasons = [f"model '{slot.name}' failed: {slot.error}" for slot in self.failed_slots()]
        reasons += [
            f"model '{slot.name}' is preloading"
            for slot in self.slots.values()
            if slot.model.preload and slot.loads == 0 and slot.state != "failed"
        ]
        if self.launcher.is_warming_up():
            reasons.append("the worker template is still importing torch and transformers")
        if self.is_stopping:
            reasons.append("ModelMora is shutting down")
        return not reasons, reasons

    def add_listener(self, callback: Listener) -> None:
        self.listeners.append(callback)

    # lifecycle

    async def start(self) -> None:
        """Start the template (imports take seconds: start them now), health checks, preloads."""
        self.launcher.start_template()
        self.health = self.track(self.check_health())
        for slot in self.slots.values():
            if slot.model.preload:
                self.track(self.preload(slot))

    async def stop(self) -> None:
        """Stop taking requests, let in-flight ones finish (drain_timeout), then end the workers."""
        if self.is_stopping:
            return
        self.is_stopping = True
        self.notify()
        for slot in self.slots.values():
            self.cancel_idle_timer(slot)
        if self.health is not None:
            self.health.cancel()
        await self.wait_until(self.is_drained, self.settings.drain_timeout)
        await self.end_workers()
        await self.finish_tasks()
        await self.end_workers()  # one a cancelled load had just started
        await asyncio.gather(*self.watchers, return_exceptions=True)
        await self.launcher.stop()

    async def end_workers(self) -> None:
        workers = [slot.worker for slot in self.slots.values() if slot.worker is not None]
        await asyncio.gather(*(self.end_worker(worker, "shutdown") for worker in workers))

    async def load(self, name: str) -> ModelStatus:
        slot = self.slot(name)
        if slot.state == "failed":
            self.forget_failure(slot)
        await self.wait_for_unload(slot, Deadline(0))
        slot.keep_alive = self.default_keep_alive(slot.model)
        await asyncio.shield(self.load_task(slot))
        self.schedule_idle_unload(slot)
        return self.status(name)

    async def unload(self, name: str) -> ModelStatus:
        slot = self.slot(name)
        if slot.loading is not None:
            await asyncio.wait([slot.loading])
        await self.end_slot(slot, "unload")
        if slot.state == "failed":
            self.forget_failure(slot)
        return self.status(name)

    # requests

    async def infer(
        self,
        name: str,
        request: dict[str, Any],
        *,
        timeout: float | None = None,
        keep_alive: float | None = None,
    ) -> InferenceResult:
        slot = self.slot(name)
        deadline = self.deadline(timeout)
        async with self.request_scope(slot, keep_alive):
            worker, load_ms = await self.ready_worker(slot, deadline)
            async with self.in_flight(slot, worker, request, stream=False) as call:
                sent_at = time.monotonic()
                reply = await deadline.run(call.reply(), slot.name, "waiting for the worker")
        waited_ms = (sent_at - deadline.started) * 1000 - load_ms
        return InferenceResult(
            result=reply["result"],
            queue_ms=waited_ms + reply["wait_ms"],
            load_ms=load_ms,
            inference_ms=reply["compute_ms"],
        )

    async def stream(
        self,
        name: str,
        request: dict[str, Any],
        *,
        timeout: float | None = None,
        keep_alive: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Chunks as the worker makes them. The deadline bounds the wait for each next chunk."""
        slot = self.slot(name)
        deadline = self.deadline(timeout)
        async with self.request_scope(slot, keep_alive):
            worker, _ = await self.ready_worker(slot, deadline)
            async with self.in_flight(slot, worker, request, stream=True) as call:
                while True:
                    message = await deadline.run(call.reply(), slot.name, "streaming")
                    if message["kind"] != "chunk":
                        return
                    slot.last_used = time.time()  # a long stream is activity, not idleness
                    yield message["data"]
                    deadline = self.deadline(timeout)

    def set_keep_alive(self, name: str, keep_alive: float) -> None:
        """A request's keep-alive, for requests that reached the worker inside a batch."""
        slot = self.slot(name)
        slot.keep_alive = self.default_keep_alive(slot.model, keep_alive)
        self.schedule_idle_unload(slot)

    def deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self.settings.request_timeout if timeout is None else timeout)

    @contextlib.asynccontextmanager
    async def request_scope(self, slot: Slot, keep_alive: float | None) -> AsyncIterator[None]:
        """Count the request, keep the model from idling out meanwhile, set its keep-alive after."""
        if self.is_stopping:
            raise UnavailableError("ModelMora is shutting down", retry_after=5)
        slot.waiting += 1
        self.cancel_idle_timer(slot)
        try:
            yield
        except Exception:
            slot.requests_failed += 1
            raise
        finally:
            slot.waiting -= 1
            slot.requests_total += 1
            slot.last_used = time.time()
            slot.keep_alive = self.default_keep_alive(slot.model, keep_alive)
            self.schedule_idle_unload(slot)
            self.notify()

    @contextlib.asynccontextmanager
    async def in_flight(
        self, slot: Slot, worker: Worker, request: dict[str, Any], stream: bool
    ) -> AsyncIterator[Call]:
        call = worker.call(request, stream)
        slot.in_flight += 1
        try:
            yield call
        finally:
            slot.in_flight -= 1
            call.close()  # cancels the work if we stopped listening early (deadline, client gone)

    async def ready_worker(self, slot: Slot, deadline: Deadline) -> tuple[Worker, float]:
        """The model's worker, loading it first if need be; also how long the load made us wait."""
        worker = slot.serving_worker
        if worker is not None and slot.unloading is None:
            return worker, 0.0
        started = time.monotonic()
        await self.wait_for_unload(slot, deadline)
        loading = asyncio.shield(self.load_task(slot))
        worker = await deadline.run(loading, slot.name, "the model is still loading")
        return worker, (time.monotonic() - started) * 1000

    async def wait_for_unload(self, slot: Slot, deadline: Deadline) -> None:
        while slot.unloading is not None:
            await deadline.run(asyncio.shield(slot.unloading), slot.name, "the model is unloading")

    # loading

    def load_task(self, slot: Slot) -> asyncio.Task[Worker]:
        """The one load in progress for this model; a client that leaves does not cancel it."""
        if slot.loading is None:
            slot.loading = self.track(self.load_worker(slot))
            slot.loading.add_done_callback(lambda task: setattr(slot, "loading", None))
        return slot.loading

    async def load_worker(self, slot: Slot) -> Worker:
        if (worker := slot.serving_worker) is not None:
            return worker
        if slot.state == "failed":
            raise self.failed_error(slot)
        slot.state, started = "loading", time.monotonic()
        try:
            await self.wait_for_backoff(slot)
            await self.make_room(slot)
            worker = await self.start_worker(slot)
        except LoadFailed as error:
            self.note_load_failure(slot, error)
            raise
        except BaseException:
            slot.state = "unloaded"  # no room, shutting down, unloaded meanwhile: try again later
            raise
        finally:
            slot.holds_room = False
        self.note_loaded(slot, worker, started)
        return worker

    async def start_worker(self, slot: Slot) -> Worker:
        if self.is_stopping:
            raise UnavailableError("ModelMora is shutting down", retry_after=5)
        worker = await self.launcher.start(slot.name, slot.model.device)
        slot.worker = worker
        watcher = self.track(self.watch(slot, worker))
        self.watchers.add(watcher)
        watcher.add_done_callback(self.watchers.discard)
        worker.send(
            {
                "kind": "load",
                "spec": self.model_spec(slot.model),
                "sys_path": sys.path,
                "imports": self.settings.template_imports,
            }
        )
        ready = await self.wait_ready(slot, worker)
        if slot.worker is not worker:
            raise LoadFailed(f"worker for '{slot.name}' ended right after loading")
        log_load(slot.name, worker, ready)
        return worker

    async def wait_ready(self, slot: Slot, worker: Worker) -> Message:
        timeout = self.settings.load_timeout
        try:
            ready = await asyncio.wait_for(asyncio.shield(worker.ready), timeout)
        except TimeoutError:
            self.track(self.end_worker(worker, "unresponsive"))
            raise LoadFailed(f"model '{slot.name}' did not load within {timeout:g} s") from None
        if ready["kind"] == "load_failed":
            raise LoadFailed(f"model '{slot.name}' failed to load: {ready['message']}")
        return ready

    def note_loaded(self, slot: Slot, worker: Worker, started: float) -> None:
        seconds = time.monotonic() - started
        slot.state, slot.error = "ready", None
        slot.loads += 1
        slot.loaded_at = slot.last_used = time.time()
        slot.last_load_ms = seconds * 1000
        slot.memory_bytes = worker.memory_bytes
        self.emit("load", slot.name, seconds)
        self.evict_over_budget(slot)
        self.notify()

    def note_load_failure(self, slot: Slot, error: LoadFailed) -> None:
        slot.state, slot.error = "failed", error.message
        self.emit("load_failed", slot.name, 0.0)
        logger.error("%s", error.message)

    async def preload(self, slot: Slot) -> None:
        with contextlib.suppress(ServeError):
            await self.load_task(slot)
        self.schedule_idle_unload(slot)

    def model_spec(self, model: ServedModel) -> ModelSpec:
        return ModelSpec(
            name=model.name,
            task=model.task,
            path=str(model.path),
            device=model.device,
            dtype=model.dtype,
            threads=model.threads or self.default_threads,
            runtime=model.runtime,
            options=dict(model.options),
        )

    # room: max_loaded_models and memory_budget

    async def make_room(self, slot: Slot) -> None:
        """Evict idle models, least recently used first, until this one fits; else wait."""
        give_up = time.monotonic() + self.settings.load_timeout
        while not self.has_room(slot):
            victim = self.eviction_candidate(slot)
            if victim is not None:
                await self.end_slot(victim, "evict")
                continue
            if self.is_stopping or time.monotonic() > give_up:
                raise UnavailableError(
                    f"no room to load '{slot.name}': the loaded models are all busy",
                    retry_after=1,
                )
            await self.wait_for_change(give_up - time.monotonic())
        slot.holds_room = True

    def has_room(self, slot: Slot) -> bool:
        others = [
            other for other in self.slots.values() if other is not slot and other.occupies_room
        ]
        limit = self.settings.max_loaded_models
        if limit and len(others) >= limit:
            return False
        budget = self.settings.memory_budget
        if budget is None or not others:
            return True
        return sum(map(memory_estimate, others)) + memory_estimate(slot) <= budget

    def eviction_candidate(self, slot: Slot) -> Slot | None:
        idle = [
            other
            for other in self.slots.values()
            if other is not slot and other.serving_worker is not None and other.is_idle
        ]
        return min(idle, key=lambda other: other.last_used or 0.0, default=None)

    def evict_over_budget(self, loaded: Slot) -> None:
        """Measured memory can exceed the estimate a load was admitted on: evict idle others."""
        budget = self.settings.memory_budget
        if budget is None:
            return
        used = sum(memory_estimate(slot) for slot in self.slots.values() if slot.occupies_room)
        while used > budget and (victim := self.eviction_candidate(loaded)) is not None:
            used -= memory_estimate(victim)
            self.begin_unload(victim, "evict")

    # unloading

    async def end_slot(self, slot: Slot, why: str) -> None:
        await asyncio.shield(self.begin_unload(slot, why))

    def begin_unload(self, slot: Slot, why: str) -> asyncio.Task[None]:
        """The model's unload (drain, then end the worker): the one going on, or a new one.

        Set at once, so that requests arriving meanwhile wait for it and then load afresh.
        """
        if slot.unloading is None:
            slot.unloading = self.track(self.drain_and_end(slot, why))
            slot.unloading.add_done_callback(lambda task: clear_unloading(slot))
        return slot.unloading

    async def drain_and_end(self, slot: Slot, why: str) -> None:
        self.cancel_idle_timer(slot)
        await self.wait_until(lambda: slot.in_flight == 0, self.settings.drain_timeout)
        if slot.worker is not None:
            await self.end_worker(slot.worker, why)

    async def end_worker(self, worker: Worker, why: str) -> None:
        """SIGTERM, wait stop_timeout, SIGKILL; returns once its exit has been handled."""
        worker.ending = worker.ending or why
        worker.process.signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.done.wait(), self.settings.stop_timeout)
            return
        logger.warning("worker for '%s' ignored SIGTERM; killing it", worker.name)
        worker.process.signal(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):  # never hang a shutdown on one process
            await asyncio.wait_for(worker.done.wait(), 2 * EXIT_REPORT_TIMEOUT)

    def schedule_idle_unload(self, slot: Slot) -> None:
        self.cancel_idle_timer(slot)
        if self.is_stopping or slot.serving_worker is None or not slot.is_idle:
            return
        if slot.keep_alive < 0:
            return
        slot.expires_at = time.time() + slot.keep_alive
        loop = asyncio.get_running_loop()
        slot.idle_timer = loop.call_later(slot.keep_alive, self.unload_if_idle, slot)

    def unload_if_idle(self, slot: Slot) -> None:
        slot.idle_timer = None
        if slot.is_idle and slot.serving_worker is not None and not self.is_stopping:
            self.begin_unload(slot, "idle")

    def cancel_idle_timer(self, slot: Slot) -> None:
        if slot.idle_timer is not None:
            slot.idle_timer.cancel()
            slot.idle_timer = None
        slot.expires_at = None

    def default_keep_alive(self, model: ServedModel, requested: float | None = None) -> float:
        """Ollama's rule: the request's value, else the model's, else the server's."""
        if requested is not None:
            return requested
        if model.keep_alive is not None:
            return model.keep_alive
        return -1.0 if model.preload else self.settings.keep_alive

    # exits and crashes

    async def watch(self, slot: Slot, worker: Worker) -> None:
        """Wait for the worker's socket to close, learn how it exited, and clean up after it."""
        await asyncio.gather(worker.reading, return_exceptions=True)
        returncode = await self.exit_status(worker)
        if slot.worker is worker:
            slot.worker = None
        try:
            self.handle_exit(slot, worker, describe_exit(returncode))
        finally:
            worker.done.set()
            self.notify()

    async def exit_status(self, worker: Worker) -> int | None:
        try:
            return await asyncio.wait_for(worker.process.wait(), EXIT_REPORT_TIMEOUT)
        except TimeoutError:
            # The socket closed but the process lingers: make sure it is gone.
            worker.process.signal(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(worker.process.wait(), EXIT_REPORT_TIMEOUT)
            return None

    def handle_exit(self, slot: Slot, worker: Worker, how: str) -> None:
        if worker.ending in ENDINGS:
            event, message = ENDINGS[worker.ending]
            worker.fail_loading(UnavailableError(message.format(name=slot.name), retry_after=1))
            worker.fail_calls(message.format(name=slot.name), retry_after=1)
            self.note_unloaded(slot, event)
        elif not worker.is_serving:
            worker.fail_loading(
                LoadFailed(f"worker for '{slot.name}' crashed while loading ({how})")
            )
        else:
            if worker.ending == "unresponsive":
                how = f"stopped answering health checks within {self.settings.health_timeout:g} s"
            self.note_crash(slot, worker, how)

    def note_unloaded(self, slot: Slot, event: str) -> None:
        if slot.state == "ready":
            slot.state = "unloaded"
            slot.unloads += 1
        self.cancel_idle_timer(slot)
        self.emit(event, slot.name, 0.0)

    def note_crash(self, slot: Slot, worker: Worker, how: str) -> None:
        now = time.monotonic()
        slot.crashes += 1
        slot.recent_crashes.append(now)
        while slot.recent_crashes[0] < now - self.settings.crash_window:
            slot.recent_crashes.popleft()
        message = f"worker for '{slot.name}' crashed ({how})"
        logger.error("%s", message)
        self.cancel_idle_timer(slot)
        if len(slot.recent_crashes) >= self.settings.max_crashes:
            slot.state = "failed"
            slot.error = (
                f"{message}; {len(slot.recent_crashes)} crashes within "
                f"{self.settings.crash_window:g} s, so it is marked failed"
            )
            worker.fail_calls(slot.error, retry_after=None)
        else:
            slot.state, slot.error = "unloaded", message
            backoff = crash_backoff(len(slot.recent_crashes))
            slot.retry_at = now + backoff
            worker.fail_calls(f"{message}; the next request starts a new worker", backoff or 1)
        self.emit("crash", slot.name, 0.0)

    async def wait_for_backoff(self, slot: Slot) -> None:
        delay = slot.retry_at - time.monotonic()
        if delay > 0:
            await self.wait_until(lambda: self.is_stopping, delay)

    def failed_error(self, slot: Slot) -> UnavailableError:
        return UnavailableError(
            f"model '{slot.name}' has failed: {slot.error}",
            hint=f"fix the cause, then load it again (POST /models/{slot.name}/load)",
        )

    def forget_failure(self, slot: Slot) -> None:
        slot.state, slot.error, slot.retry_at = "unloaded", None, 0.0
        slot.recent_crashes.clear()

    def failed_slots(self) -> list[Slot]:
        return [slot for slot in self.slots.values() if slot.state == "failed"]

    # health

    async def check_health(self) -> None:
        """Ping every serving worker; one that stays silent for health_timeout is killed."""
        while True:
            await asyncio.sleep(self.settings.health_interval)
            for slot in self.slots.values():
                worker = slot.serving_worker
                if worker is not None and worker.ending is None and not worker.is_pinging:
                    self.track(self.ping(slot, worker))

    async def ping(self, slot: Slot, worker: Worker) -> None:
        try:
            reply = await worker.ping(self.settings.health_timeout)
        except TimeoutError:
            await self.end_worker(worker, "unresponsive")
        except ServeError:
            pass  # it has ended; watch() handles that
        else:
            worker.memory_bytes = slot.memory_bytes = reply["memory_bytes"]

    # plumbing

    def slot(self, name: str) -> Slot:
        try:
            return self.slots[name]
        except KeyError:
            raise UnknownModelError(
                f"model '{name}' is not served here",
                hint=f"the models are: {', '.join(self.slots) or 'none'}",
            ) from None

    def is_drained(self) -> bool:
        return all(slot.in_flight == 0 and slot.waiting == 0 for slot in self.slots.values())

    def notify(self) -> None:
        """Wake whoever waits for a change: a request ended, a worker ended, shutdown began."""
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_for_change(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), max(timeout, 0.0))

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        give_up = time.monotonic() + timeout
        while not predicate():
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return False
            await self.wait_for_change(remaining)
        return True

    def track(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run in the background; keep a reference, and log what fails with nobody to tell."""
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.forget_task)
        return task

    def forget_task(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, ServeError):
            logger.error("background task failed", exc_info=error)

    async def finish_tasks(self) -> None:
        """Cancel what is left (loads, pings, timers' unloads), then wait for everything."""
        for task in self.tasks - self.watchers:
            task.cancel()
        await asyncio.gather(*(self.tasks - self.watchers), return_exceptions=True)

    def emit(self, event: str, name: str, seconds: float) -> None:
        for listener in self.listeners:
            try:
                listener(event, name, seconds)
            except Exception:
                logger.exception("listener failed on %s %s", event, name)


# --- small helpers ------------------------------------------------------------------------------


def clear_unloading(slot: Slot) -> None:
    slot.unloading = None


def crash_backoff(recent_crashes: int) -> float:
    """No wait after a first crash, then 0.5 s, 1 s, 2 s ... up to MAX_BACKOFF."""
    if recent_crashes <= 1:
        return 0.0
    return float(min(0.5 * 2 ** (recent_crashes - 2), MAX_BACKOFF))


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == EXIT_LOAD_FAILED:
        return "its load failed"
    return f"exited with code {returncode}"


def memory_estimate(slot: Slot) -> int:
    """Memory measured at its last load, or else the size of its weight files."""
    if slot.memory_bytes is not None:
        return slot.memory_bytes
    folder = Path(slot.model.path)
    weights = itertools.chain(folder.glob("*.safetensors"), folder.glob("*.bin"))
    return sum(path.stat().st_size for path in weights if path.is_file())


def default_threads(settings: SupervisorSettings, models: int) -> int:
    """Split the cores between the workers that may run at once, so they do not fight."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    at_once = min(settings.max_loaded_models or models, models) or 1
    return max(1, (cores or 1) // at_once)


def log_load(name: str, worker: Worker, ready: Message) -> None:
    logger.info(
        "loaded '%s' in pid %d on %s: imports %.0f ms, weights %.0f ms, warm-up %.0f ms",
        name,
        worker.pid,
        ready["device"],
        ready["import_ms"],
        ready["load_ms"],
        ready["warmup_ms"],
    )


__all__ = [
    "InferenceResult",
    "ModelState",
    "ModelStatus",
    "ServedModel",
    "Supervisor",
    "SupervisorSettings",
]

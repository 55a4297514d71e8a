"""Worker processes, one per model: start on demand, health-check, restart with backoff, evict.

The supervisor lives in the server's event loop and never imports torch. A model is loaded by
starting a worker process (`modelmora.serve.worker`) and unloaded by ending it: only the end of a
process gives all its memory, RAM and GPU, back. Workers are forked from a template process that
has torch and transformers imported already (Linux), or spawned afresh elsewhere.

The supervisor decides; each model's `Slot` carries out its state changes (see the diagram in
`modelmora.serve.status`), the room policy is `modelmora.serve.placement`, the process machinery
`modelmora.serve.launcher`. A crashed worker is started again after a backoff that doubles with each
crash in a row (`slot.restart_delay`), as Kubernetes does with a crash loop; only a load that fails,
which would fail again, leaves a model `failed` until someone loads it again.

Each worker has a socket of its own; a reader task routes replies to requests by id, and the end of
that socket means the worker is gone: its in-flight requests fail at once with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from modelmora.errors import (
    ConflictError,
    DeadlineExceededError,
    ServeError,
    UnavailableError,
    UnknownModelError,
)
from modelmora.runtimes import ModelSpec, pinned_runtime
from modelmora.serve.config import SupervisorSettings
from modelmora.serve.launcher import Call, Launcher, Worker
from modelmora.serve.placement import Limits, eviction_order, evictions_for, fits, over_budget
from modelmora.serve.protocol import EXIT_LOAD_FAILED, ReadyMessage
from modelmora.serve.resources import ResourceMonitor, available_memory, total_memory
from modelmora.serve.slot import ServedModel, Slot
from modelmora.serve.status import ModelStatus
from modelmora.serve.tasks import TaskGroup

logger = logging.getLogger("modelmora.supervisor")

Listener = Callable[[str, str, float], None]
T = TypeVar("T")

EXIT_REPORT_TIMEOUT = 5.0


@dataclass(frozen=True)
class InferenceResult:
    result: Any
    queue_ms: float
    load_ms: float
    inference_ms: float


class LoadFailed(UnavailableError):
    """The model could not be loaded: missing file, bad weights, out of memory, crash, timeout."""


@dataclass(frozen=True)
class Deadline:
    until: float
    """time.monotonic() at which the request gives up; math.inf for never."""
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float | None:
        if math.isinf(self.until):
            return None
        return max(0.0, self.until - time.monotonic())

    async def run(self, awaitable: Awaitable[T], name: str, doing: str) -> T:
        """Await with what time is left; DeadlineExceededError naming what took too long."""
        try:
            return await asyncio.wait_for(awaitable, self.remaining())
        except TimeoutError:
            seconds = self.until - self.started
            raise DeadlineExceededError(
                f"model '{name}' did not answer within {seconds:g} s ({doing})",
                hint="pass a longer timeout, or raise the server's request timeout",
            ) from None


ENDINGS = {
    "unload": ("unload", "model '{name}' was unloaded"),
    "idle": ("unload", "model '{name}' was unloaded after its keep-alive"),
    "evict": ("evict", "model '{name}' was evicted to make room for another"),
    "shutdown": ("unload", "ModelMora is shutting down"),
}
"""Why the supervisor ended a worker: the event it emits, and what its in-flight requests hear."""


class Supervisor:
    """All the models a server offers and their worker processes; see the module docstring."""

    def __init__(self, models: Sequence[ServedModel], settings: SupervisorSettings) -> None:
        self.settings = settings
        self.slots = {model.name: Slot(model, self.default_keep_alive(model)) for model in models}
        self.launcher = Launcher(
            settings.worker_start, settings.template_imports, settings.stop_timeout
        )
        self.limits = Limits(settings.max_loaded_models, settings.memory_budget)
        self.default_threads = default_threads(settings, len(models))
        self.listeners: list[Listener] = []
        self.tasks = TaskGroup("supervisor", logger, expected=(ServeError,))
        self.watchers = TaskGroup("worker watch", logger)
        """One per worker: it sees the worker's end through, so stop() waits for it last."""
        self.changed = asyncio.Event()
        self.is_stopping = False
        self.resources = ResourceMonitor()
        self.pressure: str | None = None
        """Why memory is short now (RAM or GPU), from the last health check; None when it is not."""

    # queries

    def names(self) -> list[str]:
        return list(self.slots)

    def model(self, name: str) -> ServedModel:
        return self.slot(name).model

    def status(self, name: str) -> ModelStatus:
        return self.slot(name).status()

    def statuses(self) -> list[ModelStatus]:
        return [self.status(name) for name in self.slots]

    def is_ready(self) -> tuple[bool, list[str]]:
        """Ready: no model failed or crash-looping, preloads came up once, the template imported."""
        reasons = []
        for slot in self.slots.values():
            if slot.state == "failed":
                reasons.append(f"model '{slot.name}' failed: {slot.error}")
            elif slot.state == "restarting":
                reasons.append(f"model '{slot.name}' is crash-looping: {slot.error}")
            elif slot.model.preload and slot.loads == 0:
                reasons.append(f"model '{slot.name}' is preloading")
        if self.launcher.is_warming_up():
            reasons.append("the worker template is still importing torch and transformers")
        if self.pressure is not None:
            reasons.append(self.pressure)
        if self.is_stopping:
            reasons.append("ModelMora is shutting down")
        return not reasons, reasons

    def add(self, model: ServedModel) -> None:
        """Serve one more model (registered at run time); it loads on its first request."""
        if model.name in self.slots:
            raise ConflictError(f"model '{model.name}' is served already")
        self.slots[model.name] = Slot(model, self.default_keep_alive(model))
        if model.preload:
            self.tasks.start(self.preload(self.slots[model.name]), f"preload {model.name}")
        self.notify()

    async def remove(self, name: str) -> None:
        """Stop serving a model: its requests in flight finish, then its worker ends."""
        slot = self.slot(name)
        if slot.loading is not None:
            await asyncio.wait([slot.loading])
        await self.end_slot(slot, "unload")
        self.slots.pop(name, None)
        self.notify()

    def add_listener(self, callback: Listener) -> None:
        self.listeners.append(callback)

    @property
    def task_groups(self) -> list[TaskGroup]:
        """The owners of the supervisor's background tasks, for the failure metric."""
        return [self.tasks, self.watchers]

    # lifecycle

    async def start(self) -> None:
        """Start the template (imports take seconds: start them now), health checks, preloads."""
        self.launcher.start_template()
        self.tasks.start(self.check_health(), "health checks")
        for slot in self.slots.values():
            if slot.model.preload:
                self.tasks.start(self.preload(slot), f"preload {slot.name}")

    async def stop(self) -> None:
        """Stop taking requests, let in-flight ones finish (drain_timeout), then end the workers."""
        if self.is_stopping:
            return
        self.is_stopping = True
        self.notify()
        for slot in self.slots.values():
            self.cancel_idle_timer(slot)
        await self.wait_until(self.is_drained, self.settings.drain_timeout)
        await self.end_workers()
        await self.tasks.close()  # loads, pings, restarts, idle unloads
        await self.end_workers()  # one a cancelled load had just started
        await self.watchers.close(grace=2 * EXIT_REPORT_TIMEOUT + self.settings.stop_timeout)
        await self.launcher.stop()

    async def end_workers(self) -> None:
        workers = [slot.worker for slot in self.slots.values() if slot.worker is not None]
        await asyncio.gather(*(self.end_worker(worker, "shutdown") for worker in workers))

    async def load(self, name: str) -> ModelStatus:
        """Load by hand: also the way out of `failed` and of a crash loop's backoff."""
        slot = self.slot(name)
        slot.forget_failure()
        self.notify()  # a restart waiting out its backoff gives way
        await self.wait_for_unload(slot, Deadline(math.inf))
        slot.keep_alive = self.default_keep_alive(slot.model)
        await asyncio.shield(self.load_task(slot))
        self.schedule_idle_unload(slot)
        return self.status(name)

    async def unload(self, name: str) -> ModelStatus:
        slot = self.slot(name)
        if slot.loading is not None:
            await asyncio.wait([slot.loading])
        await self.end_slot(slot, "unload")
        slot.forget_failure()
        self.notify()  # a restart waiting out its backoff is called off
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
        if reply["kind"] != "result":
            raise ServeError(f"worker for '{name}' answered a request with {reply['kind']}")
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
        now = time.monotonic()
        return Deadline(self.settings.deadline_after(now, timeout), now)

    @contextlib.asynccontextmanager
    async def request_scope(self, slot: Slot, keep_alive: float | None) -> AsyncIterator[None]:
        """Count the request, keep the model from idling out meanwhile, set its keep-alive after."""
        if self.is_stopping:
            raise UnavailableError("ModelMora is shutting down", retry_after=5)
        slot.waiting += 1
        self.cancel_idle_timer(slot)
        failed = False
        try:
            yield
        except Exception:
            failed = True
            raise
        finally:
            slot.waiting -= 1
            slot.note_request(failed)
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
        await self.wait_for_restart(slot, deadline)
        await self.wait_for_unload(slot, deadline)
        loading = asyncio.shield(self.load_task(slot))
        worker = await deadline.run(loading, slot.name, "the model is still loading")
        return worker, (time.monotonic() - started) * 1000

    async def wait_for_restart(self, slot: Slot, deadline: Deadline) -> None:
        """Wait out a crash loop's backoff when the deadline allows, else 503 with the real wait."""
        wait = slot.restart_in()
        if wait <= 0:
            return
        remaining = deadline.remaining()
        if remaining is not None and remaining <= wait:
            raise UnavailableError(
                f"model '{slot.name}' is restarting: {slot.error}", retry_after=wait
            )
        await self.wait_until(lambda: self.is_stopping or slot.restart_in() == 0, wait)

    async def wait_for_unload(self, slot: Slot, deadline: Deadline) -> None:
        while slot.unloading is not None:
            await deadline.run(asyncio.shield(slot.unloading), slot.name, "the model is unloading")

    # loading

    def load_task(self, slot: Slot) -> asyncio.Task[Worker]:
        """The one load in progress for this model; a client that leaves does not cancel it."""
        if slot.loading is None:
            slot.loading = self.tasks.start(self.load_worker(slot), f"load {slot.name}")
            slot.loading.add_done_callback(lambda task: setattr(slot, "loading", None))
        return slot.loading

    async def load_worker(self, slot: Slot) -> Worker:
        if (worker := slot.serving_worker) is not None:
            return worker
        if slot.state == "failed":
            raise self.failed_error(slot)
        slot.begin_load()
        started = time.monotonic()
        try:
            await self.make_room(slot)
            worker = await self.start_worker(slot)
        except LoadFailed as error:
            slot.mark_load_failed(error.message)
            self.emit("load_failed", slot.name, 0.0)
            logger.error("%s", error.message)
            raise
        except BaseException:
            slot.abandon_load()
            raise
        finally:
            slot.holds_room = False
        slot.mark_loaded(worker, time.monotonic() - started)
        self.emit("load", slot.name, time.monotonic() - started)
        self.evict_over_budget(slot)
        self.notify()
        return worker

    async def start_worker(self, slot: Slot) -> Worker:
        if self.is_stopping:
            raise UnavailableError("ModelMora is shutting down", retry_after=5)
        worker = await self.launcher.start(slot.name, slot.model.device)
        slot.worker = worker
        self.watchers.start(self.watch(slot, worker), f"watch {slot.name} pid {worker.pid}")
        worker.send(
            {
                "kind": "load",
                "spec": self.model_spec(slot.model),
                "sys_path": sys.path,
                "imports": list(self.settings.template_imports),
            }
        )
        ready = await self.wait_ready(slot, worker)
        if slot.worker is not worker:
            raise LoadFailed(f"worker for '{slot.name}' ended right after loading")
        log_load(slot.name, worker, ready)
        return worker

    async def wait_ready(self, slot: Slot, worker: Worker) -> ReadyMessage:
        timeout = self.settings.load_timeout
        try:
            ready = await asyncio.wait_for(asyncio.shield(worker.ready), timeout)
        except TimeoutError:
            self.tasks.start(self.end_worker(worker, "unresponsive"), f"end {slot.name}")
            raise LoadFailed(f"model '{slot.name}' did not load within {timeout:g} s") from None
        if ready["kind"] == "load_failed":
            raise LoadFailed(f"model '{slot.name}' failed to load: {ready['message']}")
        return ready

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
            # Pinned here so that the worker imports the backend's class whatever it is told.
            runtime=pinned_runtime(model.task, model.backend, model.runtime),
            options=dict(model.options),
            backend=model.backend,
        )

    # room: max_loaded_models and memory_budget (the policy: modelmora.serve.placement)

    async def make_room(self, slot: Slot) -> None:
        """Evict idle models, least recently used first, until this one fits; else wait."""
        give_up = time.monotonic() + self.settings.load_timeout
        while (victims := self.victims_for(slot)) != []:
            if victims:
                await asyncio.gather(*(self.end_slot(self.slots[n], "evict") for n in victims))
                continue
            if self.is_stopping or time.monotonic() > give_up:
                raise UnavailableError(
                    f"no room to load '{slot.name}': the loaded models are all busy",
                    retry_after=1,
                )
            await self.wait_for_change(give_up - time.monotonic())
        await self.make_memory_room(slot)
        slot.holds_room = True

    async def make_memory_room(self, slot: Slot) -> None:
        """Keep min_available_memory free after the load: evict idle models, else refuse (503)."""
        floor = self.settings.min_available_memory.of(total_memory())
        needed = slot.memory_estimate() + floor
        for name in self.relief_for(needed - available_memory(), keep=slot.name):
            await self.end_slot(self.slots[name], "evict")
        available = available_memory()
        if available < needed:
            raise UnavailableError(
                f"not enough memory to load '{slot.name}': {available} bytes available, "
                f"it needs about {needed - floor} and the server keeps "
                f"{self.settings.min_available_memory} of RAM free (min_available_memory)",
                retry_after=10,
                hint="unload a model, or lower min_available_memory",
            )

    def relief_for(self, shortfall: int, keep: str = "") -> list[str]:
        """Idle models to evict, least recently used first, until about `shortfall` bytes free."""
        occupants = [s.occupant(True) for s in self.slots.values() if s.occupies_room]
        victims: list[str] = []
        for victim in eviction_order([o for o in occupants if o.name != keep]):
            if shortfall <= 0:
                break
            shortfall -= victim.memory
            victims.append(victim.name)
        return victims

    def victims_for(self, slot: Slot) -> list[str] | None:
        """Whom to evict for `slot` ([] when it fits now, None when it must wait)."""
        measure = self.limits.memory_budget is not None
        others = [
            other.occupant(measure)
            for other in self.slots.values()
            if other is not slot and other.occupies_room
        ]
        needed = slot.memory_estimate() if measure else 0
        return (
            [] if fits(needed, others, self.limits) else evictions_for(needed, others, self.limits)
        )

    def evict_over_budget(self, loaded: Slot) -> None:
        """Measured memory can exceed the estimate a load was admitted on: evict idle others."""
        if self.limits.memory_budget is None:
            return
        occupants = [slot.occupant(True) for slot in self.slots.values() if slot.occupies_room]
        for name in over_budget(occupants, self.limits, keep=loaded.name):
            self.begin_unload(self.slots[name], "evict")

    # unloading

    async def end_slot(self, slot: Slot, why: str) -> None:
        await asyncio.shield(self.begin_unload(slot, why))

    def begin_unload(self, slot: Slot, why: str) -> asyncio.Task[None]:
        """The model's unload (drain, then end the worker): the one going on, or a new one.

        Set at once, so that requests arriving meanwhile wait for it and then load afresh.
        """
        if slot.unloading is None:
            slot.unloading = self.tasks.start(self.drain_and_end(slot, why), f"{why} {slot.name}")
            slot.unloading.add_done_callback(lambda task: setattr(slot, "unloading", None))
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
            gone = UnavailableError(message.format(name=slot.name), retry_after=1)
            worker.fail_loading(gone)
            worker.fail_calls(gone)
            slot.mark_unloaded()
            self.cancel_idle_timer(slot)
            self.emit(event, slot.name, 0.0)
        elif not worker.is_serving:
            worker.fail_loading(
                LoadFailed(f"worker for '{slot.name}' crashed while loading ({how})")
            )
        else:
            if worker.ending == "unresponsive":
                how = f"stopped answering health checks within {self.settings.health_timeout:g} s"
            self.note_crash(slot, worker, how)

    def note_crash(self, slot: Slot, worker: Worker, how: str) -> None:
        """Fail what the worker was doing, then start it again after the crash loop's backoff."""
        delay = slot.record_crash(how, self.settings)
        logger.error("%s", slot.error)
        self.cancel_idle_timer(slot)
        worker.fail_calls(UnavailableError(slot.error or how, retry_after=max(delay, 1.0)))
        self.emit("crash", slot.name, 0.0)
        if not self.is_stopping:
            self.tasks.start(self.restart(slot, delay), f"restart {slot.name}")

    async def restart(self, slot: Slot, delay: float) -> None:
        """After the backoff, load the model again, unless someone loaded or unloaded it since."""
        await self.wait_until(lambda: self.is_stopping or slot.restart_in() == 0, delay)
        if self.is_stopping or slot.state != "restarting":
            return
        with contextlib.suppress(ServeError):
            await self.load_task(slot)
        self.schedule_idle_unload(slot)

    def failed_error(self, slot: Slot) -> UnavailableError:
        """A failed model: nothing will change by itself, so no Retry-After."""
        return UnavailableError(
            f"model '{slot.name}' has failed: {slot.error}",
            hint=f"fix the cause, then load it again (POST /models/{slot.name}/load)",
        )

    # health

    async def check_health(self) -> None:
        """Ping every serving worker; one that stays silent for health_timeout is killed."""
        while True:
            await asyncio.sleep(self.settings.health_interval)
            for slot in self.slots.values():
                worker = slot.serving_worker
                if worker is not None and worker.ending is None and not worker.is_pinging:
                    self.tasks.start(self.ping(slot, worker), f"ping {slot.name}")
            self.watch_resources()

    def watch_resources(self) -> None:
        """Sample every worker's resources; under memory pressure, evict idle models."""
        workers = {s.name: s.worker for s in self.slots.values() if s.worker is not None}
        usage = self.resources.sample(worker.pid for worker in workers.values())
        for name, worker in workers.items():
            self.slots[name].usage = usage.get(worker.pid)
        self.note_pressure(self.memory_pressure())
        if self.pressure is not None:
            for name in self.relief_for(max(self.shortfall(), 1)):
                self.begin_unload(self.slots[name], "evict")

    def memory_pressure(self) -> str | None:
        """Why memory is short now, or None: RAM below its floor, or a GPU above its fraction."""
        if self.shortfall() > 0:
            floor = self.settings.min_available_memory
            return f"memory pressure: {available_memory()} bytes of RAM available, under {floor}"
        fraction, gpu = self.settings.max_gpu_memory_fraction, self.resources.fullest_gpu()
        if fraction is not None and gpu is not None:
            used = gpu.used_bytes / gpu.total_bytes
            if used > fraction:
                return f"memory pressure: GPU {gpu.index} is {used:.0%} full, over {fraction:g}"
        return None

    def shortfall(self) -> int:
        """Bytes of RAM missing under min_available_memory (0 or less: none)."""
        floor = self.settings.min_available_memory.of(total_memory())
        return floor - available_memory()

    def note_pressure(self, pressure: str | None) -> None:
        """Log once when an episode of memory pressure begins, once when it ends."""
        if pressure is not None and self.pressure is None:
            logger.warning("%s; evicting idle models and refusing loads", pressure)
        elif pressure is None and self.pressure is not None:
            logger.info("memory pressure is over")
        self.pressure = pressure

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

    def emit(self, event: str, name: str, seconds: float) -> None:
        for listener in self.listeners:
            try:
                listener(event, name, seconds)
            except Exception:
                logger.exception("listener failed on %s %s", event, name)


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


def default_threads(settings: SupervisorSettings, models: int) -> int:
    """Split the cores between the workers that may run at once, so they do not fight."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    at_once = min(settings.max_loaded_models or models, models) or 1
    return max(1, (cores or 1) // at_once)


def log_load(name: str, worker: Worker, ready: ReadyMessage) -> None:
    logger.info(
        "loaded '%s' in pid %d on %s: imports %.0f ms, weights %.0f ms, warm-up %.0f ms",
        name,
        worker.pid,
        ready["device"],
        ready["import_ms"],
        ready["load_ms"],
        ready["warmup_ms"],
    )


__all__ = ["InferenceResult", "ServedModel", "Supervisor"]

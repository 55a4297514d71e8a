"""The job runner: stored jobs to the scheduler, per model highest priority first, a few at a time.

    JobStore ──► JobRunner: a heap per model ──take──► Scheduler (background requests)
    queued ────────────────────────────────────────on_start──► running ──► succeeded | failed
      ├── cancel() until then, in the heap or in the model's queue ──► cancelled
      └── its timeout passes while it waits ──► failed (deadline_exceeded)

Per model, the runner takes at most `slots(model)` jobs at a time (a batch worth, or one per
in-flight slot for models that do not batch) and hands them to the scheduler as background
requests: they wait in the model's queue with the live requests, by priority, but never count
against its `max_queue`, so a backlog of jobs may slow live requests and never makes them 429.

A job stays `queued` until its computation starts, that is until the scheduler dispatches its
first batch or grants its turn and calls its `on_start`, synchronously; it is `running` from then.
Until that moment `cancel()` withdraws it: from the runner's heap, or, by cancelling its task, from
the model's queue. Both happen on the event loop, so a job is either started or withdrawn, never
both, and the runner's own record decides, not the database.

A job's `timeout` counts from the moment the runner takes it for its model; a job still waiting
then fails with `deadline_exceeded`. Jobs run at least once: at start, jobs left running by a crash
or a shutdown are queued again. Every job runs as a task of the runner's TaskGroup, so an error in
its bookkeeping is logged and counted; an outcome that cannot be written is replaced by an
`internal_error` once, and if even that cannot be written the store is broken: it is logged and the
job runs again at the next start.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelmora.errors import ServeError
from modelmora.serve.jobstore import Job, JobInput, JobStore
from modelmora.serve.tasks import TaskGroup

logger = logging.getLogger("modelmora.serve.jobrunner")

MAX_PURGE_INTERVAL = 600.0
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Attempt:
    """One run of a job, as the runner hands it over."""

    taken_at: float
    """time.monotonic() when the runner took the job for its model: its timeout counts from here."""
    on_start: Callable[[], None]
    """To call, synchronously, when the job's computation starts: it is `running` from then on."""


RunJob = Callable[[Job, Attempt], Awaitable[Any]]


@dataclass(frozen=True)
class Outcome:
    """How a run ended, as the store records it."""

    result: Any = None
    error: Mapping[str, Any] | None = None


@dataclass(eq=False)
class Entry:
    """A job the runner holds, from the moment it is queued until its outcome is known."""

    job: Job
    task: asyncio.Task[None] | None = None
    """Its run, once the runner took it for its model."""
    starting: asyncio.Task[Job | None] | None = None
    """The write of its `running` state, once its computation started."""
    is_withdrawn: bool = False

    @property
    def is_started(self) -> bool:
        return self.starting is not None


class JobRunner:
    """Stored jobs to the scheduler, per model highest priority first, `slots(model)` at a time."""

    def __init__(self, store: JobStore, run: RunJob, slots: Callable[[str], int]) -> None:
        self.store = store
        self.run = run
        self.slots = slots
        self.entries: dict[str, Entry] = {}
        """The jobs whose outcome is not known yet: pending, taken or started."""
        self.pending: defaultdict[str, list[tuple[int, int, Entry]]] = defaultdict(list)
        self.active: Counter[str] = Counter()
        self.order = itertools.count()
        self.tasks = TaskGroup("jobs", logger)
        self.purging: asyncio.Task[None] | None = None
        self.is_stopping = False

    async def start(self) -> None:
        """Open the store, purge old jobs, and queue again what a crash or shutdown interrupted."""
        await self.store.open()
        await self.store.purge_finished()
        for job in await self.store.requeue_interrupted():
            self.add(job)
        self.purging = self.tasks.start(self.purge_now_and_then(), "purge")

    async def submit(
        self,
        model: str,
        input: JobInput,
        priority: int,
        timeout: float | None,
        key_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Store the job (on disk when this returns), then queue it; with an idempotency key this
        API key sent before, the job it created then, queued already (see `submit_once`)."""
        job, _ = await self.submit_once(model, input, priority, timeout, key_name, idempotency_key)
        return job

    async def submit_once(
        self,
        model: str,
        input: JobInput,
        priority: int,
        timeout: float | None,
        key_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Job, bool]:
        """`submit`, and whether the job is new (False: a retry of an earlier submission)."""
        job, is_new = await self.store.create_once(
            model, input, priority=priority, timeout=timeout, key_name=key_name,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        if is_new:
            self.add(job)
        return job, is_new

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job whose computation has not started (JobNotCancellableError once it has)."""
        entry = self.entries.get(job_id)
        if entry is not None and not entry.is_started:
            self.withdraw(entry)
        elif entry is not None and entry.starting is not None:
            await asyncio.wait({entry.starting})  # so that the store says `running`
        return await self.store.cancel(job_id)

    def stop_taking(self) -> None:
        """Start no more jobs; a job cut short by the shutdown runs again at the next start."""
        self.is_stopping = True

    async def close(self) -> None:
        """Let the jobs under way finish writing their outcome, then close the store."""
        self.is_stopping = True
        if self.purging is not None:
            self.purging.cancel()
        await self.tasks.close(CLOSE_TIMEOUT)
        await self.store.close()

    # taking jobs

    def add(self, job: Job) -> None:
        entry = self.entries[job.id] = Entry(job)
        heapq.heappush(self.pending[job.model], (-job.priority, next(self.order), entry))
        self.pump(job.model)

    def pump(self, model: str) -> None:
        pending = self.pending[model]
        while pending and not self.is_stopping and self.active[model] < self.slots(model):
            _, _, entry = heapq.heappop(pending)
            if entry.is_withdrawn:
                continue
            self.active[model] += 1
            run = self.execute(entry, time.monotonic())
            entry.task = self.tasks.start(run, f"job {entry.job.id}")

    def withdraw(self, entry: Entry) -> None:
        """Take a job back before it starts: it leaves the heap, or the model's queue."""
        entry.is_withdrawn = True
        del self.entries[entry.job.id]
        if entry.task is not None:
            entry.task.cancel()  # the scheduler takes a cancelled caller's request out

    def on_start(self, entry: Entry) -> None:
        """The scheduler starts the job's computation: it can no longer be cancelled."""
        if entry.is_withdrawn or entry.is_started:
            return
        write = self.store.mark_running(entry.job.id)
        entry.starting = self.tasks.start(write, f"start job {entry.job.id}")

    # running them

    async def execute(self, entry: Entry, taken_at: float) -> None:
        job = entry.job
        try:
            outcome = await self.attempt(entry, taken_at)
            if entry.is_withdrawn:
                return  # cancelled while its outcome was on the way
            del self.entries[job.id]  # known now: too late to cancel
            if outcome is not None:
                await self.record(entry, outcome)
        finally:
            self.active[job.model] -= 1
            self.pump(job.model)

    async def attempt(self, entry: Entry, taken_at: float) -> Outcome | None:
        """Run the job; None when the shutdown cut it short (it runs again at the next start)."""
        job = entry.job
        try:
            result = await self.run(job, Attempt(taken_at, lambda: self.on_start(entry)))
        except ServeError as error:
            if self.is_stopping:
                return None
            return Outcome(error={"code": error.code, "message": str(error)})
        except Exception as error:
            logger.exception("job %s failed", job.id)
            return Outcome(error={"code": "internal_error", "message": str(error)})
        return Outcome(result=result)

    async def record(self, entry: Entry, outcome: Outcome) -> None:
        """Write the outcome; if that fails, an internal_error instead; if that fails, raise."""
        if entry.starting is not None:
            await asyncio.wait({entry.starting})  # `running` first; it may have failed: logged
        job_id = entry.job.id
        try:
            await self.write(job_id, outcome)
        except Exception as error:
            logger.exception("job %s: its outcome could not be stored", job_id)
            message = f"the job's outcome could not be stored: {error}"
            await self.store.mark_failed(job_id, {"code": "internal_error", "message": message})

    async def write(self, job_id: str, outcome: Outcome) -> None:
        if outcome.error is not None:
            await self.store.mark_failed(job_id, outcome.error)
        else:
            await self.store.mark_succeeded(job_id, outcome.result)

    async def purge_now_and_then(self) -> None:
        interval = min(max(self.store.retention / 10, 1.0), MAX_PURGE_INTERVAL)
        while True:
            await asyncio.sleep(interval)
            await self.store.purge_finished()

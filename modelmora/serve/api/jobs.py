"""Async jobs: `POST /jobs` answers 202 at once; a runner feeds stored jobs to the scheduler.

    POST /jobs ──► JobStore (SQLite, committed before the 202) ──► JobRunner ──► Scheduler
    queued ──► running ──► succeeded | failed           DELETE /jobs/{id} while queued: cancelled

Per model, the runner hands the scheduler at most a batch worth of jobs at a time (one for models
that are not batched), highest priority first. A handed-over job is `running`: it waits in the
model's queue with the live requests, by priority, and can no longer be cancelled. A job whose
`timeout` passes is failed with `deadline_exceeded`; a full queue makes it wait, not fail.

Jobs run at least once: at start, jobs left running by a crash or a shutdown are queued again.
Finished jobs are purged after the server's `job_retention`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from modelmora.errors import OverloadedError, ServeError, UnavailableError, UnknownModelError
from modelmora.serve.api import inference
from modelmora.serve.api.http import (
    AppState,
    PydanticResponse,
    RequestValidationError,
    app_state,
    read_json,
    read_query,
)
from modelmora.serve.api.openapi import Endpoint
from modelmora.serve.api.schemas import (
    FieldError,
    InferOptions,
    JobInfo,
    JobInput,
    JobList,
    JobRequest,
    JobsQuery,
    request_schema,
)
from modelmora.serve.jobstore import Job, JobStore

logger = logging.getLogger("modelmora.serve.jobstore")

MAX_PURGE_INTERVAL = 600.0
CLOSE_TIMEOUT = 5.0

RunJob = Callable[[Job], Awaitable[Any]]


# --- schemas ------------------------------------------------------------------------------------


# --- the runner ---------------------------------------------------------------------------------


class JobRunner:
    """Stored jobs to the scheduler, per model highest priority first, `slots(model)` at a time."""

    def __init__(self, store: JobStore, run: RunJob, slots: Callable[[str], int]) -> None:
        self.store = store
        self.run = run
        self.slots = slots
        self.pending: defaultdict[str, list[tuple[int, int, Job]]] = defaultdict(list)
        self.active: Counter[str] = Counter()
        self.order = itertools.count()
        self.tasks: set[asyncio.Task[None]] = set()
        self.purging: asyncio.Task[None] | None = None
        self.is_stopping = False

    async def start(self) -> None:
        """Open the store, purge old jobs, and queue again what a crash or shutdown interrupted."""
        await self.store.open()
        await self.store.purge_finished()
        for job in await self.store.requeue_interrupted():
            self.add(job)
        self.purging = asyncio.create_task(self.purge_now_and_then())

    async def submit(
        self, model: str, input: JobInput, priority: int, timeout: float | None
    ) -> Job:
        """Store the job (on disk when this returns), then queue it."""
        job = await self.store.create(model, input, priority=priority, timeout=timeout)
        self.add(job)
        return job

    def stop_taking(self) -> None:
        """Start no more jobs; a job cut short by the shutdown runs again at the next start."""
        self.is_stopping = True

    async def close(self) -> None:
        """Let the jobs under way finish writing their outcome, then close the store."""
        self.is_stopping = True
        if self.purging is not None:
            self.purging.cancel()
            await asyncio.gather(self.purging, return_exceptions=True)
        if self.tasks:
            _, late = await asyncio.wait(set(self.tasks), timeout=CLOSE_TIMEOUT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.store.close()

    def add(self, job: Job) -> None:
        heapq.heappush(self.pending[job.model], (-job.priority, next(self.order), job))
        self.pump(job.model)

    def pump(self, model: str) -> None:
        pending = self.pending[model]
        while pending and not self.is_stopping and self.active[model] < self.slots(model):
            _, _, job = heapq.heappop(pending)
            self.active[model] += 1
            self.spawn(self.execute(job))

    async def execute(self, job: Job) -> None:
        try:
            started = await self.store.mark_running(job.id)
            if started is not None:  # else cancelled while it waited here
                await self.attempt(started)
        finally:
            self.active[job.model] -= 1
            self.pump(job.model)

    async def attempt(self, job: Job) -> None:
        try:
            result = await self.run_patiently(job)
        except ServeError as error:
            if not self.is_stopping:
                await self.store.mark_failed(job.id, {"code": error.code, "message": str(error)})
            return
        except Exception as error:
            logger.exception("job %s failed", job.id)
            await self.store.mark_failed(job.id, {"code": "internal_error", "message": str(error)})
            return
        await self.store.mark_succeeded(job.id, result)

    async def run_patiently(self, job: Job) -> Any:
        """Run the job; a queue full of live requests makes it wait its turn, not fail."""
        while True:
            try:
                return await self.run(job)
            except OverloadedError as error:
                await asyncio.sleep(error.retry_after or 1)

    async def purge_now_and_then(self) -> None:
        interval = min(max(self.store.retention / 10, 1.0), MAX_PURGE_INTERVAL)
        while True:
            await asyncio.sleep(interval)
            await self.store.purge_finished()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def job_runner(state: AppState, store: JobStore) -> JobRunner:
    """The runner of an app: jobs go through the same scheduler as the live requests."""

    async def run(job: Job) -> Any:
        return await run_job(state, job)

    return JobRunner(store, run, lambda model: job_slots(state, model))


async def run_job(state: AppState, job: Job) -> Any:
    body = job_body(state, job.model, job.input)
    timeout = job.timeout if job.timeout is not None else body.timeout
    deadline = inference.deadline_after(state.supervisor, time.monotonic(), timeout)
    queueing = inference.Admission(job.priority, deadline)
    outcome = await inference.infer(state, job.model, body.to_runtime(), queueing, body.keep_alive)
    return outcome.result


def job_slots(state: AppState, model: str) -> int:
    """Jobs handed to a model's queue at once: a full batch, or one if the model does not batch."""
    try:
        task = state.supervisor.model(model).task
    except UnknownModelError:
        return 1  # no longer served: its jobs fail one by one
    settings = state.scheduler.settings(model)
    return settings.max_batch_size if inference.is_batched(task) else settings.max_in_flight


def job_body(state: AppState, model: str, input: JobInput) -> InferOptions:
    """A job's input as the model's `/infer` request; errors name the field under `input`."""
    fields = input if isinstance(input, dict) else {"inputs": input}
    try:
        return request_schema(state.supervisor.model(model).task).model_validate(fields)
    except ValidationError as error:
        errors = RequestValidationError.from_pydantic(error).errors
        raise RequestValidationError(
            [FieldError(field=f"input.{e.field}".rstrip("."), message=e.message) for e in errors]
        ) from None


# --- routes -------------------------------------------------------------------------------------


async def create_job(request: Request) -> Response:
    """Queue a job and answer 202 with its id at once; the job is on disk by then."""
    state = app_state(request)
    runner = _runner(state)
    body = await read_json(request, JobRequest)
    request.state.model = body.model
    job_body(state, body.model, body.input)  # 404 or 422 now, not a failed job later
    priority = inference.request_priority(request, body.priority)
    job = await runner.submit(body.model, body.input, priority, body.timeout)
    headers = {"Location": f"/jobs/{job.id}"}
    return PydanticResponse(JobInfo.from_job(job), status_code=202, headers=headers)


async def get_job(request: Request) -> Response:
    """A job's state and timings, and its result or error once it is done."""
    job = await _runner(app_state(request)).store.get(request.path_params["id"])
    return PydanticResponse(JobInfo.from_job(job))


async def cancel_job(request: Request) -> Response:
    """Cancel a queued job (409 once it is running or done)."""
    job = await _runner(app_state(request)).store.cancel(request.path_params["id"])
    return PydanticResponse(JobInfo.from_job(job))


async def list_jobs(request: Request) -> Response:
    """Jobs newest first, filtered by model and state, a page at a time."""
    query = read_query(request, JobsQuery)
    page = await _runner(app_state(request)).store.list_jobs(
        model=query.model, state=query.state, page=query.page, limit=query.limit
    )
    return PydanticResponse(JobList.from_page(page))


def _runner(state: AppState) -> JobRunner:
    if state.jobs is None:
        raise UnavailableError(
            "this server keeps no jobs: it was started without a jobs file",
            hint="run `modelmora serve` in a project; jobs live in .modelmora/jobs.sqlite3",
        )
    return state.jobs


ENDPOINTS = [
    Endpoint(
        "/jobs", "POST", create_job, request=(JobRequest,), response=JobInfo, tag="jobs", status=202
    ),
    Endpoint("/jobs", "GET", list_jobs, query=JobsQuery, response=JobList, tag="jobs"),
    Endpoint("/jobs/{id}", "GET", get_job, response=JobInfo, tag="jobs"),
    Endpoint("/jobs/{id}", "DELETE", cancel_job, response=JobInfo, tag="jobs"),
]

"""The /jobs routes, and how a job runs through the app: `POST /jobs` answers 202 at once; the
JobRunner (`modelmora.serve.jobrunner`) feeds stored jobs to the scheduler as `run_job` says.

    POST /jobs ──► JobStore (SQLite, committed before the 202) ──► JobRunner ──► Scheduler
    queued ──► running ──► succeeded | failed     DELETE /jobs/{id} until it starts: cancelled

A POST with an `Idempotency-Key` header that the same API key sent before creates nothing: it
answers 200 with the job that key created (`Idempotent-Replayed: true`), so a client may retry it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from modelmora.errors import ConflictError, UnavailableError, UnknownModelError
from modelmora.serve.api import auth, images, inference, native
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
    JobList,
    JobRequest,
    JobsQuery,
    request_schema,
)
from modelmora.serve.jobrunner import Attempt, JobRunner
from modelmora.serve.jobstore import Job, JobInput, JobStore
from modelmora.serve.supervisor import InferenceResult

MAX_IDEMPOTENCY_KEY = 255


async def create_job(request: Request) -> Response:
    """Queue a job and answer 202 with its id at once; the job is on disk by then.

    A model with versions is resolved now: the job's `model` is the version that will answer it.
    """
    state = app_state(request)
    runner = _runner(state)
    body = await read_json(request, JobRequest)
    name = inference.target(request, body.model).name  # the version is chosen now, and kept
    job_body(state, name, body.input)  # 404 or 422 now, not a failed job later
    priority = inference.request_priority(request, body.priority)
    key = idempotency_key(request)
    job, is_new = await runner.submit_once(
        name, body.input, priority, body.timeout, auth.key_name(request), key
    )
    headers = {"Location": f"/jobs/{job.id}"}
    if is_new:
        return PydanticResponse(JobInfo.from_job(job), status_code=202, headers=headers)
    if job.input != body.input:
        raise ConflictError(
            f"Idempotency-Key '{key}' was sent before with another input, for job '{job.id}'",
            hint="send a new key for each job, and the same key only when retrying it",
        )
    headers["Idempotent-Replayed"] = "true"
    return PydanticResponse(JobInfo.from_job(job), status_code=200, headers=headers)


def idempotency_key(request: Request) -> str | None:
    """The `Idempotency-Key` header: a retry with the same key gets the first job back."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        message = f"send 1 to {MAX_IDEMPOTENCY_KEY} printable characters, such as a UUID"
        raise RequestValidationError([FieldError(field="Idempotency-Key", message=message)])
    return key


async def get_job(request: Request) -> Response:
    """A job's state and timings, and its result or error once it is done."""
    job = await _runner(app_state(request)).store.get(request.path_params["id"])
    return PydanticResponse(JobInfo.from_job(job))


async def cancel_job(request: Request) -> Response:
    """Cancel a job that has not started computing (409 once it is running or done)."""
    job = await _runner(app_state(request)).cancel(request.path_params["id"])
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


# --- jobs through the app's scheduler -----------------------------------------------------------


def job_runner(state: AppState, store: JobStore) -> JobRunner:
    """The runner of an app: jobs go through the same scheduler as the live requests."""

    async def run(job: Job, attempt: Attempt) -> Any:
        return await run_job(state, job, attempt, store)

    return JobRunner(store, run, lambda model: job_slots(state, model))


async def run_job(
    state: AppState, job: Job, attempt: Attempt, store: JobStore | None = None
) -> Any:
    """The job as its model's `/infer` request, queued as background work; its tokens count
    against the tokens per minute of the key that submitted it, as a request's do. `store` takes
    the progress that a text-to-image job reports."""
    body = job_body(state, job.model, job.input)
    timeout = job.timeout if job.timeout is not None else body.timeout
    deadline = state.supervisor.settings.deadline_after(attempt.taken_at, timeout)
    queueing = inference.Admission(
        job.priority, deadline, background=True, on_start=attempt.on_start
    )
    outcome = await _run(state, job, body, queueing, store)
    if state.keys is not None and job.key_name is not None:  # before the store says succeeded
        state.keys.charge(job.key_name, auth.tokens_used_by(outcome.result))
    # A large result goes to object storage (a storage outage fails the job with the reason);
    # the job keeps where it lies, as `/infer` answers it.
    inline, location = await native.stored_result(state, outcome.result)
    return inline if location is None else {"result_url": location.model_dump(mode="json")}


async def _run(
    state: AppState,
    job: Job,
    body: InferOptions,
    queueing: inference.Admission,
    store: JobStore | None,
) -> InferenceResult:
    """The job's computation; a text-to-image job reports each step as its `progress`, and its
    images go to object storage when the server has it."""
    runtime = body.to_runtime()
    if state.supervisor.model(job.model).task != images.TASK or store is None:
        return await inference.infer(state, job.model, runtime, queueing, body.keep_alive)
    report = lambda progress: store.report_progress(job.id, progress.model_dump())  # noqa: E731
    outcome = await images.generate(state, job.model, runtime, queueing, body.keep_alive, report)
    stored = await images.store_images(state, outcome.result)
    return dataclasses.replace(outcome, result=stored)


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


ENDPOINTS = [
    Endpoint(
        "/jobs", "POST", create_job, request=(JobRequest,), response=JobInfo, tag="jobs", status=202
    ),
    Endpoint("/jobs", "GET", list_jobs, query=JobsQuery, response=JobList, tag="jobs"),
    Endpoint("/jobs/{id}", "GET", get_job, response=JobInfo, tag="jobs"),
    Endpoint("/jobs/{id}", "DELETE", cancel_job, response=JobInfo, tag="jobs"),
]

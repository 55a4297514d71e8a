"""The /jobs routes: `POST /jobs` answers 202 at once; the JobRunner (`modelmora.serve.jobrunner`)
feeds stored jobs to the scheduler.

    POST /jobs ──► JobStore (SQLite, committed before the 202) ──► JobRunner ──► Scheduler
    queued ──► running ──► succeeded | failed     DELETE /jobs/{id} until it starts: cancelled
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from modelmora.errors import UnavailableError
from modelmora.serve.api import inference
from modelmora.serve.api.http import AppState, PydanticResponse, app_state, read_json, read_query
from modelmora.serve.api.openapi import Endpoint
from modelmora.serve.api.schemas import JobInfo, JobList, JobRequest, JobsQuery
from modelmora.serve.jobrunner import JobRunner, job_body


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


ENDPOINTS = [
    Endpoint(
        "/jobs", "POST", create_job, request=(JobRequest,), response=JobInfo, tag="jobs", status=202
    ),
    Endpoint("/jobs", "GET", list_jobs, query=JobsQuery, response=JobList, tag="jobs"),
    Endpoint("/jobs/{id}", "GET", get_job, response=JobInfo, tag="jobs"),
    Endpoint("/jobs/{id}", "DELETE", cancel_job, response=JobInfo, tag="jobs"),
]

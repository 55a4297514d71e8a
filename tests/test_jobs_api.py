"""Async jobs over HTTP: 202 at once, state and result, listing, cancel, and survival of a SIGKILL.

RecordingRuntime writes down every batch its worker computes, so "never computed" is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from liveserver import serve
from runtimes_for_tests import recorded_batches, text_vector
from test_cli import run
from waiting import eventually

from modelmora.errors import ModelmoraError
from modelmora.serve import config as settings
from modelmora.serve.app import create_app
from modelmora.serve.config import BatchSettings, ServerSettings, SupervisorSettings
from modelmora.serve.jobstore import JobStore
from modelmora.serve.supervisor import ServedModel, Supervisor

pytestmark = pytest.mark.slow  # a live server with worker processes, and subprocesses

RECORDING = "runtimes_for_tests:RecordingRuntime"
TESTS = Path(__file__).parent


def recording(record: Path, name: str = "rec", max_batch_size: int = 1) -> ServedModel:
    """A batched model; with batches of one, jobs queue behind each other one by one."""
    return ServedModel(
        name, "embedding", record.parent, runtime=RECORDING, device="cpu",
        options={"record": str(record)}, batching=BatchSettings(max_batch_size=max_batch_size),
    )  # fmt: skip


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "rec.jsonl"


@pytest.fixture
def http(tmp_path: Path, record: Path) -> Iterator[httpx.Client]:
    settings = SupervisorSettings(template_imports=("runtimes_for_tests",))
    wide = recording(record.with_name("wide.jsonl"), "wide", max_batch_size=4)
    supervisor = Supervisor([recording(record), wide], settings)
    app = create_app(supervisor, ServerSettings(access_log=False), tmp_path / "jobs.sqlite3")
    with serve(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


def submit(http: httpx.Client, input: Any, model: str = "rec", **fields: Any) -> str:
    response = http.post("/jobs", json={"model": model, "input": input, **fields})
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/jobs/{response.json()['id']}"
    job_id: str = response.json()["id"]
    return job_id


def wait_for_state(http: httpx.Client, job_id: str, *states: str) -> dict[str, Any]:
    def job_in_state() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
        return job if job["state"] in states else None

    return eventually(job_in_state, what=f"job {job_id} to be {' or '.join(states)}")


def test_a_job_answers_202_at_once_then_runs_to_its_result(http: httpx.Client) -> None:
    body = {"model": "rec", "input": {"inputs": ["one two", "three"]}, "priority": "high"}
    accepted = http.post("/jobs", json=body)
    job = wait_for_state(http, accepted.json()["id"], "succeeded", "failed")

    assert accepted.status_code == 202  # before the job started: it does not wait for the run
    assert accepted.json()["state"] == "queued" and accepted.json()["started_at"] is None
    assert job["state"] == "succeeded" and job["attempts"] == 1 and job["priority"] == 2
    assert job["result"]["embeddings"] == [text_vector("one two"), text_vector("three")]
    assert job["result"]["prompt_tokens"] == 3
    assert job["queue_ms"] >= 0 and job["run_ms"] > 0 and job["error"] is None


def test_jobs_are_listed_newest_first_with_filters_and_pages(http: httpx.Client) -> None:
    ids = [submit(http, f"text {i}") for i in range(3)]
    for job_id in ids:
        wait_for_state(http, job_id, "succeeded")

    first = http.get("/jobs", params={"limit": 2}).json()
    second = http.get("/jobs", params={"limit": 2, "page": 2}).json()
    none_failed = http.get("/jobs", params={"state": "failed"}).json()
    bad_state = http.get("/jobs", params={"state": "done"})

    assert first["total"] == 3 and [job["id"] for job in first["jobs"]] == ids[::-1][:2]
    assert [job["id"] for job in second["jobs"]] == ids[:1]
    assert none_failed == {"jobs": [], "page": 1, "limit": 50, "total": 0}
    assert bad_state.status_code == 422
    assert bad_state.json()["error"]["detail"][0]["field"] == "state"


def test_a_queued_job_can_be_cancelled_and_is_never_computed(
    http: httpx.Client, record: Path
) -> None:
    blocker = submit(http, "sleep:800")
    wait_for_state(http, blocker, "running")
    waiting = submit(http, "cancel me")

    cancelled = http.delete(f"/jobs/{waiting}")
    too_late = http.delete(f"/jobs/{blocker}")
    wait_for_state(http, blocker, "succeeded")
    after = submit(http, "after")
    wait_for_state(http, after, "succeeded")

    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert too_late.status_code == 409 and too_late.json()["error"]["code"] == "job_not_cancellable"
    assert http.get(f"/jobs/{waiting}").json()["state"] == "cancelled"
    assert ["cancel me"] not in recorded_batches(record)


def test_a_job_waiting_in_its_models_queue_is_queued_and_can_be_cancelled(
    http: httpx.Client, record: Path
) -> None:
    blocker = submit(http, "sleep:3000", model="wide")
    wait_for_state(http, blocker, "running")
    waiting = [submit(http, f"waiting {i}", model="wide") for i in range(3)]
    eventually(lambda: sum(http.get("/models/wide").json()["queued"].values()) == 3)

    states = [http.get(f"/jobs/{job_id}").json()["state"] for job_id in waiting]
    cancelled = [http.delete(f"/jobs/{job_id}") for job_id in waiting]
    left_in_queue = sum(http.get("/models/wide").json()["queued"].values())
    wait_for_state(http, blocker, "succeeded")

    assert states == ["queued"] * 3
    assert [response.status_code for response in cancelled] == [200] * 3
    assert [response.json()["state"] for response in cancelled] == ["cancelled"] * 3
    assert left_in_queue == 0
    assert recorded_batches(record.with_name("wide.jsonl")) == [["sleep:3000"]]


def test_queued_jobs_start_highest_priority_first(http: httpx.Client, record: Path) -> None:
    blocker = submit(http, "sleep:500")
    wait_for_state(http, blocker, "running")
    ids = [submit(http, text, priority=p) for text, p in [("low", 0), ("normal", 1), ("high", 3)]]
    for job_id in ids:
        wait_for_state(http, job_id, "succeeded")

    order = [text for batch in recorded_batches(record) for text in batch]
    assert order == ["sleep:500", "high", "normal", "low"]


def test_job_retention_is_a_serve_setting() -> None:
    config = settings.resolve({}, {}, {"job_retention": "7d"}, "modelmora.toml")

    assert config.server.job_retention == 7 * 86400
    with pytest.raises(ModelmoraError, match=r"serve\.job_retention"):
        settings.resolve({}, {}, {"job_retention": "-1"}, "modelmora.toml")


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"model": "nope", "input": "x"}, 404, None),
        ({"model": "rec", "input": {"inputs": []}}, 422, "input.inputs"),
        ({"model": "rec", "input": {"inputs": "x", "extra": 1}}, 422, "input.extra"),
        ({"model": "rec", "input": "x", "priority": "urgent"}, 422, "priority"),
    ],
)
def test_a_bad_job_is_refused_before_it_is_stored(
    http: httpx.Client, body: dict[str, Any], status: int, field: str | None
) -> None:
    response = http.post("/jobs", json=body)

    assert response.status_code == status
    if field is not None:
        assert response.json()["error"]["detail"][0]["field"] == field
    assert http.get("/jobs").json()["total"] == 0


def test_an_unknown_job_is_404(http: httpx.Client) -> None:
    response = http.get("/jobs/0123")

    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"


def test_without_a_jobs_file_the_routes_say_why() -> None:
    supervisor = Supervisor([], SupervisorSettings(template_imports=("runtimes_for_tests",)))
    with serve(create_app(supervisor)) as base:
        response = httpx.get(f"{base}/jobs")

    assert response.status_code == 503 and "jobs file" in response.json()["error"]["message"]


# The terminal


def test_modelmora_jobs_lists_the_projects_jobs_without_a_server(tmp_path: Path) -> None:
    run("init", cwd=tmp_path)
    assert "0 of 0 jobs" in run("jobs", cwd=tmp_path).stdout

    async def store_jobs() -> None:
        async with JobStore(tmp_path / ".modelmora" / "jobs.sqlite3") as store:
            await store.create("emb", "first")
            await store.create("cls", ["second"], priority=3)

    asyncio.run(store_jobs())
    listed = json.loads(run("jobs", "--json", cwd=tmp_path).stdout)
    table = run("jobs", "--model", "emb", cwd=tmp_path).stdout
    wrong = run("jobs", "--state", "done", cwd=tmp_path, check=1)

    assert [job["model"] for job in listed["jobs"]] == ["cls", "emb"] and listed["total"] == 2
    assert listed["jobs"][0]["priority"] == 3 and listed["jobs"][0]["state"] == "queued"
    assert "emb" in table and "cls" not in table and "1 of 1 job" in table
    assert "state 'done' is not one of" in wrong.stderr


# A crash of the server process


def test_jobs_survive_a_sigkill_of_the_server_and_run_after_restart(
    tmp_path: Path, record: Path
) -> None:
    jobs_path = tmp_path / "jobs.sqlite3"
    with running_server(jobs_path, record) as base:
        ids = [submit_to(base, text) for text in ("sleep:2000", "second", "third")]
        eventually(lambda: any("sleep:2000" in batch for batch in recorded_batches(record)))
    # killed with SIGKILL: the first job was running, the others queued
    with running_server(jobs_path, record) as base, httpx.Client(base_url=base) as http:
        jobs = [wait_for_state(http, job_id, "succeeded") for job_id in ids]

    assert [job["attempts"] for job in jobs] == [2, 1, 1]
    assert [job["result"]["embeddings"][0] for job in jobs] == [
        text_vector(text) for text in ("sleep:2000", "second", "third")
    ]


class running_server:
    """`run_server` in a child process; leaving the block kills it with SIGKILL."""

    def __init__(self, jobs_path: Path, record: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.script = textwrap.dedent(
            f"""
            from pathlib import Path
            from modelmora.serve.app import run_server
            from modelmora.serve.config import (
                BatchSettings, ServeConfig, ServerSettings, SupervisorSettings,
            )
            from modelmora.serve.supervisor import ServedModel
            model = ServedModel(
                "rec", "embedding", Path("."), runtime="{RECORDING}", device="cpu",
                options={{"record": "{record}"}}, batching=BatchSettings(max_batch_size=1),
            )
            settings = SupervisorSettings(template_imports=("runtimes_for_tests",))
            server = ServerSettings(port={self.port}, access_log=False, log_level="warning")
            config = ServeConfig(server=server, supervisor=settings)
            run_server([model], config, Path("{jobs_path}"))
            """
        )

    def __enter__(self) -> str:
        pythonpath = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "PYTHONPATH": pythonpath}
        self.process = subprocess.Popen([sys.executable, "-c", self.script], env=env)
        base = f"http://127.0.0.1:{self.port}"
        eventually(lambda: is_serving(base))
        return base

    def __exit__(self, *exc_info: object) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def is_serving(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health").status_code == 200
    except httpx.TransportError:
        return False


def submit_to(base: str, text: str) -> str:
    with httpx.Client(base_url=base) as http:
        return submit(http, text)

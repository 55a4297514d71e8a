"""modelmora.client against a real server: typed calls, and real failures in between (a fault
proxy's 503s, 429s and dropped connections, a server killed and started again, a stalled answer).

Nothing here measures time: waits are conditions, and the breaker's cool-down runs on a clock the
test moves by hand.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faultproxy import Fault, FaultProxy
from modelfactory import build_classification_model, build_embedding_model, build_generation_model
from servers import OUTPUTS, free_port, start_serve, stop, wait_ready
from waiting import eventually

from modelmora.client import (
    AsyncClient,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    Client,
    GrpcClient,
    RetryEvent,
    RetryPolicy,
    ServerUnreachableError,
)
from modelmora.client.calls import Call
from modelmora.errors import (
    ConflictError,
    DeadlineExceededError,
    InvalidInputError,
    JobNotCancellableError,
    OverloadedError,
    UnavailableError,
    UnknownModelError,
)
from modelmora.serve.jobstore import JobStore

QUICK = RetryPolicy(base_delay=0.01, max_delay=0.05, deadline=120)
"""Retries that wait little: the tests check what is retried, not how long it waits."""


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("client")
    build_embedding_model(base / "bert-1", seed=1)
    build_embedding_model(base / "bert-2", seed=2)
    build_classification_model(base / "cls")
    build_generation_model(base / "gen")
    return project_in(base / "demo")


def project_in(root: Path) -> Path:
    """A project of the models built by `project`: a server each, so none runs another's jobs."""
    root.mkdir()
    (root / "modelmora.toml").write_text(
        '[project]\nname = "demo"\n\n[serve]\nkeep_alive = "10m"\n\n'
        '[models.bert]\ntask = "embedding"\nroute = { v1 = 50, v2 = 50 }\n\n'
        '[models.bert.versions.v1]\nsource = "../bert-1"\n\n'
        '[models.bert.versions.v2]\nsource = "../bert-2"\n\n'
        '[models.cls]\nsource = "../cls"\ntask = "text-classification"\n\n'
        '[models.gen]\nsource = "../gen"\ntask = "text-generation"\n'
    )
    return root


@pytest.fixture(scope="module")
def url(project: Path) -> Iterator[str]:
    url, process = start_serve(project, "--preload", "cls", "--preload", "gen")
    try:
        yield url
    finally:
        stop(process)


@pytest.fixture
def proxy(url: str) -> Iterator[FaultProxy]:
    with FaultProxy(url) as proxy:
        yield proxy


pytestmark = pytest.mark.slow  # a real server, and a fault proxy in front of it


# typed calls


def test_typed_calls_say_which_version_answered(url: str) -> None:
    with Client(url, route_key="user-7") as client:
        first = client.embed("bert", ["hello world", "again"])
        again = client.embed("bert", ["hello world"])
        pinned = client.embed("bert@v2", ["hello world"], normalize=True)
        labels = client.classify("cls", "a good movie", top_k=2)
        generated = client.generate("gen", "hello", max_new_tokens=3, temperature=0)
        streamed = "".join(client.stream("gen", "hello", max_new_tokens=3, temperature=0))
        statuses = {status.name: status.state for status in client.models()}

    assert len(first.vectors) == 2 and len(first.vectors[0]) == 32 and first.tokens > 0
    assert first.version in ("v1", "v2") and again.version == first.version  # the route key
    assert pinned.version == "v2"
    assert [p.label for p in labels] in (["negative", "positive"], ["positive", "negative"])
    assert labels.model == "cls" and labels.version is None and labels[0].score >= labels[1].score
    assert generated.completion_tokens == 3 and streamed == generated.text
    assert statuses["cls"] == "ready" and statuses["gen"] == "ready"


def test_async_client_does_the_same(url: str) -> None:
    async def calls() -> tuple[Any, ...]:
        async with AsyncClient(url) as client:
            vectors = await client.embed("bert@v1", ["hi"])
            chunks = [chunk async for chunk in client.stream("gen", "hi", max_new_tokens=2)]
            job = await client.jobs.submit("cls", "fine", priority="high")
            done = await client.jobs.wait(job.id, timeout=120, poll=0.2)
            status = await client.status("cls")
            return vectors, chunks, done, status

    vectors, chunks, done, status = asyncio.run(calls())
    assert vectors.version == "v1" and chunks and done.state == "succeeded"
    assert done.result["predictions"][0][0]["label"] and status.name == "cls"


def test_jobs_submit_get_wait_cancel(url: str) -> None:
    with Client(url) as client:
        job = client.jobs.submit("bert@v1", ["one", "two"])
        done = client.jobs.wait(job.id, timeout=120, poll=0.2)
        with pytest.raises(JobNotCancellableError, match="only a queued job"):
            client.jobs.cancel(job.id)
    assert job.state in ("queued", "running", "succeeded") and not job.is_replayed
    assert done.state == "succeeded" and len(done.result["embeddings"]) == 2


# retries


def test_503s_are_retried_and_each_retry_is_reported(proxy: FaultProxy) -> None:
    events: list[RetryEvent] = []
    policy = RetryPolicy(base_delay=0.01, max_delay=0.05, on_retry=events.append)
    proxy.inject(Fault("status", 503, times=2, path="/infer/"))
    with Client(proxy.url, retry=policy) as client:
        vectors = client.embed("bert", ["hello"])

    assert len(vectors.vectors) == 1
    assert [(e.retry, e.reason, e.path) for e in events] == [
        (1, "503", "/infer/bert"),
        (2, "503", "/infer/bert"),
    ]
    assert all(0 <= e.delay <= 0.05 for e in events)  # full jitter, within the cap
    assert (client.counters.calls, client.counters.attempts, client.counters.retries) == (1, 3, 2)
    assert client.breaker.state == "closed" and client.breaker.counters.failures == 0


def test_429_waits_what_retry_after_says(proxy: FaultProxy) -> None:
    events: list[RetryEvent] = []
    proxy.inject(Fault("status", 429, retry_after="1", path="/infer/"))
    with Client(proxy.url, retry=RetryPolicy(on_retry=events.append)) as client:
        labels = client.classify("cls", "fine")

    assert labels and [(e.reason, e.delay) for e in events] == [("429", 1.0)]
    assert client.breaker.counters.failures == 0  # a 429 is no failure of the server


def test_gives_up_after_max_attempts_with_the_last_error(proxy: FaultProxy) -> None:
    proxy.inject(Fault("status", 502, times=10, path="/infer/"))
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)
    with (
        Client(proxy.url, retry=policy, breaker=CircuitBreaker(failure_threshold=100)) as client,
        pytest.raises(UnavailableError),
    ):
        client.embed("bert", ["x"])
    assert len(proxy.requests_to("POST", "/infer/bert")) == 3
    assert (client.counters.retries, client.counters.gave_up) == (2, 1)


def test_retry_after_beyond_the_deadline_gives_up_at_once(proxy: FaultProxy) -> None:
    proxy.inject(Fault("status", 429, retry_after="3600", path="/infer/"))
    with (
        Client(proxy.url, retry=RetryPolicy(deadline=60)) as client,
        pytest.raises(OverloadedError) as raised,
    ):
        client.embed("bert", ["x"])
    assert raised.value.retry_after == 3600 and client.counters.gave_up == 1
    assert len(proxy.requests_to("POST", "/infer/bert")) == 1


@pytest.mark.parametrize(
    ("model", "options", "error"),
    [("nope", {}, UnknownModelError), ("cls", {"top_k": 0}, InvalidInputError)],
)
def test_no_retry_on_404_or_422(
    proxy: FaultProxy, model: str, options: dict[str, Any], error: type[Exception]
) -> None:
    events: list[RetryEvent] = []
    with (
        Client(proxy.url, retry=RetryPolicy(on_retry=events.append)) as client,
        pytest.raises(error),
    ):
        client.classify(model, "x", **options)
    assert events == [] and len(proxy.requests_to("POST", f"/infer/{model}")) == 1
    assert client.counters.retries == 0 and client.breaker.counters.failures == 0


def test_a_dropped_connection_is_retried_for_an_idempotent_call(proxy: FaultProxy) -> None:
    proxy.inject(Fault("drop", path="/infer/"), Fault("drop_after_forward", path="/infer/"))
    with Client(proxy.url, retry=QUICK) as client:
        generated = client.generate("gen", "hi", max_new_tokens=2)
    assert generated.text is not None and client.counters.retries == 2
    assert [seen.fault for seen in proxy.requests_to("POST", "/infer/gen")] == [
        "drop",
        "drop_after_forward",
        None,
    ]


def test_a_call_that_acts_twice_is_not_resent(proxy: FaultProxy) -> None:
    proxy.inject(Fault("drop_after_forward", path="/jobs", method="POST"))
    body = {"model": "cls", "input": "once"}
    once = Call("POST", "/jobs", lambda response: response, body, may_resend=False)
    with (
        Client(proxy.url, retry=QUICK) as client,
        pytest.raises(ServerUnreachableError, match="start one with `modelmora serve`"),
    ):
        client.send(once)
    assert len(proxy.requests_to("POST", "/jobs")) == 1 and client.counters.retries == 0


def test_a_job_submission_whose_answer_is_lost_makes_one_job(proxy: FaultProxy) -> None:
    proxy.inject(Fault("drop_after_forward", path="/jobs", method="POST"))
    with Client(proxy.url, retry=QUICK) as client:
        job = client.jobs.submit("cls", "exactly once, please")
        listed = httpx.get(f"{proxy.upstream}/jobs", params={"limit": 1000}).json()["jobs"]

    posts = proxy.requests_to("POST", "/jobs")
    keys = {seen.headers["Idempotency-Key"] for seen in posts}
    assert [seen.fault for seen in posts] == ["drop_after_forward", None] and len(keys) == 1
    assert job.is_replayed and client.counters.retries == 1
    assert [j["id"] for j in listed if j["input"] == "exactly once, please"] == [job.id]


def test_the_server_returns_the_first_job_for_a_key_and_refuses_another_input(url: str) -> None:
    headers = {"Idempotency-Key": "order-42"}
    with httpx.Client(base_url=url, headers=headers) as http:
        first = http.post("/jobs", json={"model": "cls", "input": "a"})
        second = http.post("/jobs", json={"model": "cls", "input": "a"})
        other = http.post("/jobs", json={"model": "cls", "input": "b"})
        bad = http.post(
            "/jobs", json={"model": "cls", "input": "a"}, headers={"Idempotency-Key": ""}
        )

    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["Location"] == f"/jobs/{first.json()['id']}"
    assert other.status_code == 409 and other.json()["error"]["code"] == ConflictError.code
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["error"]["message"]


def test_a_deadline_shorter_than_the_work_ends_the_call(proxy: FaultProxy) -> None:
    proxy.inject(Fault("stall", path="/infer/", times=1000))
    policy = RetryPolicy(base_delay=0.01, max_delay=0.05, deadline=2.0)
    breaker = CircuitBreaker(failure_threshold=1000)
    with (
        Client(proxy.url, timeout=0.5, retry=policy, breaker=breaker) as client,
        pytest.raises(DeadlineExceededError, match="did not answer POST /infer/bert in time"),
    ):
        client.embed("bert", ["x"])
    assert client.counters.gave_up == 1 and client.counters.attempts >= 1
    proxy.release()


# the circuit breaker


def serve_on(project: Path, port: int) -> subprocess.Popen[str]:
    """`modelmora serve` on this port, once ready: `start_serve` picks a new port each time."""
    files = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))  # noqa: SIM115 - stop()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelmora", "serve", "--preload", "cls"], cwd=project,
        env={**os.environ, "MODELMORA_PORT": str(port)}, stdout=files[0], stderr=files[1],
        text=True,
    )  # fmt: skip
    OUTPUTS[process.pid] = files
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
    except BaseException:
        stop(process)
        raise
    return process


def test_the_breaker_opens_fails_fast_then_probes_and_closes(project: Path) -> None:
    solo = project.parent / "solo"  # a project of its own: its server must not run demo's jobs
    solo.mkdir()
    (solo / "modelmora.toml").write_text(
        '[project]\nname = "solo"\n\n'
        '[models.cls]\nsource = "../cls"\ntask = "text-classification"\n'
    )
    port = free_port()
    process = serve_on(solo, port)
    changes: list[tuple[BreakerState, BreakerState]] = []
    clock = ManualClock()
    breaker = CircuitBreaker(
        failure_threshold=2, cool_down=30, clock=clock,
        on_state_change=lambda old, new: changes.append((old, new)),
    )  # fmt: skip
    no_retries = RetryPolicy(max_attempts=1)
    with Client(f"http://127.0.0.1:{port}", retry=no_retries, breaker=breaker) as client:
        assert client.classify("cls", "up")
        stop(process)
        for _ in range(2):
            with pytest.raises(ServerUnreachableError):
                client.classify("cls", "down")
        assert breaker.state == "open"
        with pytest.raises(CircuitOpenError, match="fail fast"):
            client.classify("cls", "fails fast, nothing sent")

        clock.now += 30  # the cool-down: one probe goes through, fails, and it opens again
        with pytest.raises(ServerUnreachableError):
            client.classify("cls", "probe while down")
        assert breaker.state == "open"

        process = serve_on(solo, port)
        try:
            with pytest.raises(CircuitOpenError):
                client.classify("cls", "up again, but the breaker is still open")
            clock.now += 30
            assert client.classify("cls", "the probe succeeds")
            assert client.classify("cls", "closed again")
        finally:
            stop(process)

    assert changes == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    counters = breaker.counters
    assert (counters.opened, counters.half_opened, counters.closed, counters.rejected) == (
        2,
        2,
        1,
        2,
    )


def test_a_half_open_breaker_lets_one_probe_through() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, cool_down=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    breaker.before_call("http://server")  # the probe
    with pytest.raises(CircuitOpenError):
        breaker.before_call("http://server")  # a second caller meanwhile
    breaker.release_probe()  # the probe was cancelled: neither an answer nor a failure
    breaker.before_call("http://server")  # another call probes instead
    breaker.record_success()
    breaker.before_call("http://server")
    assert breaker.state == "closed"


# the job store's idempotency keys


def test_idempotency_keys_are_per_api_key_and_added_to_older_files(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)  # a file from before idempotency keys
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        " model TEXT NOT NULL, input TEXT NOT NULL, priority INTEGER NOT NULL, timeout REAL,"
        " state TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL,"
        " attempts INTEGER NOT NULL DEFAULT 0, result TEXT, error TEXT, key_name TEXT);"
        " INSERT INTO jobs (id, model, input, priority, state, created_at)"
        " VALUES ('old', 'emb', '\"hi\"', 1, 'queued', 1.0);"
    )
    old.close()

    async def scenario() -> list[Any]:
        async with JobStore(path) as store:
            first, is_new = await store.create_once("emb", "a", idempotency_key="k")
            again, again_new = await store.create_once("emb", "a", idempotency_key="k")
            other_key, _ = await store.create_once("emb", "a", key_name="app", idempotency_key="k")
            without = await store.create("emb", "a")
            older = await store.get("old")
            return [first, is_new, again, again_new, other_key, without, older]

    first, is_new, again, again_new, other_key, without, older = asyncio.run(scenario())
    assert is_new and not again_new and again.id == first.id and first.idempotency_key == "k"
    assert other_key.id != first.id and without.id != first.id
    assert older.idempotency_key is None and older.state == "queued"


# the Open Inference Protocol over gRPC


@pytest.fixture(scope="module")
def grpc_target(project: Path) -> Iterator[str]:
    pytest.importorskip("grpc")
    port = free_port()
    grpc_project = project_in(project.parent / "grpc")
    _, process = start_serve(grpc_project, "--grpc-port", str(port), "--preload", "cls")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


def test_grpc_calls_say_which_version_answered(grpc_target: str) -> None:
    with GrpcClient(grpc_target, route_key="user-7") as client:
        assert eventually(client.is_ready, what="the gRPC server to be ready")
        first = client.embed("bert", ["hello world", "again"])
        again = client.embed("bert", ["hello world"])
        pinned = client.embed("bert@v1", ["hello world"])
        labels = client.classify("cls", "a good movie", top_k=2)
        generated = client.generate("gen", "hello", max_new_tokens=3, temperature=0.0)

    assert len(first.vectors) == 2 and len(first.vectors[0]) == 32
    assert (
        first.version in ("v1", "v2") and again.version == first.version and pinned.version == "v1"
    )
    assert {p.label for p in labels} == {"negative", "positive"} and labels.version is None
    assert generated.text and generated.finish_reason == "length"
    assert client.counters.retries == 0


@pytest.mark.parametrize(
    ("model", "top_k", "error"),
    [("nope", None, UnknownModelError), ("cls", 0, InvalidInputError)],
)
def test_grpc_no_retry_on_not_found_or_invalid_argument(
    grpc_target: str, model: str, top_k: int | None, error: type[Exception]
) -> None:
    events: list[RetryEvent] = []
    with (
        GrpcClient(grpc_target, retry=RetryPolicy(on_retry=events.append)) as client,
        pytest.raises(error),
    ):
        client.classify(model, "x", top_k=top_k)
    assert events == [] and client.breaker.counters.failures == 0


def test_grpc_retries_an_unavailable_server_then_the_breaker_fails_fast() -> None:
    pytest.importorskip("grpc")
    events: list[RetryEvent] = []
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, on_retry=events.append)
    breaker = CircuitBreaker(failure_threshold=2, cool_down=3600)
    with GrpcClient(f"127.0.0.1:{free_port()}", retry=policy, breaker=breaker) as client:
        with pytest.raises(ServerUnreachableError, match="--grpc-port"):
            client.embed("bert", ["nobody listens"])
        with pytest.raises(CircuitOpenError):
            client.embed("bert", ["fails fast"])
    assert [event.reason for event in events] == ["503"] and breaker.state == "open"
    assert (client.counters.attempts, client.counters.gave_up, breaker.counters.rejected) == (
        2,
        1,
        1,
    )

"""Jobs: the store (lifecycle, listing, cancel, durability across a reopen and a kill, purge), then
the runner that feeds it to a real scheduler whose dispatch the test holds and releases.

Tests wait for conditions, never for a fixed time, and assert no upper bound on a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modelmora.errors import InvalidInputError, OverloadedError
from modelmora.serve.api.http import AppState
from modelmora.serve.api.jobs import job_runner
from modelmora.serve.batching import Batch, BatchOutput
from modelmora.serve.config import BatchSettings, ServerSettings, SupervisorSettings
from modelmora.serve.jobrunner import JobRunner
from modelmora.serve.jobstore import Job, JobNotCancellableError, JobNotFoundError, JobStore
from modelmora.serve.scheduler import Scheduler
from modelmora.serve.supervisor import ServedModel, Supervisor

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
MODEL = "emb"


def with_store(path: Path, use: Callable[[JobStore], Awaitable[T]]) -> T:
    async def scenario() -> T:
        async with JobStore(path) as store:
            return await use(store)

    return asyncio.run(scenario())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / ".modelmora" / "jobs.sqlite3"


def test_a_job_goes_from_queued_to_running_to_succeeded_with_timings(db: Path) -> None:
    async def use(store: JobStore) -> None:
        job = await store.create("minilm", {"inputs": ["hi"]}, priority=2, timeout=30)
        assert (job.state, job.input, job.priority, job.timeout) == (
            "queued",
            {"inputs": ["hi"]},
            2,
            30,
        )
        assert len(job.id) == 32 and job.queue_ms is None
        running = await store.mark_running(job.id)
        assert running is not None and running.state == "running" and running.attempts == 1
        done = await store.mark_succeeded(job.id, {"embeddings": [[0.5, 0.25]]})
        assert done.state == "succeeded" and done.result == {"embeddings": [[0.5, 0.25]]}
        assert done.queue_ms is not None and done.run_ms is not None and done.run_ms >= 0
        assert (await store.get(job.id)) == done

    with_store(db, use)


def test_a_failed_job_keeps_its_error(db: Path) -> None:
    async def use(store: JobStore) -> None:
        job = await store.create("minilm", {"inputs": "x"})
        await store.mark_running(job.id)
        failed = await store.mark_failed(job.id, {"code": "deadline_exceeded", "message": "slow"})
        assert failed.state == "failed" and failed.error == {
            "code": "deadline_exceeded",
            "message": "slow",
        }
        assert failed.result is None and failed.is_finished

    with_store(db, use)


def test_list_filters_by_model_and_state_and_pages_newest_first(db: Path) -> None:
    async def use(store: JobStore) -> None:
        ids = [(await store.create(f"model{i % 2}", {"n": i})).id for i in range(7)]
        await store.mark_running(ids[0])
        everything = await store.list_jobs(limit=3)
        assert (everything.total, [j.id for j in everything.jobs]) == (7, ids[6:3:-1])
        last_page = await store.list_jobs(limit=3, page=3)
        assert [j.id for j in last_page.jobs] == [ids[0]]
        model0 = await store.list_jobs(model="model0")
        assert [j.input["n"] for j in model0.jobs] == [6, 4, 2, 0]
        queued0 = await store.list_jobs(model="model0", state="queued")
        assert queued0.total == 3
        running = await store.list_jobs(state="running")
        assert [j.id for j in running.jobs] == [ids[0]]
        with pytest.raises(InvalidInputError):
            await store.list_jobs(state="done")

    with_store(db, use)


def test_cancel_takes_only_queued_jobs(db: Path) -> None:
    async def use(store: JobStore) -> None:
        queued = await store.create("m", "a")
        started = await store.create("m", "b")
        await store.mark_running(started.id)
        cancelled = await store.cancel(queued.id)
        assert cancelled.state == "cancelled" and cancelled.finished_at is not None
        assert (await store.cancel(queued.id)).state == "cancelled", "twice is fine"
        assert await store.mark_running(queued.id) is None, "a cancelled job never starts"
        with pytest.raises(JobNotCancellableError, match="running") as caught:
            await store.cancel(started.id)
        assert caught.value.status == 409
        with pytest.raises(JobNotFoundError) as missing:
            await store.cancel("nope")
        assert missing.value.status == 404

    with_store(db, use)


def test_jobs_survive_a_reopen_and_interrupted_ones_are_queued_again(db: Path) -> None:
    async def before(store: JobStore) -> list[str]:
        ids = [(await store.create("m", i, priority=i)).id for i in range(4)]
        await store.mark_running(ids[1])  # the server dies while this one runs
        await store.mark_running(ids[3])
        await store.mark_succeeded(ids[3], "done")
        return ids

    ids = with_store(db, before)

    async def after(store: JobStore) -> None:
        again = await store.requeue_interrupted()
        assert [j.id for j in again] == [ids[2], ids[1], ids[0]], "highest priority first"
        assert all(j.state == "queued" and j.started_at is None for j in again)
        assert (await store.get(ids[3])).result == "done"
        restarted = await store.mark_running(ids[1])
        assert restarted is not None and restarted.attempts == 2

    with_store(db, after)


@pytest.mark.slow
def test_an_accepted_job_is_on_disk_even_if_the_process_is_killed(db: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from pathlib import Path
        from modelmora.serve.jobstore import JobStore

        async def main():
            store = await JobStore(Path({str(db)!r})).open()
            job = await store.create("m", {{"inputs": "x"}})
            print(job.id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint

        asyncio.run(main())
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert child.returncode == -9, child.stderr
    job_id = child.stdout.strip()

    async def use(store: JobStore) -> None:
        assert [j.id for j in await store.requeue_interrupted()] == [job_id]

    with_store(db, use)


@pytest.mark.slow
def test_purge_removes_only_jobs_finished_long_enough_ago(db: Path) -> None:
    async def use(store: JobStore) -> None:
        old = await store.cancel((await store.create("m", 1)).id)
        assert old.finished_at is not None
        while time.time() <= old.finished_at + 1:  # the clock moves on: `recent` finishes later
            await asyncio.sleep(0.05)
        recent = await store.create("m", 2)
        await store.mark_running(recent.id)
        await store.mark_succeeded(recent.id, 2)
        waiting = await store.create("m", 3)
        assert await store.purge_finished() == 0, "the default retention is a day"
        assert await store.purge_finished(older_than=time.time() - old.finished_at - 0.5) == 1
        assert {j.id for j in (await store.list_jobs()).jobs} == {recent.id, waiting.id}
        assert await store.purge_finished(older_than=-1) == 1, "a queued job is never purged"

    with_store(db, use)


def test_store_must_be_open() -> None:
    async def use() -> None:
        with pytest.raises(RuntimeError, match="not open"):
            await JobStore(Path("unused.sqlite3")).get("x")

    asyncio.run(use())


def test_a_job_that_fails_before_it_starts_is_failed_from_queued(db: Path) -> None:
    async def use(store: JobStore) -> None:
        job = await store.create("m", "x")
        failed = await store.mark_failed(job.id, {"code": "deadline_exceeded", "message": "late"})
        assert failed.state == "failed" and failed.started_at is None and failed.attempts == 0
        cancelled = await store.cancel((await store.create("m", "y")).id)
        assert (await store.mark_succeeded(cancelled.id, "late")).state == "cancelled"

    with_store(db, use)


# The runner, with a real scheduler and store, and a worker the test holds


class FakeWorker:
    """The scheduler's dispatch: records every batch, and holds it while `gate` is shut."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, ...]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, batch: Batch) -> BatchOutput:
        self.batches.append(batch.inputs)
        await self.gate.wait()
        return BatchOutput([{"embeddings": [len(t)], "input_tokens": 1} for t in batch.inputs])

    @property
    def inputs_seen(self) -> list[str]:
        return [text for batch in self.batches for text in batch]


@dataclass
class Served:
    runner: JobRunner
    scheduler: Scheduler
    worker: FakeWorker

    @property
    def store(self) -> JobStore:
        return self.runner.store

    def queued(self) -> int:
        """Requests waiting in the model's queue (jobs the runner handed over included)."""
        return sum(self.scheduler.depth(MODEL).values())

    async def submit(self, input: Any, priority: int = 1, timeout: float | None = None) -> Job:
        return await self.runner.submit(MODEL, input, priority, timeout)

    async def live(self, inputs: list[str]) -> Any:
        """A live request, as /infer sends it."""
        return await self.scheduler.submit(MODEL, inputs, {"normalize": True})

    async def state_of(self, job: Job, *states: str) -> Job:
        """The job once it is in one of `states`."""
        while (now := await self.store.get(job.id)).state not in states:
            await asyncio.sleep(0.005)
        return now


@contextlib.asynccontextmanager
async def serving(db: Path, **batching: Any) -> AsyncIterator[Served]:
    """The app's runner and scheduler around one embedding model; a shutdown when it ends."""
    worker = FakeWorker()
    model = ServedModel(MODEL, "embedding", db.parent, batching=BatchSettings(**batching))
    supervisor = Supervisor([model], SupervisorSettings(request_timeout=30))
    scheduler = Scheduler(worker, lambda name: supervisor.model(name).batching)
    state = AppState(supervisor=supervisor, settings=ServerSettings(), scheduler=scheduler)
    runner = job_runner(state, JobStore(db))
    await runner.start()
    try:
        yield Served(runner, scheduler, worker)
    finally:
        runner.stop_taking()
        await scheduler.close(drain_timeout=0)
        await runner.close()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def start(coroutine: Awaitable[T]) -> asyncio.Task[T]:
    return asyncio.ensure_future(coroutine)


def test_a_job_stays_queued_in_the_models_queue_until_its_batch_leaves_and_cancels_there(
    db: Path,
) -> None:
    async def scenario() -> None:
        async with serving(db, max_batch_size=4) as served:
            served.worker.gate.clear()
            blocker = await served.submit("blocker")
            await until(lambda: len(served.worker.batches) == 1)
            waiting = [await served.submit(f"waiting {i}") for i in range(3)]
            await until(lambda: served.queued() == 3)  # handed to the scheduler, behind the blocker

            states = [(await served.store.get(job.id)).state for job in waiting]
            cancelled = [await served.runner.cancel(job.id) for job in waiting]
            await until(lambda: served.queued() == 0)
            running = await served.state_of(blocker, "running")
            with pytest.raises(JobNotCancellableError) as too_late:
                await served.runner.cancel(blocker.id)
            served.worker.gate.set()
            done = await served.state_of(blocker, "succeeded")

        assert states == ["queued"] * 3
        assert [job.state for job in cancelled] == ["cancelled"] * 3
        assert running.attempts == 1 and too_late.value.status == 409
        assert done.result == {"embeddings": [[7]], "prompt_tokens": 1}
        assert served.worker.inputs_seen == ["blocker"]

    run(scenario)


def test_every_job_that_has_not_started_can_be_cancelled_among_many(db: Path) -> None:
    async def scenario() -> None:
        async with serving(db, max_batch_size=8) as served:
            served.worker.gate.clear()
            blocker = await served.submit("blocker")
            await until(lambda: len(served.worker.batches) == 1)
            jobs = [await served.submit(f"job {i}", priority=i % 4) for i in range(200)]
            await until(lambda: served.queued() == 7)  # the rest wait in the runner
            cancelled = [await served.runner.cancel(job.id) for job in jobs]
            await until(lambda: served.queued() == 0)
            served.worker.gate.set()
            await served.state_of(blocker, "succeeded")

        assert {job.state for job in cancelled} == {"cancelled"}
        assert served.worker.inputs_seen == ["blocker"]

    run(scenario)


def test_a_job_whose_outcome_cannot_be_stored_ends_failed_with_internal_error(
    db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def refuse(*args: Any) -> Job:
        raise sqlite3.OperationalError("disk I/O error")

    async def scenario() -> None:
        async with serving(db) as served:
            monkeypatch.setattr(served.store, "mark_succeeded", refuse)
            job = await served.submit("x")
            failed = await served.state_of(job, "failed", "succeeded")

        assert failed.error is not None and failed.error["code"] == "internal_error"
        assert "disk I/O error" in failed.error["message"]
        assert f"job {job.id}: its outcome could not be stored" in caplog.text

    run(scenario)


def test_when_the_store_is_broken_the_job_is_logged_and_runs_again_at_the_next_start(
    db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def refuse(*args: Any) -> Job:
        raise sqlite3.OperationalError("disk I/O error")

    async def scenario() -> None:
        async with serving(db) as served:
            monkeypatch.setattr(served.store, "mark_succeeded", refuse)
            monkeypatch.setattr(served.store, "mark_failed", refuse)
            job = await served.submit("x")
            await until(lambda: served.runner.tasks.failures == 1)
            stuck = await served.store.get(job.id)
        monkeypatch.undo()
        async with serving(db) as served:
            again = await served.state_of(job, "succeeded")

        assert stuck.state == "running"
        assert f"background task 'jobs: job {job.id}' failed" in caplog.text
        assert again.attempts == 2

    run(scenario)


def test_jobs_never_make_live_requests_429_while_the_live_ones_alone_fit_max_queue(
    db: Path,
) -> None:
    async def scenario() -> None:
        async with serving(db, max_batch_size=2, max_queue=2) as served:
            served.worker.gate.clear()
            blocker = start(served.live(["blocker"]))
            await until(lambda: len(served.worker.batches) == 1)
            jobs = [await served.submit(["a", "b", "c"]) for _ in range(3)]
            await until(lambda: served.queued() == 2)  # 6 inputs of jobs: over max_queue
            live = start(served.live(["p", "q"]))  # as many as max_queue
            await until(lambda: served.queued() == 3)
            with pytest.raises(OverloadedError):
                await served.live(["one too many"])
            served.worker.gate.set()
            await asyncio.gather(blocker, live)
            done = [await served.state_of(job, "succeeded", "failed") for job in jobs]

        assert [job.state for job in done] == ["succeeded"] * 3
        assert served.worker.inputs_seen[1:3] == ["a", "b"], "a batch of the first job, then..."

    run(scenario)


def test_a_job_still_waiting_when_its_timeout_passes_fails_with_deadline_exceeded(
    db: Path,
) -> None:
    async def scenario() -> None:
        async with serving(db, max_batch_size=1, max_queue=1) as served:
            served.worker.gate.clear()
            blocker = start(served.live(["blocker"]))
            await until(lambda: len(served.worker.batches) == 1)
            full = start(served.live(["full"]))  # the model is overloaded: live requests get 429
            await until(lambda: served.queued() == 1)
            job = await served.submit("patient", timeout=0.2)
            failed = await served.state_of(job, "failed", "succeeded")
            still_overloaded = served.queued() == 1 and not served.worker.gate.is_set()
            served.worker.gate.set()
            await asyncio.gather(blocker, full)

        assert failed.error is not None and failed.error["code"] == "deadline_exceeded"
        assert failed.started_at is None and still_overloaded
        assert "patient" not in served.worker.inputs_seen

    run(scenario)


def test_a_jobs_timeout_counts_from_when_the_runner_takes_it_for_its_model(db: Path) -> None:
    async def scenario() -> None:
        async with serving(db, max_batch_size=1) as served:  # one job at a time
            served.worker.gate.clear()
            first = await served.submit("first")
            await until(lambda: len(served.worker.batches) == 1)
            second = await served.submit("second", timeout=0.5)
            waited_from = time.monotonic()
            await until(lambda: time.monotonic() > waited_from + 0.6)  # longer than its timeout
            not_taken = served.queued() == 0
            served.worker.gate.set()
            done = [await served.state_of(job, "succeeded", "failed") for job in (first, second)]

        assert not_taken, "it waited in the runner, not in the model's queue"
        assert [job.state for job in done] == ["succeeded", "succeeded"]

    run(scenario)


def test_a_job_cut_short_by_a_shutdown_runs_again_at_the_next_start(db: Path) -> None:
    async def scenario() -> None:
        async with serving(db, max_batch_size=1) as served:
            served.worker.gate.clear()
            cut_short = await served.submit("cut short")
            await served.state_of(cut_short, "running")
            waiting = await served.submit("waiting")
        async with serving(db, max_batch_size=1) as served:
            done = [await served.state_of(job, "succeeded") for job in (cut_short, waiting)]

        assert [job.attempts for job in done] == [2, 1]
        assert served.worker.inputs_seen == ["cut short", "waiting"]

    run(scenario)

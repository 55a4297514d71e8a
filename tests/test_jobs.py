"""The job store: lifecycle, listing, cancel, durability across a reopen and a kill, purge."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from modelmora.errors import InvalidInputError
from modelmora.serve.jobstore import JobNotCancellableError, JobNotFoundError, JobStore

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


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


def test_purge_removes_only_jobs_finished_long_enough_ago(db: Path) -> None:
    async def use(store: JobStore) -> None:
        old = await store.create("m", 1)
        await store.cancel(old.id)
        await asyncio.sleep(0.02)
        recent = await store.create("m", 2)
        await store.mark_running(recent.id)
        await store.mark_succeeded(recent.id, 2)
        waiting = await store.create("m", 3)
        assert await store.purge_finished() == 0, "the default retention is a day"
        assert await store.purge_finished(older_than=0.01) == 1
        assert {j.id for j in (await store.list_jobs()).jobs} == {recent.id, waiting.id}
        assert await store.purge_finished(older_than=0) == 1, "a queued job is never purged"

    with_store(db, use)


def test_store_must_be_open() -> None:
    async def use() -> None:
        with pytest.raises(RuntimeError, match="not open"):
            await JobStore(Path("unused.sqlite3")).get("x")

    asyncio.run(use())

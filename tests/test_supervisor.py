"""The supervisor with real worker processes, serving the torch-free test runtimes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import waiting
from waiting import eventually_async

from modelmora.errors import (
    DeadlineExceededError,
    InvalidInputError,
    UnavailableError,
    UnknownModelError,
)
from modelmora.serve.config import SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor

T = TypeVar("T")
TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow  # every test here starts worker processes


def run(coroutine: Awaitable[T]) -> T:
    """Run one test's coroutine; a hang fails the test instead of blocking the run."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, 60)

    return asyncio.run(bounded())


def served(name: str, runtime: str = "EchoRuntime", **fields: Any) -> ServedModel:
    return ServedModel(
        name=name,
        task="test",
        path=Path("/nonexistent"),
        runtime=f"runtimes_for_tests:{runtime}",
        **fields,
    )


@asynccontextmanager
async def serving(*models: ServedModel, **settings: Any) -> AsyncIterator[Supervisor]:
    """A started supervisor whose template imports nothing heavy; stopped afterwards."""
    defaults: dict[str, Any] = {"template_imports": ("runtimes_for_tests",), "stop_timeout": 2.0}
    supervisor = Supervisor(models, SupervisorSettings(**{**defaults, **settings}))
    await supervisor.start()
    try:
        yield supervisor
    finally:
        await supervisor.stop()


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


# --- loading and reuse --------------------------------------------------------------------------


def test_first_request_loads_and_the_second_reuses_the_worker() -> None:
    async def scenario() -> None:
        async with serving(served("echo")) as supervisor:
            first = await supervisor.infer("echo", {"text": "hi"})
            second = await supervisor.infer("echo", {"text": "again"})
            status = supervisor.status("echo")
        assert first.result == {"echo": {"text": "hi"}, "pid": status.pid}
        assert second.result["pid"] == first.result["pid"]
        assert first.load_ms > 0 and second.load_ms == 0
        assert (status.state, status.loads, status.requests_total) == ("ready", 1, 2)
        assert status.memory_bytes and status.device == "cpu" and status.last_load_ms

    run(scenario())


def test_concurrent_requests_on_a_cold_model_share_one_load() -> None:
    async def scenario() -> None:
        async with serving(served("echo")) as supervisor:
            results = await asyncio.gather(*(supervisor.infer("echo", {"n": n}) for n in range(20)))
            assert supervisor.status("echo").loads == 1
        assert [result.result["echo"]["n"] for result in results] == list(range(20))
        assert len({result.result["pid"] for result in results}) == 1

    run(scenario())


def test_unload_ends_the_process() -> None:
    async def scenario() -> None:
        events: list[tuple[str, str]] = []
        async with serving(served("echo")) as supervisor:
            supervisor.add_listener(lambda event, name, seconds: events.append((event, name)))
            pid = (await supervisor.load("echo")).pid
            assert pid and psutil.pid_exists(pid)
            status = await supervisor.unload("echo")
            assert (status.state, status.pid, status.unloads) == ("unloaded", None, 1)
            assert is_gone(pid)
            again = await supervisor.infer("echo", {})
            assert again.result["pid"] != pid
        assert events[:2] == [("load", "echo"), ("unload", "echo")]

    run(scenario())


def test_unknown_model_is_reported() -> None:
    async def scenario() -> None:
        async with serving(served("echo")) as supervisor:
            with pytest.raises(UnknownModelError, match="'nope'"):
                await supervisor.infer("nope", {})
            with pytest.raises(UnknownModelError):
                supervisor.status("nope")

    run(scenario())


def test_invalid_input_from_the_runtime_names_the_field() -> None:
    async def scenario() -> None:
        async with serving(served("echo")) as supervisor:
            with pytest.raises(InvalidInputError, match=r"^inputs: "):
                await supervisor.infer("echo", {"invalid": "inputs"})
            status = supervisor.status("echo")
            assert (status.state, status.requests_failed, status.crashes) == ("ready", 1, 0)

    run(scenario())


# --- keep-alive and eviction --------------------------------------------------------------------


def test_idle_model_is_unloaded_after_keep_alive() -> None:
    async def scenario() -> None:
        async with serving(served("echo"), keep_alive=0.3) as supervisor:
            pid = (await supervisor.infer("echo", {})).result["pid"]
            expires_at = supervisor.status("echo").expires_at
            assert expires_at and expires_at - time.time() <= 0.3
            await eventually_async(lambda: supervisor.status("echo").state == "unloaded")
            assert is_gone(pid)

    run(scenario())


def test_keep_alive_zero_unloads_after_the_request_and_negative_never() -> None:
    async def scenario() -> None:
        async with serving(served("echo"), served("witness"), keep_alive=0.1) as supervisor:
            await supervisor.infer("echo", {}, keep_alive=0)
            await eventually_async(lambda: supervisor.status("echo").state == "unloaded")
            await supervisor.infer("echo", {}, keep_alive=-1)
            # A model used after it, with the default keep-alive: once it idled out, so would echo.
            await supervisor.infer("witness", {})
            await eventually_async(lambda: supervisor.status("witness").state == "unloaded")
            status = supervisor.status("echo")
            assert (status.state, status.expires_at) == ("ready", None)

    run(scenario())


def test_least_recently_used_idle_model_is_evicted() -> None:
    async def scenario() -> None:
        events: list[tuple[str, str]] = []
        models = [served(name) for name in ("a", "b", "c")]
        async with serving(*models, max_loaded_models=2) as supervisor:
            supervisor.add_listener(lambda event, name, seconds: events.append((event, name)))
            for name in ("a", "b", "a", "c"):
                await supervisor.infer(name, {})
            states = {status.name: status.state for status in supervisor.statuses()}
        assert states == {"a": "ready", "b": "unloaded", "c": "ready"}
        assert ("evict", "b") in events

    run(scenario())


def test_a_busy_model_is_never_evicted() -> None:
    async def scenario() -> None:
        models = [served("slow", "SlowRuntime"), served("echo")]
        async with serving(*models, max_loaded_models=1) as supervisor:
            seen: list[tuple[str, str, int]] = []  # event, model, requests in flight on "slow"

            def note(event: str, name: str, *_: object) -> None:
                seen.append((event, name, supervisor.status("slow").in_flight))

            supervisor.add_listener(note)
            await supervisor.load("slow")
            busy = asyncio.create_task(supervisor.infer("slow", {"ms": 1000}))
            busy.add_done_callback(lambda _: note("answered", "slow"))
            await eventually_async(lambda: supervisor.status("slow").in_flight == 1)
            assert (await supervisor.infer("echo", {})).result["echo"] == {}
            assert (await busy).result["echo"] == {"ms": 1000}
            assert supervisor.status("slow").state == "unloaded"
        # Echo waited for room: slow was evicted once idle, and echo loaded after slow answered.
        assert ("evict", "slow", 0) in seen
        assert seen.index(("answered", "slow", 0)) < seen.index(("load", "echo", 0))

    run(scenario())


def test_memory_budget_evicts_idle_models() -> None:
    async def scenario() -> None:
        async with serving(served("a"), served("b"), memory_budget=1) as supervisor:
            await supervisor.infer("a", {})
            await supervisor.infer("b", {})
            assert supervisor.status("a").state == "unloaded"
            assert supervisor.status("b").state == "ready"

    run(scenario())


# --- crashes, load failures, health -------------------------------------------------------------


def test_kill_9_fails_the_request_at_once_and_the_next_one_recovers() -> None:
    async def scenario() -> None:
        # No health check comes in time, and the request would run for an hour: only the
        # worker's exit can end it.
        slow = served("slow", "SlowRuntime")
        async with serving(slow, health_interval=3600, health_timeout=3600) as supervisor:
            pid = (await supervisor.load("slow")).pid
            assert pid
            request = asyncio.create_task(supervisor.infer("slow", {"ms": 3_600_000}))
            await eventually_async(lambda: supervisor.status("slow").in_flight == 1)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(UnavailableError, match=r"crashed \(killed by SIGKILL\)") as error:
                await request
            assert error.value.retry_after
            status = supervisor.status("slow")
            # A first crash restarts the worker at once: it is already on its way back.
            assert status.state in ("restarting", "loading")
            assert (status.crashes, status.crash_streak) == (1, 1) and status.pid != pid
            recovered = await supervisor.infer("slow", {})
            assert recovered.result["pid"] != pid
            assert supervisor.status("slow").state == "ready"

    run(scenario())


def test_a_model_whose_load_fails_is_reported_failed_with_the_reason() -> None:
    async def scenario() -> None:
        async with serving(served("broken", "FailOnLoadRuntime")) as supervisor:
            with pytest.raises(UnavailableError, match="failed to load: RuntimeError: the weights"):
                await supervisor.infer("broken", {})
            status = supervisor.status("broken")
            assert status.state == "failed" and "the weights are corrupt" in (status.error or "")
            ready, reasons = supervisor.is_ready()
            assert not ready and "broken" in reasons[0]
            with pytest.raises(UnavailableError, match="has failed"):
                await supervisor.infer("broken", {})
            assert supervisor.status("broken").loads == 0

    run(scenario())


def test_an_unknown_runtime_is_a_load_failure() -> None:
    async def scenario() -> None:
        model = ServedModel(name="odd", task="no-such-task", path=Path("/nonexistent"))
        async with serving(model) as supervisor:
            with pytest.raises(UnavailableError, match="no runtime serves the task 'no-such-task'"):
                await supervisor.load("odd")

    run(scenario())


def test_a_worker_that_stops_answering_health_checks_is_killed() -> None:
    async def scenario() -> None:
        settings = {"health_interval": 0.1, "health_timeout": 0.3, "stop_timeout": 0.2}
        async with serving(served("echo"), **settings) as supervisor:
            pid = (await supervisor.load("echo")).pid
            assert pid
            os.kill(pid, signal.SIGSTOP)
            await eventually_async(lambda: supervisor.status("echo").crashes == 1)
            # Restarted at once after a first crash; the reason stays in last_crash.
            assert "stopped answering health checks" in (supervisor.status("echo").last_crash or "")
            assert is_gone(pid)

    run(scenario())


def test_workers_die_with_their_template_and_a_new_template_takes_over() -> None:
    async def scenario() -> None:
        async with serving(served("slow", "SlowRuntime")) as supervisor:
            pid = (await supervisor.load("slow")).pid
            assert pid
            template = psutil.Process(pid).parent()
            request = asyncio.create_task(supervisor.infer("slow", {"ms": 30_000}))
            await eventually_async(lambda: supervisor.status("slow").in_flight == 1)
            template.kill()
            with pytest.raises(UnavailableError, match="crashed"):
                await request
            # Orphaned for a moment, then reaped by init.
            await eventually_async(lambda: is_gone(pid))
            recovered = await supervisor.infer("slow", {})
            assert psutil.Process(recovered.result["pid"]).parent().pid != template.pid

    run(scenario())


# --- deadlines and streams ----------------------------------------------------------------------


def test_a_request_past_its_deadline_gets_deadline_exceeded() -> None:
    async def scenario() -> None:
        async with serving(served("slow", "SlowRuntime")) as supervisor:
            await supervisor.load("slow")
            with pytest.raises(DeadlineExceededError, match=r"within 0\.2 s"):
                await supervisor.infer("slow", {"ms": 2000}, timeout=0.2)
            assert (await supervisor.infer("slow", {})).result["echo"] == {}

    run(scenario())


def test_a_load_outlives_a_request_that_gives_up_on_it() -> None:
    async def scenario() -> None:
        model = served("slow", "SlowRuntime", options={"load_ms": 2000})
        async with serving(model) as supervisor:
            with pytest.raises(DeadlineExceededError, match="still loading"):
                await supervisor.infer("slow", {}, timeout=0.1)
            abandoned = asyncio.create_task(supervisor.infer("slow", {}))
            await asyncio.sleep(0)  # one turn of the loop: the request joins the load
            assert supervisor.status("slow").state == "loading"
            abandoned.cancel()  # a client that disconnects
            await eventually_async(lambda: supervisor.status("slow").state == "ready")
            assert supervisor.status("slow").loads == 1

    run(scenario())


def test_stream_yields_chunks_and_an_early_close_leaves_the_worker_usable() -> None:
    async def scenario() -> None:
        async with serving(served("slow", "SlowRuntime")) as supervisor:
            request = {"pieces": ["a", "b", "c"], "ms": 10}
            chunks = [chunk async for chunk in supervisor.stream("slow", request)]
            assert chunks == [{"text": t} for t in "abc"] + [{"text": "", "finish_reason": "stop"}]
            stream = supervisor.stream("slow", {"pieces": list("x" * 50), "ms": 20})
            assert await stream.__anext__() == {"text": "x"}
            await stream.aclose()  # type: ignore[attr-defined]
            assert (await supervisor.infer("slow", {})).result["echo"] == {}
            assert supervisor.status("slow").in_flight == 0

    run(scenario())


# --- start, readiness, shutdown -----------------------------------------------------------------


def test_preloaded_models_make_the_supervisor_ready() -> None:
    async def scenario() -> None:
        model = served("slow", "SlowRuntime", preload=True, options={"load_ms": 300})
        async with serving(model) as supervisor:
            ready, reasons = supervisor.is_ready()
            assert not ready and reasons == [
                "model 'slow' is preloading",
                "the worker template is still importing torch and transformers",
            ]
            await eventually_async(lambda: supervisor.is_ready()[0])
            assert supervisor.status("slow").expires_at is None  # preloaded: kept loaded

    run(scenario())


def test_stop_drains_in_flight_requests_and_leaves_no_processes() -> None:
    async def scenario() -> None:
        async with serving(served("slow", "SlowRuntime"), served("echo")) as supervisor:
            await supervisor.infer("echo", {})
            request = asyncio.create_task(supervisor.infer("slow", {"ms": 1000}))
            await eventually_async(lambda: supervisor.status("slow").in_flight == 1)
            assert len(descendants()) == 3  # the template and two workers
            await supervisor.stop()
            assert (await request).result["echo"] == {"ms": 1000}
            with pytest.raises(UnavailableError, match="shutting down"):
                await supervisor.infer("echo", {})
        assert descendants() == []

    run(scenario())


def test_stop_ends_requests_that_outlast_the_drain_timeout() -> None:
    async def scenario() -> None:
        async with serving(served("slow", "SlowRuntime"), drain_timeout=0.2) as supervisor:
            # An hour's work: stop returns (within run's bound) only by ending it.
            request = asyncio.create_task(supervisor.infer("slow", {"ms": 3_600_000}))
            await eventually_async(lambda: supervisor.status("slow").in_flight == 1)
            await supervisor.stop()
            with pytest.raises(UnavailableError, match="shutting down"):
                await request
        assert descendants() == []

    run(scenario())


def test_spawned_workers_work_where_fork_is_not_used() -> None:
    async def scenario() -> None:
        async with serving(served("slow", "SlowRuntime"), worker_start="spawn") as supervisor:
            pid = (await supervisor.load("slow")).pid
            assert pid and psutil.Process(pid).parent().pid == os.getpid()
            request = asyncio.create_task(supervisor.infer("slow", {"ms": 30_000}))
            await eventually_async(lambda: supervisor.status("slow").in_flight == 1)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(UnavailableError, match="killed by SIGKILL"):
                await request
        assert descendants() == []

    run(scenario())


HOST_SCRIPT = """
import asyncio, json, os
from pathlib import Path
from modelmora.serve.config import SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor

async def main():
    models = [
        ServedModel(name, "test", Path("/nonexistent"), runtime="runtimes_for_tests:EchoRuntime")
        for name in ("a", "b")
    ]
    supervisor = Supervisor(models, SupervisorSettings(template_imports=()))
    await supervisor.start()
    pids = [(await supervisor.load(name)).pid for name in ("a", "b")]
    print(json.dumps(pids), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_sigkill_of_the_server_leaves_no_workers_behind() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    script = [sys.executable, "-c", textwrap.dedent(HOST_SCRIPT)]
    with subprocess.Popen(script, stdout=subprocess.PIPE, env=env) as host:
        try:
            assert host.stdout is not None
            workers = json.loads(host.stdout.readline())
            everyone = psutil.Process(host.pid).children(recursive=True)
            assert len(everyone) == 3 and set(workers) <= {process.pid for process in everyone}
        finally:
            host.kill()
    waiting.eventually(
        lambda: all(is_gone(process.pid) for process in everyone),
        what="the template and workers to end with the server",
    )


def test_the_supervisor_does_not_import_torch() -> None:
    code = (
        "import sys, modelmora.serve.supervisor; "
        "print([m for m in ('torch', 'transformers', 'numpy') if m in sys.modules])"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"

"""Crash loops with real worker processes: a worker that loaded fine and then dies is started
again after a backoff that doubles with each crash in a row; only a failing load is final."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
from liveserver import serve
from test_supervisor import run, served, serving
from waiting import eventually, eventually_async

from modelmora.errors import UnavailableError
from modelmora.serve.app import create_app
from modelmora.serve.config import ServerSettings, SupervisorSettings
from modelmora.serve.supervisor import Supervisor

pytestmark = pytest.mark.slow


def test_a_crash_loop_backs_off_and_keeps_restarting_instead_of_failing() -> None:
    async def scenario() -> None:
        backoff = {"restart_backoff": 0.05, "max_restart_backoff": 0.1}
        async with serving(served("crashy", "CrashRuntime"), **backoff) as supervisor:
            for streak, kill in enumerate([{"exit": 7}, {"signal": signal.SIGSEGV}] * 2, 1):
                await eventually_async(lambda: supervisor.status("crashy").state != "restarting")
                with pytest.raises(UnavailableError, match="crashed") as error:
                    await supervisor.infer("crashy", kill)
                assert error.value.retry_after is not None and error.value.retry_after >= 1
                status = supervisor.status("crashy")
                assert (status.crashes, status.crash_streak) == (streak, streak)
                assert status.state in ("restarting", "loading", "ready")
            assert "crash 4 in a row; restarts in 0.1 s" in (status.error or "")  # capped
            await eventually_async(lambda: supervisor.status("crashy").state == "ready")
            assert (await supervisor.infer("crashy", {"text": "back"})).result["echo"] == {
                "text": "back"
            }

    run(scenario())


def test_a_request_whose_deadline_allows_waits_out_the_backoff() -> None:
    async def scenario() -> None:
        backoff = {"restart_backoff": 0.3, "max_restart_backoff": 0.3}
        async with serving(served("crashy", "CrashRuntime"), **backoff) as supervisor:
            with pytest.raises(UnavailableError):
                await supervisor.infer("crashy", {"exit": 7})
            await eventually_async(lambda: supervisor.status("crashy").state == "ready")
            with pytest.raises(UnavailableError, match=r"crash 2 in a row; restarts in 0\.3 s"):
                await supervisor.infer("crashy", {"exit": 7})
            served_after = await supervisor.infer("crashy", {"text": "patient"}, timeout=30)
            assert served_after.result["echo"] == {"text": "patient"}
            status = supervisor.status("crashy")
            assert (status.state, status.crashes, status.crash_streak) == ("ready", 2, 2)

    run(scenario())


def test_a_deadline_shorter_than_the_backoff_fails_at_once_with_the_real_wait() -> None:
    async def scenario() -> None:
        backoff = {"restart_backoff": 30.0, "max_restart_backoff": 30.0}
        async with serving(served("crashy", "CrashRuntime"), **backoff) as supervisor:
            with pytest.raises(UnavailableError):
                await supervisor.infer("crashy", {"exit": 7})  # first crash: back at once
            await eventually_async(lambda: supervisor.status("crashy").state == "ready")
            with pytest.raises(UnavailableError, match="restarts in 30 s"):
                await supervisor.infer("crashy", {"exit": 7})
            status = supervisor.status("crashy")
            assert status.state == "restarting" and status.restart_at is not None
            with pytest.raises(UnavailableError, match="is restarting") as waiting:
                await supervisor.infer("crashy", {}, timeout=5)
            assert waiting.value.retry_after is not None and 20 < waiting.value.retry_after <= 30
            ready, reasons = supervisor.is_ready()
            assert not ready and "is crash-looping" in reasons[0]
            assert (await supervisor.load("crashy")).state == "ready"  # by hand: no wait
            assert supervisor.status("crashy").crash_streak == 0

    run(scenario())


def test_a_worker_that_ran_stably_starts_a_new_streak() -> None:
    async def scenario() -> None:
        async with serving(served("crashy", "CrashRuntime"), stable_after=0.0) as supervisor:
            for crashes in (1, 2, 3):
                await eventually_async(lambda: supervisor.status("crashy").state != "restarting")
                with pytest.raises(UnavailableError):
                    await supervisor.infer("crashy", {"signal": signal.SIGKILL})
                status = supervisor.status("crashy")
                assert (status.crashes, status.crash_streak) == (crashes, 1)

    run(scenario())


def test_http_retry_after_is_the_backoff_and_absent_for_a_failed_model() -> None:
    models = [
        served("crashy", "CrashRuntime"),
        served("broken", "FailOnLoadRuntime"),
    ]
    settings = SupervisorSettings(
        template_imports=("runtimes_for_tests",), restart_backoff=30.0, max_restart_backoff=30.0
    )
    app = create_app(Supervisor(models, settings), ServerSettings(access_log=False))
    with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as http:
        http.post("/models/crashy/load").raise_for_status()
        assert http.post("/infer/crashy", json={"exit": 7}).status_code == 503
        eventually(lambda: http.get("/models/crashy").json()["state"] == "ready")  # restarted
        assert http.post("/infer/crashy", json={"exit": 7}).status_code == 503
        waiting = http.post("/infer/crashy", json={"timeout": 5})
        assert waiting.status_code == 503 and 20 < int(waiting.headers["Retry-After"]) <= 30
        assert http.get("/models/crashy").json()["state"] == "restarting"
        ps = subprocess.run(
            [sys.executable, "-m", "modelmora", "ps", "--url", base_url],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "250"},
        )
        assert ps.returncode == 0, ps.stderr
        assert "restarting (crash 2 in a row)" in ps.stdout, ps.stdout
        assert re.search(r"restart in (2\d|30)s", ps.stdout), ps.stdout

        failed = http.post("/infer/broken", json={})
        assert failed.status_code == 503 and "Retry-After" not in failed.headers
        assert http.get("/models/broken").json()["state"] == "failed"

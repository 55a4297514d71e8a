"""What the workers use: real processes for CPU and memory, a fake NVML, memory pressure."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from test_supervisor import run, served, serving
from waiting import eventually, eventually_async

from modelmora.errors import UnavailableError
from modelmora.serve.api.telemetry import WorkerCollector
from modelmora.serve.config import MemoryFloor, SupervisorSettings, resolve
from modelmora.serve.resources import GpuReader, ProcessSampler, ResourceMonitor, cpu_percent

# --- CPU and memory of real processes -------------------------------------------------------------


@pytest.fixture
def busy_child() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield child
    child.kill()
    child.wait()


def test_a_busy_process_reads_cpu_from_the_second_sample(
    busy_child: subprocess.Popen[bytes],
) -> None:
    started = psutil.Process(busy_child.pid)  # past exec: the interpreter is in memory
    eventually(lambda: started.memory_info().rss > 1_000_000, what="the child to start")
    sampler = ProcessSampler()
    first = sampler.sample(busy_child.pid)
    assert first.cpu_percent is None  # one reading says nothing about a rate
    assert first.rss_bytes and first.rss_bytes > 1_000_000
    assert first.uss_bytes is None or first.uss_bytes > 0
    busy = eventually(lambda: (sampler.sample(busy_child.pid).cpu_percent or 0) > 10)
    assert busy


def test_a_gone_process_has_nothing_and_is_forgotten() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    sampler = ProcessSampler()
    usage = sampler.sample(child.pid)
    assert (usage.cpu_percent, usage.rss_bytes, usage.uss_bytes) == (None, None, None)
    assert child.pid not in sampler.last


def test_cpu_percent_is_cpu_time_over_wall_time() -> None:
    assert cpu_percent((10.0, 1.0), (12.0, 4.0)) == 150.0
    assert cpu_percent((10.0, 1.0), (10.0, 4.0)) is None


# --- the GPU through a fake NVML ------------------------------------------------------------------


class NVMLError(Exception):
    pass


def fake_nvml(pids: dict[int, int], fail: str = "") -> types.ModuleType:
    """A `pynvml` with one 16 GB device at 40 % running `pids` ({pid: bytes})."""
    module = types.ModuleType("pynvml")

    def maybe_fail(name: str, value: Any) -> Any:
        if fail == name:
            raise NVMLError(f"{name} failed")
        return value

    namespace = types.SimpleNamespace
    processes = [namespace(pid=pid, usedGpuMemory=used) for pid, used in pids.items()]
    calls: dict[str, Any] = {
        "nvmlInit": lambda: maybe_fail("nvmlInit", None),
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda index: f"gpu{index}",
        "nvmlDeviceGetMemoryInfo": lambda handle: namespace(used=12 * 10**9, total=16 * 10**9),
        "nvmlDeviceGetUtilizationRates": lambda handle: namespace(gpu=40),
        "nvmlDeviceGetComputeRunningProcesses": lambda handle: maybe_fail("processes", processes),
        "NVMLError": NVMLError,
    }
    for name, value in calls.items():
        setattr(module, name, value)
    return module


def test_gpu_memory_and_utilisation_come_from_the_workers_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    me = psutil.Process().pid
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml({me: 3 * 10**9, 999_999: 10**9}))
    monitor = ResourceMonitor()
    usage = monitor.sample([me])[me]
    assert (usage.gpu_memory_bytes, usage.gpu_utilization) == (3 * 10**9, 40.0)
    assert usage.rss_bytes
    fullest = monitor.fullest_gpu()
    assert fullest is not None and fullest.used_bytes / fullest.total_bytes == 0.75


def test_a_worker_not_on_the_gpu_has_no_gpu_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    me = psutil.Process().pid
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml({12345: 10**9}))
    usage = ResourceMonitor().sample([me])[me]
    assert (usage.gpu_memory_bytes, usage.gpu_utilization) == (None, None)


def test_without_nvml_the_gpu_fields_are_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    me = psutil.Process().pid
    monitor = ResourceMonitor()
    usage = monitor.sample([me])[me]
    assert (usage.gpu_memory_bytes, usage.gpu_utilization) == (None, None)
    assert monitor.fullest_gpu() is None and monitor.gpus.unavailable


@pytest.mark.parametrize("fail", ["nvmlInit", "processes"])
def test_an_nvml_error_is_not_fatal(monkeypatch: pytest.MonkeyPatch, fail: str) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml({1: 1}, fail=fail))
    reader = GpuReader()
    assert reader.sample().processes == {}
    assert reader.sample().devices == []


# --- settings -------------------------------------------------------------------------------------


def test_memory_settings_parse_bytes_percent_and_fractions() -> None:
    table = {"min_available_memory": "10%", "max_gpu_memory_fraction": 0.9}
    settings = resolve({}, {"MODELMORA_KEEP_ALIVE": "1m"}, table, "modelmora.toml").supervisor
    assert settings.min_available_memory == MemoryFloor(percent=10.0)
    assert settings.min_available_memory.of(1000) == 100
    assert settings.max_gpu_memory_fraction == 0.9
    env = {"MODELMORA_MIN_AVAILABLE_MEMORY": "2GB"}
    assert resolve({}, env, {}, "x").supervisor.min_available_memory.of(0) == 2 * 10**9
    assert SupervisorSettings().min_available_memory == MemoryFloor(percent=5.0)


@pytest.mark.parametrize(
    ("key", "value"), [("min_available_memory", "120%"), ("max_gpu_memory_fraction", "2")]
)
def test_bad_memory_settings_name_their_key(key: str, value: str) -> None:
    from modelmora.errors import ModelmoraError

    with pytest.raises(ModelmoraError, match=f"serve.{key}"):
        resolve({}, {}, {key: value}, "modelmora.toml")


# --- workers under a supervisor -------------------------------------------------------------------


def metric(supervisor: Any, name: str) -> dict[tuple[str, ...], float]:
    families = {family.name: family for family in WorkerCollector(supervisor).collect()}
    return {tuple(s.labels.values()): s.value for s in families[name].samples}


@pytest.mark.slow
def test_worker_resources_reach_the_status_and_the_metrics() -> None:
    async def scenario() -> None:
        async with serving(served("echo"), health_interval=0.05) as supervisor:
            pid = (await supervisor.load("echo")).pid
            status = await eventually_async(
                lambda: (s := supervisor.status("echo")).cpu_percent is not None and s
            )
            assert status.rss_bytes and status.pid == pid
            assert status.gpu_memory_bytes is None  # no NVML in the tests
            assert metric(supervisor, "modelmora_worker_rss_bytes")[("echo",)] > 0
            assert ("echo",) in metric(supervisor, "modelmora_worker_cpu_percent")
            assert metric(supervisor, "modelmora_memory_pressure") == {(): 0}
            assert supervisor.is_ready() == (True, [])

    run(scenario())


@pytest.mark.slow
def test_memory_pressure_evicts_idle_models_and_refuses_loads() -> None:
    async def scenario() -> None:
        async with serving(served("a"), served("b"), health_interval=0.05) as supervisor:
            await supervisor.load("a")
            await supervisor.load("b")
            # A floor above all the machine's RAM: pressure as real as the code can see.
            floor = MemoryFloor(bytes=2 * psutil.virtual_memory().total)
            supervisor.settings = dataclasses.replace(
                supervisor.settings, min_available_memory=floor
            )
            await eventually_async(
                lambda: all(s.state == "unloaded" for s in supervisor.statuses()),
                what="the idle models to be evicted",
            )
            ready, reasons = supervisor.is_ready()
            assert not ready and any("memory pressure" in reason for reason in reasons)
            assert metric(supervisor, "modelmora_memory_pressure") == {(): 1}
            with pytest.raises(UnavailableError, match="not enough memory to load 'a'") as error:
                await supervisor.infer("a", {})
            assert error.value.status == 503
            assert supervisor.status("a").state == "unloaded"

            supervisor.settings = dataclasses.replace(
                supervisor.settings, min_available_memory=MemoryFloor()
            )
            await eventually_async(lambda: supervisor.is_ready()[0], what="pressure to end")
            assert (await supervisor.infer("a", {})).result["echo"] == {}

    run(scenario())


@pytest.mark.slow
def test_ps_shows_each_workers_memory_and_cpu(tmp_path: Any) -> None:
    import os
    import re

    import httpx
    from liveserver import serve

    from modelmora.serve.app import create_app
    from modelmora.serve.config import ServerSettings
    from modelmora.serve.supervisor import Supervisor

    settings = SupervisorSettings(template_imports=("runtimes_for_tests",), health_interval=0.05)
    app = create_app(Supervisor([served("echo")], settings), ServerSettings(access_log=False))
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        http.post("/models/echo/load").raise_for_status()
        eventually(lambda: http.get("/models/echo").json()["cpu_percent"] is not None)
        ps = subprocess.run(
            [sys.executable, "-m", "modelmora", "ps", "--url", url],
            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    header, row = ps.stdout.splitlines()[:2]
    assert header.split()[:6] == ["name", "task", "state", "memory", "cpu", "pid"], ps.stdout
    assert "gpu" not in header.split()  # no GPU, no column
    own = r"(\s\([\d.]+ \w+ own\))?"  # USS, where the platform reads it
    assert re.match(rf"echo\s+test\s+ready\s+[\d.]+ \w+{own}\s+\d+%\s+\d+\s+cpu", row), row


def test_ps_shows_a_gpu_column_when_a_worker_has_a_gpu() -> None:
    from modelmora.cli.serving import _gpu, _memory
    from modelmora.serve.status import ModelStatus

    fields: dict[str, Any] = {"name": "m", "task": "embedding", "source": "s", "revision": "r"}
    fields |= {"state": "ready", "pid": 1, "device": "cuda:0", "memory_bytes": 3 << 20}
    fields |= {"loaded_at": None, "last_used": None, "expires_at": None, "in_flight": 0}
    fields |= {"requests_total": 0, "requests_failed": 0, "loads": 1, "unloads": 0, "crashes": 0}
    fields |= {"last_load_ms": None, "error": None}
    fields["batching"] = {"max_batch_size": 1, "max_batch_delay_ms": 0, "max_batch_tokens": 1}
    fields["batching"] |= {"max_queue": 1, "max_in_flight": 1}
    status = ModelStatus(**fields, gpu_memory_bytes=512 << 20, gpu_utilization=37.0)
    assert _gpu(status) == "536.9 MB 37%"
    assert _gpu(ModelStatus(**fields)) == "-"
    assert _memory(ModelStatus(**fields)) == "3.1 MB"  # without a sample: the load's measure
    assert _memory(ModelStatus(**fields, rss_bytes=2 << 30, uss_bytes=1 << 30)) == (
        "2.1 GB (1.1 GB own)"
    )

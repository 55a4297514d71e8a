"""What the workers use: CPU, RSS and USS from psutil; GPU memory and utilisation from NVML.

The supervisor samples once per health check. CPU percent is the CPU time a process used between
two samples over the wall time between them, so the first sample of a process has none. NVML
(`pynvml`, the `gpu` extra) is imported on first use; without it, without a GPU, or when it fails,
the GPU fields are None and nothing else changes.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

logger = logging.getLogger("modelmora.supervisor")


@dataclass(frozen=True)
class Usage:
    """One worker's resources at one sample; None where unknown or unavailable."""

    pid: int
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    uss_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    gpu_utilization: float | None = None
    """Percent busy of the device the worker's memory is on (NVML counts per device)."""


@dataclass(frozen=True)
class Device:
    index: int
    used_bytes: int
    total_bytes: int
    utilization: float


@dataclass(frozen=True)
class GpuSample:
    devices: list[Device] = field(default_factory=list)
    processes: dict[int, tuple[int, int]] = field(default_factory=dict)
    """pid -> (bytes of GPU memory, device index)."""


class ProcessSampler:
    """CPU, RSS and USS of processes by pid; remembers each one's last CPU reading."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[float, float]] = {}
        """pid -> (time.monotonic(), CPU seconds used) at the previous sample."""

    def sample(self, pid: int) -> Usage:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                rss, uss = memory_of(process)
        except psutil.Error:
            self.last.pop(pid, None)
            return Usage(pid)
        now, used = time.monotonic(), times.user + times.system
        before = self.last.get(pid)
        self.last[pid] = (now, used)
        cpu = None if before is None else cpu_percent(before, (now, used))
        return Usage(pid, cpu, rss, uss)

    def keep_only(self, pids: Iterable[int]) -> None:
        """Forget processes that are gone, so a reused pid starts afresh."""
        alive = set(pids)
        self.last = {pid: reading for pid, reading in self.last.items() if pid in alive}


def cpu_percent(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Percent of one core, as top shows it (a process on 4 busy cores reads 400)."""
    wall = after[0] - before[0]
    return None if wall <= 0 else max(0.0, (after[1] - before[1]) / wall * 100)


def memory_of(process: psutil.Process) -> tuple[int, int | None]:
    """RSS, and USS where the platform can tell it (it needs more rights than RSS)."""
    try:
        full = process.memory_full_info()
    except psutil.AccessDenied:
        return int(process.memory_info().rss), None
    uss = getattr(full, "uss", None)
    return int(full.rss), None if uss is None else int(uss)


class GpuReader:
    """NVML, initialised on first use; once it cannot start, it is not tried again."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.unavailable = False

    def sample(self) -> GpuSample:
        nvml = self.start()
        if nvml is None:
            return GpuSample()
        try:
            return read_devices(nvml)
        except Exception as error:  # an NVML error must never take a health check down
            logger.debug("NVML sample failed: %s", error)
            return GpuSample()

    def start(self) -> Any:
        if self.nvml is not None or self.unavailable:
            return self.nvml
        try:
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
        except Exception as error:  # not installed, no driver, no GPU
            logger.debug("no NVML, so no GPU metrics: %s", error)
            self.unavailable = True
            return None
        self.nvml = nvml
        return nvml


def read_devices(nvml: Any) -> GpuSample:
    sample = GpuSample()
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        busy = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
        sample.devices.append(Device(index, int(memory.used), int(memory.total), float(busy)))
        for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            used = process.usedGpuMemory
            sample.processes[int(process.pid)] = (int(used or 0), index)
    return sample


class ResourceMonitor:
    """Samples the workers' processes and the GPUs together: what the supervisor calls."""

    def __init__(self) -> None:
        self.processes = ProcessSampler()
        self.gpus = GpuReader()
        self.gpu = GpuSample()

    def sample(self, pids: Iterable[int]) -> dict[int, Usage]:
        pids = list(pids)
        self.processes.keep_only(pids)
        self.gpu = self.gpus.sample()
        return {pid: self.with_gpu(self.processes.sample(pid)) for pid in pids}

    def with_gpu(self, usage: Usage) -> Usage:
        if usage.pid not in self.gpu.processes:
            return usage
        memory, index = self.gpu.processes[usage.pid]
        busy = next((d.utilization for d in self.gpu.devices if d.index == index), None)
        return dataclasses.replace(usage, gpu_memory_bytes=memory, gpu_utilization=busy)

    def fullest_gpu(self) -> Device | None:
        """The device with the largest share of its memory in use, if NVML sees any."""
        devices = [d for d in self.gpu.devices if d.total_bytes > 0]
        return max(devices, key=lambda d: d.used_bytes / d.total_bytes, default=None)


def available_memory() -> int:
    """Bytes of RAM the machine can give without swapping (psutil's `available`)."""
    return int(psutil.virtual_memory().available)


def total_memory() -> int:
    return int(psutil.virtual_memory().total)

"""What the serving benchmarks share: a `modelmora serve` child, HTTP calls, CPU accounting,
interleaved timed windows, and the markdown table they print.

A measured row is a set of jobs (closed-loop callers, each in a thread) run through a warm-up and
a timed window; rows run in interleaved rounds so that drift in the machine's speed touches them
all alike, and a window that other processes disturbed is run again.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import psutil
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
NOISY = 0.1
"""Cores lost to other processes or the hypervisor above which a window is run again."""
TRIES = 3

T = TypeVar("T")
Span = tuple[float, float]
"""When a call started and ended, perf_counter seconds."""
Sample = tuple[float, float, int]
"""A span and the call's HTTP status (200 for a call in this process)."""


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def endless(items: Sequence[T]) -> Iterator[T]:
    while True:
        yield from items


# --- the server ---------------------------------------------------------------------------------


class Server:
    """`python -m modelmora serve` in a child process, its JSON log in a file."""

    def __init__(self, folder: Path, manifest: str) -> None:
        (folder / "project").mkdir()
        (folder / "project" / "modelmora.toml").write_text(manifest)
        self.port = free_port()
        self.log_path = folder / "server.log"
        path = [str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "MODELMORA_HOME": str(folder / "home"), "PYTHONPATH": ":".join(path)}
        command = [sys.executable, "-m", "modelmora", "serve", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                command, cwd=folder / "project", env=env, stdout=subprocess.DEVNULL, stderr=log
            )
        self.process = psutil.Process(self.popen.pid)

    def wait_for_template(self, timeout: float = 300) -> float:
        """Wait until the worker template has imported torch; returns what that took, in ms."""
        deadline = time.monotonic() + timeout
        while (message := self.logged("worker template ready")) is None:
            if self.popen.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"the server did not start:\n{tail}")
            time.sleep(0.1)
        return float(message.split()[-2])

    def logged(self, prefix: str) -> str | None:
        """The last message in the server's log that starts with `prefix`."""
        found = None
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                message = str(json.loads(line).get("message", ""))
                found = message if message.startswith(prefix) else found
        return found

    def template(self) -> psutil.Process:
        (template,) = self.process.children()
        return template

    def worker(self, model: str) -> psutil.Process:
        _, status = call(self.port, "GET", f"/models/{model}")
        return psutil.Process(status["pid"])

    def metrics(self, model: str) -> dict[str, float]:
        """Every /metrics sample about `model`, by name and other labels."""
        connection = connect(self.port)
        try:
            _, text = round_trip(connection, "GET", "/metrics")
        finally:
            connection.close()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                labels = dict(sample.labels)
                if labels.pop("model", None) == model:
                    name = sample.name.removeprefix("modelmora_")
                    found[name + "".join(f" {k}={v}" for k, v in labels.items())] = sample.value
        return found

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGTERM)
        self.popen.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- HTTP ---------------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=300)


def exchange(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] = JSON,
) -> tuple[Span, int, bytes]:
    """One request over a keep-alive connection: when it started and ended, status and body."""
    started = time.perf_counter()
    connection.request(method, path, body=body, headers=dict(headers))
    response = connection.getresponse()
    data = response.read()
    return (started, time.perf_counter()), response.status, data


def round_trip(
    connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[Span, bytes]:
    """Like `exchange`, for a request that must succeed."""
    span, status, data = exchange(connection, method, path, body)
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {data[:500]!r}")
    return span, data


def call(port: int, method: str, path: str, body: Any = None) -> tuple[float, Any]:
    """One request on a fresh connection: milliseconds and the JSON answer."""
    connection = connect(port)
    try:
        data = None if body is None else json.dumps(body).encode()
        (started, ended), answer = round_trip(connection, method, path, data)
    finally:
        connection.close()
    return (ended - started) * 1000, json.loads(answer)


# --- CPU ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """CPU seconds so far: of each of our processes, of the machine, and stolen by the host."""

    by_role: dict[str, float]
    busy: float
    steal: float

    @classmethod
    def now(cls, roles: Mapping[str, psutil.Process]) -> Usage:
        times = psutil.cpu_times()
        steal = getattr(times, "steal", 0.0)
        # guest time is counted in user time already; steal is time the host ran something else
        not_busy = times.idle + getattr(times, "iowait", 0.0) + steal
        guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
        busy = sum(times) - not_busy - guest
        return cls({role: cpu_seconds(process) for role, process in roles.items()}, busy, steal)

    def since(self, before: Usage) -> dict[str, float]:
        """CPU seconds since `before` by role, then by other processes, then stolen."""
        used = {role: self.by_role[role] - before.by_role[role] for role in self.by_role}
        used["other"] = self.busy - before.busy - sum(used.values())
        used["steal"] = self.steal - before.steal
        return used


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def wait_until_quiet(limit: float = 30) -> None:
    """Other work may share this machine: start once the CPUs are idle, or after `limit`."""
    deadline = time.monotonic() + limit
    while psutil.cpu_percent(interval=0.5) > 5 and time.monotonic() < deadline:
        pass


# --- windows ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A warm-up, then the window that counts."""

    start: float
    end: float

    @classmethod
    def after(cls, warm_up: float, seconds: float) -> Window:
        start = time.perf_counter() + warm_up
        return cls(start, start + seconds)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def wait_for(self, moment: float) -> None:
        time.sleep(max(0.0, moment - time.perf_counter()))

    def is_open(self) -> bool:
        return time.perf_counter() < self.end

    def contains(self, moment: float) -> bool:
        return self.start <= moment < self.end

    def latencies_ms(self, samples: Sequence[Sample]) -> list[float]:
        """Of the successful calls that ended inside the window."""
        return [
            (end - start) * 1000
            for start, end, status in samples
            if status == 200 and self.contains(end)
        ]

    def failures(self, samples: Sequence[Sample]) -> Counter[int]:
        """Statuses other than 200 answered inside the window."""
        return Counter(status for _, end, status in samples if status != 200 and self.contains(end))

    def completed(self, samples: Sequence[Sample]) -> float:
        """Successful calls, each counted by the share of its time inside the window, so that a
        long call that straddles an edge counts in part rather than all or nothing."""
        inside = 0.0
        for start, end, status in samples:
            overlap = min(end, self.end) - max(start, self.start)
            if status == 200 and overlap > 0:
                inside += overlap / max(end - start, 1e-9)
        return inside


Job = Callable[[Window], list[Sample]]
Scrape = Callable[[], dict[str, float]]


@dataclass(frozen=True)
class Slice:
    """One window of one row: by group of jobs, latencies and calls done; CPU seconds by role;
    what the server's metrics grew by."""

    latencies_ms: dict[str, list[float]]
    calls: dict[str, float]
    failures: Counter[int]
    seconds: float
    cpu: dict[str, float]
    server: dict[str, float] = field(default_factory=dict)
    tries: int = 1
    """How many windows were run to get this one."""

    @property
    def disturbance(self) -> float:
        """Cores lost to other processes and to the host."""
        return (self.cpu["other"] + self.cpu["steal"]) / self.seconds


def run_slice(
    jobs: Sequence[tuple[str, Job]],
    roles: Mapping[str, psutil.Process],
    scrape: Scrape | None,
    warm_up: float,
    seconds: float,
) -> Slice:
    """The jobs (each with its group) in threads through a warm-up and a window.

    Other sessions may share this machine: a disturbed window is run again, up to TRIES times,
    and the least disturbed one counts.
    """
    tries: list[Slice] = []
    while len(tries) < TRIES and (not tries or tries[-1].disturbance > NOISY):
        wait_until_quiet()
        tries.append(run_window(jobs, roles, scrape or dict, Window.after(warm_up, seconds)))
    return replace(min(tries, key=lambda attempt: attempt.disturbance), tries=len(tries))


def run_window(
    jobs: Sequence[tuple[str, Job]],
    roles: Mapping[str, psutil.Process],
    scrape: Scrape,
    window: Window,
) -> Slice:
    with ThreadPoolExecutor(len(jobs)) as pool:
        running = [(group, pool.submit(job, window)) for group, job in jobs]
        window.wait_for(window.start)
        usage, metrics = Usage.now(roles), scrape()
        window.wait_for(window.end)
        usage_after, metrics_after = Usage.now(roles), scrape()
        results = [(group, future.result()) for group, future in running]
    latencies: dict[str, list[float]] = {group: [] for group, _ in jobs}
    calls = dict.fromkeys(latencies, 0.0)
    failures: Counter[int] = Counter()
    for group, samples in results:
        latencies[group] += window.latencies_ms(samples)
        calls[group] += window.completed(samples)
        failures += window.failures(samples)
    server = {name: metrics_after[name] - metrics.get(name, 0.0) for name in metrics_after}
    return Slice(latencies, calls, failures, window.seconds, usage_after.since(usage), server)


# --- the table ----------------------------------------------------------------------------------

Row = tuple[str, str, str, str, str, str]


@dataclass(frozen=True)
class Table:
    """Rows by section: what, value, p50 and p99 (ms), goal, where the time or memory went."""

    sections: dict[str, list[Row]]

    @classmethod
    def empty(cls, *sections: str) -> Table:
        return cls({section: [] for section in sections})

    def add(
        self,
        section: str,
        what: str,
        value: str = "",
        p50: str = "",
        p99: str = "",
        goal: str = "",
        detail: str = "",
    ) -> None:
        self.sections[section].append((what, value, p50, p99, goal, detail))

    def print(self, header: Sequence[str]) -> None:
        """A markdown table, ready to paste into docs/; empty sections are left out."""
        titles: Row = ("measure", "value", "p50 ms", "p99 ms", "goal", "detail")
        rows = [titles]
        for section, section_rows in self.sections.items():
            if section_rows:
                rows += [(f"*{section}*", "", "", "", "", ""), *section_rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(titles))]
        print("\n".join(header), end="\n\n")
        for number, row in enumerate(rows):
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            print("| " + " | ".join(cells) + " |")
            if number == 0:
                print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def met(value: float, goal: float) -> str:
    return "met" if value < goal else "MISSED"


def verdict(is_met: bool) -> str:
    return "met" if is_met else "MISSED"

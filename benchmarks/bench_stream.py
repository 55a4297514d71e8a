"""Streaming benchmark: a completion streamed token by token, beside the same completion whole.

    python benchmarks/bench_stream.py [--requests 20] [--tokens 100]

Serves the tests' tiny GPT-2 (tests/modelfactory.py: `build_generation_model`, built offline) in a
real worker process behind the real app (uvicorn on loopback, in this process), and times
`POST /v1/completions` for `--tokens` tokens, greedy, with and without `"stream": true` (the
stream read to its end), alternating, `--requests` of each. The difference is what streaming
costs: a message per token from the worker, a server-sent event per token. The model is tiny on
purpose: with a real one, each token's forward pass dwarfs both.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=100)
    args = parser.parse_args()
    from liveserver import serve
    from modelfactory import build_generation_model

    from modelmora.serve.app import create_app
    from modelmora.serve.config import ServerSettings, SupervisorSettings
    from modelmora.serve.supervisor import ServedModel, Supervisor

    with tempfile.TemporaryDirectory() as scratch:
        folder = build_generation_model(Path(scratch) / "gen")
        model = ServedModel("gen", "text-generation", folder, device="cpu", threads=THREADS)
        app = create_app(
            Supervisor([model], SupervisorSettings()), ServerSettings(access_log=False)
        )
        with serve(app) as url, httpx.Client(base_url=url, timeout=300) as client:
            client.post("/models/gen/load").raise_for_status()
            rows = measure(client, args.requests, args.tokens)
    print(f"\ntiny GPT-2, {args.tokens} tokens, greedy, {THREADS} torch threads; "
          f"{platform.machine()}, Python {platform.python_version()}\n")  # fmt: skip
    print("| request | p50 ms | p50 per token ms |")
    print("| --- | ---: | ---: |")
    for name, values in rows.items():
        p50 = statistics.median(values)
        print(f"| {name} | {p50:.1f} | {p50 / args.tokens:.2f} |")


def measure(client: httpx.Client, requests: int, tokens: int) -> dict[str, list[float]]:
    body = {"model": "gen", "prompt": "hello", "max_tokens": tokens, "temperature": 0, "stop": []}
    rows: dict[str, list[float]] = {"/v1/completions": [], "/v1/completions, stream": []}
    for index in range(requests + 2):  # the first two are a warm-up
        started = time.perf_counter()
        answer = client.post("/v1/completions", json=body)
        whole = (time.perf_counter() - started) * 1000
        if answer.status_code != 200 or answer.json()["usage"]["completion_tokens"] != tokens:
            raise RuntimeError(f"not {tokens} tokens: {answer.text[:300]}")
        started = time.perf_counter()
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as reply:
            events = sum(line.startswith("data: {") for line in reply.iter_lines())
        streamed = (time.perf_counter() - started) * 1000
        if events < tokens:
            raise RuntimeError(f"the stream had {events} events for {tokens} tokens")
        if index >= 2:
            rows["/v1/completions"].append(whole)
            rows["/v1/completions, stream"].append(streamed)
    return rows


if __name__ == "__main__":
    main()

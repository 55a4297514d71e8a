"""Per-request overhead of the server (HTTP round trip minus compute) and its idle memory.

    python benchmarks/server_overhead.py [--requests 2000]

Starts `modelmora.server.run_server` in a child process with one model served by `NullRuntime`
below (no torch), then times sequential `POST /infer/null` and `GET /health` round trips over one
keep-alive connection with the stdlib's http.client (httpx would add about 1 ms of its own).
Overhead = round trip - the worker's reported inference time; the JSON access log stays on.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent


class NullRuntime:
    """A runtime that does no work: what is left of a request's time is the server's."""

    device = "cpu"

    def load(self, spec: Any) -> None:
        pass

    def warm_up(self) -> None:
        pass

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"inputs": request.get("inputs")}

    def stream(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield {"text": "", "finish_reason": "stop", "prompt_tokens": 0, "completion_tokens": 0}

    def accelerator_memory(self) -> int | None:
        return None


SERVER = """
from pathlib import Path
from modelmora.server import ServerSettings, run_server
from modelmora.supervisor import ServedModel, SupervisorSettings
runtime = "server_overhead:NullRuntime"
models = [ServedModel("null", "null", Path("."), runtime=runtime, device="cpu")]
run_server(models, SupervisorSettings(), ServerSettings(port={port}, access_log={access_log}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--no-access-log", action="store_true", help="turn the access log off")
    args = parser.parse_args()
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    code = textwrap.dedent(SERVER.format(port=port, access_log=not args.no_access_log))
    server = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    try:
        _report(port, psutil.Process(server.pid), args.requests)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _report(port: int, server: psutil.Process, requests: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        _wait_for(client)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(100):
        _round_trip(connection, "GET", "/health")
    print(f"server RSS, no model loaded: {server.memory_info().rss / 2**20:.1f} MiB")
    for _ in range(100):  # the cold start (template imports, first load) is not overhead
        _round_trip(connection, "POST", "/infer/null")
    health = [_round_trip(connection, "GET", "/health")[0] for _ in range(requests)]
    infer = [_round_trip(connection, "POST", "/infer/null") for _ in range(requests)]
    connection.close()
    overhead = [total - compute for total, compute in infer]
    print(f"{'ms':<40}{'p50':>8}{'p99':>8}")
    _row("GET /health round trip", health)
    _row("POST /infer round trip", [total for total, _ in infer])
    _row("  worker compute (inference_ms)", [compute for _, compute in infer])
    _row("  overhead (round trip - compute)", overhead)


def _round_trip(
    connection: http.client.HTTPConnection, method: str, path: str
) -> tuple[float, float]:
    """Milliseconds for the whole round trip, and of it the worker's compute."""
    body = b'{"inputs": ["hello"]}' if method == "POST" else None
    started = time.perf_counter()
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
    data = connection.getresponse().read()
    total = (time.perf_counter() - started) * 1000
    compute = json.loads(data)["timing"]["inference_ms"] if method == "POST" else 0.0
    return total, compute


def _row(name: str, values: list[float]) -> None:
    cuts = statistics.quantiles(values, n=100)
    print(f"{name:<40}{cuts[49]:>8.3f}{cuts[98]:>8.3f}")


def _wait_for(client: httpx.Client) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            client.get("/health")
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


if __name__ == "__main__":
    main()

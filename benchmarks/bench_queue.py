"""Throughput of the scheduler alone: submit -> batch -> no-op dispatch -> result, no model.

    python benchmarks/bench_queue.py [--requests 20000] [--concurrency 1 32 128]

Closed-loop clients (each submits one one-input request, waits for it, submits the next) against
a dispatch that returns its inputs at once, so what is measured is the scheduler's own cost per
request: queueing, batch planning, futures, timers and the task per batch. Batching off is
max_batch_size=1; on is max_batch_size=32. Both use max_batch_delay_ms=0 (a delay would measure
the clock, not the queue) and a deadline per request, so the deadline timers are in the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelmora.serve.batching import Batch, BatchOutput
from modelmora.serve.config import BatchSettings
from modelmora.serve.scheduler import Scheduler

MODES = {
    "off": BatchSettings(max_batch_size=1, max_batch_delay_ms=0, max_queue=1024),
    "on": BatchSettings(max_batch_size=32, max_batch_delay_ms=0, max_queue=1024),
}
"""Batching off and on; bench_server.py prints a row of this benchmark too."""


async def echo(batch: Batch) -> BatchOutput:
    return BatchOutput(batch.inputs)


async def client(scheduler: Scheduler, count: int, latencies: list[float]) -> None:
    for _ in range(count):
        started = time.perf_counter()
        await scheduler.submit("m", ["a sentence"], deadline=time.monotonic() + 60)
        latencies.append(time.perf_counter() - started)


async def measure(settings: BatchSettings, requests: int, concurrency: int) -> dict[str, float]:
    scheduler = Scheduler(echo, lambda model: settings)
    latencies: list[float] = []
    per_client = max(1, requests // concurrency)
    started = time.perf_counter()
    await asyncio.gather(*(client(scheduler, per_client, latencies) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    stats = scheduler.stats("m")
    await scheduler.close()
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "ops": len(latencies) / elapsed,
        "batch": stats.batched_inputs / stats.batches,
        "p50_us": quantiles[49] * 1e6,
        "p99_us": quantiles[98] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    args = parser.parse_args()
    print(
        f"{'batching':>8} {'clients':>7} {'requests/s':>11} {'mean batch':>10} "
        f"{'p50 us':>8} {'p99 us':>8}"
    )
    for name, settings in MODES.items():
        for concurrency in args.concurrency:
            row = asyncio.run(measure(settings, args.requests, concurrency))
            print(
                f"{name:>8} {concurrency:>7} {row['ops']:>11,.0f} {row['batch']:>10.1f} "
                f"{row['p50_us']:>8.0f} {row['p99_us']:>8.0f}"
            )


if __name__ == "__main__":
    main()

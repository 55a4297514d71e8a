"""Versions and a canary: add v2 of a model, send it 10% of the traffic, promote it, roll back.

The model must have versions in `modelmora.toml` (`[models.NAME.versions.v1]`). Registering v2
gives it no share, so nothing moves until the route says so; `PUT /models/NAME/route` splits the
traffic, each answer says which version computed it (`X-ModelMora-Model-Version`), `promote`
sends everything to one version, and `rollback` goes back to the route before. Every change is
written to `modelmora.toml` and the project's registry, with who made it. Changing routes needs
the admin scope, which the server's own `--api-key` has. In a project whose `modelmora.toml` has

    [models.minilm]
    task = "embedding"

    [models.minilm.versions.v1]
    source = "./minilm-v1"

serve it, and run the script with the folder of v2:

    cd my-project && modelmora serve --api-key s3cret
    python examples/canary.py --key s3cret --model minilm --source ./minilm-v2

Options: `--url` (or MODELMORA_URL, default http://127.0.0.1:8000), `--key` (or
MODELMORA_API_KEY), `--model`, `--version` (default v2), `--source` (the new version's folder,
or hf://ORG/REPO), `--users` (how many users send a request through the canary route).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from typing import Any

import httpx


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MODELMORA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("MODELMORA_API_KEY"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--version", default="v2")
    parser.add_argument("--source", required=True, help="a model folder, or hf://ORG/REPO")
    parser.add_argument("--users", type=int, default=50)
    return parser.parse_args()


def shares(route: dict[str, Any]) -> str:
    return ", ".join(f"{version} {weight}" for version, weight in sorted(route["weights"].items()))


def add_version(http: httpx.Client, model: str, version: str, source: str) -> None:
    source = os.path.abspath(source) if "://" not in source else source
    answer = http.post("/models", json={"name": model, "version": version, "source": source})
    answer.raise_for_status()
    registration = answer.json()
    while registration["state"] == "running":  # 202: a download in the background
        time.sleep(0.5)
        registration = http.get(answer.headers["Location"]).raise_for_status().json()
    if registration["state"] != "done":
        raise SystemExit(f"registering {model}@{version} failed: {registration['error']}")
    print(f"added {registration['name']}")


def change(http: httpx.Client, what: str, answer: httpx.Response) -> None:
    body = answer.raise_for_status().json()
    print(f"{what}: {shares(body['before'])} -> {shares(body['after'])}")


def send(http: httpx.Client, model: str, users: int) -> None:
    """A request from each of `users` users; which version answered each.

    Each user's route key keeps them on one version while the route stands (sticky routing);
    without one, each request draws its version by the route's weights.
    """
    answered = Counter(
        http.post(
            f"/infer/{model}",
            json={"inputs": [f"a request of user {n}"]},
            headers={"X-ModelMora-Route-Key": f"user-{n}"},
        )
        .raise_for_status()
        .headers["X-ModelMora-Model-Version"]
        for n in range(users)
    )
    print("answered by:", ", ".join(f"{v} {n}" for v, n in sorted(answered.items())))


def main() -> None:
    args = arguments()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=300) as http:
        versions = http.get(f"/models/{args.model}/versions").raise_for_status().json()
        if versions["route"] is None:
            raise SystemExit(
                f"{args.model} has no versions: declare [models.{args.model}.versions]"
            )
        before = versions["route"]["weights"]
        stable = max(before, key=lambda version: before[version])
        print(f"{args.model}: route {shares(versions['route'])}")
        add_version(http, args.model, args.version, args.source)
        canary = {"weights": {stable: 90, args.version: 10}}
        change(http, "canary", http.put(f"/models/{args.model}/route", json=canary))
        send(http, args.model, args.users)
        promote = {"version": args.version}
        change(http, "promote", http.post(f"/models/{args.model}/promote", json=promote))
        send(http, args.model, 3)
        change(http, "rollback", http.post(f"/models/{args.model}/rollback"))
        history = http.get(f"/models/{args.model}/versions").raise_for_status().json()["history"]
        print("history:", " -> ".join(f"{c['action']} ({c['actor']})" for c in history[-4:]))


if __name__ == "__main__":
    main()

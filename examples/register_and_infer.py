"""Register a model at run time from a folder (`POST /models`), then run it (`POST /infer/NAME`).

The server locks and installs the folder like `modelmora add` would, writes `modelmora.toml` and
`modelmora.lock` once the files are in the cache, and serves the model at once: a folder answers
201 when it is done; a Hub source answers 202, and the script polls `GET /registrations/ID`.
Registering needs the admin scope, which the server's own `--api-key` has.

    cd my-project && modelmora serve --api-key s3cret    # any project, even an empty one
    python examples/register_and_infer.py --key s3cret --source ./my-model --task embedding hi

Options: `--url` (or MODELMORA_URL, default http://127.0.0.1:8000), `--key` (or
MODELMORA_API_KEY), `--name`, `--source` (a folder, or hf://ORG/REPO), `--task` (when the
model's config does not say), then the texts to run it on.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import httpx


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MODELMORA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("MODELMORA_API_KEY"))
    parser.add_argument("--name", default="my-model")
    parser.add_argument("--source", required=True, help="a model folder, or hf://ORG/REPO")
    parser.add_argument("--task", help="embedding, text-classification, text-generation, ...")
    parser.add_argument("texts", nargs="*", default=["Hello, world"])
    return parser.parse_args()


def register(http: httpx.Client, name: str, source: str, task: str | None) -> dict[str, Any]:
    """The registration once it is over: done (the model is served) or failed."""
    body = {"name": name, "source": os.path.abspath(source) if "://" not in source else source}
    answer = http.post("/models", json={**body, **({"task": task} if task else {})})
    answer.raise_for_status()
    registration: dict[str, Any] = answer.json()
    while registration["state"] == "running":  # 202: a download in the background
        time.sleep(0.5)
        registration = http.get(answer.headers["Location"]).raise_for_status().json()
    return registration


def summary(result: dict[str, Any]) -> str:
    """A line about any task's result."""
    if "embeddings" in result:
        vectors = result["embeddings"]
        return f"{len(vectors)} vectors of {len(vectors[0])} dimensions"
    if "predictions" in result:
        return "labels: " + ", ".join(str(p[0]["label"]) for p in result["predictions"])
    return repr(result.get("text", result))


def main() -> None:
    args = arguments()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=300) as http:
        registration = register(http, args.name, args.source, args.task)
        if registration["state"] != "done":
            raise SystemExit(f"registration failed: {registration['error']}")
        print(f"registered {registration['name']}: {registration['state']}")
        status = http.get(f"/models/{args.name}").raise_for_status().json()
        print(f"task {status['task']}, revision {status['revision'][:12]}")
        reply = http.post(f"/infer/{args.name}", json={"inputs": args.texts})
        reply.raise_for_status()
        print(f"{args.name}: {summary(reply.json()['result'])}")


if __name__ == "__main__":
    main()

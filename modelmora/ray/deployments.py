"""A model's Ray Serve replica: ModelMora's own runtime, in-process, on the model's locked files.

The replica does what a worker process does for `modelmora serve` (`modelmora.serve.worker`): it
resolves the runtime from the model's spec, loads it, warms it up, and answers one request at a
time. Its files come from the lock into the node's cache first (`modelmora.ray.nodecache`).

Replies are the worker's messages (`modelmora.serve.protocol`): a `result` or an `error` with the
ServeError's code, so that the ingress raises the same error `modelmora serve` would. Embedding and
classification requests go through Ray Serve's batching (`serve.batch`): requests of several ingress
replicas with the same options become one runtime call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve

from modelmora.lockfile import LockedModel
from modelmora.ray.nodecache import ensure_model
from modelmora.runtimes import ModelSpec, Runtime, resolve_runtime
from modelmora.serve.api.inference import INPUT_TOKENS, PER_INPUT, split
from modelmora.serve.protocol import ErrorMessage, ResultMessage
from modelmora.serve.worker import describe_request_error, memory_in_use, since, use_threads

Reply = dict[str, Any]
MAX_BATCH_SIZE = 32
BATCH_WAIT_S = 0.005


@dataclass(frozen=True)
class ReplicaModel:
    """What a replica is given: the runtime's spec (its path set on the node), the lock entry
    whose files it fetches, and the project's folder, where folder sources live."""

    spec: ModelSpec
    locked: LockedModel
    project_root: str
    max_batch_size: int = MAX_BATCH_SIZE
    batch_wait_s: float = BATCH_WAIT_S


class ModelReplica:
    """One model, loaded once per replica; requests run one at a time, off the event loop."""

    def __init__(self, model: ReplicaModel) -> None:
        started = time.monotonic()
        path = ensure_model(model.locked, Path(model.project_root))
        self.spec = dataclasses.replace(model.spec, path=str(path))
        use_threads(self.spec.threads)
        self.runtime: Runtime = resolve_runtime(self.spec.task, self.spec.runtime)()
        self.runtime.load(self.spec)
        self.runtime.warm_up()
        self.load_ms = since(started)
        self.turn = asyncio.Lock()

    def describe(self) -> dict[str, Any]:
        """Where the model runs and what it holds, for the ingress' status."""
        memory = memory_in_use(self.runtime)
        return {"device": self.runtime.device, "memory_bytes": memory, "load_ms": self.load_ms}

    async def infer(self, request: dict[str, Any]) -> Reply:
        return await self.run(request)

    async def run(self, request: dict[str, Any]) -> Reply:
        """The worker's `result` message for one runtime request, or its `error` message."""
        arrived = time.monotonic()
        async with self.turn:
            started = time.monotonic()
            try:
                result = await asyncio.to_thread(self.runtime.infer, request)
            except Exception as error:
                return error_reply(error)
        return result_reply(result, (started - arrived) * 1000, since(started))

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[Reply]:
        """The worker's `chunk` messages, then `end`, or an `error`."""
        async with self.turn:
            chunks = self.runtime.stream(request)
            try:
                while (chunk := await asyncio.to_thread(next_chunk, chunks)) is not None:
                    yield {"kind": "chunk", "id": 0, "data": chunk}
            except Exception as error:
                yield error_reply(error)
                return
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # a generator's cleanup stops its work (a generation thread, say)
        yield {"kind": "end", "id": 0, "wait_ms": 0.0, "compute_ms": 0.0}


class BatchedModelReplica(ModelReplica):
    """Embedding and classification: Ray Serve merges concurrent requests into one runtime call."""

    def __init__(self, model: ReplicaModel) -> None:
        super().__init__(model)
        self.field = PER_INPUT[self.spec.task]
        self.infer_batch.set_max_batch_size(model.max_batch_size)
        self.infer_batch.set_batch_wait_timeout_s(model.batch_wait_s)

    async def infer(self, request: dict[str, Any]) -> Reply:
        reply: Reply = await self.infer_batch(request)
        return reply

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)  # type: ignore[untyped-decorator]
    async def infer_batch(self, requests: list[dict[str, Any]]) -> list[Reply]:
        """One runtime call per set of options; each request gets its own inputs' records back."""
        replies: list[Reply] = [{} for _ in requests]
        for indexes in groups(requests).values():
            group = [requests[i] for i in indexes]
            for i, reply in zip(indexes, await self.infer_group(group), strict=True):
                replies[i] = reply
        return replies

    async def infer_group(self, group: list[dict[str, Any]]) -> list[Reply]:
        options = {key: value for key, value in group[0].items() if key != "inputs"}
        counts = [len(request["inputs"]) for request in group]
        inputs = [item for request in group for item in request["inputs"]]
        reply = await self.run({**options, "inputs": inputs})
        if reply["kind"] != "result":
            return [reply] * len(group)
        try:
            records = split(reply["result"], self.field, len(inputs))
        except Exception as error:
            return [error_reply(error)] * len(group)
        return [
            {**reply, "result": regroup(part, self.field)} for part in portions(records, counts)
        ]


def groups(requests: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The indexes of the requests that share their options (all but the inputs)."""
    found: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        options = {key: value for key, value in request.items() if key != "inputs"}
        found.setdefault(json.dumps(options, sort_keys=True, default=str), []).append(index)
    return found


def portions(records: list[Reply], counts: list[int]) -> Iterator[list[Reply]]:
    start = 0
    for count in counts:
        yield records[start : start + count]
        start += count


def regroup(records: list[Reply], field: str) -> Reply:
    """A request's result as the runtime answers it alone: its entries and their token counts."""
    shared = {key: value for key, value in records[0].items() if key not in (field, INPUT_TOKENS)}
    tokens = [record[INPUT_TOKENS] for record in records]
    return {**shared, field: [record[field] for record in records], INPUT_TOKENS: tokens,
            "prompt_tokens": sum(tokens)}  # fmt: skip


def next_chunk(chunks: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
    return next(chunks, None)


def result_reply(result: dict[str, Any], wait_ms: float, compute_ms: float) -> Reply:
    reply: ResultMessage = {
        "kind": "result", "id": 0, "result": result, "wait_ms": wait_ms, "compute_ms": compute_ms,
    }  # fmt: skip
    return dict(reply)


def error_reply(error: Exception) -> Reply:
    message: ErrorMessage = describe_request_error(0, error)
    return dict(message)


def replica_class(task: str) -> type[ModelReplica]:
    return BatchedModelReplica if task in PER_INPUT else ModelReplica

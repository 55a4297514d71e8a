"""Every inference goes through the scheduler: batched tasks by input, the others by turn.

    /infer, /v1/embeddings, jobs ──► Scheduler.submit ──► dispatch(Batch) ──► Supervisor.infer
    generation, plugin tasks    ──► Scheduler.turn ──► Supervisor.infer / stream

Embedding and classification are batched: the scheduler merges the inputs of queued requests into
one runtime request, and `dispatch` splits the runtime's answer back into one record per input
(its vector or predictions, and its `input_tokens`), so that each request gets its own results and
its own token count. Only the inputs and the task options (`normalize`, `top_k`) reach the batch;
a request's keep-alive is applied on its own once it is answered, so that it never splits batches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from modelmora.errors import ServeError
from modelmora.serve.api.http import AppState, app_state, client_gone
from modelmora.serve.batching import Batch, BatchOutput
from modelmora.serve.scheduler import LOW, IsDisconnected, OnStart, parse_priority
from modelmora.serve.supervisor import InferenceResult, Supervisor
from modelmora.serve.traffic import SHADOW_TIMEOUT, Target
from modelmora.vectors import Row, Vectors, unpack_result

PER_INPUT = {"embedding": "embeddings", "text-classification": "predictions"}
"""The batched tasks, and the result field that has one entry per input."""
INPUT_TOKENS = "input_tokens"
ROUTE_KEY_HEADER = "x-modelmora-route-key"
"""Requests with the same key get the same version while the route's weights stay the same."""

Result = dict[str, Any]


@dataclass(frozen=True)
class Admission:
    """How a request waits in its model's queue."""

    priority: int
    deadline: float
    """time.monotonic() at which it is answered 504 if it is still waiting."""
    is_disconnected: IsDisconnected | None = None
    background: bool = False
    """A job: it never counts against the model's max_queue and is never refused."""
    on_start: OnStart | None = None
    """Called when its computation starts (its batch is dispatched, or its turn granted)."""


def admission(
    request: Request, arrival: float, priority: int | None, timeout: float | None
) -> Admission:
    """The request's priority; its deadline counts from `arrival`, before the body was read."""
    queueing = admit(app_state(request), arrival, request_priority(request, priority), timeout)
    return dataclasses.replace(queueing, is_disconnected=client_gone(request))


def admit(
    state: AppState,
    arrival: float,
    priority: int,
    timeout: float | None,
    is_disconnected: IsDisconnected | None = None,
) -> Admission:
    """How a request of any protocol waits: its deadline `timeout` seconds after `arrival` (else
    the server's request timeout)."""
    deadline = state.supervisor.settings.deadline_after(arrival, timeout)
    return Admission(priority, deadline, is_disconnected)


def request_priority(request: Request, priority: int | None) -> int:
    """The body's priority, else the X-Priority header, else normal."""
    if priority is not None:
        return priority
    return parse_priority(request.headers.get("x-priority"))


def target(request: Request, reference: str, user: str | None = None) -> Target:
    """Where the request goes: the version `reference` names, or the one its route picks (by the
    route key header, else OpenAI's `user`). The access log, metrics and headers say which."""
    key = request.headers.get(ROUTE_KEY_HEADER) or user
    found = resolve(app_state(request), reference, key)
    request.state.model = found.name
    request.state.version = found.version
    return found


def resolve(state: AppState, reference: str, key: str | None = None) -> Target:
    """The served version for `reference` (`minilm`, `minilm@v2`), routed by `key`; 404 if none."""
    if state.traffic is not None:
        return state.traffic.resolve(reference, key)
    state.supervisor.model(reference)
    return Target(reference, reference, None)


def mirror(state: AppState, found: Target, runtime_request: Result, answer: Result) -> None:
    """Copy an answered request to the route's shadow, if this one was picked for it."""
    if found.shadow is None or state.shadows is None:
        return

    async def run(name: str) -> Result:
        queueing = Admission(LOW, time.monotonic() + SHADOW_TIMEOUT)
        outcome = await infer(state, name, dict(runtime_request), queueing)
        shadowed: Result = outcome.result
        return shadowed

    task = state.supervisor.model(found.name).task
    state.shadows.mirror(found, task, unpack_result(answer), run)


def is_batched(task: str) -> bool:
    return task in PER_INPUT


async def infer(
    state: AppState,
    name: str,
    runtime_request: Result,
    queueing: Admission,
    keep_alive: float | None = None,
    packed: bool = False,
) -> InferenceResult:
    """One request through the scheduler, batched when its task allows.

    Embeddings come back as lists of floats for a JSON answer; `packed` keeps them as the worker
    sent them, float32 bytes (`modelmora.vectors.Vectors`), for a binary one.
    """
    task = state.supervisor.model(name).task
    if is_batched(task):
        outcome = await infer_batched(state, name, task, runtime_request, queueing, keep_alive)
    else:
        async with state.scheduler.turn(name, **vars(queueing)) as turn:
            outcome = await state.supervisor.infer(
                name,
                runtime_request,
                timeout=seconds_until(queueing.deadline),
                keep_alive=keep_alive,
            )
        outcome = dataclasses.replace(outcome, queue_ms=outcome.queue_ms + turn.queue_ms)
    if packed:
        return outcome
    return dataclasses.replace(outcome, result=unpack_result(outcome.result))


async def infer_batched(
    state: AppState,
    name: str,
    task: str,
    runtime_request: Result,
    queueing: Admission,
    keep_alive: float | None,
) -> InferenceResult:
    options = dict(runtime_request)
    inputs = options.pop("inputs")
    submitted = await state.scheduler.submit(name, inputs, options, **vars(queueing))
    if keep_alive is not None:
        state.supervisor.set_keep_alive(name, keep_alive)
    return InferenceResult(
        result=join(submitted.outputs, PER_INPUT[task]),
        queue_ms=submitted.queue_ms + submitted.timing.get("worker_queue_ms", 0.0),
        load_ms=submitted.timing.get("load_ms", 0.0),
        inference_ms=submitted.timing.get("inference_ms", 0.0),
    )


async def open_stream(
    state: AppState,
    name: str,
    runtime_request: Result,
    queueing: Admission,
    exits: AsyncExitStack,
    keep_alive: float | None = None,
) -> AsyncIterator[Result]:
    """Wait for the model's turn, then its chunks; closing `exits` ends both."""
    await exits.enter_async_context(state.scheduler.turn(name, **vars(queueing)))
    chunks = state.supervisor.stream(name, runtime_request, keep_alive=keep_alive)
    exits.push_async_callback(chunks.aclose)
    return chunks


# --- the scheduler's dispatch -------------------------------------------------------------------


async def dispatch(supervisor: Supervisor, batch: Batch) -> BatchOutput:
    """Run one batch as one runtime request and split its result into one record per input."""
    task = supervisor.model(batch.model).task
    outcome = await supervisor.infer(
        batch.model,
        {"inputs": list(batch.inputs), **batch.options},
        timeout=seconds_until(batch.deadline),
    )
    timing = {
        "worker_queue_ms": outcome.queue_ms,
        "load_ms": outcome.load_ms,
        "inference_ms": outcome.inference_ms,
    }
    return BatchOutput(split(outcome.result, PER_INPUT[task], len(batch.inputs)), timing)


def split(result: Result, field: str, count: int) -> list[Result]:
    """One record per input: its entry of `field`, its tokens, and the fields all inputs share."""
    values = result.get(field)
    if isinstance(values, Vectors):
        values = values.rows()
    if not isinstance(values, list) or len(values) != count:
        raise ServeError(f"the runtime answered no list with one '{field}' per input ({count})")
    own = (field, INPUT_TOKENS, "prompt_tokens")
    shared = {key: value for key, value in result.items() if key not in own}
    tokens = result.get(INPUT_TOKENS) or guessed_tokens(result, count)
    return [
        {**shared, field: value, INPUT_TOKENS: used}
        for value, used in zip(values, tokens, strict=True)
    ]


def guessed_tokens(result: Result, count: int) -> list[int]:
    """For a runtime that reports only the total: exact for one input, unknown (0) in a batch."""
    return [int(result.get("prompt_tokens", 0))] if count == 1 else [0] * count


def join(records: Sequence[Result], field: str) -> Result:
    """A request's result from its inputs' records, as the runtime would have answered it alone."""
    result = {key: value for key, value in records[0].items() if key != INPUT_TOKENS}
    values = [record[field] for record in records]
    packed = all(isinstance(value, Row) for value in values)
    result[field] = Vectors.join(values) if packed and values else values
    result["prompt_tokens"] = sum(record[INPUT_TOKENS] for record in records)
    return result


def seconds_until(deadline: float) -> float:
    """The supervisor's timeout for what is left of a deadline; 0 means none."""
    if math.isinf(deadline):
        return 0.0
    return max(deadline - time.monotonic(), 0.001)

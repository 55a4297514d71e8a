"""Batching: the planning rules on their own, then the scheduler behind the HTTP API.

The rules (`modelmora.serve.batching`) are pure functions, tested with plain values: no event loop.
Behind the API: real HTTP on loopback, real worker processes. Most tests use RecordingRuntime, which
writes down every batch its worker sees, so that order, batch sizes and what was never computed are
facts, not guesses from timings; the only durations asserted are lower bounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from liveserver import serve
from modelfactory import build_classification_model, build_embedding_model
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from runtimes_for_tests import recorded_batches, text_vector
from waiting import eventually

from modelmora.manifest import ModelSpec
from modelmora.serve.app import create_app
from modelmora.serve.batching import (
    estimate_tokens,
    inputs_that_fit,
    is_batch_ready,
    options_group,
    plan_batch,
    ready_at,
    sending_order,
    unsort,
)
from modelmora.serve.config import BatchSettings, ServerSettings, SupervisorSettings, batch_settings
from modelmora.serve.supervisor import ServedModel, Supervisor

RECORDING = "runtimes_for_tests:RecordingRuntime"
TEXTS = [f"sentence number {i} " + "word " * (i % 7) for i in range(16)]


# The planning rules


@dataclass
class Queued:
    """A queued request as planning sees it."""

    tokens: list[int]
    group: str = ""
    exclusive: bool = False
    taken: int = 0


@dataclass
class Load:
    """A model's queue as planning sees it."""

    settings: BatchSettings
    queued_inputs: int = 1
    queued_tokens: int = 1
    last_batch_size: int | None = None
    returning: int = 0
    freed_at: float = 0.0
    oldest: float = 100.0

    def oldest_enqueued_at(self) -> float:
        return self.oldest


def test_tokens_are_estimated_from_characters_and_options_group_requests() -> None:
    assert [estimate_tokens(text) for text in ("", "abc", "abcd" * 10)] == [1, 1, 11]
    assert options_group({}) == ""
    assert options_group({"normalize": True, "top_k": 2}) == options_group(
        {"top_k": 2, "normalize": True}
    )
    assert options_group({"normalize": True}) != options_group({"normalize": False})


def test_a_batch_is_ready_when_full_or_when_its_oldest_request_waited_the_delay() -> None:
    settings = BatchSettings(max_batch_size=4, max_batch_tokens=100, max_batch_delay_ms=10)
    head = Queued([1])

    assert not is_batch_ready(Load(settings), head, now=100.005)
    assert is_batch_ready(Load(settings), head, now=100.010)
    assert is_batch_ready(Load(settings, queued_inputs=4), head, now=100.0)
    assert is_batch_ready(Load(settings, queued_tokens=100), head, now=100.0)
    assert is_batch_ready(Load(settings), Queued([1], exclusive=True), now=100.0)


def test_after_a_batch_the_next_waits_for_the_clients_just_answered_and_no_longer() -> None:
    settings = BatchSettings(max_batch_size=8, max_batch_tokens=100, max_batch_delay_ms=10)
    head = Queued([1])
    # Two of the batch's four clients are not back yet: wait, up to the delay from when the
    # worker freed up (the oldest request came in while the batch computed, long before).
    waiting = Load(settings, queued_inputs=2, last_batch_size=4, returning=2, freed_at=100.5)
    assert not is_batch_ready(waiting, head, now=100.505)
    assert is_batch_ready(waiting, head, now=100.510)
    assert ready_at(waiting) == 100.51
    # All are back: leave at once, however few (a lone client never waits for company).
    assert is_batch_ready(Load(settings, last_batch_size=4, freed_at=100.5), head, now=100.0)
    assert is_batch_ready(Load(settings, last_batch_size=1, freed_at=99.0), head, now=100.0)
    # Full leaves at once even while more are expected.
    full = Load(settings, queued_inputs=8, last_batch_size=8, returning=3, freed_at=100.0)
    assert is_batch_ready(full, head, now=100.0)


def test_a_plan_takes_requests_in_order_with_equal_options_and_splits_the_last_one() -> None:
    settings = BatchSettings(max_batch_size=4)
    first, other, turn, second = (
        Queued([1, 1]), Queued([1], group="x"), Queued([0], exclusive=True), Queued([1, 1, 1]),
    )  # fmt: skip

    plan = plan_batch([first, other, turn, second], first, settings)

    assert plan == [(first, 2), (second, 2)], "one of second's inputs waits for the next batch"
    assert plan_batch([turn, first], turn, settings) == [(turn, 1)], "a turn goes alone"
    second.taken = 2
    assert plan_batch([second], second, settings) == [(second, 1)], "only what is left"


def test_the_token_budget_bounds_the_padded_batch_but_a_long_input_still_goes_alone() -> None:
    settings = BatchSettings(max_batch_size=32, max_batch_tokens=100)

    assert inputs_that_fit(Queued([10] * 20), 0, 0, settings) == (10, 10)
    assert inputs_that_fit(Queued([30, 10]), 2, 20, settings) == (1, 30), "3 x 30 <= 100"
    assert inputs_that_fit(Queued([500, 1]), 0, 0, settings) == (1, 500)
    assert inputs_that_fit(Queued([500]), 1, 5, settings) == (0, 5), "it waits for a batch alone"
    long, short = Queued([60]), Queued([50])
    assert plan_batch([long, short], long, settings) == [(long, 1)]


def test_longest_first_order_is_undone_for_the_results() -> None:
    order = sending_order([3, 9, 1, 9])

    assert order == [1, 3, 0, 2], "longest first, ties in queued order"
    sent = [["a", "b", "c", "d"][i] for i in order]
    assert unsort([f"out:{text}" for text in sent], order) == ["out:a", "out:b", "out:c", "out:d"]


# The scheduler behind the HTTP API


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records")


def recording(name: str, records: Path, batching: BatchSettings, batch_ms: int = 0) -> ServedModel:
    options = {"record": str(records / f"{name}.jsonl"), "batch_ms": batch_ms}
    return ServedModel(
        name, "embedding", records, runtime=RECORDING, device="cpu", options=options,
        batching=batching,
    )  # fmt: skip


@pytest.fixture(scope="module")
def url(records: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("models")
    models = [
        recording("one", records, BatchSettings(max_batch_size=1)),
        recording("small", records, BatchSettings(max_batch_size=1, max_queue=4)),
        recording("many", records, BatchSettings(max_batch_size=8, max_batch_delay_ms=20), 60),
        ServedModel("emb", "embedding", build_embedding_model(root / "emb")),
        ServedModel("cls", "text-classification", build_classification_model(root / "cls")),
    ]
    supervisor = Supervisor(models, SupervisorSettings(request_timeout=30))
    with serve(create_app(supervisor, ServerSettings(access_log=False))) as base_url:
        yield base_url


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(32) as executor:
        yield executor


def embed(http: httpx.Client, model: str, inputs: str | list[str], **fields: Any) -> httpx.Response:
    headers = fields.pop("headers", None)
    return http.post(f"/infer/{model}", json={"inputs": inputs, **fields}, headers=headers)


def computing(records: Path, model: str, text: str) -> Callable[[], bool]:
    """True once the model's worker has started the batch holding `text`."""
    return lambda: any(text in batch for batch in recorded_batches(records / f"{model}.jsonl"))


def queued(http: httpx.Client, model: str) -> dict[str, int]:
    depth: dict[str, int] = http.get(f"/models/{model}").json()["queued"]
    return depth


def computed(records: Path, model: str) -> list[str]:
    return [text for batch in recorded_batches(records / f"{model}.jsonl") for text in batch]


def metric(http: httpx.Client, name: str, **labels: str) -> float:
    families = text_string_to_metric_families(http.get("/metrics").text)
    samples = [s for family in families for s in family.samples if s.name == name]
    return sum(s.value for s in samples if labels.items() <= s.labels.items())


# Priorities


@pytest.mark.slow
def test_higher_priority_overtakes_queued_lower_priority(
    http: httpx.Client, pool: ThreadPoolExecutor, records: Path
) -> None:
    blocker = pool.submit(embed, http, "one", "sleep:1000")
    eventually(computing(records, "one", "sleep:1000"))
    sent: list[Future[httpx.Response]] = []
    plan = [("low-0", "low"), ("low-1", "low"), ("high-0", "2"), ("low-2", "0"), ("high-1", "2")]
    for number, (text, priority) in enumerate(plan, start=1):
        sent.append(pool.submit(embed, http, "one", text, headers={"X-Priority": priority}))
        eventually(lambda n=number: sum(queued(http, "one").values()) == n)  # type: ignore[misc]
    sent.append(pool.submit(embed, http, "one", "critical-0", priority="critical"))
    eventually(lambda: queued(http, "one")["critical"] == 1)
    info = http.get("/models/one").json()

    assert blocker.result().status_code == 200
    assert all(future.result().status_code == 200 for future in sent)
    order = computed(records, "one")
    assert order[order.index("sleep:1000") + 1 :] == [
        "critical-0", "high-0", "high-1", "low-0", "low-1", "low-2",
    ]  # fmt: skip
    assert info["queued"] == {"low": 3, "normal": 0, "high": 2, "critical": 1}
    assert info["batching"]["max_batch_size"] == 1 and info["batching"]["max_queue"] == 256


@pytest.mark.parametrize(
    ("where", "value"), [("body", "urgent"), ("body", 7), ("header", "9"), ("header", "max")]
)
@pytest.mark.slow
def test_an_unknown_priority_is_422(http: httpx.Client, where: str, value: Any) -> None:
    if where == "body":
        response = embed(http, "one", "x", priority=value)
    else:
        response = embed(http, "one", "x", headers={"X-Priority": value})

    assert response.status_code == 422
    assert "priority" in response.json()["error"]["message"]


# Deadlines and clients that leave


@pytest.mark.slow
def test_a_queued_request_gets_504_at_its_deadline_and_is_never_computed(
    http: httpx.Client, pool: ThreadPoolExecutor, records: Path
) -> None:
    blocker = pool.submit(embed, http, "one", "sleep:4000")
    eventually(computing(records, "one", "sleep:4000"))
    started = time.monotonic()
    late = embed(http, "one", "too-late", timeout=0.3)
    waited = time.monotonic() - started
    blocker_was_computing = not blocker.done()
    expired = metric(http, "modelmora_requests_expired_total", model="one", where="queued")

    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
    assert waited >= 0.3 and blocker_was_computing  # at its deadline, not when the worker is free
    assert blocker.result().status_code == 200
    assert "too-late" not in computed(records, "one")
    assert expired >= 1


@pytest.mark.slow
def test_a_client_that_left_is_dropped_before_compute(
    url: str, http: httpx.Client, pool: ThreadPoolExecutor, records: Path
) -> None:
    blocker = pool.submit(embed, http, "one", "sleep:800")
    eventually(computing(records, "one", "sleep:800"))
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(f"{url}/infer/one", json={"inputs": "gone"}, timeout=0.2)

    assert blocker.result().status_code == 200
    assert embed(http, "one", "after").status_code == 200
    assert "gone" not in computed(records, "one")
    assert metric(http, "modelmora_requests_dropped_total", model="one") >= 1


# Backpressure


@pytest.mark.slow
def test_a_full_queue_answers_429_at_once_and_every_accepted_request_completes(
    http: httpx.Client, pool: ThreadPoolExecutor, records: Path
) -> None:
    blocker = pool.submit(embed, http, "small", "sleep:3000")
    eventually(computing(records, "small", "sleep:3000"))
    filling = [pool.submit(embed, http, "small", ["x", f"filling #{i}"]) for i in range(2)]
    eventually(lambda: sum(queued(http, "small").values()) == 2)  # 4 inputs: max_queue
    full = embed(http, "small", "one too many")
    refused_while_full = not blocker.done()
    held = [future.result().status_code for future in [blocker, *filling]]
    texts = [f"request #{i}" for i in range(16)]
    responses = pool.map(lambda text: embed(http, "small", ["sleep:50", text]), texts)
    burst = dict(zip(texts, responses, strict=True))
    accepted = {text for text, response in burst.items() if response.status_code == 200}
    refused = [full, *(r for r in burst.values() if r.status_code == 429)]

    assert full.status_code == 429 and refused_while_full  # at once, not once there was room
    assert held == [200, 200, 200]
    assert len(accepted) + len(refused) == len(texts) + 1 and accepted
    assert all(int(response.headers["Retry-After"]) >= 1 for response in refused)
    assert all(response.json()["error"]["code"] == "overloaded" for response in refused)
    assert {text for text in computed(records, "small") if "request #" in text} == accepted
    assert metric(http, "modelmora_requests_rejected_total", model="small") == len(refused)


# Dynamic batching


@pytest.mark.slow
def test_concurrent_requests_form_batches_and_each_gets_its_own_results(
    http: httpx.Client, pool: ThreadPoolExecutor, records: Path
) -> None:
    requests = [[text] if i % 3 else [text, text.upper()] for i, text in enumerate(TEXTS * 2)]
    responses = list(pool.map(lambda inputs: embed(http, "many", inputs), requests))
    embeddings = http.post("/v1/embeddings", json={"model": "many", "input": ["a b c", "d e"]})

    sizes = [len(batch) for batch in recorded_batches(records / "many.jsonl")]
    assert max(sizes) > 1 and max(sizes) <= 8
    for inputs, response in zip(requests, responses, strict=True):
        result = response.json()["result"]
        assert result["embeddings"] == [text_vector(text) for text in inputs]
        assert result["prompt_tokens"] == sum(len(text.split()) for text in inputs)
    assert embeddings.json()["usage"]["prompt_tokens"] == 5
    count = metric(http, "modelmora_batch_size_count", model="many")
    assert count == len(sizes) and metric(http, "modelmora_batches_total", model="many") == count
    assert metric(http, "modelmora_batched_inputs_total", model="many") == sum(sizes)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "field"), [("emb", "embeddings"), ("cls", "predictions")])
def test_batched_results_of_a_real_model_match_single_requests(
    http: httpx.Client, pool: ThreadPoolExecutor, model: str, field: str
) -> None:
    alone = [embed(http, model, text).json()["result"] for text in TEXTS]
    together = [r.json()["result"] for r in pool.map(lambda t: embed(http, model, t), TEXTS)]

    for single, batched in zip(alone, together, strict=True):
        assert batched["prompt_tokens"] == single["prompt_tokens"]
        if field == "embeddings":
            np.testing.assert_allclose(batched[field], single[field], atol=1e-5)
        else:
            got, want = batched[field][0], single[field][0]
            assert [p["label"] for p in got] == [p["label"] for p in want]
            np.testing.assert_allclose(
                [p["score"] for p in got], [p["score"] for p in want], rtol=1e-5
            )


# Settings from the manifest


def test_batching_settings_come_from_the_manifest_and_never_make_the_lock_stale() -> None:
    plain = ModelSpec(name="m", source="hf://org/m", task="embedding")
    tuned = plain.model_copy(update={"max_batch_size": 64, "max_queue": 1000, "max_in_flight": 2})

    assert batch_settings(plain.model_dump()) == BatchSettings()
    assert batch_settings(tuned.model_dump()) == BatchSettings(
        max_batch_size=64, max_queue=1000, max_in_flight=2
    )
    assert tuned.lock_inputs() == plain.lock_inputs()
    with pytest.raises(ValidationError, match="max_batch_delay_ms"):
        ModelSpec(name="m", source="hf://org/m", task="embedding", max_batch_delay_ms=-1)
    with pytest.raises(ValidationError, match="max_in_flight"):
        ModelSpec(name="m", source="hf://org/m", task="embedding", max_in_flight=0)


def test_a_gone_client_is_seen_without_awaiting_and_a_present_one_is_left_waiting() -> None:
    """`first_step` runs a receive until it would wait: uvicorn answers at once only when the
    client has gone; otherwise the pending receive is closed, its cleanup run, nothing consumed."""
    import asyncio

    from modelmora.serve.api.http import first_step

    cleaned: list[str] = []

    async def gone() -> dict[str, str]:
        return {"type": "http.disconnect"}

    async def present(event: asyncio.Event) -> dict[str, str]:
        try:
            await event.wait()
            return {"type": "http.request"}
        finally:
            cleaned.append("closed")

    async def scenario() -> None:
        event = asyncio.Event()
        assert first_step(gone()) == {"type": "http.disconnect"}
        assert first_step(present(event)) is None
        assert cleaned == ["closed"]
        assert not event._waiters, "the closed receive left no waiter behind"  # type: ignore[attr-defined]

    asyncio.run(scenario())

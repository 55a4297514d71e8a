"""The scheduler behind the HTTP API: priorities, deadlines, backpressure, dynamic batching.

Real HTTP on loopback, real worker processes. Most tests use RecordingRuntime, which writes down
every batch its worker sees, so that order, batch sizes and what was never computed are facts,
not guesses from timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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

from modelmora.manifest import ModelSpec
from modelmora.serve.app import create_app
from modelmora.serve.config import BatchSettings, ServerSettings, SupervisorSettings, batch_settings
from modelmora.serve.supervisor import ServedModel, Supervisor

RECORDING = "runtimes_for_tests:RecordingRuntime"
TEXTS = [f"sentence number {i} " + "word " * (i % 7) for i in range(16)]


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


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


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


def test_higher_priority_overtakes_queued_lower_priority(
    http: httpx.Client, pool: ThreadPoolExecutor, records: Path
) -> None:
    blocker = pool.submit(embed, http, "one", "sleep:1000")
    wait_until(computing(records, "one", "sleep:1000"))
    sent: list[Future[httpx.Response]] = []
    plan = [("low-0", "low"), ("low-1", "low"), ("high-0", "2"), ("low-2", "0"), ("high-1", "2")]
    for number, (text, priority) in enumerate(plan, start=1):
        sent.append(pool.submit(embed, http, "one", text, headers={"X-Priority": priority}))
        wait_until(lambda n=number: sum(queued(http, "one").values()) == n)  # type: ignore[misc]
    sent.append(pool.submit(embed, http, "one", "critical-0", priority="critical"))
    wait_until(lambda: queued(http, "one")["critical"] == 1)
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
def test_an_unknown_priority_is_422(http: httpx.Client, where: str, value: Any) -> None:
    if where == "body":
        response = embed(http, "one", "x", priority=value)
    else:
        response = embed(http, "one", "x", headers={"X-Priority": value})

    assert response.status_code == 422
    assert "priority" in response.json()["error"]["message"]


# Deadlines and clients that leave


def test_a_queued_request_gets_504_at_its_deadline_and_is_never_computed(
    http: httpx.Client, pool: ThreadPoolExecutor, records: Path
) -> None:
    blocker = pool.submit(embed, http, "one", "sleep:1500")
    wait_until(computing(records, "one", "sleep:1500"))
    started = time.monotonic()
    late = embed(http, "one", "too-late", timeout=0.3)
    waited = time.monotonic() - started
    expired = metric(http, "modelmora_requests_expired_total", model="one", where="queued")

    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
    assert 0.25 < waited < 0.8  # at its deadline, not when the blocker is done
    assert blocker.result().status_code == 200
    assert "too-late" not in computed(records, "one")
    assert expired >= 1


def test_a_client_that_left_is_dropped_before_compute(
    url: str, http: httpx.Client, pool: ThreadPoolExecutor, records: Path
) -> None:
    blocker = pool.submit(embed, http, "one", "sleep:800")
    wait_until(computing(records, "one", "sleep:800"))
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(f"{url}/infer/one", json={"inputs": "gone"}, timeout=0.2)

    assert blocker.result().status_code == 200
    assert embed(http, "one", "after").status_code == 200
    assert "gone" not in computed(records, "one")
    assert metric(http, "modelmora_requests_dropped_total", model="one") >= 1


# Backpressure


def test_a_full_queue_answers_429_at_once_and_every_accepted_request_completes(
    http: httpx.Client, pool: ThreadPoolExecutor, records: Path
) -> None:
    texts = [f"request #{i}" for i in range(16)]

    def timed(text: str) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = embed(http, "small", ["sleep:50", text])
        return response, time.monotonic() - started

    results = dict(zip(texts, pool.map(timed, texts), strict=True))
    accepted = {text for text, (response, _) in results.items() if response.status_code == 200}
    refused = [(r, s) for r, s in results.values() if r.status_code == 429]

    assert len(accepted) + len(refused) == len(texts) and refused and accepted
    assert all(int(response.headers["Retry-After"]) >= 1 for response, _ in refused)
    assert all(response.json()["error"]["code"] == "overloaded" for response, _ in refused)
    assert max(seconds for _, seconds in refused) < 0.5  # refused at once, not after a wait
    assert {text for text in computed(records, "small") if "#" in text} == accepted
    assert metric(http, "modelmora_requests_rejected_total", model="small") == len(refused)


# Dynamic batching


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
    tuned = plain.model_copy(update={"max_batch_size": 64, "max_queue": 1000})

    assert batch_settings(plain.model_dump()) == BatchSettings()
    assert batch_settings(tuned.model_dump()) == BatchSettings(max_batch_size=64, max_queue=1000)
    assert tuned.lock_inputs() == plain.lock_inputs()
    with pytest.raises(ValidationError, match="max_batch_delay_ms"):
        ModelSpec(name="m", source="hf://org/m", task="embedding", max_batch_delay_ms=-1)

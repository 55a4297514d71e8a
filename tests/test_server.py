"""The native HTTP API over real HTTP on loopback, with a real Supervisor and worker processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from liveserver import serve
from modelfactory import (
    build_classification_model,
    build_embedding_model,
    build_generation_model,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from waiting import eventually

from modelmora.errors import (
    InvalidInputError,
    ServeError,
    UnavailableError,
    UnknownModelError,
)
from modelmora.serve.api.telemetry import JsonFormatter
from modelmora.serve.app import create_app
from modelmora.serve.client import Client
from modelmora.serve.config import ServerSettings, SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor

ECHO = "runtimes_for_tests:EchoRuntime"
SLOW = "runtimes_for_tests:SlowRuntime"
CRASH = "runtimes_for_tests:CrashRuntime"
TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow  # a live server, worker processes, subprocesses


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[ServedModel]:
    """The tiny models of every task, and torch-free ones that echo, sleep or crash."""
    root = tmp_path_factory.mktemp("models")
    return [
        ServedModel("emb", "embedding", build_embedding_model(root / "emb"), revision="e" * 40),
        ServedModel("cls", "text-classification", build_classification_model(root / "cls")),
        ServedModel("gen", "text-generation", build_generation_model(root / "gen")),
        ServedModel("echo", "echo", root, runtime=ECHO, device="cpu"),
        ServedModel("slow", "echo", root, runtime=SLOW, device="cpu"),
        ServedModel("crash", "echo", root, runtime=CRASH, device="cpu"),
    ]


@pytest.fixture(scope="module")
def url(models: list[ServedModel]) -> Iterator[str]:
    """One server for the module: workers start on first use and are reused."""
    supervisor = Supervisor(models, SupervisorSettings(request_timeout=30))
    with serve(create_app(supervisor, ServerSettings())) as base_url:
        yield base_url


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client


# Liveness, readiness, request ids


def test_health_answers_with_version_and_request_id(http: httpx.Client) -> None:
    response = http.get("/health")

    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert response.headers["X-ModelMora-API-Version"] == "1"
    assert len(response.headers["X-Request-ID"]) == 32


def test_request_id_is_echoed_and_a_bad_one_replaced(http: httpx.Client) -> None:
    given = http.get("/health", headers={"X-Request-ID": "trace-42.a:b"})
    unsafe = http.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})

    assert given.headers["X-Request-ID"] == "trace-42.a:b"
    assert unsafe.headers["X-Request-ID"] != "bad id\twith spaces"


def test_ready_when_no_model_is_preloaded(http: httpx.Client) -> None:
    def is_ready() -> bool:
        response = http.get("/ready")
        if response.status_code == 503:
            # Only the template's imports may hold readiness back: a cold model would pay them.
            assert response.json()["reasons"] == [
                "the worker template is still importing torch and transformers"
            ]
        return response.status_code == 200

    eventually(is_ready, timeout=120)

    assert http.get("/ready").json() == {"ready": True, "reasons": []}


def test_not_ready_while_preloading_or_when_a_model_failed() -> None:
    models = [
        ServedModel("ok", "echo", Path("."), runtime=ECHO, preload=True),
        ServedModel("broken", "echo", Path("."), runtime="runtimes_for_tests:FailOnLoadRuntime"),
    ]
    settings = SupervisorSettings(template_imports=("runtimes_for_tests",))
    with (
        serve(create_app(Supervisor(models, settings))) as base,
        httpx.Client(base_url=base) as http,
    ):
        _wait_until_ready(http)
        load = http.post("/models/broken/load", timeout=60)
        failed = http.get("/models", params={"state": "failed"}).json()["models"]
        ready = http.get("/ready")

    assert load.status_code == 503 and "the weights are corrupt" in load.json()["error"]["message"]
    assert [m["name"] for m in failed] == ["broken"] and "corrupt" in failed[0]["error"]
    assert ready.status_code == 503 and "Retry-After" in ready.headers
    assert ready.json()["ready"] is False and "broken" in ready.json()["reasons"][0]


def _wait_until_ready(http: httpx.Client) -> None:
    eventually(lambda: http.get("/ready").status_code == 200, timeout=120, what="/ready")


# The model table


def test_models_are_paginated(http: httpx.Client) -> None:
    first = http.get("/models", params={"limit": 2}).json()
    third = http.get("/models", params={"limit": 2, "page": 3}).json()

    assert first["total"] == 6 and [m["name"] for m in first["models"]] == ["emb", "cls"]
    assert [m["name"] for m in third["models"]] == ["slow", "crash"]
    assert third["page"] == 3 and third["limit"] == 2


def test_models_are_filtered_by_task_state_and_device(http: httpx.Client) -> None:
    def names(**query: str) -> list[str]:
        return [m["name"] for m in http.get("/models", params=query).json()["models"]]

    assert names(task="embedding") == ["emb"]
    assert names(task="echo", device="cpu") == ["echo", "slow", "crash"]
    assert names(state="failed") == []


@pytest.mark.parametrize(
    ("query", "field"), [({"page": "0"}, "page"), ({"state": "asleep"}, "state")]
)
def test_models_query_is_validated(http: httpx.Client, query: dict[str, str], field: str) -> None:
    response = http.get("/models", params=query)

    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith(f"{field}: ")


def test_model_detail_shows_source_revision_and_counters(http: httpx.Client) -> None:
    info = http.get("/models/emb").json()

    assert info["name"] == "emb" and info["task"] == "embedding"
    assert info["revision"] == "e" * 40
    assert info["state"] in {"unloaded", "ready"}
    assert {"memory_bytes", "pid", "last_used", "expires_at", "requests_total"} <= info.keys()


def test_unknown_model_is_404_in_the_native_shape(http: httpx.Client) -> None:
    for response in (http.get("/models/nope"), http.post("/infer/nope", json={"inputs": "x"})):
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and "nope" in error["message"]
        assert set(error) == {"code", "message", "detail"}


def test_load_then_unload_ends_the_worker(http: httpx.Client) -> None:
    loaded = http.post("/models/echo/load").json()
    unloaded = http.post("/models/echo/unload").json()

    assert loaded["state"] == "ready" and loaded["pid"] > 0
    assert unloaded["state"] == "unloaded" and unloaded["pid"] is None
    assert not _is_alive(loaded["pid"])


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# Inference


def test_infer_embedding(http: httpx.Client) -> None:
    response = http.post("/infer/emb", json={"inputs": ["hello world", "a movie"]})

    body = response.json()
    assert response.status_code == 200, body
    assert body["model"] == "emb" and body["revision"] == "e" * 40
    assert len(body["result"]["embeddings"]) == 2
    assert len(body["result"]["embeddings"][0]) == body["result"]["dimensions"]
    assert set(body["timing"]) == {"queue_ms", "load_ms", "inference_ms"}


def test_infer_classification_with_every_label(http: httpx.Client) -> None:
    response = http.post("/infer/cls", json={"inputs": "a good movie", "top_k": None})

    predictions = response.json()["result"]["predictions"]
    assert response.status_code == 200
    assert {p["label"] for p in predictions[0]} == {"negative", "positive"}


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": "hello", "max_new_tokens": 4, "temperature": 0},
        {"messages": [{"role": "user", "content": "hello"}], "max_new_tokens": 4, "seed": 1},
    ],
)
def test_infer_generation_from_a_prompt_or_a_chat(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/infer/gen", json=body)

    result = response.json()["result"]
    assert response.status_code == 200, result
    assert isinstance(result["text"], str) and result["finish_reason"] in {"stop", "length"}
    assert result["completion_tokens"] <= 4


def test_infer_plugin_task_passes_fields_through(http: httpx.Client) -> None:
    response = http.post(
        "/infer/echo", json={"inputs": ["x"], "colour": "blue", "keep_alive": "1m"}
    )

    assert response.status_code == 200
    assert response.json()["result"]["echo"] == {"inputs": ["x"], "colour": "blue"}


def test_input_the_runtime_rejects_is_422_naming_the_field(http: httpx.Client) -> None:
    response = http.post("/infer/echo", json={"invalid": "colour"})

    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("colour: ")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputs": 3}, "inputs"),
        ({"inputs": ["ok", 2]}, "inputs.1"),
        ({"inputs": []}, "inputs"),
        ({}, "inputs"),
        ({"inputs": "x", "normalise": True}, "normalise"),
        ({"inputs": "x", "timeout": -1}, "timeout"),
        ({"inputs": "x", "keep_alive": "soon"}, "keep_alive"),
    ],
)
def test_invalid_input_is_422_naming_the_field(
    http: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = http.post("/infer/emb", json=body)

    error = response.json()["error"]
    assert response.status_code == 422
    assert error["code"] == "invalid_input" and error["message"].startswith(f"{field}: ")
    assert field in [item["field"] for item in error["detail"]]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["x"] * 2049, "inputs: too many items: 2049, at most 2048; split them across requests"),
        ([], "inputs: send at least 1 item, not 0"),
    ],
)
def test_a_list_of_the_wrong_length_is_named_as_such(
    http: httpx.Client, inputs: list[str], message: str
) -> None:
    response = http.post("/infer/emb", json={"inputs": inputs})

    assert response.status_code == 422
    assert response.json()["error"]["message"] == message


def test_generation_needs_exactly_one_of_inputs_and_messages(http: httpx.Client) -> None:
    both = {"inputs": "a", "messages": [{"role": "user", "content": "b"}]}

    response = http.post("/infer/gen", json=both)

    assert response.status_code == 422 and "not both" in response.json()["error"]["message"]


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", "\u00e9".encode("latin-1")])
def test_malformed_json_is_a_clear_error_not_a_500(http: httpx.Client, content: bytes) -> None:
    response = http.post("/infer/emb", content=content)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"


def test_deadline_exceeded_is_504(http: httpx.Client) -> None:
    http.post("/models/slow/load")  # the deadline covers the load too: take it out of the way
    response = http.post("/infer/slow", json={"ms": 5000, "timeout": 0.5})

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"


def test_a_crashed_worker_is_503_with_retry_after_then_recovers(http: httpx.Client) -> None:
    crashed = http.post("/infer/crash", json={"signal": signal.SIGKILL})
    recovered = http.post("/infer/crash", json={"inputs": ["x"]})

    assert crashed.status_code == 503 and int(crashed.headers["Retry-After"]) >= 1
    assert crashed.json()["error"]["code"] == "model_unavailable"
    assert "SIGKILL" in crashed.json()["error"]["message"]
    assert recovered.status_code == 200


# Metrics, logs, documentation


def test_metrics_parse_and_split_queue_from_inference(http: httpx.Client) -> None:
    emb_ok = {"endpoint": "/infer/{name}", "model": "emb", "version": "", "status": "200"}
    counted = {
        "modelmora_requests_total": emb_ok,
        "modelmora_queue_seconds_count": {"model": "emb"},
        "modelmora_inference_seconds_count": {"model": "emb"},
    }
    before = {name: _sample(_metrics(http), name, labels) for name, labels in counted.items()}

    assert http.post("/infer/emb", json={"inputs": "hello"}).status_code == 200

    # Other tests share this server: count this request by the change it made.
    def grown() -> dict[str, float]:
        families = _metrics(http)
        return {n: _sample(families, n, labels) - before[n] for n, labels in counted.items()}

    eventually(lambda: grown()["modelmora_requests_total"] >= 1)  # counted after the response
    assert grown() == dict.fromkeys(counted, 1.0)
    families = _metrics(http)
    load_times = families["modelmora_model_load_seconds"].samples
    assert any(s.labels.get("model") == "emb" for s in load_times)
    events = families["modelmora_model_events"].samples
    assert any(s.labels == {"model": "emb", "event": "load"} and s.value >= 1 for s in events)
    memory = families["modelmora_worker_memory_bytes"].samples
    assert any(s.labels == {"model": "emb"} and s.value > 0 for s in memory)
    assert families["process_resident_memory_bytes"].samples[0].value > 0


def _metrics(http: httpx.Client) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}


def _sample(families: dict[str, Metric], name: str, labels: dict[str, str]) -> float:
    """The value of one sample, 0 before its first observation."""
    samples = [s for f in families.values() for s in f.samples if s.name == name]
    return sum(s.value for s in samples if s.labels == labels)


def test_one_json_access_log_line_per_request(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    def lines() -> list[dict[str, Any]]:
        formatted = (json.loads(JsonFormatter().format(record)) for record in caplog.records)
        return [line for line in formatted if line.get("request_id") == "log-me"]

    with caplog.at_level(logging.INFO, logger="modelmora.access"):
        http.post("/infer/echo", json={"inputs": ["x"]}, headers={"X-Request-ID": "log-me"})
        eventually(lines)  # the line is written after the response is sent

    [line] = lines()
    assert line["request_id"] == "log-me" and line["model"] == "echo"
    assert line["method"] == "POST" and line["path"] == "/infer/echo" and line["status"] == 200
    assert line["duration_ms"] > 0 and line["level"] == "info"


def test_openapi_document_comes_from_the_schemas(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    page = http.get("/docs")

    paths = document["paths"]
    assert document["openapi"].startswith("3.")
    assert {"/health", "/models/{name}", "/infer/emb", "/v1/embeddings"} <= paths.keys()
    # One operation per served model, with exactly its task's body (not a oneOf of every task).
    assert "/infer/{name}" not in paths
    bodies = {
        name: paths[f"/infer/{name}"]["post"]["requestBody"]["content"]["application/json"]
        for name in ("emb", "cls", "gen")
    }
    assert bodies["emb"]["schema"]["$ref"].endswith("/EmbeddingInferRequest")
    assert bodies["cls"]["schema"]["$ref"].endswith("/ClassificationInferRequest")
    assert bodies["gen"]["schema"]["$ref"].endswith("/GenerationInferRequest")
    assert page.status_code == 200 and "/infer/emb" in page.text and "SwaggerUIBundle" in page.text


# The client behind `modelmora ps` and `modelmora run`


def test_client_lists_models_and_runs_inference(url: str) -> None:
    with Client(url) as client:
        rows = client.models()
        reply = client.infer("cls", "a good movie")
        text = "".join(client.stream_text("gen", "hello", max_tokens=3, temperature=0))

    assert [row.name for row in rows] == ["emb", "cls", "gen", "echo", "slow", "crash"]
    assert reply.model == "cls" and reply.result["predictions"][0][0]["label"]
    assert isinstance(text, str)


def test_client_streams_with_the_native_max_new_tokens(url: str) -> None:
    with Client(url) as client:
        streamed = "".join(client.stream_text("gen", "hello", max_new_tokens=2, temperature=0))
        whole = client.infer("gen", "hello", max_new_tokens=2, temperature=0)

    assert streamed == whole.result["text"] and whole.result["completion_tokens"] == 2


def test_client_raises_the_servers_error(url: str) -> None:
    with Client(url) as client:
        with pytest.raises(UnknownModelError, match="nope"):
            client.model("nope")
        with pytest.raises(InvalidInputError, match="top_k"):
            client.infer("cls", "x", top_k=0)


def test_client_names_the_fix_when_no_server_answers() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: the connection is refused

        with Client(f"http://127.0.0.1:{port}") as client, pytest.raises(ServeError) as caught:
            client.models()

    assert "modelmora serve" in str(caught.value)


# Pure HTTP behaviour: limits, API keys, and errors that only a stand-in can produce on demand.
# StandInSupervisor is NOT the contract's implementation: it serves one model "m" and raises
# `error` from infer and stream, to pin down how the HTTP layer maps what a supervisor raises.


class StandInSupervisor:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error or UnavailableError("not used")
        self.settings = SupervisorSettings()
        self.task_groups: list[Any] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def add_listener(self, callback: Any) -> None: ...

    def statuses(self) -> list[Any]:
        return []

    def names(self) -> list[str]:
        return ["m"]

    def model(self, name: str) -> ServedModel:
        if name != "m":
            raise UnknownModelError(f"no model named {name!r}")
        return ServedModel(name, "text-generation", Path("."))

    async def infer(self, name: str, request: dict[str, Any], **options: Any) -> Any:
        raise self.error

    async def stream(
        self, name: str, request: dict[str, Any], **options: Any
    ) -> AsyncIterator[Any]:
        yield {"text": "partial"}
        raise self.error


class RefusingSupervisor(StandInSupervisor):
    """Refuses every question about its models: a route that asks one fails with a 500."""

    def is_ready(self) -> tuple[bool, list[str]]:
        raise AssertionError("this route asked the supervisor")

    def statuses(self) -> list[Any]:
        raise AssertionError("this route asked the supervisor")


def _stand_in_app(error: BaseException | None = None, **settings: Any) -> Any:
    supervisor: Any = StandInSupervisor(error)
    return create_app(supervisor, ServerSettings(**settings))


def test_health_asks_the_supervisor_nothing() -> None:
    """Liveness answers whatever the models are doing: it never waits for the supervisor."""
    supervisor: Any = RefusingSupervisor()
    with (
        serve(create_app(supervisor, ServerSettings())) as base,
        httpx.Client(base_url=base) as http,
    ):
        health = http.get("/health")
        ready = http.get("/ready")

    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 500  # readiness does ask


def test_payload_too_large_is_413_before_parsing() -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is what counts
        yield b'{"inputs": "'
        yield b"x" * 2048
        yield b'"}'

    app = _stand_in_app(max_body_bytes=1024)
    with serve(app) as base, httpx.Client(base_url=base) as http:
        declared = http.post("/infer/m", json={"inputs": "x" * 2048})
        streamed = http.post("/infer/m", content=chunks())
        small = http.post("/infer/m", json={"inputs": 1})

    assert declared.status_code == streamed.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"
    assert small.status_code == 422


def test_api_key_guards_everything_but_health() -> None:
    with serve(_stand_in_app(api_key="s3cret")) as base, httpx.Client(base_url=base) as http:
        health = http.get("/health")
        missing = http.get("/models")
        wrong = http.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = http.get("/models", headers={"Authorization": "Bearer s3cret"})
        with pytest.raises(openai.AuthenticationError) as caught:
            openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0).models.list()
        models = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0).models.list()

    assert health.status_code == 200 and right.status_code == 200
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert caught.value.body["type"] == "authentication_error"  # type: ignore[index]
    assert [model.id for model in models] == ["m"]


def test_a_bug_is_a_500_in_the_api_shape_with_the_request_id() -> None:
    with serve(_stand_in_app(RuntimeError("boom"))) as base:
        response = httpx.post(f"{base}/infer/m", json={"inputs": "x"})

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["X-Request-ID"] in response.json()["error"]["message"]


def test_a_failure_midstream_ends_the_stream_with_an_error_event() -> None:
    crashed = UnavailableError("the worker of 'm' crashed (exit code 1)")
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}

    with serve(_stand_in_app(crashed)) as base:
        response = httpx.post(f"{base}/v1/chat/completions", json=body)

    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert response.status_code == 200
    assert json.loads(events[-2])["error"]["code"] == "model_unavailable"
    assert events[-1] == "[DONE]"


# The server process


def test_server_process_never_imports_torch() -> None:
    code = "import sys, modelmora.serve.app, modelmora.serve.client; print(sorted(sys.modules))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    modules = output.strip().strip("[]").replace("'", "").split(", ")
    assert not [m for m in modules if m.split(".")[0] in {"torch", "transformers"}]


def test_run_server_drains_on_sigterm_and_leaves_no_worker() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from modelmora.serve.app import run_server
        from modelmora.serve.config import ServeConfig, ServerSettings, SupervisorSettings
        from modelmora.serve.supervisor import ServedModel
        models = [ServedModel("slow", "echo", Path("."), runtime="{SLOW}", device="cpu")]
        settings = SupervisorSettings(drain_timeout=60, template_imports=("runtimes_for_tests",))
        run_server(models, ServeConfig(ServerSettings(port={port}), settings))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    server = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        pid = _serve_one_request(base)
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{base}/infer/slow", json={"ms": 2000}, timeout=90)
            eventually(lambda: httpx.get(f"{base}/models/slow").json()["in_flight"] == 1)
            server.send_signal(signal.SIGTERM)
            drained = in_flight.result()
        _, log = server.communicate(timeout=30)
    finally:
        server.kill()

    assert drained.status_code == 200
    # uvicorn shuts down gracefully, then re-raises SIGTERM so that the exit status tells why.
    assert server.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete." in log
    assert not _is_alive(pid)
    assert "libtorch" not in maps  # the server process itself never loaded torch
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("message", "").startswith("Uvicorn running") for line in lines)


def _serve_one_request(base: str) -> int:
    """Wait for the server, run the model once, return its worker's pid."""
    eventually(lambda: httpx.get(f"{base}/health"), 120, ignoring=(httpx.TransportError,))
    assert httpx.post(f"{base}/infer/slow", json={"inputs": ["x"]}, timeout=120).status_code == 200
    pid: int = httpx.get(f"{base}/models/slow").json()["pid"]
    return pid

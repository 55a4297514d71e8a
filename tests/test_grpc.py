"""The Open Inference Protocol's gRPC service of `modelmora serve --grpc-port`, through the
official client (tritonclient.grpc) and grpc.aio, against a real server and tiny models."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from modelfactory import build_classification_model, build_embedding_model, build_generation_model
from servers import free_port, start_serve, stop
from tritonclient.utils import InferenceServerException

from modelmora.oip import grpc_predict_v2_pb2 as pb
from modelmora.oip import grpc_predict_v2_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

KEY = "grpc-s3cret"
PROJECT = """\
[project]
name = "grpc"

[serve]
keep_alive = "10m"

[models.bert]
source = "../tiny-bert"
task = "embedding"

[models.sentiment]
source = "../tiny-sentiment"
task = "text-classification"

[models.gen]
source = "../tiny-gpt"
task = "text-generation"

[models.vbert]
task = "embedding"
route = { a = 100 }

[models.vbert.versions.a]
source = "../tiny-bert"

[models.vbert.versions.b]
source = "../tiny-bert"
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("grpc")
    build_embedding_model(base / "tiny-bert")
    build_classification_model(base / "tiny-sentiment")
    build_generation_model(base / "tiny-gpt")
    root = base / "demo"
    root.mkdir()
    (root / "modelmora.toml").write_text(PROJECT)
    return root


@pytest.fixture(scope="module")
def served(project: Path) -> Iterator[tuple[str, str]]:
    """The REST url and the gRPC address of one server for the module's read-only tests."""
    port = free_port()
    url, process = start_serve(project, "--grpc-port", str(port))
    yield url, f"127.0.0.1:{port}"
    stop(process)


@pytest.fixture
def client(served: tuple[str, str]) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(served[1]) as opened:
        yield opened


def text_input(*texts: str) -> triton.InferInput:
    tensor = triton.InferInput("TEXT", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor


def status_of(call: Any) -> str | None:
    with pytest.raises(InferenceServerException) as raised:
        call()
    status: str | None = raised.value.status()
    return status


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("bert") and client.is_model_ready("vbert", "b")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server.name == "modelmora" and "streaming" in server.extensions
    model = client.get_model_metadata("bert")
    assert model.name == "bert" and model.platform == "modelmora/embedding"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("TEXT", "BYTES", [-1])]
    assert [t.name for t in model.outputs] == ["EMBEDDING"]
    assert list(client.get_model_metadata("vbert").versions) == ["a", "b"]


def test_embeddings_equal_the_native_ones(
    client: triton.InferenceServerClient, served: tuple[str, str]
) -> None:
    texts = ["hello world", "a second sentence"]
    result = client.infer("bert", [text_input(*texts)])
    vectors = result.as_numpy("EMBEDDING")
    native = httpx.post(f"{served[0]}/infer/bert", json={"inputs": texts}, timeout=60).json()
    assert vectors.shape == (2, len(native["result"]["embeddings"][0]))
    np.testing.assert_allclose(vectors, np.array(native["result"]["embeddings"]), rtol=1e-6)


def test_classification_and_generation(client: triton.InferenceServerClient) -> None:
    labels = client.infer("sentiment", [text_input("good", "bad")], parameters={"top_k": 2})
    assert labels.as_numpy("LABEL").shape == (2, 2) and labels.as_numpy("SCORE").shape == (2, 2)
    assert {label.decode() for label in labels.as_numpy("LABEL").flat} == {"negative", "positive"}
    generated = client.infer(
        "gen", [text_input("Once")], parameters={"max_tokens": 4, "temperature": 0.0}
    )
    assert generated.as_numpy("FINISH_REASON")[0] in (b"length", b"stop")
    assert isinstance(generated.as_numpy("TEXT")[0], bytes)


def test_a_named_version_answers(client: triton.InferenceServerClient) -> None:
    result = client.infer("vbert", [text_input("hi")], model_version="b")
    response = result.get_response()
    assert response.model_name == "vbert" and response.model_version == "b"


def test_errors_have_their_status_codes(client: triton.InferenceServerClient) -> None:
    assert status_of(lambda: client.infer("nope", [text_input("x")])) == "StatusCode.NOT_FOUND"
    wrong = triton.InferInput("TEXT", [1], "FP32")
    wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    assert status_of(lambda: client.infer("bert", [wrong])) == "StatusCode.INVALID_ARGUMENT"
    too_long = {"max_tokens": 10**9}
    invalid = lambda: client.infer("gen", [text_input("x")], parameters=too_long)  # noqa: E731
    assert status_of(invalid) == "StatusCode.INVALID_ARGUMENT"
    missing = lambda: client.get_model_metadata("nope")  # noqa: E731
    assert status_of(missing) == "StatusCode.NOT_FOUND"


def stream_results(
    client: triton.InferenceServerClient, model: str, inputs: list[Any], **options: Any
) -> list[Any]:
    """Every response of one streamed request, up to its final one."""
    received: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: received.put(error or result))
    client.async_stream_infer(model, inputs, request_id="r1", **options)
    results = []
    while True:
        item = received.get(timeout=60)
        assert not isinstance(item, Exception), item
        results.append(item)
        final = item.get_response().parameters["triton_final_response"].bool_param
        if final:
            break
    client.stop_stream()
    return results


def test_stream_generation_sends_one_response_per_chunk(
    client: triton.InferenceServerClient,
) -> None:
    results = stream_results(
        client, "gen", [text_input("Once")], parameters={"max_tokens": 5, "temperature": 0.0}
    )
    assert len(results) >= 2
    assert all(r.get_response().id == "r1" for r in results)
    *chunks, last = results
    assert all(r.as_numpy("FINISH_REASON") is None for r in chunks)
    assert last.as_numpy("FINISH_REASON")[0] in (b"length", b"stop")
    unary = client.infer(
        "gen", [text_input("Once")], parameters={"max_tokens": 5, "temperature": 0.0}
    )
    streamed = b"".join(r.as_numpy("TEXT")[0] for r in results)
    assert streamed == unary.as_numpy("TEXT")[0]


def test_stream_empty_final_response(client: triton.InferenceServerClient) -> None:
    results = stream_results(
        client, "bert", [text_input("a", "b")], enable_empty_final_response=True
    )
    assert [r.as_numpy("EMBEDDING") is None for r in results] == [False, True]


def test_stream_splits_a_large_embedding_into_row_chunks(
    client: triton.InferenceServerClient,
) -> None:
    texts = [f"sentence number {i}" for i in range(1000)]
    results = stream_results(client, "bert", [text_input(*texts)], parameters={"chunk_rows": 300})
    starts = [r.get_response().parameters["chunk_start"].int64_param for r in results]
    assert starts == [0, 300, 600, 900]
    joined = np.concatenate([r.as_numpy("EMBEDDING") for r in results])
    whole = client.infer("bert", [text_input(*texts)]).as_numpy("EMBEDDING")
    np.testing.assert_allclose(joined, whole, rtol=1e-6)


def test_stream_error_keeps_the_stream(client: triton.InferenceServerClient) -> None:
    received: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: received.put(error or result))
    client.async_stream_infer("nope", [text_input("x")])
    assert isinstance(received.get(timeout=60), InferenceServerException)
    client.async_stream_infer("bert", [text_input("x")])
    assert received.get(timeout=60).as_numpy("EMBEDDING").shape[0] == 1
    client.stop_stream()


def test_grpc_calls_are_in_the_metrics(
    client: triton.InferenceServerClient, served: tuple[str, str]
) -> None:
    client.infer("bert", [text_input("counted")])
    text = httpx.get(f"{served[0]}/metrics", timeout=10).text
    assert 'endpoint="grpc:ModelInfer",model="bert",status="OK",version=""' in text


def test_raw_and_typed_contents_through_grpc_aio(served: tuple[str, str]) -> None:
    """A client without tritonclient: BYTES as `contents`, through the generated stubs."""
    import asyncio

    async def call() -> pb.ModelInferResponse:
        async with grpc.aio.insecure_channel(served[1]) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            tensor = pb.ModelInferRequest.InferInputTensor(
                name="TEXT", datatype="BYTES", shape=[1], contents={"bytes_contents": [b"hi"]}
            )
            response: pb.ModelInferResponse = await stub.ModelInfer(
                pb.ModelInferRequest(model_name="bert", inputs=[tensor])
            )
            return response

    response = asyncio.run(call())
    assert response.outputs[0].name == "EMBEDDING" and len(response.raw_output_contents) == 1


# --- servers of their own --------------------------------------------------------------------


def test_api_key_metadata(project: Path) -> None:
    port = free_port()
    _, process = start_serve(project, "--grpc-port", str(port), "--api-key", KEY, key=KEY)
    try:
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            assert client.is_server_ready()  # health needs no key
            refused = lambda: client.infer("bert", [text_input("x")])  # noqa: E731
            assert status_of(refused) == "StatusCode.UNAUTHENTICATED"
            headers = {"authorization": f"Bearer {KEY}"}
            result = client.infer("bert", [text_input("x")], headers=headers)
            assert result.as_numpy("EMBEDDING").shape[0] == 1
            wrong = {"authorization": "Bearer nope"}
            assert status_of(lambda: client.get_server_metadata(headers=wrong)) == (
                "StatusCode.UNAUTHENTICATED"
            )
    finally:
        stop(process)


def test_sigterm_finishes_a_stream_in_flight(project: Path) -> None:
    """The stream's request is answered to its end; the process then ends as any `serve` does on
    SIGTERM (uvicorn re-raises the signal once it has shut down: -15), without a traceback."""
    port = free_port()
    _, process = start_serve(project, "--grpc-port", str(port), "--preload", "gen")
    received: queue.Queue[Any] = queue.Queue()
    with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        client.start_stream(callback=lambda result, error: received.put(error or result))
        parameters = {"max_tokens": 200, "temperature": 0.0}
        client.async_stream_infer("gen", [text_input("Once")], parameters=parameters)
        first = received.get(timeout=60)
        assert not isinstance(first, Exception), first
        process.send_signal(signal.SIGTERM)
        items = [first]
        while not isinstance(items[-1], Exception) and not is_final(items[-1]):
            items.append(received.get(timeout=60))
        client.stop_stream()
    assert process.wait(timeout=60) == -signal.SIGTERM
    _, stderr = stop(process)
    assert is_final(items[-1]), items[-1]
    assert "Traceback" not in stderr, stderr


def is_final(result: Any) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def test_busy_grpc_port_is_one_line(project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "modelmora", "serve", "--grpc-port", str(port)],
            cwd=project, capture_output=True, text=True, timeout=120,
            env={**os.environ, "MODELMORA_PORT": str(free_port())},
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: gRPC port {port} is in use on 127.0.0.1; "
        "pass another --grpc-port, or stop what listens there"
    ]


def test_repository_index_load_and_unload(client: triton.InferenceServerClient) -> None:
    client.load_model("sentiment")
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert index[("sentiment", "")] == "READY" and ("vbert", "b") in index
    client.unload_model("sentiment")
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert index[("sentiment", "")] == "UNLOADED"
    assert status_of(lambda: client.load_model("nope")) == "StatusCode.NOT_FOUND"


# --- pure parts ------------------------------------------------------------------------------


def test_refusals_carry_retry_after_and_retry_info() -> None:
    from modelmora.serve.grpc.statuses import trailers

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    sent = dict(trailers(code, "over its rate limit", 1.2))
    assert sent["retry-after"] == "2"
    details = sent["grpc-status-details-bin"]
    assert isinstance(details, bytes) and details.startswith(b"\x08\x08\x12\x13over its rate limit")
    assert b"type.googleapis.com/google.rpc.RetryInfo\x12\x04\n\x02\x08\x02" in details
    assert trailers(code, "no retry", None) == ()


def test_row_chunks_split_every_output_alike() -> None:
    from modelmora.oip.tensors import Tensor
    from modelmora.serve.grpc.messages import row_chunks

    labels = Tensor("LABEL", "BYTES", (5, 1), [b"a", b"b", b"c", b"d", b"e"])
    scores = Tensor("SCORE", "FP32", (5, 1), [0.1, 0.2, 0.3, 0.4, 0.5])
    chunks = list(row_chunks([labels, scores], 2))
    assert [start for start, _ in chunks] == [0, 2, 4]
    assert [part[0].data for _, part in chunks] == [[b"a", b"b"], [b"c", b"d"], [b"e"]]
    assert [part[1].shape for _, part in chunks] == [(2, 1), (2, 1), (1, 1)]
    assert list(row_chunks([labels], 0)) == [(0, [labels])]

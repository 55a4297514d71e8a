"""The Open Inference Protocol under /v2: the official `tritonclient.http` against a live server,
and the JSON shapes, statuses and errors with httpx. (Importing tritonclient.http patches
nothing: gevent's monkey patching is never applied, so these run in the test process.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import modelfactory
import numpy as np
import pytest
import tritonclient.http as triton
from liveserver import serve
from tritonclient.utils import InferenceServerException
from waiting import eventually

from modelmora.routing import Route
from modelmora.serve.app import create_app
from modelmora.serve.config import ServerSettings, SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("oip")
    models = [
        ServedModel("emb", "embedding", modelfactory.build_embedding_model(root / "emb")),
        ServedModel(
            "cls", "text-classification", modelfactory.build_classification_model(root / "cls")
        ),
        ServedModel("gen", "text-generation", modelfactory.build_generation_model(root / "gen")),
    ]
    supervisor = Supervisor(models, SupervisorSettings(request_timeout=60))
    with serve(create_app(supervisor, ServerSettings(access_log=False))) as base_url:
        yield base_url


@pytest.fixture
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url.removeprefix("http://")) as each:
        yield each


def texts_input(values: list[str], binary: bool, name: str = "TEXT") -> triton.InferInput:
    tensor = triton.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    eventually(client.is_server_ready, 120, what="the worker template to import torch")
    assert client.is_model_ready("emb")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "modelmora"
    assert {"binary_tensor_data", "model_repository"} <= set(server["extensions"])
    model = client.get_model_metadata("cls")
    assert model["versions"] == [] and model["platform"] == "modelmora/text-classification"
    assert model["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in model["outputs"]] == ["LABEL", "SCORE"]


@pytest.mark.parametrize("binary", [True, False])
def test_embedding(client: triton.InferenceServerClient, binary: bool) -> None:
    outputs = [triton.InferRequestedOutput("EMBEDDING", binary_data=binary)]
    result = client.infer(
        "emb", [texts_input(["one", "two words"], binary)], outputs=outputs, request_id="r1"
    )
    vectors = result.as_numpy("EMBEDDING")
    assert vectors.shape == (2, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert result.get_response()["id"] == "r1"


@pytest.mark.parametrize("binary", [True, False])
def test_classification(client: triton.InferenceServerClient, binary: bool) -> None:
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("LABEL", "SCORE")]
    result = client.infer(
        "cls", [texts_input(["good", "bad", "so so"], binary)], outputs=outputs,
        parameters={"top_k": 2},
    )  # fmt: skip
    assert result.as_numpy("LABEL").shape == (3, 2)
    scores = result.as_numpy("SCORE")
    assert scores.shape == (3, 2) and (scores[:, 0] >= scores[:, 1]).all()


@pytest.mark.parametrize("binary", [True, False])
def test_generation(client: triton.InferenceServerClient, binary: bool) -> None:
    result = client.infer(
        "gen", [texts_input(["hello"], binary)],
        parameters={"max_tokens": 4, "temperature": 0, "seed": 1},
    )  # fmt: skip
    assert result.as_numpy("TEXT").shape == (1,)
    assert result.as_numpy("FINISH_REASON")[0] in (b"length", b"stop")


def test_default_outputs_are_binary(client: triton.InferenceServerClient) -> None:
    result = client.infer("emb", [texts_input(["x"], binary=True)])
    output = result.get_output("EMBEDDING")
    assert output is not None and output["parameters"]["binary_data_size"] == 32 * 4
    assert result.as_numpy("EMBEDDING").shape == (1, 32)


def test_errors_reach_the_client(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="model 'nope' is not served") as error:
        client.infer("nope", [texts_input(["x"], binary=True)])
    assert error.value.status() == "404"
    with pytest.raises(InferenceServerException, match="unknown input tensor 'TXT'") as error:
        client.infer("emb", [texts_input(["x"], binary=True, name="TXT")])
    assert error.value.status() == "400"
    wrong = triton.InferInput("TEXT", [1], "FP32")
    wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="datatype is FP32; send BYTES"):
        client.infer("emb", [wrong])
    with pytest.raises(InferenceServerException, match="has no versions"):
        client.infer("emb", [texts_input(["x"], binary=True)], model_version="1")


def test_json_shapes(url: str) -> None:
    body = {
        "inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["hi"]}],
        "parameters": {"priority": 1, "timeout": 30_000_000},
    }
    reply = httpx.post(f"{url}/v2/models/emb/infer", json=body)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    answer = reply.json()
    assert answer["model_name"] == "emb" and "model_version" not in answer
    [output] = answer["outputs"]
    assert output["shape"] == [1, 32] and len(output["data"]) == 32


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/emb/infer", {"inputs": []}, 400, "inputs: send at least 1 item"),
        ("/v2/models/emb/infer", {"inputs": [{"name": "TEXT", "shape": [2], "datatype": "BYTES",
                                              "data": ["a"]}]}, 400, "holds 2 elements, not 1"),
        ("/v2/models/emb/infer", {"inputs": [{"name": "TEXT", "shape": [1, 1],
                                              "datatype": "BYTES", "data": ["a"]}]}, 400,
         "shape [1, 1] is not [-1]"),
        ("/v2/models/gen/infer", {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                                              "data": ["a"]}], "parameters": {"temperature": 9}},
         400, "temperature"),
        ("/v2/models/emb/infer", {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                                              "data": ["a"]}], "parameters": {"sequence_id": 1}},
         400, "unknown parameter 'sequence_id'"),
        ("/v2/models/nope/infer", {}, 404, "not served"),
        ("/v2/nowhere", None, 404, "see /docs"),
    ],
)  # fmt: skip
def test_error_shape(url: str, path: str, body: object, status: int, message: str) -> None:
    reply = httpx.post(url + path, json=body) if body is not None else httpx.get(url + path)
    assert reply.status_code == status
    assert list(reply.json()) == ["error"] and message in reply.json()["error"]


def test_binary_body_errors(url: str) -> None:
    header = b'{"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",' \
        b' "parameters": {"binary_data_size": 9}}]}'  # fmt: skip
    raw = header + b"\x05\x00\x00\x00abc"  # says 5 bytes, has 3
    reply = httpx.post(
        f"{url}/v2/models/emb/infer", content=raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )  # fmt: skip
    assert reply.status_code == 400 and "binary_data_size 9" in reply.json()["error"]


def test_repository(client: triton.InferenceServerClient) -> None:
    client.load_model("cls")
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert index["cls"]["state"] == "READY" and set(index) == {"emb", "cls", "gen"}
    client.unload_model("cls")
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert index["cls"]["state"] == "UNAVAILABLE"


def test_versions_and_an_api_key_through_tritonclient(tmp_path: Path) -> None:
    """`model_version` reaches `name@version`, the route answers a bare name, and the key goes
    in tritonclient's `headers`: without it, the call is refused with our message."""
    build = modelfactory.build_embedding_model
    models = [ServedModel(f"emb@v{n}", "embedding", build(tmp_path / f"v{n}", n)) for n in (1, 2)]
    supervisor = Supervisor(models, SupervisorSettings(request_timeout=60))
    app = create_app(
        supervisor,
        ServerSettings(access_log=False, api_key="sesame"),
        routes={"emb": Route({"v1": 100})},
    )
    key = {"Authorization": "Bearer sesame"}  # copied per call: tritonclient adds its own to it
    with serve(app) as base_url, triton.InferenceServerClient(base_url[len("http://") :]) as client:
        texts = [texts_input(["hello"], binary=True)]
        routed = client.infer("emb", texts, headers=dict(key))
        pinned = client.infer("emb", texts, model_version="v2", headers=dict(key))
        native = httpx.post(f"{base_url}/infer/emb@v2", json={"inputs": ["hello"]}, headers=key)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("emb", texts)
        metadata = client.get_model_metadata("emb", model_version="v2", headers=dict(key))

    assert routed.get_response()["model_version"] == "v1"
    assert pinned.get_response()["model_version"] == "v2"
    v2 = native.json()["result"]["embeddings"][0]
    assert np.allclose(pinned.as_numpy("EMBEDDING")[0], v2, atol=1e-6)
    assert not np.allclose(routed.as_numpy("EMBEDDING")[0], v2, atol=1e-3)
    assert refused.value.status() == "401" or "401" in str(refused.value)
    assert "API key" in str(refused.value) or "api key" in str(refused.value).lower()
    assert metadata["name"] == "emb"

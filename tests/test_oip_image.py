"""Text-to-image over the Open Inference Protocol: the tiny offline Stable-Diffusion pipeline served
by a real `modelmora serve` (REST and gRPC), called with the official tritonclient.http and
tritonclient.grpc; the PNGs decoded with Pillow and compared byte for byte with native `/infer`."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from modelfactory import build_image_model
from servers import added_project, free_port, start_serve, stop

pytest.importorskip("diffusers")
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow  # a real server and worker process
FAST: dict[str, Any] = {"size": "64x64", "steps": 2, "seed": 7, "n": 2}
PROMPT = "a red square"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The REST url and gRPC address of one server with the tiny pipeline as `sd`."""
    pipeline = build_image_model(tmp_path_factory.mktemp("models") / "tiny-sd")
    root, env = added_project(tmp_path_factory, {"sd": pipeline})
    port = free_port()
    url, process = start_serve(root, "--preload", "sd", "--grpc-port", str(port), env=env)
    try:
        yield url, f"127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(scope="module")
def native(served: tuple[str, str]) -> list[bytes]:
    """The PNGs of native `POST /infer` for PROMPT with FAST's options."""
    body = {"inputs": PROMPT, **FAST}
    response = httpx.post(f"{served[0]}/infer/sd", json=body, timeout=120)
    assert response.status_code == 200, response.text
    images = response.json()["result"]["images"]
    assert [image["seed"] for image in images] == [7, 8]
    return [base64.b64decode(image["b64_json"]) for image in images]


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def prompt(module: Any, name: str = "TEXT", text: str = PROMPT) -> Any:
    tensor = module.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return tensor


def test_metadata_lists_the_tensors(served: tuple[str, str]) -> None:
    want_inputs = [("TEXT", "BYTES", ["1"]), ("NEGATIVE_PROMPT", "BYTES", ["1"])]
    want_outputs = [("IMAGE", "BYTES", ["-1"]), ("SEED", "INT64", ["-1"])]
    with triton_grpc.InferenceServerClient(served[1]) as client:
        grpc_meta = client.get_model_metadata("sd")
    rest_meta = triton_http.InferenceServerClient(served[0].removeprefix("http://"))
    rest = rest_meta.get_model_metadata("sd")

    assert grpc_meta.platform == "modelmora/text-to-image"
    got = [(t.name, t.datatype, [str(d) for d in t.shape]) for t in grpc_meta.inputs]
    assert got == want_inputs
    got = [(t.name, t.datatype, [str(d) for d in t.shape]) for t in grpc_meta.outputs]
    assert got == want_outputs
    listed = [(t["name"], t["datatype"], [str(d) for d in t["shape"]]) for t in rest["outputs"]]
    assert listed == want_outputs
    assert [t["name"] for t in rest["inputs"]] == ["TEXT", "NEGATIVE_PROMPT"]


def test_rest_gives_the_native_bytes_raw_in_binary_and_base64_in_json(
    served: tuple[str, str], native: list[bytes]
) -> None:
    client = triton_http.InferenceServerClient(served[0].removeprefix("http://"))
    outputs = [
        triton_http.InferRequestedOutput("IMAGE", binary_data=True),
        triton_http.InferRequestedOutput("SEED", binary_data=False),
    ]
    binary = client.infer("sd", [prompt(triton_http)], outputs=outputs, parameters=FAST)
    in_json = [
        triton_http.InferRequestedOutput(name, binary_data=False) for name in ("IMAGE", "SEED")
    ]
    as_json = client.infer("sd", [prompt(triton_http)], outputs=in_json, parameters=FAST)

    raw = list(binary.as_numpy("IMAGE"))
    assert raw == native
    assert all(png(data).size == (64, 64) for data in raw)
    assert list(binary.as_numpy("SEED")) == [7, 8]
    texts = list(as_json.as_numpy("IMAGE"))
    assert all(isinstance(text, str) for text in texts)
    assert [base64.b64decode(text, validate=True) for text in texts] == native
    assert list(as_json.as_numpy("SEED")) == [7, 8]


def test_grpc_gives_the_native_bytes(served: tuple[str, str], native: list[bytes]) -> None:
    with triton_grpc.InferenceServerClient(served[1]) as client:
        result = client.infer("sd", [prompt(triton_grpc)], parameters=FAST)
        one = client.infer("sd", [prompt(triton_grpc)], parameters={**FAST, "n": 1})

    assert list(result.as_numpy("IMAGE")) == native
    assert list(result.as_numpy("SEED")) == [7, 8]
    assert png(one.as_numpy("IMAGE")[0]).size == (64, 64)
    assert list(one.as_numpy("SEED")) == [7]


def test_the_negative_prompt_reaches_the_pipeline(served: tuple[str, str]) -> None:
    options = {"size": "64x64", "steps": 2, "seed": 3, "guidance": 7.5}
    body = {"inputs": PROMPT, "negative_prompt": "blue", **options}
    response = httpx.post(f"{served[0]}/infer/sd", json=body, timeout=120)
    assert response.status_code == 200, response.text
    want = base64.b64decode(response.json()["result"]["images"][0]["b64_json"])
    inputs = [prompt(triton_grpc), prompt(triton_grpc, "NEGATIVE_PROMPT", "blue")]

    with triton_grpc.InferenceServerClient(served[1]) as client:
        result = client.infer("sd", inputs, parameters=options)
        without = client.infer("sd", inputs[:1], parameters=options)

    assert result.as_numpy("IMAGE")[0] == want
    assert without.as_numpy("IMAGE")[0] != want  # the negative prompt changed the image


def test_a_bad_size_names_the_field(served: tuple[str, str]) -> None:
    bad = {**FAST, "size": "65x64"}
    rest = triton_http.InferenceServerClient(served[0].removeprefix("http://"))
    with pytest.raises(InferenceServerException) as over_rest:
        rest.infer("sd", [prompt(triton_http)], parameters=bad)
    with (
        triton_grpc.InferenceServerClient(served[1]) as client,
        pytest.raises(InferenceServerException) as over_grpc,
    ):
        client.infer("sd", [prompt(triton_grpc)], parameters=bad)
    raw = httpx.post(
        f"{served[0]}/v2/models/sd/infer",
        json={"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["x"]}],
              "parameters": bad},
        timeout=60,
    )  # fmt: skip

    assert over_rest.value.status() == "400"
    assert "size" in over_rest.value.message()
    assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "size" in over_grpc.value.message()
    assert raw.status_code == 400 and "size" in raw.json()["error"]


def test_two_prompts_or_an_unknown_parameter_are_refused(served: tuple[str, str]) -> None:
    text = {"name": "TEXT", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}
    two = httpx.post(f"{served[0]}/v2/models/sd/infer", json={"inputs": [text]}, timeout=60)
    one = {**text, "shape": [1], "data": ["a"]}
    stream = {"inputs": [one], "parameters": {"stream": True}}
    unknown = httpx.post(f"{served[0]}/v2/models/sd/infer", json=stream, timeout=60)

    assert two.status_code == 400 and "TEXT" in two.json()["error"]
    assert unknown.status_code == 400 and "stream" in unknown.json()["error"]


def test_openapi_documents_the_infer_body(served: tuple[str, str]) -> None:
    document = httpx.get(f"{served[0]}/openapi.json", timeout=60).json()
    schemas = document["components"]["schemas"]
    inputs = schemas["TextToImageOipInferRequest"]["properties"]["inputs"]["anyOf"]
    parameters = schemas["TextToImageInferParameters"]["properties"]

    forms = [[item["$ref"].rsplit("/", 1)[1] for item in form["prefixItems"]] for form in inputs]
    assert forms == [
        ["TextToImageInputTensor"],
        ["TextToImageInputTensor", "TextToImageNegativePromptInputTensor"],
    ]
    assert {"size", "n", "steps", "guidance", "seed"} <= set(parameters)
    assert "stream" not in parameters

"""Text-to-image: a tiny random Stable-Diffusion pipeline built offline, installed from a folder
through the package manager and served by the real `modelmora serve`; its PNGs decoded with Pillow.
Object storage is moto's S3 server on loopback, as in tests/test_storage.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from liveserver import serve
from modelfactory import build_image_model
from servers import added_project, start_serve, stop
from waiting import eventually

pytest.importorskip("diffusers")
from PIL import Image

pytestmark = pytest.mark.slow  # real servers and worker processes
FAST = {"steps": 2, "size": "64x64"}
BUCKET = "images"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="module")
def url(pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`modelmora init`, `add` (which reads the task from model_index.json) and `serve`."""
    root, env = added_project(tmp_path_factory, {"sd": pipeline})
    assert 'task = "text-to-image"' in (root / "modelmora.toml").read_text()
    base_url, process = start_serve(root, "--preload", "sd", env=env)
    try:
        yield base_url
    finally:
        stop(process)


def infer(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/infer/sd", json={"inputs": "a red square", **body}, timeout=60)


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def test_a_generated_png_has_the_requested_size(url: str) -> None:
    response = infer(url, steps=2, size="48x32", seed=1)

    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert (result["width"], result["height"], result["steps"]) == (48, 32, 2)
    assert decoded(result["images"][0]["b64_json"]).size == (48, 32)


def test_the_models_own_size_when_none_is_asked(url: str) -> None:
    result = infer(url, steps=1).json()["result"]

    assert decoded(result["images"][0]["b64_json"]).size == (64, 64)
    assert isinstance(result["images"][0]["seed"], int)  # a drawn seed is reported


def test_the_same_seed_gives_the_same_bytes_and_another_seed_differs(url: str) -> None:
    def image(seed: int) -> str:
        b64: str = infer(url, **FAST, seed=seed).json()["result"]["images"][0]["b64_json"]
        return b64

    assert image(7) == image(7)
    assert image(7) != image(8)


def test_n_gives_as_many_images_each_with_its_seed(url: str) -> None:
    result = infer(url, **FAST, n=2, seed=10, negative_prompt="blue").json()["result"]

    assert [image["seed"] for image in result["images"]] == [10, 11]
    assert [decoded(image["b64_json"]).size for image in result["images"]] == [(64, 64)] * 2


def test_the_openai_client_generates_images(url: str) -> None:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        response = client.images.generate(
            model="sd", prompt="a cat", size="64x64", response_format="b64_json",
            n=2, extra_body={"steps": 2, "seed": 3},
        )  # fmt: skip

    assert response.data is not None and len(response.data) == 2
    assert all(decoded(item.b64_json or "").size == (64, 64) for item in response.data)
    same = infer(url, **FAST, inputs="a cat", seed=3, n=2).json()["result"]["images"]
    assert [item.b64_json for item in response.data] == [image["b64_json"] for image in same]


def test_progress_streams_step_by_step_then_the_result(url: str) -> None:
    with httpx.stream(
        "POST", f"{url}/infer/sd", json={"inputs": "a cat", **FAST, "steps": 3, "stream": True},
        timeout=60,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_events("".join(response.iter_text()))

    names = [name for name, _ in events]
    assert names == ["progress", "progress", "progress", "result"]
    assert [data for _, data in events[:3]] == [{"step": k, "steps": 3} for k in (1, 2, 3)]
    result = events[-1][1]
    assert result["model"] == "sd" and result["timing"]["inference_ms"] > 0
    assert decoded(result["result"]["images"][0]["b64_json"]).size == (64, 64)


def parse_events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_a_job_shows_its_progress_then_its_images(url: str) -> None:
    steps = 100  # long enough to be seen running: each step of a 128x128 image takes a while
    body = {"model": "sd", "input": {"inputs": "a cat", "steps": steps, "size": "128x128"}}
    job_id = httpx.post(f"{url}/jobs", json=body).json()["id"]

    def running_with_progress() -> dict[str, Any] | None:
        job = httpx.get(f"{url}/jobs/{job_id}").json()
        assert job["state"] in ("queued", "running"), f"it ended before progress was seen: {job}"
        return job if job["state"] == "running" and job["progress"] else None

    running = eventually(running_with_progress, 120, what="the job to report progress")
    assert 1 <= running["progress"]["step"] <= steps == running["progress"]["steps"]
    done = eventually(
        lambda: (job := httpx.get(f"{url}/jobs/{job_id}").json())["state"] != "running" and job,
        120,
    )
    assert done["state"] == "succeeded", done
    assert done["progress"] is None
    assert decoded(done["result"]["images"][0]["b64_json"]).size == (128, 128)


def test_a_job_past_its_timeout_fails_with_the_reason(url: str) -> None:
    body = {
        "model": "sd",
        "input": {"inputs": "a cat", "steps": 200, "size": "128x128"},
        "timeout": 0.2,  # far less than 200 steps take
    }
    job_id = httpx.post(f"{url}/jobs", json=body).json()["id"]
    done = eventually(
        lambda: (job := httpx.get(f"{url}/jobs/{job_id}").json())["state"] == "failed" and job,
        120,
    )

    assert done["error"]["code"] == "deadline_exceeded" and done["result"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"size": "63x64"}, "size"),
        ({"size": "4096x4096"}, "size"),
        ({"size": "64"}, "size"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"steps": 0}, "steps"),
        ({"guidance": -1}, "guidance"),
        ({"seed": -1}, "seed"),
        ({"inputs": ""}, "inputs"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(url: str, body: dict[str, Any], field: str) -> None:
    response = infer(url, **body)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert field in [item["field"] for item in error["detail"]]


def test_bad_input_on_the_openai_route_and_in_a_job(url: str) -> None:
    bad_size = {"model": "sd", "prompt": "a cat", "size": "100x100"}
    response = httpx.post(f"{url}/v1/images/generations", json=bad_size)
    assert response.status_code == 400 and response.json()["error"]["param"] == "size"

    as_url = {"model": "sd", "prompt": "a cat", "response_format": "url"}
    response = httpx.post(f"{url}/v1/images/generations", json=as_url)
    assert response.status_code == 400
    assert "configure [storage]" in response.json()["error"]["message"]

    job = httpx.post(f"{url}/jobs", json={"model": "sd", "input": {"inputs": "x", "n": 0}})
    assert job.status_code == 422
    assert job.json()["error"]["detail"][0]["field"] == "input.n"


def test_a_pipeline_folder_is_guessed_text_to_image(pipeline: Path, tmp_path: Path) -> None:
    from modelmora.sources import guess_folder_task

    assert guess_folder_task(pipeline) == "text-to-image"
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionImg2ImgPipeline"}')
    assert guess_folder_task(tmp_path) is None  # an image goes in: not this task


def test_closing_a_stream_stops_the_generation(pipeline: Path) -> None:
    """What a client that leaves does through the worker: the runtime's stream is closed, and the
    pipeline stops at its next step instead of running all of them."""
    from modelmora.runtimes import ModelSpec
    from modelmora.runtimes.image import ImageRuntime

    runtime = ImageRuntime()
    runtime.load(ModelSpec("sd", "text-to-image", str(pipeline), device="cpu"))
    chunks = runtime.stream({"prompt": "a cat", "steps": 200, "size": "64x64"})
    unet, calls = runtime.pipeline.unet, []
    forward = unet.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # hold the second step until the consumer has begun closing
            eventually(lambda: chunks.gi_running, what="the stream to be closed")
        return forward(*args, **kwargs)

    unet.forward = counted
    assert next(chunks) == {"step": 1, "steps": 200}
    closing = threading.Thread(target=chunks.close)
    closing.start()
    closing.join(timeout=120)

    assert not closing.is_alive()
    assert len(calls) < 200  # interrupted after a step or two, not run to the end


def test_without_diffusers_the_load_names_the_extra(
    pipeline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelmora.errors import ModelmoraError
    from modelmora.runtimes import ModelSpec
    from modelmora.runtimes.image import ImageRuntime

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import fails as if not installed
    with pytest.raises(ModelmoraError, match="needs diffusers") as error:
        ImageRuntime().load(ModelSpec("sd", "text-to-image", str(pipeline)))
    assert error.value.hint == "pip install 'modelmora[image]'"


def test_a_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    from modelmora.errors import ModelmoraError
    from modelmora.runtimes import ModelSpec
    from modelmora.runtimes.image import ImageRuntime

    with pytest.raises(ModelmoraError, match=r"no model_index\.json; is it a diffusers pipeline"):
        ImageRuntime().load(ModelSpec("sd", "text-to-image", str(tmp_path)))


# --- object storage ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def stored(pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of the same pipeline whose `[storage]` is moto's S3 server."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _stored(pipeline, tmp_path_factory.mktemp("stored"), monkeypatch)


def _stored(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    from modelmora.manifest import StorageTable
    from modelmora.serve.app import create_app
    from modelmora.serve.config import ServerSettings, SupervisorSettings
    from modelmora.serve.supervisor import ServedModel, Supervisor
    from modelmora.storage import Storage

    for name, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        endpoint = "http://{}:{}".format(*server.get_host_and_port())
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        storage = Storage(StorageTable(bucket=BUCKET, endpoint_url=endpoint, prefix="img/"))
        model = ServedModel("sd", "text-to-image", pipeline, device="cpu")
        supervisor = Supervisor([model], SupervisorSettings(request_timeout=60))
        app = create_app(supervisor, ServerSettings(access_log=False), tmp_path / "jobs.sqlite3",
                         storage=storage)  # fmt: skip
        with serve(app) as base_url:
            yield base_url
    finally:
        server.stop()


def download(location: dict[str, Any]) -> bytes:
    data = httpx.get(location["url"]).content
    assert hashlib.sha256(data).hexdigest() == location["sha256"]
    assert len(data) == location["bytes"]
    return data


def test_with_storage_images_are_stored_and_their_urls_download_the_png(stored: str) -> None:
    inline = infer(stored, **FAST, seed=5).json()["result"]["images"][0]
    assert set(inline) >= {"url", "expires_at", "sha256", "bytes", "seed"}
    assert "b64_json" not in inline
    png = download(inline)
    assert Image.open(io.BytesIO(png)).size == (64, 64)

    with openai.OpenAI(base_url=f"{stored}/v1", api_key="unused", max_retries=0) as client:
        as_url = client.images.generate(
            model="sd", prompt="a red square", size="64x64", response_format="url",
            extra_body={"steps": 2, "seed": 5},
        )  # fmt: skip
        as_b64 = client.images.generate(
            model="sd", prompt="a red square", size="64x64", response_format="b64_json",
            extra_body={"steps": 2, "seed": 5},
        )  # fmt: skip
    assert as_url.data is not None and as_url.data[0].url is not None
    assert httpx.get(as_url.data[0].url).content == png  # the same seed, the same bytes
    assert as_b64.data is not None and base64.b64decode(as_b64.data[0].b64_json or "") == png


def test_with_storage_a_jobs_images_are_urls(stored: str) -> None:
    body = {"model": "sd", "input": {"inputs": "a red square", **FAST, "seed": 5}}
    job_id = httpx.post(f"{stored}/jobs", json=body).json()["id"]
    job = eventually(
        lambda: (
            (found := httpx.get(f"{stored}/jobs/{job_id}").json())["state"] == "succeeded" and found
        ),
        120,
    )

    image = job["result"]["images"][0]
    assert Image.open(io.BytesIO(download(image))).size == (64, 64)


def run_cli(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelmora", "run", "sd", *args, "--url", url],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_run_writes_the_images_as_png_files(url: str, stored: str, tmp_path: Path) -> None:
    one = run_cli(url, "a", "red", "square", "--steps", "2", "--seed", "9", "-o", "cat.png",
                  cwd=tmp_path)  # fmt: skip
    named = run_cli(url, "a red square", "--steps", "2", "--seed", "9", "--size", "32x48",
                    cwd=tmp_path)  # fmt: skip
    from_storage = run_cli(stored, "a red square", "--steps", "2", "--seed", "9", "-o", "s/c.png",
                           cwd=tmp_path)  # fmt: skip
    bad = run_cli(url, "a red square", "--size", "huge", cwd=tmp_path)

    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "Wrote cat.png (64x64, seed 9)"
    assert named.stdout.strip() == "Wrote image-9.png (32x48, seed 9)", named.stderr
    with Image.open(tmp_path / "image-9.png") as image:
        assert image.size == (32, 48)
    assert from_storage.returncode == 0, from_storage.stderr
    assert (tmp_path / "s" / "c.png").read_bytes() == (tmp_path / "cat.png").read_bytes()
    assert bad.returncode == 1 and "size" in bad.stderr and len(bad.stderr.splitlines()) <= 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "c.png",
        "cat.png",
        "image-9.png",
    ]


@pytest.mark.slow
def test_the_python_client_generates_images_with_their_progress(url: str, stored: str) -> None:
    from modelmora.client import AsyncClient, Client
    from modelmora.errors import InvalidInputError

    steps: list[tuple[int, int]] = []
    with Client(url) as client:
        plain = client.generate_image("sd", "a red square", **FAST, seed=3)
        streamed = client.generate_image(
            "sd", "a red square", **FAST, seed=3, on_progress=lambda *s: steps.append(s)
        )
        pair = client.generate_image("sd", "a red square", **FAST, seed=3, n=2)
        for progress in (None, lambda step, steps: None):
            with pytest.raises(InvalidInputError, match="size"):
                client.generate_image("sd", "a red square", size="7x7", on_progress=progress)
    with Client(stored) as client:
        from_storage = client.generate_image("sd", "a red square", **FAST, seed=3)

    async def asynchronously() -> Any:
        async with AsyncClient(stored) as client:
            return await client.generate_image(
                "sd", "a red square", **FAST, seed=3, on_progress=lambda *s: None
            )

    from_storage_async = asyncio.run(asynchronously())
    assert steps == [(1, 2), (2, 2)]
    assert plain.images[0].png == streamed.images[0].png  # the same request, the same bytes
    assert [image.seed for image in pair.images] == [3, 4]
    assert pair.images[0].png != pair.images[1].png
    assert from_storage.images[0].png == from_storage_async.images[0].png  # downloaded, checked
    assert (plain.width, plain.height, plain.model, plain.version) == (64, 64, "sd", None)
    with Image.open(io.BytesIO(from_storage.images[0].png)) as image:
        assert image.size == (64, 64)


# --- on a CUDA machine ---------------------------------------------------------------------------


@pytest.mark.gpu
def test_on_cuda_the_worker_shows_gpu_memory_and_gives_it_back(
    pipeline: Path, tmp_path: Path
) -> None:
    """Skipped without CUDA: `pytest -m gpu tests/test_image.py` where one is lent."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("pynvml", reason="the worker's GPU gauges need the gpu extra")
    from modelmora.serve.app import create_app
    from modelmora.serve.config import ServerSettings, SupervisorSettings
    from modelmora.serve.supervisor import ServedModel, Supervisor

    model = ServedModel("sd", "text-to-image", pipeline, device="cuda")
    settings = SupervisorSettings(request_timeout=120, health_interval=0.2)
    supervisor = Supervisor([model], settings)
    with serve(create_app(supervisor, ServerSettings(access_log=False))) as base_url:
        result = infer(base_url, **FAST, seed=1).json()
        assert decoded(result["result"]["images"][0]["b64_json"]).size == (64, 64)
        status = httpx.get(f"{base_url}/models/sd").json()
        pid = status["pid"]
        assert status["device"].startswith("cuda")

        def gpu_gauge() -> float:
            for line in httpx.get(f"{base_url}/metrics").text.splitlines():
                if line.startswith('modelmora_worker_gpu_memory_bytes{model="sd"}'):
                    return float(line.split()[-1])
            return 0.0

        in_use = eventually(gpu_gauge, 30, what="the worker's GPU memory in /metrics")
        assert in_use > 0 and worker_gpu_mib(pid) > 0  # nvidia-smi sees the same process
        httpx.post(f"{base_url}/models/sd/unload", timeout=60).raise_for_status()
        eventually(lambda: worker_gpu_mib(pid) == 0, 2, what="the worker's GPU memory to be 0")


def worker_gpu_mib(pid: int) -> int:
    """What nvidia-smi says the process uses on the GPU, 0 when it is not listed."""
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    used = {int(p): int(m) for p, m in (line.split(", ") for line in out.stdout.splitlines())}
    return used.get(pid, 0)

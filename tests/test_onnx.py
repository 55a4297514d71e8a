"""The onnx backend: the same results as torch, an export made once, the manifest's checks."""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from modelfactory import build_classification_model, build_embedding_model, update_json
from servers import start_serve, stop

from modelmora import manifest
from modelmora.errors import ManifestError, ModelmoraError
from modelmora.runtimes import ModelSpec, pinned_runtime, resolve_runtime
from modelmora.runtimes import onnx as onnx_backend
from modelmora.runtimes.classification import ClassificationRuntime
from modelmora.runtimes.embedding import EmbeddingRuntime
from modelmora.runtimes.onnx import OnnxClassificationRuntime, OnnxEmbeddingRuntime

SENTENCES = ["this movie is very good", "i hate it", "hello", "the book was not bad at all"]
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def embedding_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedding_model(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_classification_model(tmp_path_factory.mktemp("models") / "tiny-classifier")


def spec_for(folder: Path, task: str = "embedding", backend: str = "onnx") -> ModelSpec:
    return ModelSpec(name="m", task=task, path=str(folder), device="cpu", backend=backend)


def loaded(runtime_class: Any, spec: ModelSpec) -> Any:
    runtime = runtime_class()
    runtime.load(spec)
    runtime.warm_up()
    return runtime


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def assert_same_embeddings(onnx: dict[str, Any], torch: dict[str, Any]) -> None:
    assert onnx.keys() == torch.keys()
    assert onnx["dimensions"] == torch["dimensions"]
    assert onnx["input_tokens"] == torch["input_tokens"]
    assert onnx["prompt_tokens"] == torch["prompt_tokens"]
    assert len(onnx["embeddings"]) == len(torch["embeddings"])
    for ours, theirs in zip(onnx["embeddings"], torch["embeddings"], strict=True):
        assert cosine(ours, theirs) > MIN_COSINE


def no_export_allowed(*args: object) -> None:
    raise AssertionError("the model was exported again")


@pytest.mark.slow  # exports a model: a few seconds
def test_embeddings_match_torch_and_the_export_is_made_once(
    embedding_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_for(embedding_folder)
    onnx = loaded(OnnxEmbeddingRuntime, spec)
    torch = loaded(EmbeddingRuntime, spec_for(embedding_folder, backend="torch"))
    for normalize in (True, False):
        request = {"inputs": SENTENCES, "normalize": normalize}
        assert_same_embeddings(onnx.infer(request), torch.infer(request))
    [export] = [p for p in onnx_backend.exports_root().iterdir() if p.is_dir()]
    assert onnx.device == "cpu" and onnx.accelerator_memory() is None

    made = (export / "model.onnx").stat().st_mtime_ns
    monkeypatch.setattr(onnx_backend, "export_onnx", no_export_allowed)
    again = loaded(OnnxEmbeddingRuntime, spec)
    assert (export / "model.onnx").stat().st_mtime_ns == made
    assert again.infer({"inputs": SENTENCES}) == onnx.infer({"inputs": SENTENCES})
    assert not [p for p in export.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow  # exports a model: a few seconds
def test_classification_matches_torch(classifier_folder: Path) -> None:
    onnx = loaded(OnnxClassificationRuntime, spec_for(classifier_folder, "text-classification"))
    torch = loaded(
        ClassificationRuntime, spec_for(classifier_folder, "text-classification", "torch")
    )
    request = {"inputs": SENTENCES, "top_k": None}
    ours, theirs = onnx.infer(request), torch.infer(request)
    assert ours.keys() == theirs.keys()
    assert ours["input_tokens"] == theirs["input_tokens"]
    for mine, expected in zip(ours["predictions"], theirs["predictions"], strict=True):
        assert [p["label"] for p in mine] == [p["label"] for p in expected]
        assert [p["score"] for p in mine] == pytest.approx([p["score"] for p in expected], abs=1e-4)


@pytest.mark.slow  # exports a model: a few seconds
def test_the_snapshots_own_onnx_file_is_used(
    embedding_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = shutil.copytree(embedding_folder, tmp_path / "with-onnx")
    torch = loaded(EmbeddingRuntime, spec_for(folder, backend="torch"))
    (folder / "onnx").mkdir()
    onnx_backend.export_onnx(
        folder, type(torch.model), "last_hidden_state", list(onnx_backend.INPUT_NAMES),
        torch.tokenizer, folder / "onnx" / "model.onnx",
    )  # fmt: skip
    monkeypatch.setattr(onnx_backend, "export_onnx", no_export_allowed)
    onnx = loaded(OnnxEmbeddingRuntime, spec_for(folder))
    assert_same_embeddings(onnx.infer({"inputs": SENTENCES}), torch.infer({"inputs": SENTENCES}))
    assert not onnx_backend.exports_root().exists()


@pytest.mark.slow  # exports a model: a few seconds
def test_a_tokenizer_without_token_types_exports_two_inputs(
    embedding_folder: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(embedding_folder, tmp_path / "no-types")
    update_json(folder / "tokenizer_config.json", model_input_names=["input_ids", "attention_mask"])
    onnx = loaded(OnnxEmbeddingRuntime, spec_for(folder))
    assert [i.name for i in onnx.session.get_inputs()] == ["input_ids", "attention_mask"]
    torch = loaded(EmbeddingRuntime, spec_for(folder, backend="torch"))
    assert_same_embeddings(onnx.infer({"inputs": SENTENCES}), torch.infer({"inputs": SENTENCES}))


def test_workers_exporting_at_once_make_one_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "derived" / "KEY"
    writes: list[Path] = []

    def write(path: Path) -> None:
        writes.append(path)
        path.write_bytes(b"model" * 1000)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: onnx_backend.export_once(target, write), range(8)))
    assert len(writes) == 1
    assert (target / "model.onnx").read_bytes() == b"model" * 1000
    assert sorted(p.name for p in target.parent.iterdir()) == ["KEY", "KEY.lock"]


def test_a_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "derived" / "KEY"

    def fail(path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        onnx_backend.export_once(target, fail)
    assert [p.name for p in target.parent.iterdir()] == ["KEY.lock"]


def test_the_export_key_changes_with_the_weights(embedding_folder: Path, tmp_path: Path) -> None:
    other = build_embedding_model(tmp_path / "other", seed=1)
    inputs = list(onnx_backend.INPUT_NAMES)
    key = onnx_backend.export_key(embedding_folder, object, "last_hidden_state", inputs)
    assert key == onnx_backend.export_key(embedding_folder, object, "last_hidden_state", inputs)
    assert key != onnx_backend.export_key(other, object, "last_hidden_state", inputs)
    assert key != onnx_backend.export_key(embedding_folder, object, "logits", inputs)


def test_without_onnxruntime_the_error_says_what_to_install(
    embedding_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelmoraError) as caught:
        OnnxEmbeddingRuntime().load(spec_for(embedding_folder))
    assert str(caught.value) == "backend 'onnx' needs onnxruntime: pip install 'modelmora[onnx]'"


def test_cuda_without_its_provider_is_refused() -> None:
    with pytest.raises(ModelmoraError, match="onnxruntime has no CUDAExecutionProvider"):
        onnx_backend.execution_providers("cuda", ["CPUExecutionProvider"])
    cuda = onnx_backend.execution_providers("cuda:1", ["CUDAExecutionProvider"])
    assert cuda == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert onnx_backend.execution_providers("cpu", ["CUDAExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]


def test_the_backend_picks_the_runtime_and_an_override_still_wins() -> None:
    assert resolve_runtime("embedding", backend="onnx") is OnnxEmbeddingRuntime
    assert resolve_runtime("text-classification", backend="onnx") is OnnxClassificationRuntime
    assert resolve_runtime("embedding") is EmbeddingRuntime
    custom = "modelmora.runtimes.embedding:EmbeddingRuntime"
    assert pinned_runtime("embedding", "onnx", custom) == custom
    assert pinned_runtime("embedding", "torch") is None
    with pytest.raises(ModelmoraError, match="does not serve the task 'text-generation'"):
        pinned_runtime("text-generation", "onnx")


# --- the manifest --------------------------------------------------------------------------------

MODEL = '[project]\nname = "demo"\n\n[models.m]\nsource = "hf://org/repo"\n'


def load_model(tmp_path: Path, table: str) -> manifest.ModelSpec:
    path = tmp_path / "modelmora.toml"
    path.write_text(MODEL + table)
    return manifest.load(path).models["m"]


def manifest_error(tmp_path: Path, table: str) -> str:
    with pytest.raises(ManifestError) as caught:
        load_model(tmp_path, table)
    return str(caught.value)


def test_backend_defaults_to_torch_and_leaves_the_lock_inputs_alone(tmp_path: Path) -> None:
    spec = load_model(tmp_path, 'task = "embedding"\n')
    assert spec.backend == "torch"
    assert spec.lock_inputs()["include"] == list(manifest.DEFAULT_INCLUDE)


def test_the_onnx_backend_also_takes_the_repositorys_export(tmp_path: Path) -> None:
    spec = load_model(tmp_path, 'task = "embedding"\nbackend = "onnx"\n')
    assert spec.patterns == (*manifest.DEFAULT_INCLUDE, "onnx/model.onnx", "onnx/model.onnx_data")
    assert spec.lock_inputs()["include"] == list(spec.patterns)
    chosen = load_model(tmp_path, 'task = "embedding"\nbackend = "onnx"\ninclude = ["*.json"]\n')
    assert chosen.patterns == ("*.json",)


def test_an_unknown_backend_is_one_line(tmp_path: Path) -> None:
    error = manifest_error(tmp_path, 'task = "embedding"\nbackend = "tensorrt"\n')
    assert error == (
        "modelmora.toml: models.m.backend: unknown backend 'tensorrt'; use torch or onnx"
    )


def test_the_onnx_backend_names_the_task_it_does_not_serve(tmp_path: Path) -> None:
    error = manifest_error(tmp_path, 'task = "text-generation"\nbackend = "onnx"\n')
    assert "models.m.backend" in error and "not the task 'text-generation'" in error


def test_the_onnx_backend_runs_in_float32(tmp_path: Path) -> None:
    error = manifest_error(tmp_path, 'task = "embedding"\nbackend = "onnx"\ndtype = "float16"\n')
    assert "models.m.dtype: the onnx backend runs in float32" in error


# --- through a real server -----------------------------------------------------------------------


@pytest.fixture
def two_backends(embedding_folder: Path, tmp_path: Path) -> Iterator[str]:
    """A project serving one model folder twice: `torch` and `onnx`."""
    root = tmp_path / "demo"
    root.mkdir()
    (root / "modelmora.toml").write_text(
        f'[project]\nname = "demo"\n\n'
        f'[models.torch]\nsource = "{embedding_folder}"\ntask = "embedding"\n\n'
        f'[models.onnx]\nsource = "{embedding_folder}"\ntask = "embedding"\nbackend = "onnx"\n'
    )
    url, process = start_serve(root, "--preload", "onnx")
    try:
        yield url
    finally:
        stop(process)


@pytest.mark.slow
def test_a_server_gives_the_same_vectors_with_either_backend(two_backends: str) -> None:
    def embeddings(model: str) -> list[list[float]]:
        body = {"model": model, "input": SENTENCES}
        reply = httpx.post(f"{two_backends}/v1/embeddings", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        return [item["embedding"] for item in reply.json()["data"]]

    onnx, torch = embeddings("onnx"), embeddings("torch")
    assert len(onnx) == len(torch) == len(SENTENCES)
    for ours, theirs in zip(onnx, torch, strict=True):
        assert cosine(ours, theirs) > MIN_COSINE

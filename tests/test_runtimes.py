"""The built-in runtimes on tiny models: in this process against transformers, then in a worker."""

from __future__ import annotations

import asyncio
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
import torch
from modelfactory import (
    build_classification_model,
    build_embedding_model,
    build_generation_model,
)
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from modelmora import runtimes
from modelmora.errors import InvalidInputError, ModelmoraError, UnavailableError
from modelmora.runtimes import ModelSpec, Runtime, resolve_runtime
from modelmora.runtimes.embedding import EmbeddingRuntime
from modelmora.serve.config import SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor
from modelmora.vectors import Vectors

TASKS = {
    "embedding": build_embedding_model,
    "text-classification": build_classification_model,
    "text-generation": build_generation_model,
}
SENTENCES = ["this movie is very good", "i hate it", "hello"]


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {task: build(root / task) for task, build in TASKS.items()}


@pytest.fixture(scope="module")
def loaded(model_folders: dict[str, Path]) -> dict[str, Runtime]:
    """Each task's runtime, loaded and warmed up in this process."""
    loaded = {}
    for task, folder in model_folders.items():
        runtime = resolve_runtime(task)()
        runtime.load(ModelSpec(name=task, task=task, path=str(folder)))
        runtime.warm_up()
        loaded[task] = runtime
    return loaded


def direct_embeddings(folder: Path, texts: list[str]) -> torch.Tensor:
    """Mean pooling over the attention mask, then L2 normalisation: sentence-transformers' way."""
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1)


def direct_greedy_text(folder: Path, prompt: str, max_new_tokens: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        output = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    text: str = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
    return text


# --- embedding ----------------------------------------------------------------------------------


def test_embeddings_equal_a_direct_computation(
    loaded: dict[str, Runtime], model_folders: dict[str, Path]
) -> None:
    result = loaded["embedding"].infer({"inputs": SENTENCES})
    expected = direct_embeddings(model_folders["embedding"], SENTENCES)
    assert result["dimensions"] == 32 and len(result["embeddings"]) == 3
    assert torch.allclose(torch.tensor(result["embeddings"]), expected, atol=1e-5)
    assert result["prompt_tokens"] > len(SENTENCES)


def test_embeddings_are_normalised_only_when_asked(loaded: dict[str, Runtime]) -> None:
    raw = torch.tensor(
        loaded["embedding"].infer({"inputs": SENTENCES, "normalize": False})["embeddings"]
    )
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3))
    normalised = torch.tensor(loaded["embedding"].infer({"inputs": SENTENCES})["embeddings"])
    assert torch.allclose(normalised.norm(dim=1), torch.ones(3), atol=1e-5)


def test_a_sentence_transformers_pooling_config_is_followed(model_folders: dict[str, Path]) -> None:
    runtime = EmbeddingRuntime()
    runtime.load(ModelSpec(name="e", task="embedding", path=str(model_folders["embedding"])))
    assert runtime.pooling == "mean"
    runtime.load(
        ModelSpec("e", "embedding", str(model_folders["embedding"]), options={"pooling": "cls"})
    )
    cls_result = runtime.infer({"inputs": ["hello"], "normalize": False})["embeddings"][0]
    assert len(cls_result) == 32


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": ["ok", 3]}, "inputs"),
        ({"inputs": ["ok"], "normalize": "yes"}, "normalize"),
    ],
)
def test_bad_embedding_requests_name_the_field(
    loaded: dict[str, Runtime], request_: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError, match=f"^{field}: "):
        loaded["embedding"].infer(request_)


# --- classification -----------------------------------------------------------------------------


def test_classification_gives_labels_and_softmax_scores(loaded: dict[str, Runtime]) -> None:
    result = loaded["text-classification"].infer({"inputs": SENTENCES, "top_k": None})
    assert len(result["predictions"]) == 3
    for ranked in result["predictions"]:
        assert {p["label"] for p in ranked} == {"negative", "positive"}
        scores = [p["score"] for p in ranked]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0)
    top = loaded["text-classification"].infer({"inputs": "hello"})["predictions"]
    assert len(top) == 1 and len(top[0]) == 1


def test_bad_classification_requests_name_the_field(loaded: dict[str, Runtime]) -> None:
    with pytest.raises(InvalidInputError, match=r"^top_k: "):
        loaded["text-classification"].infer({"inputs": ["a"], "top_k": 0})
    with pytest.raises(InvalidInputError, match=r"^stream: "):
        next(iter(loaded["text-classification"].stream({"inputs": ["a"]})))


# --- generation ---------------------------------------------------------------------------------


def test_greedy_generation_equals_transformers_generate(
    loaded: dict[str, Runtime], model_folders: dict[str, Path]
) -> None:
    request = {"prompt": "hello world", "max_new_tokens": 12, "temperature": 0}
    result = loaded["text-generation"].infer(request)
    expected = direct_greedy_text(model_folders["text-generation"], "hello world", 12)
    assert result["text"] == expected
    assert result["prompt_tokens"] == len("hello world")  # one byte, one token
    assert result["finish_reason"] in ("stop", "length") and result["completion_tokens"] <= 12


def test_streamed_pieces_add_up_to_the_whole_answer(loaded: dict[str, Runtime]) -> None:
    request = {"prompt": "the movie", "max_new_tokens": 12, "temperature": 0}
    whole = loaded["text-generation"].infer(request)
    chunks = list(loaded["text-generation"].stream(request))
    assert "".join(chunk["text"] for chunk in chunks) == whole["text"]
    assert chunks[-1] == {"text": "", **{k: v for k, v in whole.items() if k != "text"}}


def test_a_stop_string_ends_the_text_before_it(loaded: dict[str, Runtime]) -> None:
    request: dict[str, Any] = {"prompt": "the movie", "max_new_tokens": 12, "temperature": 0}
    whole = loaded["text-generation"].infer(request)["text"]
    stop = whole[3:5]
    cut = loaded["text-generation"].infer({**request, "stop": [stop]})
    assert cut["text"] == whole[: whole.index(stop)] and cut["finish_reason"] == "stop"
    streamed = list(loaded["text-generation"].stream({**request, "stop": [stop]}))
    assert "".join(chunk["text"] for chunk in streamed) == cut["text"]


def test_a_seed_makes_sampling_repeatable(loaded: dict[str, Runtime]) -> None:
    request = {"prompt": "hello", "max_new_tokens": 10, "temperature": 1.5, "top_p": 0.9}
    first = loaded["text-generation"].infer({**request, "seed": 7})
    again = loaded["text-generation"].infer({**request, "seed": 7})
    assert first == again


def test_chat_messages_go_through_the_chat_template(loaded: dict[str, Runtime]) -> None:
    messages = [{"role": "user", "content": "hi"}]
    result = loaded["text-generation"].infer({"messages": messages, "max_new_tokens": 2})
    assert result["prompt_tokens"] == len("<|user|>hi\n<|assistant|>")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "a", "messages": []}, "prompt"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\].content"),
        ({"prompt": "a", "temperature": -1}, "temperature"),
        ({"prompt": "a", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "a", "stop": [""]}, "stop"),
        ({"prompt": "a" * 500}, "prompt"),
    ],
)
def test_bad_generation_requests_name_the_field(
    loaded: dict[str, Runtime], request_: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError, match=f"^{field}: "):
        loaded["text-generation"].infer(request_)


# --- registry -----------------------------------------------------------------------------------


def test_an_unknown_task_names_the_fix() -> None:
    with pytest.raises(ModelmoraError, match="no runtime serves the task 'nope'") as error:
        resolve_runtime("nope")
    assert "modelmora.runtimes" in str(error.value)


def test_a_runtime_reference_overrides_the_task() -> None:
    factory = resolve_runtime("embedding", "runtimes_for_tests:EchoRuntime")
    assert factory().infer({"x": 1})["echo"] == {"x": 1}
    with pytest.raises(ModelmoraError, match="not of the form"):
        resolve_runtime("embedding", "no_colon")


def test_a_plugin_entry_point_adds_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = EntryPoint("echo-task", "runtimes_for_tests:EchoRuntime", runtimes.ENTRY_POINT_GROUP)
    monkeypatch.setattr(runtimes, "entry_points", lambda group: [plugin])
    assert resolve_runtime("echo-task")().infer({})["echo"] == {}


# --- in a worker process ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_runtimes_answer_from_worker_processes(model_folders: dict[str, Path]) -> None:
    """One supervisor for every check: its template imports torch, which takes seconds."""
    models = [ServedModel(task, task, folder) for task, folder in model_folders.items()]
    models.append(ServedModel("missing", "embedding", model_folders["embedding"] / "nope"))

    async def scenario() -> None:
        supervisor = Supervisor(models, SupervisorSettings(stop_timeout=2))
        await supervisor.start()
        try:
            embedded = await supervisor.infer("embedding", {"inputs": SENTENCES})
            expected = direct_embeddings(model_folders["embedding"], SENTENCES)
            packed = embedded.result["embeddings"]  # float32 bytes from the worker: vectors.py
            assert isinstance(packed, Vectors) and len(packed) == len(SENTENCES)
            assert torch.allclose(torch.tensor(packed.tolist()), expected, atol=1e-5)
            classified = await supervisor.infer("text-classification", {"inputs": ["good"]})
            assert classified.result["predictions"][0][0]["label"] in ("negative", "positive")
            chunks = [
                chunk
                async for chunk in supervisor.stream(
                    "text-generation", {"prompt": "hi", "max_new_tokens": 4}
                )
            ]
            assert chunks[-1]["finish_reason"] in ("stop", "length")
            with pytest.raises(UnavailableError, match="does not exist"):
                await supervisor.infer("missing", {"inputs": ["a"]})
            assert supervisor.status("missing").state == "failed"
        finally:
            await supervisor.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))

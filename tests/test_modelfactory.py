"""The tiny models load back with transformers, offline, and answer with the right shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakehub import FakeHub
from huggingface_hub import HfApi, constants, snapshot_download
from modelfactory import (
    build_classification_model,
    build_embedding_model,
    build_generation_model,
    build_tokenizer_files,
    model_files,
    wordpiece_vocab,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SENTENCES = ["hello world", "the movie was very good!"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any Hub request from huggingface_hub or transformers raises, instead of going out."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_tokenizer_is_a_small_wordpiece(tmp_path: Path) -> None:
    build_tokenizer_files(tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)

    assert 80 <= len(tokenizer) <= 120
    vocab = (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab == wordpiece_vocab() and vocab[:5] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Hello World")["input_ids"])
    assert tokens == ["[CLS]", "hello", "world", "[SEP]"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("xyz")["input_ids"])[1:3] == ["x", "##y"]
    special = json.loads((tmp_path / "special_tokens_map.json").read_text())
    assert special["mask_token"] == "[MASK]"


def test_embedding_model_loads_and_embeds(tmp_path: Path) -> None:
    build_embedding_model(tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    model = transformers.AutoModel.from_pretrained(tmp_path)

    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], 32)
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"]
    pooling = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 32


def test_classification_model_names_its_labels(tmp_path: Path) -> None:
    build_classification_model(tmp_path, labels=("bad", "ok", "good"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)

    with torch.no_grad():
        logits = model(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 3)
    assert model.config.id2label == {0: "bad", 1: "ok", 2: "good"}
    assert model.config.label2id == {"bad": 0, "ok": 1, "good": 2}


def test_generation_model_generates_and_chats(tmp_path: Path) -> None:
    build_generation_model(tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "héllo"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|user|>héllo\n<|assistant|>"
    batch = tokenizer(prompt, return_tensors="pt")
    assert tokenizer.decode(batch["input_ids"][0]) == prompt  # byte-level: no unknown tokens
    with torch.no_grad():
        logits = model(**batch).logits
        output = model.generate(**batch, max_new_tokens=4, min_new_tokens=4)
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))
    assert output.shape == (1, batch["input_ids"].shape[1] + 4)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 0
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 0 and generation["do_sample"] is False
    assert "chat_template" in json.loads((tmp_path / "tokenizer_config.json").read_text())


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    first = model_files(build_classification_model(tmp_path / "a", seed=0))
    again = model_files(build_classification_model(tmp_path / "b", seed=0))
    other = model_files(build_classification_model(tmp_path / "c", seed=1))

    assert first == again
    assert {name for name in first if first[name] != other[name]} == {"model.safetensors"}


def test_models_are_small_and_use_safetensors(tmp_path: Path) -> None:
    for build in (build_embedding_model, build_classification_model, build_generation_model):
        files = model_files(build(tmp_path / build.__name__))
        assert "model.safetensors" in files and not any(n.endswith(".bin") for n in files)
        assert sum(len(data) for data in files.values()) < 1_000_000


def test_a_model_served_by_the_fake_hub_loads_from_its_snapshot(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fake_hub.add_commit("tiny/embedder", model_files(build_embedding_model(tmp_path / "built")))

    info = HfApi().model_info("tiny/embedder")
    snapshot = Path(snapshot_download("tiny/embedder", cache_dir=tmp_path / "cache"))
    model = transformers.AutoModel.from_pretrained(snapshot)

    assert info.pipeline_tag == "sentence-similarity"
    assert info.safetensors is not None and info.safetensors.total == model.num_parameters()
    assert (snapshot / "1_Pooling" / "config.json").is_file()

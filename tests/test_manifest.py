"""Manifest reading, validation messages, ${VAR} interpolation and comment-preserving edits."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelmora import manifest, manifestedit
from modelmora.errors import ManifestError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "modelmora.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ManifestError) as caught:
        manifest.load(write(tmp_path, text))
    return str(caught.value)


def test_reads_a_model_with_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[project]\nname = "demo"\n\n[models.minilm]\n'
        'source = "hf://sentence-transformers/all-MiniLM-L6-v2"\ntask = "embedding"\n',
    )
    loaded = manifest.load(path)
    spec = loaded.models["minilm"]
    assert loaded.name == "demo"
    assert spec.patterns == manifest.DEFAULT_INCLUDE
    assert spec.lock_inputs()["revision"] == "main"
    assert spec.device == "auto" and not spec.allow_pickle


def test_revision_suffix_in_source(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[project]\nname="d"\n[models.m]\nsource="hf://o/r@v1.0"\ntask="embedding"\n'
    )
    spec = manifest.load(path).models["m"]
    assert (spec.source, spec.revision) == ("hf://o/r", "v1.0")


def test_unknown_task_suggests_the_closest(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, '[project]\nname="d"\n[models.minilm]\nsource="hf://o/r"\ntask="embeding"\n'
    )
    assert message == (
        "modelmora.toml: models.minilm.task: unknown task 'embeding'; did you mean 'embedding'?"
    )


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        '[project]\nname="d"\n[models.m]\nsource="hf://o/r"\ntask="embedding"\nrevison="x"\n',
    )
    assert message == "modelmora.toml: models.m.revison: unknown key; did you mean 'revision'?"


def test_an_unknown_key_with_no_close_match_lists_the_keys(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[project]\nname="d"\nowner="me"\n')
    assert message == "modelmora.toml: project.owner: unknown key; the keys are name"
    assert "docs/manifest.md" not in message


def test_missing_source(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[project]\nname="d"\n[models.m]\ntask="embedding"\n')
    assert message == "modelmora.toml: models.m.source: missing; add it"


def test_missing_project_table(tmp_path: Path) -> None:
    assert load_error(tmp_path, "[models]\n") == "modelmora.toml: project: missing; add it"


def test_unknown_scheme(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, '[project]\nname="d"\n[models.m]\nsource="s3://b/k"\ntask="embedding"\n'
    )
    assert "unknown source scheme 's3://'" in message and "models.m.source" in message


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[project\n")
    assert message.startswith("modelmora.toml: invalid TOML") and "\n" not in message


def test_missing_manifest_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="modelmora init"):
        manifest.load(tmp_path / "modelmora.toml")


def test_pickle_pattern_refused_unless_allowed(tmp_path: Path) -> None:
    text = (
        '[project]\nname="d"\n[models.m]\nsource="hf://o/r"\ntask="embedding"\ninclude=["*.bin"]\n'
    )
    assert "pickle" in load_error(tmp_path, text)
    allowed = manifest.load(write(tmp_path, text + "allow_pickle = true\n"))
    assert allowed.models["m"].patterns == ("*.bin",)


def test_pattern_escaping_the_folder_refused(tmp_path: Path) -> None:
    text = (
        '[project]\nname="d"\n[models.m]\nsource="hf://o/r"\ntask="embedding"\ninclude=["../x"]\n'
    )
    assert "relative to the model folder" in load_error(tmp_path, text)


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORG", "acme")
    monkeypatch.delenv("REV", raising=False)
    path = write(
        tmp_path,
        '[project]\nname="d"\n[models.m]\nsource="hf://${ORG}/r"\nrevision="${REV:-main}"\n'
        'task="embedding"\ninclude=["${ORG}-$${literal}.json"]\n',
    )
    spec = manifest.load(path).models["m"]
    assert spec.source == "hf://acme/r"
    assert spec.revision == "main"
    assert spec.include == ("acme-${literal}.json",)


def test_missing_variable_names_variable_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_ORG", raising=False)
    message = load_error(
        tmp_path, '[project]\nname="d"\n[models.m]\nsource="hf://${HF_ORG}/r"\ntask="embedding"\n'
    )
    assert "modelmora.toml: models.m.source: environment variable 'HF_ORG' is not set" in message
    assert "${HF_ORG:-default}" in message


def test_add_and_remove_keep_comments_and_order() -> None:
    text = (
        '# top comment\n[project]\nname = "d"  # the name\n\n'
        '[models.a]\nsource = "x"\ntask = "embedding"\n'
    )
    added = manifestedit.add_model(
        text, "b", {"source": "hf://o/r", "task": "embedding", "revision": None}
    )
    assert added.startswith(text)
    assert '[models.b]\nsource = "hf://o/r"\ntask = "embedding"\n' in added
    assert "revision" not in added
    assert manifestedit.remove_model(added, "b") == text


def test_remove_unknown_model() -> None:
    with pytest.raises(ManifestError, match="no model named 'zz'"):
        manifestedit.remove_model('[project]\nname="d"\n', "zz")

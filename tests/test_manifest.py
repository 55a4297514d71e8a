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


# --- versions -----------------------------------------------------------------------------------

VERSIONED = """\
[project]
name = "v"

[models.minilm]
task = "embedding"
device = "cpu"  # shared by the versions
route = { v2 = 90, v1 = 10 }
shadow = "v3"
shadow_fraction = 0.25

[models.minilm.versions.v1]
source = "hf://org/a@abc"

[models.minilm.versions.v2]
source = "./b"
device = "cuda"

[models.minilm.versions.v3]
source = "./c"
"""


def test_versions_expand_to_one_spec_each_sharing_the_models_keys(tmp_path: Path) -> None:
    loaded = manifest.load(write(tmp_path, VERSIONED))

    assert list(loaded.models) == ["minilm@v1", "minilm@v2", "minilm@v3"]
    v1, v2 = loaded.models["minilm@v1"], loaded.models["minilm@v2"]
    assert (v1.model, v1.version, v1.revision, v1.device) == ("minilm", "v1", "abc", "cpu")
    assert v2.device == "cuda" and v2.task == "embedding"
    route = loaded.routes["minilm"]
    assert dict(route.weights) == {"v2": 90, "v1": 10}
    assert (route.shadow, route.shadow_fraction) == ("v3", 0.25)
    assert [spec.version for spec in loaded.versions("minilm")] == ["v1", "v2", "v3"]


def test_without_a_route_the_last_version_gets_all_the_traffic(tmp_path: Path) -> None:
    text = VERSIONED.replace("route = { v2 = 90, v1 = 10 }\n", "")
    assert dict(manifest.load(write(tmp_path, text)).routes["minilm"].weights) == {"v3": 100}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("v2 = 90, v1 = 10", "v2 = 90, v9 = 10"), "models.minilm.route: no version 'v9'"),
        (('shadow = "v3"', 'shadow = "v7"'), "no version 'v7'"),
        (("v2 = 90, v1 = 10", "v2 = 0"), "every weight of the route is 0"),
        (("v2 = 90, v1 = 10", "v2 = -1"), "not a whole number >= 0"),
        (("versions.v3]", 'versions."bad version"]'), "'bad version' is not a valid version"),
        (('source = "./c"', 'source = "./c"\nversion = "x"'), "the table's name is the version"),
        (('source = "./b"', 'source = "./b"\nsourc = "x"'), "versions.v2.sourc: unknown key"),
    ],
)
def test_bad_versions_and_routes_name_the_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    assert message in load_error(tmp_path, VERSIONED.replace(*change))


def test_a_deprecated_version_may_not_get_traffic(tmp_path: Path) -> None:
    text = VERSIONED.replace('source = "./b"', 'source = "./b"\ndeprecated = true')
    assert "version 'v2' is deprecated but gets traffic" in load_error(tmp_path, text)


def test_version_keys_in_a_model_without_versions_are_refused(tmp_path: Path) -> None:
    text = '[project]\nname = "v"\n\n[models.a]\nsource = "./a"\ntask = "embedding"\n'
    for key in ("route = { v1 = 1 }", "deprecated = true", 'version = "v1"'):
        assert "only a model with versions has it" in load_error(tmp_path, text + key + "\n")


def test_version_edits_keep_comments_and_stay_valid(tmp_path: Path) -> None:
    path = write(tmp_path, VERSIONED)
    routed = manifestedit.set_route(VERSIONED, "minilm", manifest.Route({"v1": 100}))
    added = manifestedit.add_model(routed, "minilm@v4", {"source": "./d"})
    deprecated = manifestedit.set_deprecated(added, "minilm@v2", True)
    removed = manifestedit.remove_model(deprecated, "minilm@v3")

    loaded = manifest.loads(removed, path)
    assert "# shared by the versions" in removed
    assert dict(loaded.routes["minilm"].weights) == {"v1": 100}
    assert loaded.routes["minilm"].shadow is None  # v3 was the shadow: gone with it
    assert loaded.models["minilm@v2"].deprecated and "minilm@v4" in loaded.models
    assert "minilm@v3" not in loaded.models
    last = manifestedit.remove_model(manifestedit.remove_model(
        manifestedit.remove_model(removed, "minilm@v4"), "minilm@v2"), "minilm@v1")  # fmt: skip
    assert "minilm" not in manifest.loads(last, path).models
    with pytest.raises(ManifestError, match="no model named 'minilm@v9'"):
        manifestedit.remove_model(VERSIONED, "minilm@v9")

"""The package manager's commands as people read them, run in-process through `cli.main`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from clirun import Result
from fakehub import FakeHub
from test_project import tiny_repo

from modelmora import project


@pytest.fixture
def demo(fake_hub: FakeHub, tmp_path: Path) -> Path:
    """A project with one installed model, `tiny-embedder` (task: embedding)."""
    fake_hub.add_commit("acme/tiny", tiny_repo())
    current = project.init(tmp_path / "demo")
    project.add(current, "hf://acme/tiny", name="tiny-embedder", task="embedding")
    return current.root


CliRun = Callable[..., Result]


def test_lock_check_json_says_fresh(cli_run: CliRun, demo: Path) -> None:
    checked = cli_run("lock", "--check", "--json", cwd=demo)
    assert json.loads(checked.stdout) == {"fresh": True, "stale": []}


def test_lock_check_json_names_the_stale_models_and_exits_1(cli_run: CliRun, demo: Path) -> None:
    manifest = demo / "modelmora.toml"
    manifest.write_text(manifest.read_text().replace('"embedding"', '"text-classification"'))
    checked = cli_run("lock", "--check", "--json", cwd=demo, code=1)
    detail = 'model \'tiny-embedder\' changed (task: "embedding" -> "text-classification")'
    assert json.loads(checked.stdout) == {
        "fresh": False,
        "stale": [
            {
                "name": "tiny-embedder",
                "kind": "changed",
                "detail": detail,
            }
        ],
    }


@pytest.mark.parametrize("command", ["show", "path"])
def test_an_unknown_model_gets_a_did_you_mean(cli_run: CliRun, demo: Path, command: str) -> None:
    failed = cli_run(command, "tiny-embeder", cwd=demo, code=1)
    assert failed.stderr.strip() == (
        "error: no model named 'tiny-embeder' in modelmora.toml; did you mean 'tiny-embedder'?"
    )
    unlike = cli_run(command, "zzz", cwd=demo, code=1)
    assert unlike.stderr.strip().endswith("; see `modelmora list`")


def test_show_prints_words_and_sizes_not_python_values(cli_run: CliRun, demo: Path) -> None:
    shown = cli_run("show", "tiny-embedder", cwd=demo).stdout
    fields = dict(line.split(None, 1) for line in shown.splitlines()[:9])
    assert fields["installed"] == "yes"
    assert fields["revision"] == "-"
    assert fields["size"] == "300.1 kB"  # tiny_repo: 300 kB of weights and three small files
    assert "True" not in shown and "None" not in shown


def test_show_of_a_model_not_locked_yet(cli_run: CliRun, demo: Path) -> None:
    manifest = demo / "modelmora.toml"
    manifest.write_text(manifest.read_text() + '\n[models.later]\nsource = "hf://acme/later"\n')
    manifest.write_text(manifest.read_text() + 'task = "embedding"\n')
    fields = dict(
        line.split(None, 1) for line in cli_run("show", "later", cwd=demo).stdout.splitlines()
    )
    assert (fields["commit"], fields["size"], fields["installed"], fields["path"]) == (
        "-",
        "-",
        "no",
        "-",
    )


def test_list_at_80_columns_never_breaks_a_name_or_a_task(
    cli_run: CliRun, demo: Path, fake_hub: FakeHub
) -> None:
    fake_hub.add_commit("acme/classifier", tiny_repo(seed=1))
    current = project.Project(demo)
    name = "sentiment-classifier"
    project.add(current, "hf://acme/classifier", name=name, task="text-classification")
    listed = cli_run("list", cwd=demo).stdout.splitlines()
    assert all(len(line) <= 80 for line in listed)
    assert [row.split()[:2] for row in listed[1:3]] == [
        ["tiny-embedder", "embedding"],
        [name, "text-classification"],
    ]
    assert listed[3] == "(sources left out at this width: `modelmora show NAME` has them)"


def test_list_folds_a_long_source_where_there_is_room(cli_run: CliRun, demo: Path) -> None:
    source = "hf://acme/a-rather-long-repository-name-for-a-model"
    manifest = demo / "modelmora.toml"
    manifest.write_text(
        manifest.read_text() + f'\n[models.later]\nsource = "{source}"\ntask = "embedding"\n'
    )
    listed = cli_run("list", cwd=demo).stdout.splitlines()
    assert all(len(line) <= 80 for line in listed)
    assert listed[0].split() == ["name", "task", "source", "commit", "size", "status"]
    assert listed[1].split()[:3] == ["tiny-embedder", "embedding", "hf://acme/tiny"]
    assert listed[2].split()[:2] == ["later", "embedding"] and "not locked" in listed[2]
    assert "".join(line.split()[0] for line in listed[3:]) in source  # the rest of the source


def test_pull_a_new_source_adds_and_installs_it(
    cli_run: CliRun, demo: Path, fake_hub: FakeHub
) -> None:
    fake_hub.add_commit("acme/other", tiny_repo(seed=2))
    pulled = cli_run("pull", "acme/other", "--task", "embedding", cwd=demo)
    assert "Pulled other (embedding) at " in pulled.stdout
    assert "3 files, 300.1 kB; added to modelmora.toml" in pulled.stdout
    assert 'source = "hf://acme/other"' in (demo / "modelmora.toml").read_text()
    assert Path(cli_run("path", "other", cwd=demo).stdout.strip()).is_dir()


@pytest.mark.parametrize("model", ["tiny-embedder", "hf://acme/tiny"])
def test_pull_a_model_of_the_manifest_installs_it(cli_run: CliRun, demo: Path, model: str) -> None:
    link = demo / ".modelmora" / "models" / "tiny-embedder"
    link.unlink()
    manifest = (demo / "modelmora.toml").read_text()
    assert "Pulled tiny-embedder" in cli_run("pull", model, cwd=demo).stdout
    assert link.is_dir() and (demo / "modelmora.toml").read_text() == manifest


def test_pull_of_a_misspelt_name_is_not_taken_for_a_source(cli_run: CliRun, demo: Path) -> None:
    failed = cli_run("pull", "tiny-embeder", cwd=demo, code=1)
    assert failed.stderr.strip().endswith("did you mean 'tiny-embedder'?")


def test_rm_and_sync_are_remove_and_install(cli_run: CliRun, demo: Path) -> None:
    assert "Removed tiny-embedder" in cli_run("rm", "tiny-embedder", cwd=demo).stdout
    assert "tiny-embedder" not in (demo / "modelmora.toml").read_text()
    synced = cli_run("sync", "--json", cwd=demo)
    assert json.loads(synced.stdout)["removed"] == []
    assert "same as `install`" in cli_run("sync", "--help", cwd=demo).stdout


@pytest.fixture
def shared_cache(demo: Path, fake_hub: FakeHub) -> Path:
    """`demo` plus `copy` (tiny-embedder's very files, from another repo) and `other`."""
    fake_hub.add_commit("acme/copy", tiny_repo())
    fake_hub.add_commit("acme/other", tiny_repo(seed=3))
    current = project.Project(demo)
    project.add(current, "hf://acme/copy", name="copy", task="embedding")
    project.add(current, "hf://acme/other", name="other", task="embedding")
    return demo


def test_cache_du_counts_shared_bytes_once(cli_run: CliRun, shared_cache: Path) -> None:
    du = json.loads(cli_run("cache", "du", "--json", cwd=shared_cache).stdout)
    sizes = {s["snapshot"].split("/")[0]: (s["size"], s["shared"]) for s in du["snapshots"]}
    small = 72  # config.json and tokenizer.json: the same in every tiny_repo
    one = 300_000 + small
    assert sizes == {
        "hf--acme--tiny": (one, one),
        "hf--acme--copy": (one, one),
        "hf--acme--other": (one, small),
    }
    assert (du["bytes"], du["shared_bytes"], du["blobs"]) == (2 * one - small, one, 4)
    users = {
        s["snapshot"].split("/")[0]: [m["model"] for m in s["models"]] for s in du["snapshots"]
    }
    assert users["hf--acme--copy"] == ["copy"] and users["hf--acme--tiny"] == ["tiny-embedder"]
    text = cli_run("cache", "du", cwd=shared_cache).stdout
    assert "demo:tiny-embedder" in text and "3 snapshots, 4 files" in text
    assert "300.1 kB shared between snapshots" in text


def test_cache_list_names_every_model_of_every_known_project(
    cli_run: CliRun, shared_cache: Path
) -> None:
    rows = json.loads(cli_run("cache", "list", "--json", cwd=shared_cache).stdout)
    assert sorted(row["model"] for row in rows) == ["copy", "other", "tiny-embedder"]
    assert {row["project"] for row in rows} == {str(shared_cache)}
    assert all(row["installed"] and row["size"] > 300_000 for row in rows)
    listed = cli_run("cache", "list", cwd=shared_cache).stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["model", "copy", "other", "tiny-embedder"]


def test_gc_dry_run_names_what_it_would_remove(cli_run: CliRun, shared_cache: Path) -> None:
    cli_run("rm", "other", cwd=shared_cache)
    dry = cli_run("cache", "gc", "--dry-run", cwd=shared_cache).stdout.splitlines()
    assert dry[0] == "Would free 300.0 kB: 1 file, 1 snapshot"  # its small files are shared
    sign, label, *size = dry[1].split()
    assert (sign, label.split("/")[0], size) == ("-", "hf--acme--other", ["300.1", "kB"])
    as_json = json.loads(cli_run("cache", "gc", "--dry-run", "--json", cwd=shared_cache).stdout)
    assert [(s["snapshot"], s["size"], s["files"]) for s in as_json["removed"]] == [
        (label, 300_072, 3)
    ]

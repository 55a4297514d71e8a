"""`modelmora versions|route|promote|rollback|deprecate`: in the files, and through a server."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from clirun import Result
from modelfactory import build_embedding_model
from servers import start_serve, stop

from modelmora import registry
from modelmora.manifest import load
from modelmora.routing import Route
from modelmora.versionjson import (
    RouteBody,
    RouteChangeBody,
    RouteUpdateBody,
    VersionBody,
    VersionsBody,
)

Run = Callable[..., Result]
MANIFEST = """\
[project]
name = "demo"

[models.bert]
task = "embedding"

[models.bert.versions.v1]
source = "../bert-v1"

[models.bert.versions.v2]
source = "../bert-v2"
"""
OFFLINE = "in modelmora.toml (no server running)"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny embedding models whose vectors differ: the two versions' bytes."""
    folder = tmp_path_factory.mktemp("models")
    build_embedding_model(folder / "bert-v1", seed=1)
    build_embedding_model(folder / "bert-v2", seed=2)
    return folder


@pytest.fixture
def project(tmp_path: Path, built: Path, cli_run: Run) -> Path:
    for version in ("bert-v1", "bert-v2"):
        shutil.copytree(built / version, tmp_path / version)
    root = tmp_path / "demo"
    root.mkdir()
    (root / "modelmora.toml").write_text(MANIFEST)
    cli_run("install", cwd=root)
    return root


def route_of(root: Path) -> Route:
    return load(root / "modelmora.toml").routes["bert"]


def history(root: Path) -> list[tuple[str, dict[str, int]]]:
    path = root / ".modelmora" / "registry.sqlite3"
    with closing(registry.connect(path)) as connection:
        rows = connection.execute("SELECT action, route FROM routes WHERE model = 'bert'")
        return [(action, json.loads(route)["weights"]) for action, route in rows]


def as_json(run: Run, root: Path, *args: str, code: int = 0) -> object:
    return json.loads(run(*args, "--json", cwd=root, code=code).stdout)


# --- in the files, no server --------------------------------------------------------------------


def test_versions_lists_both_versions_with_their_shares(project: Path, cli_run: Run) -> None:
    shown = cli_run("versions", "bert", cwd=project).stdout

    assert f"Versions of bert, {OFFLINE}" in shown
    v1 = next(line for line in shown.splitlines() if line.startswith("v1 "))
    v2 = next(line for line in shown.splitlines() if line.startswith("v2 "))
    assert "active" in v1 and "0%" in v1 and "../bert-v1" in v1
    assert "active" in v2 and "100%" in v2 and "../bert-v2" in v2
    assert "Route: v2 100%" in shown
    assert "sync" in shown  # the route the registry learnt from the manifest


def test_versions_json_is_the_versions_body(project: Path, cli_run: Run) -> None:
    body = VersionsBody.model_validate(as_json(cli_run, project, "versions", "bert"))

    assert body.model == "bert"
    assert body.route is not None and body.route.weights == {"v2": 100}
    assert [(v.version, v.share, v.state) for v in body.versions] == [
        ("v1", 0.0, "active"),
        ("v2", 1.0, "active"),
    ]
    assert all(v.created_by.startswith("cli:") and len(v.commit) > 12 for v in body.versions)
    assert [change.action for change in body.history] == ["sync"]


def test_promote_then_rollback_edit_the_route_and_its_history(project: Path, cli_run: Run) -> None:
    promoted = cli_run("promote", "bert", "v1", cwd=project).stdout
    assert f"Promoted bert: v2 100% -> v1 100%, {OFFLINE}" in promoted
    assert route_of(project) == Route({"v1": 100})
    assert "route = {v1 = 100}" in (project / "modelmora.toml").read_text()

    body = RouteUpdateBody.model_validate(as_json(cli_run, project, "rollback", "bert"))
    assert body.before.weights == {"v1": 100} and body.after.weights == {"v2": 100}
    assert route_of(project) == Route({"v2": 100})
    assert history(project) == [
        ("sync", {"v2": 100}),
        ("promote", {"v1": 100}),
        ("rollback", {"v2": 100}),
    ]
    shown = cli_run("versions", "bert", cwd=project).stdout
    changes = shown[shown.index("Last route changes") :].splitlines()[2:]
    assert [line.split()[3] for line in changes] == ["rollback", "promote", "sync"]


def test_rollback_without_an_earlier_route_fails_in_one_line(project: Path, cli_run: Run) -> None:
    failed = cli_run("rollback", "bert", cwd=project, code=1)

    assert failed.stdout == ""
    assert failed.stderr.strip().count("\n") == 0
    assert "model 'bert' has had no other route to roll back to" in failed.stderr
    assert route_of(project) == Route({"v2": 100})


def test_unknown_models_and_versions_fail_in_one_line(project: Path, cli_run: Run) -> None:
    assert "no model named 'nope'" in cli_run("versions", "nope", cwd=project, code=1).stderr
    missing = cli_run("promote", "bert", "v9", cwd=project, code=1).stderr
    assert "has no version 'v9'" in missing and "v1, v2" in missing


def test_deprecate_refuses_a_routed_version_and_marks_an_unrouted_one(
    project: Path, cli_run: Run
) -> None:
    refused = cli_run("deprecate", "bert", "v2", cwd=project, code=1).stderr
    assert "version 'v2' of 'bert' gets traffic" in refused
    assert "modelmora promote bert VERSION" in refused

    shown = cli_run("deprecate", "bert", "v1", cwd=project).stdout
    assert f"bert@v1 is deprecated, {OFFLINE}" in shown
    assert "deprecated" in next(line for line in shown.splitlines() if line.startswith("v1 "))
    assert load(project / "modelmora.toml").models["bert@v1"].deprecated
    cli_run("route", "bert", "v1=50", "v2=50", cwd=project, code=1)  # no traffic to a deprecated

    body = VersionsBody.model_validate(
        as_json(cli_run, project, "deprecate", "bert", "v1", "--undo")
    )
    assert [(v.version, v.state) for v in body.versions] == [("v1", "active"), ("v2", "active")]
    assert not load(project / "modelmora.toml").models["bert@v1"].deprecated


def test_route_sets_weights_and_a_shadow(project: Path, cli_run: Run) -> None:
    shown = cli_run("route", "bert", "v1=90", "v2=10", cwd=project).stdout
    assert f"Routed bert: v2 100% -> v1 90%, v2 10%, {OFFLINE}" in shown
    assert route_of(project) == Route({"v1": 90, "v2": 10})

    body = RouteUpdateBody.model_validate(
        as_json(cli_run, project, "route", "bert", "v1=100", "--shadow", "v2",
                "--shadow-fraction", "0.25")
    )  # fmt: skip
    assert body.after.model_dump() == {
        "weights": {"v1": 100},
        "shadow": "v2",
        "shadow_fraction": 0.25,
    }
    assert route_of(project) == Route({"v1": 100}, "v2", 0.25)
    listed = VersionsBody.model_validate(as_json(cli_run, project, "versions", "bert"))
    assert [(v.version, v.share, v.shadow) for v in listed.versions] == [
        ("v1", 1.0, False),
        ("v2", 0.0, True),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["v1=abc"], "'v1=abc' is not VERSION=WEIGHT"),
        (["v1"], "'v1' is not VERSION=WEIGHT"),
        (["v1=-5"], "'v1=-5' is not VERSION=WEIGHT"),
        (["v1=0", "v2=0"], "every weight of the route is 0"),
        (["v1=1", "v1=2"], "version 'v1' is given twice"),
        (["v1=100", "--shadow", "v2"], "--shadow and --shadow-fraction go together"),
        (["v9=100"], "has no version 'v9'"),
    ],
)
def test_bad_routes_fail_in_one_line(
    project: Path, cli_run: Run, args: list[str], message: str
) -> None:
    failed = cli_run("route", "bert", *args, cwd=project, code=1)

    assert message in failed.stderr and failed.stderr.strip().count("\n") == 0
    assert route_of(project) == Route({"v2": 100})


def test_the_audit_log_has_each_change_with_before_and_after(project: Path, cli_run: Run) -> None:
    cli_run("promote", "bert", "v1", cwd=project)
    cli_run("rollback", "bert", cwd=project)
    cli_run("deprecate", "bert", "v1", cwd=project)
    cli_run("deprecate", "bert", "v1", "--undo", cwd=project)

    log = as_json(cli_run, project, "audit")
    assert isinstance(log, list)
    entries = [(e["action"], e["target"], e["before"], e["after"]) for e in reversed(log)]
    one_version = {"shadow": None, "shadow_fraction": 0.0}
    assert entries == [
        ("model.promote", "bert",
         {"weights": {"v2": 100}, **one_version}, {"weights": {"v1": 100}, **one_version}),
        ("model.rollback", "bert",
         {"weights": {"v1": 100}, **one_version}, {"weights": {"v2": 100}, **one_version}),
        ("model.deprecate", "bert@v1", {"state": "active"}, {"state": "deprecated"}),
        ("model.undeprecate", "bert@v1", {"state": "deprecated"}, {"state": "active"}),
    ]  # fmt: skip
    assert all(e["actor"].startswith("cli:") for e in log)


def test_a_deleted_registry_is_rebuilt_from_the_manifest_and_lock(
    project: Path, cli_run: Run
) -> None:
    cli_run("route", "bert", "v1=30", "v2=70", cwd=project)
    for path in (project / ".modelmora").glob("registry.sqlite3*"):
        path.unlink()

    body = VersionsBody.model_validate(as_json(cli_run, project, "versions", "bert"))

    assert [(v.version, v.share) for v in body.versions] == [("v1", 0.3), ("v2", 0.7)]
    assert [(c.action, c.route.weights) for c in body.history] == [("sync", {"v1": 30, "v2": 70})]


def test_url_always_goes_through_that_server(project: Path, cli_run: Run) -> None:
    failed = cli_run("promote", "bert", "v1", "--url", "http://127.0.0.1:9", cwd=project, code=1)

    assert "no ModelMora server answers at http://127.0.0.1:9" in failed.stderr
    assert route_of(project) == Route({"v2": 100})  # the files are not edited instead


def test_every_field_of_the_version_bodies_is_documented() -> None:
    docs = Path(__file__).parent.parent / "docs" / "json.md"
    documented = set(re.findall(r"`(\w+)`", docs.read_text()))
    for body in (VersionsBody, VersionBody, RouteChangeBody, RouteBody, RouteUpdateBody):
        missing = set(body.model_fields) - documented
        assert not missing, f"{body.__name__}: {sorted(missing)} not in docs/json.md"


def test_a_dead_servers_run_file_is_ignored(project: Path, cli_run: Run) -> None:
    run_file = project / ".modelmora" / "serve.json"
    run_file.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": 2**22 + 1}))

    assert OFFLINE in cli_run("promote", "bert", "v1", cwd=project).stdout


# --- through a running server ------------------------------------------------------------------


@pytest.mark.slow
def test_promote_goes_through_the_running_server(project: Path, cli_run: Run) -> None:
    url, process = start_serve(project)
    try:
        shown = cli_run("promote", "bert", "v1", cwd=project).stdout
        with httpx.Client(base_url=url, timeout=120) as http:
            listed = http.get("/models/bert/versions")
            answer = http.post("/infer/bert", json={"inputs": ["hello world"]})
        body = VersionsBody.model_validate(as_json(cli_run, project, "versions", "bert"))
    finally:
        stop(process)

    assert f"Promoted bert: v2 100% -> v1 100%, through the server at {url}" in shown
    assert listed.status_code == 200 and listed.json()["route"]["weights"] == {"v1": 100}
    assert answer.status_code == 200
    assert answer.headers["X-ModelMora-Model-Version"] == "v1"
    assert body.route is not None and body.route.weights == {"v1": 100}
    assert route_of(project) == Route({"v1": 100})  # the server wrote it down
    log = as_json(cli_run, project, "audit")
    assert isinstance(log, list) and (log[0]["actor"], log[0]["action"]) == (
        "anonymous",
        "model.promote",
    )


@pytest.mark.slow
def test_changes_through_a_server_with_an_api_key_need_it(
    project: Path, cli_run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, process = start_serve(project, "--api-key", "s3cret", key="s3cret")
    try:
        refused = cli_run("promote", "bert", "v1", cwd=project, code=1)
        monkeypatch.setenv("MODELMORA_API_KEY", "s3cret")
        promoted = as_json(cli_run, project, "promote", "bert", "v1")
        monkeypatch.delenv("MODELMORA_API_KEY")
        rolled = as_json(cli_run, project, "rollback", "bert", "--api-key", "s3cret")
    finally:
        stop(process)

    assert "--api-key" in refused.stderr and refused.stderr.strip().count("\n") == 0
    assert RouteUpdateBody.model_validate(promoted).after.weights == {"v1": 100}
    assert RouteUpdateBody.model_validate(rolled).after.weights == {"v2": 100}
    assert route_of(project) == Route({"v2": 100})
    log = as_json(cli_run, project, "audit")
    assert isinstance(log, list)
    assert [(e["actor"], e["action"]) for e in log[:2]] == [
        ("api-key", "model.rollback"),
        ("api-key", "model.promote"),
    ]

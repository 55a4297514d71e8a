"""The `modelmora` command as a person and a CI job use it: real subprocesses, real exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fakehub import FakeHub
from test_project import tiny_repo, weights
from waiting import eventually

from modelmora.cache import Cache

pytestmark = pytest.mark.slow  # every test runs the CLI in a subprocess


def run(*args: str, cwd: Path, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "modelmora", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


def test_help_and_version(tmp_path: Path) -> None:
    assert "Pin, cache and serve" in run("--help", cwd=tmp_path).stdout
    assert run("--version", cwd=tmp_path).stdout.startswith("modelmora ")


def test_shell_completion_is_offered_and_completes_commands(tmp_path: Path) -> None:
    help_text = run("--help", cwd=tmp_path).stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text
    assert "complete -o" in run("--show-completion", "bash", cwd=tmp_path).stdout
    completing = subprocess.run(
        [sys.executable, "-m", "modelmora"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "_MODELMORA_COMPLETE": "complete_bash",
            "COMP_WORDS": "modelmora cache v",
            "COMP_CWORD": "2",
        },
    )
    assert completing.stdout.split() == ["verify"]


def test_usage_error_exits_2(tmp_path: Path) -> None:
    result = run("no-such-command", cwd=tmp_path, check=2)
    assert "No such command" in result.stderr


def test_user_error_is_one_line_with_the_fix(tmp_path: Path) -> None:
    result = run("list", cwd=tmp_path, check=1)
    assert result.stderr.strip().splitlines() == [
        f"error: no modelmora.toml in {tmp_path} or above; run `modelmora init` first"
    ]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run("--debug", "list", cwd=tmp_path, check=1)
    assert "Traceback" in result.stderr and "ManifestError" in result.stderr


def test_the_cli_imports_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import sys, modelmora.cli\n"
        "heavy = {'torch', 'transformers', 'pydantic', 'huggingface_hub', 'rich.progress'}\n"
        "heavy |= {'click', 'json'}  # typer has its own click; json only for --json\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    # Without coverage in the child: under `--cov` it would load json itself.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_a_project_from_init_to_frozen_install(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit("acme/tiny", tiny_repo())
    demo = tmp_path / "demo"
    run("init", str(demo), cwd=tmp_path)
    assert (demo / "modelmora.toml").is_file()
    assert run("init", str(demo), cwd=tmp_path, check=1).stderr.startswith("error:")

    added = run("add", "hf://acme/tiny", "--task", "embedding", cwd=demo)
    assert added.stdout.startswith("Resolving hf://acme/tiny")  # something before the downloads
    assert "Added tiny (embedding)" in added.stdout
    assert "fetched tiny/model.safetensors" in added.stderr  # plain progress when not a TTY

    listed = json.loads(run("list", "--json", cwd=demo).stdout)
    assert [(m["name"], m["installed"]) for m in listed] == [("tiny", True)]
    shown = json.loads(run("show", "tiny", "--json", cwd=demo).stdout)
    assert {f["path"] for f in shown["files"]} == {
        "config.json",
        "tokenizer.json",
        "model.safetensors",
    }
    path = Path(run("path", "tiny", cwd=demo).stdout.strip())
    assert (path / "model.safetensors").is_file()
    assert "tiny" in run("list", cwd=demo).stdout

    run("lock", "--check", cwd=demo)
    manifest = demo / "modelmora.toml"
    manifest.write_text(
        manifest.read_text().replace('task = "embedding"', 'task = "text-classification"')
    )
    stale = run("lock", "--check", cwd=demo, check=1)
    assert "model 'tiny' changed (task" in stale.stderr
    assert "run `modelmora lock`" in run("install", "--locked", cwd=demo, check=1).stderr

    frozen = json.loads(run("install", "--frozen", "--json", cwd=demo).stdout)
    assert frozen["models"] == ["tiny"] and frozen["files_downloaded"] == 0
    dry = json.loads(run("lock", "--dry-run", "--json", cwd=demo).stdout)
    assert [c["kind"] for c in dry["changes"]] == ["updated"] and not dry["written"]


def test_cache_commands(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit("acme/tiny", tiny_repo())
    demo = tmp_path / "demo"
    run("init", str(demo), cwd=tmp_path)
    run("add", "hf://acme/tiny", "--task", "embedding", "--quiet", cwd=demo)
    assert run("cache", "dir", cwd=demo).stdout.strip() == str(Cache().root)

    verified = json.loads(run("cache", "verify", "--json", cwd=demo).stdout)
    assert verified["blobs"] == 3 and verified["corrupt"] == []
    blob = Cache().blob_path(next(iter(Cache().blob_digests())))
    blob.chmod(0o644)
    blob.write_bytes(b"bitrot")
    failed = run("cache", "verify", cwd=demo, check=1)
    assert "corrupt" in failed.stderr and "run `modelmora cache verify --repair`" in failed.stderr
    assert "repaired" in run("cache", "verify", "--repair", cwd=demo).stderr

    run("remove", "tiny", cwd=demo)
    dry = json.loads(run("cache", "gc", "--dry-run", "--json", cwd=demo).stdout)
    assert dry["blobs"] == 3 and dry["dry_run"]
    assert "Freed" in run("cache", "gc", cwd=demo).stdout
    assert Cache().blob_digests() == []


@pytest.mark.parametrize("flag", ["--frozen", "--locked"])
def test_install_without_a_lock(tmp_path: Path, flag: str) -> None:
    run("init", str(tmp_path), cwd=tmp_path)
    result = run("install", flag, cwd=tmp_path, check=1)
    assert "no modelmora.lock" in result.stderr and "modelmora lock" in result.stderr


@pytest.fixture
def installed_demo(fake_hub: FakeHub, tmp_path: Path) -> Path:
    fake_hub.add_commit("acme/tiny", tiny_repo())
    demo = tmp_path / "demo"
    run("init", str(demo), cwd=tmp_path)
    run("add", "hf://acme/tiny", "--task", "embedding", "--quiet", cwd=demo)
    return demo


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--json", "--project", "{demo}"],
        ["list", "--project", "{demo}", "--json"],
        ["list", "--json", "--project={demo}"],
        ["list", "--json", "-p", "{demo}"],
        ["list", "--json", "-p{demo}"],
        ["--project", "{demo}", "list", "--json"],
        ["list", "-q", "--json", "-p", "{demo}", "--debug"],
    ],
)
def test_global_options_are_accepted_after_the_command(
    installed_demo: Path, tmp_path: Path, args: list[str]
) -> None:
    listed = run(*(a.format(demo=installed_demo) for a in args), cwd=tmp_path).stdout
    assert [m["name"] for m in json.loads(listed)] == ["tiny"]


def test_project_after_other_commands(installed_demo: Path, tmp_path: Path) -> None:
    demo = str(installed_demo)
    assert Path(run("path", "tiny", "--project", demo, cwd=tmp_path).stdout.strip()).is_dir()
    assert "up to date" in run("lock", "--check", "-p", demo, cwd=tmp_path).stdout
    assert run("install", "--frozen", "--project", demo, "--quiet", cwd=tmp_path).stdout == ""
    assert (
        "Serve the project's models"
        in run("serve", "--project", demo, "--help", cwd=tmp_path).stdout
    )
    missing = run("list", "--project", cwd=tmp_path, check=2).stderr
    assert "requires an argument" in missing


def test_global_options_after_double_dash_are_left_alone() -> None:
    from modelmora.cli.app import _global_flags_first

    args = ["run", "m", "--json", "-q", "-p", "D", "--", "-p", "x", "--quiet", "--project=y"]
    assert _global_flags_first(args) == [
        "-q",
        "-p",
        "D",
        "run",
        "m",
        "--json",
        "--",
        "-p",
        "x",
        "--quiet",
        "--project=y",
    ]


def test_ctrl_c_stops_install_and_keeps_the_partial_download(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    size = 3_000_000
    fake_hub.add_commit("acme/tiny", tiny_repo(size=size))
    demo = tmp_path / "demo"
    run("init", str(demo), cwd=tmp_path)
    (demo / "modelmora.toml").write_text(
        '[project]\nname = "demo"\n\n[models.tiny]\nsource = "hf://acme/tiny"\ntask = "embedding"\n'
    )
    run("lock", cwd=demo)
    sha = hashlib.sha256(weights(0, size)).hexdigest()
    partial = Cache().tmp / f"{sha}.incomplete"
    fake_hub.slow[("acme/tiny", "model.safetensors")] = 100_000  # half a minute for the file
    child = subprocess.Popen(
        [sys.executable, "-m", "modelmora", "install", "--frozen"],
        cwd=demo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    eventually(lambda: partial.exists() and partial.stat().st_size > 0)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        "interrupted: partial downloads are kept in the cache; `modelmora install` resumes them"
    )
    assert not Cache().blob_path(sha).exists()
    kept = partial.stat().st_size
    assert 0 < kept < size

    del fake_hub.slow[("acme/tiny", "model.safetensors")]
    run("install", "--frozen", cwd=demo)
    gets = [h.get("range") for m, p, h in fake_hub.requests if p.endswith("/model.safetensors")]
    assert gets[-1] == f"bytes={kept}-"

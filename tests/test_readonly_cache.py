"""Many servers, one cache: `modelmora serve --frozen --offline` from a cache mounted read-only.

How the cache is made read-only, honestly: as root (CI runs as root) permission bits are ignored,
so `chmod -R a-w` would prove nothing. The server then runs in a private mount namespace
(`unshare -m`) where the cache folder is bind-mounted onto itself with `-o ro`: the kernel answers
every write under it with EROFS, root or not, as it does for a `readOnly: true` volume in a pod.
As another user, the cache is `chmod -R a-w` instead. Without either, the tests are skipped.
The project folder stays writable (its `.modelmora/` holds the jobs and keys files).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from modelfactory import build_embedding_model
from servers import OUTPUTS, free_port, stop, wait_ready

from modelmora import project
from modelmora.cache import Cache
from modelmora.project import Project

pytestmark = pytest.mark.slow


def mounting_read_only(folders: tuple[Path, ...], command: list[str]) -> list[str]:
    mounts = " && ".join(
        f"mount --bind -o ro {shlex.quote(str(f))} {shlex.quote(str(f))}" for f in folders
    )
    return ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", *command]


def can_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(mounting_read_only((Path("/"),), ["true"]), capture_output=True)
    return probe.returncode == 0


def read_only(command: list[str], *folders: Path) -> list[str]:
    """`command`, run where `folders` cannot be written (see the module's docstring)."""
    if os.geteuid() != 0:
        return command
    if not can_mount_read_only():
        pytest.skip("running as root without `unshare -m` and a bind mount: no honest read-only")
    return mounting_read_only(folders, command)


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A project whose one model is installed, then its cache made read-only for non-root."""
    build_embedding_model(tmp_path / "tiny-bert")
    root = tmp_path / "demo"
    root.mkdir()
    (root / "modelmora.toml").write_text(
        '[project]\nname = "demo"\n\n[models.bert]\nsource = "../tiny-bert"\ntask = "embedding"\n'
    )
    project.install(Project(root))
    shutil.rmtree(root / ".modelmora")  # another server's pod: only modelmora.toml and .lock
    cache = Cache().root
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(cache)], check=True)
    try:
        yield root, cache
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(cache)], check=True)


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and mtime, to show that nothing changed."""
    return {
        str(path.relative_to(folder)): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelmora", "serve", "--frozen", "--offline", *args]


def test_serve_frozen_offline_answers_from_a_read_only_cache(installed: tuple[Path, Path]) -> None:
    root, cache = installed
    before = tree(cache)
    port = free_port()
    files = (root.parent / "out.log").open("w+"), (root.parent / "err.log").open("w+")
    process = subprocess.Popen(
        read_only(serve_command("--port", str(port), "--preload", "bert"), cache),
        cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=files[0], stderr=files[1], text=True,
    )  # fmt: skip
    OUTPUTS[process.pid] = files
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        reply = httpx.post(f"{url}/v1/embeddings", json={"model": "bert", "input": ["hi there"]})
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["data"][0]["embedding"]) == 32
    finally:
        _, err = stop(process)
    assert "Read-only file system" not in err and "Permission denied" not in err, err
    assert tree(cache) == before


def test_a_model_missing_from_a_read_only_cache_is_one_line(installed: tuple[Path, Path]) -> None:
    root, cache = installed
    snapshot = next((cache / "snapshots").glob("*/*"))
    subprocess.run(["chmod", "-R", "u+w", str(cache)], check=True)
    shutil.rmtree(snapshot)
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(cache)], check=True)
    result = subprocess.run(
        read_only(serve_command("--port", str(free_port())), cache),
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: model 'bert' is not installed (1_Pooling/config.json is missing) in the "
        f"read-only cache {cache}; run `modelmora install --frozen` where that cache is writable"
    ]


def test_installing_into_a_read_only_cache_is_one_line(installed: tuple[Path, Path]) -> None:
    """Without --frozen, serve installs first: that needs a lease, so a writable cache."""
    root, cache = installed
    command = [sys.executable, "-m", "modelmora", "serve", "--offline", "--port", str(free_port())]
    result = subprocess.run(
        read_only(command, cache), cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: the cache {cache} is read-only; serve from it with "
        "`modelmora serve --frozen --offline`, or install where it is writable"
    ]


def test_a_read_only_project_folder_serves_without_what_it_would_store(
    installed: tuple[Path, Path],
) -> None:
    """The project folder read-only too (a ConfigMap mounted as is): no jobs, keys or run-time
    changes, one warning line, and the models answer."""
    root, cache = installed
    port = free_port()
    files = (root.parent / "out.log").open("w+"), (root.parent / "err.log").open("w+")
    process = subprocess.Popen(
        read_only(serve_command("--port", str(port)), cache, root),
        cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=files[0], stderr=files[1], text=True,
    )  # fmt: skip
    OUTPUTS[process.pid] = files
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        reply = httpx.post(f"{url}/infer/bert", json={"inputs": "hi"}, timeout=60)
        jobs = httpx.post(f"{url}/jobs", json={"model": "bert", "input": {"inputs": ["x"]}})
    finally:
        _, err = stop(process)
    assert reply.status_code == 200, reply.text
    assert jobs.status_code == 503  # no jobs file where nothing may be written
    assert "is read-only: serving without async jobs" in err, err
    assert "Traceback" not in err, err
    assert not (root / ".modelmora").exists()

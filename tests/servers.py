"""`modelmora serve` as a child process on a free loopback port, for tests of the real command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import httpx
import pytest
from waiting import eventually


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(
    root: Path, *args: str, env: dict[str, str] | None = None, key: str | None = None
) -> tuple[str, subprocess.Popen[str]]:
    """`modelmora serve ARGS` in `root`, once `/ready` answers 200 (asked with `key`, if any);
    stopped again if it never does."""
    port = free_port()
    # A file, not a pipe: nobody reads a pipe while the test runs, and a server that has logged
    # 64 KiB of access lines into a full pipe blocks on its next line.
    files = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))  # noqa: SIM115 - stop()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelmora", "serve", *args],
        cwd=root, env={**os.environ, "MODELMORA_PORT": str(port), **(env or {})},
        stdout=files[0], stderr=files[1], text=True,
    )  # fmt: skip
    OUTPUTS[process.pid] = files
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, key=key)
    except BaseException:
        stop(process)
        raise
    return url, process


def wait_ready(
    url: str, process: subprocess.Popen[str], timeout: float = 120, key: str | None = None
) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def is_ready() -> bool:
        assert process.poll() is None, outputs(process)
        return httpx.get(f"{url}/ready", headers=headers, timeout=5).status_code == 200

    eventually(is_ready, timeout, ignoring=(httpx.HTTPError,), what="the server to be ready")


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Stop the server if it still runs (SIGTERM, as a person would: it drains, ends its workers,
    and coverage saves what it measured there; SIGKILL if it has not ended in 60 s); what it wrote
    to stdout and to stderr."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(timeout=30)
    written = outputs(process)
    for file in OUTPUTS.pop(process.pid, ()):
        file.close()
    return written


OUTPUTS: dict[int, tuple[IO[str], IO[str]]] = {}


def outputs(process: subprocess.Popen[str]) -> tuple[str, str]:
    """What a server started here has written so far: its stdout and its stderr."""
    written = []
    for file in OUTPUTS.get(process.pid, ()):
        file.seek(0)
        written.append(file.read())
    return (written[0], written[1]) if written else ("", "")


def added_project(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
) -> tuple[Path, dict[str, str]]:
    """A project made as a person makes one, `modelmora init` then `add PATH --name NAME` per
    model, with HOME and caches of its own (a module fixture runs before the per-test isolation);
    the project's folder and the environment to serve it with."""
    root = tmp_path_factory.mktemp("project")
    home = tmp_path_factory.mktemp("home")
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "HF_HOME": str(home / "hf"), "MODELMORA_HOME": str(home / "modelmora")}  # fmt: skip
    adds = [["add", str(path), "--name", name] for name, path in models.items()]
    for command in (["init"], *adds):
        done = subprocess.run(
            [sys.executable, "-m", "modelmora", *command], cwd=root, env={**os.environ, **env},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    return root, env

"""`modelmora serve` as a child process on a free loopback port, for tests of the real command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
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
    process = subprocess.Popen(
        [sys.executable, "-m", "modelmora", "serve", *args],
        cwd=root, env={**os.environ, "MODELMORA_PORT": str(port), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
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
        assert process.poll() is None, process.communicate()
        return httpx.get(f"{url}/ready", headers=headers, timeout=5).status_code == 200

    eventually(is_ready, timeout, ignoring=(httpx.HTTPError,), what="the server to be ready")


def stop(process: subprocess.Popen[str]) -> None:
    """Kill the server if it still runs, and collect its output."""
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)

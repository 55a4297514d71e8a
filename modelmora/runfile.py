"""`.modelmora/serve.json`: where a project's running `modelmora serve` listens.

`modelmora serve` writes it once it listens and removes it when it stops; the version commands
read it to go through the running server (so a change takes effect without a restart) instead of
editing the files under it. A file left by a server that died is ignored: its pid is gone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelmora.files import write_atomic

RUN_FILE = Path(".modelmora") / "serve.json"


@contextmanager
def announced(root: Path, url: str) -> Iterator[None]:
    """Say that this process serves `root` at `url` until the block ends."""
    path = root / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"url": url, "pid": os.getpid()}) + "\n")
    try:
        yield
    finally:
        if running_url(root) == url:  # not one a newer server wrote meanwhile
            path.unlink(missing_ok=True)


def is_writable(root: Path) -> bool:
    """Whether the project's `.modelmora/` can be written (made, if missing): a server from a
    read-only project folder still serves, without what it would store there."""
    folder = root / RUN_FILE.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def running_url(root: Path) -> str | None:
    """The URL of the server running for the project at `root`, or None."""
    try:
        data = json.loads((root / RUN_FILE).read_text())
        url, pid = str(data["url"]), int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if _is_alive(pid) else None


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True

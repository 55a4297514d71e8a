"""File-system primitives that keep data whole: atomic writes, hashing, links."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1024 * 1024
_UMASK_LOCK = threading.Lock()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a unique temp file beside `path`, fsync, then rename over it.

    The file keeps the mode it had; a new one gets the umask's, as `open()` would give it
    (mkstemp alone would leave every file we write at 0600).
    """
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process umask; reading it means setting it, so the swap is serialised."""
    with _UMASK_LOCK:
        umask = os.umask(0o022)
        os.umask(umask)
    return umask


def write_if_changed(path: Path, text: str) -> bool:
    """Write only when the content differs, so an unchanged file keeps its mtime."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, text)
    return True


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as file:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while count := file.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def link_or_copy(target: Path, link: Path) -> str:
    """Make `link` show `target`'s bytes: a hardlink, else a relative symlink, else a copy."""
    try:
        os.link(target, link)
        return "hardlink"
    except OSError:
        pass
    try:
        link.symlink_to(os.path.relpath(target, link.parent))
        return "symlink"
    except OSError:
        pass
    import shutil

    shutil.copyfile(target, link)
    return "copy"


def replace_symlink(link: Path, target: Path) -> None:
    """Point `link` at `target` atomically (a temp link renamed over the old one)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    temp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    temp.symlink_to(target, target_is_directory=True)
    os.replace(temp, link)


def walk_files(root: Path) -> Iterator[Path]:
    """Every file under `root`, at any depth."""
    for folder, _, names in os.walk(root):
        for name in names:
            yield Path(folder) / name

"""`modelmora init` and `add` as a newcomer uses them: names, paths, settings, file modes, tasks."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelmora import project
from modelmora.files import write_atomic


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_files_with_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    created = project.init(tmp_path / "demo")
    assert mode(created.manifest_path) == 0o644
    assert mode(created.root / ".gitignore") == 0o644


def test_an_atomic_write_keeps_the_mode_of_the_file_it_replaces(
    tmp_path: Path, umask_022: None
) -> None:
    target = tmp_path / "modelmora.toml"
    target.write_text("old")
    target.chmod(0o640)
    write_atomic(target, "new")
    assert (target.read_text(), mode(target)) == ("new", 0o640)

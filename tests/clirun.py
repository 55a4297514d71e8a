"""The CLI run in-process through `cli.main`: exit code and both outputs (fixture `cli_run`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelmora import cli


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def in_process_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Result]:
    """`modelmora ARGS...` in this process, at 80 columns; its exit code and both outputs."""
    monkeypatch.setenv("COLUMNS", "80")

    def run(*args: str, cwd: Path, code: int = 0) -> Result:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["modelmora", *args])
        capsys.readouterr()
        try:
            cli.main()
            exit_code = 0
        except SystemExit as stop:
            exit_code = stop.code if isinstance(stop.code, int) else 1
        out, err = capsys.readouterr()
        assert exit_code == code, out + err
        return Result(exit_code, out, err)

    return run

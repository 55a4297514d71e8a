"""Download progress for people: rich bars on a terminal, one line per file otherwise."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


_DONE = {"Bundling": "bundled", "Importing": "imported"}  # a file is "fetched" otherwise


class SilentProgress:
    def begin(self, files: int, total_bytes: int, verb: str = "Downloading") -> None:
        pass

    def start(self, key: str, label: str, size: int) -> None:
        pass

    def advance(self, key: str, count: int) -> None:
        pass

    def finish(self, key: str) -> None:
        pass


class PlainProgress(SilentProgress):
    """For logs and CI: a line when a file is done, nothing that redraws."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.done = "fetched"
        self.labels: dict[str, tuple[str, int]] = {}
        self.lock = threading.Lock()

    def begin(self, files: int, total_bytes: int, verb: str = "Downloading") -> None:
        self.done = _DONE.get(verb, "fetched")
        if files:
            noun = "file" if files == 1 else "files"
            self.write(f"{verb} {files} {noun} ({total_bytes / 1e6:.1f} MB)")

    def start(self, key: str, label: str, size: int) -> None:
        with self.lock:
            self.labels[key] = (label, size)

    def finish(self, key: str) -> None:
        with self.lock:
            label, size = self.labels.pop(key)
            self.write(f"  {self.done} {label} ({size / 1e6:.1f} MB)")


class RichProgress(SilentProgress):
    """A bar per file in flight and a total bar with bytes, speed and time left."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bars = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.total: Any = None

    def __enter__(self) -> RichProgress:
        self.bars.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.bars.__exit__(kind, value, traceback)

    def begin(self, files: int, total_bytes: int, verb: str = "Downloading") -> None:
        if files:
            noun = "file" if files == 1 else "files"
            label = f"{verb.lower()} {files} {noun}"
            self.total = self.bars.add_task(label, total=total_bytes)

    def start(self, key: str, label: str, size: int) -> None:
        self.tasks[key] = self.bars.add_task(label, total=size)

    def advance(self, key: str, count: int) -> None:
        self.bars.advance(self.tasks[key], count)
        if self.total is not None:
            self.bars.advance(self.total, count)

    def finish(self, key: str) -> None:
        self.bars.remove_task(self.tasks.pop(key))

"""Disk use of the cache, read only: for `cache du`, `cache list` and `cache gc --dry-run`.

Which snapshots exist and how big they are, how many of their bytes other snapshots share (one blob,
many links), and which models of which registered projects point at them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelmora.cache import Cache
from modelmora.files import walk_files


@dataclass(frozen=True)
class ModelUse:
    """A model of a project in the cache's registry, and the snapshot its lock points at."""

    project: str
    name: str
    snapshot: Path


@dataclass(frozen=True)
class SnapshotUse:
    path: Path
    files: int
    size: int  # bytes of its files
    shared: int  # of those, bytes whose blob another snapshot links too
    models: tuple[ModelUse, ...]

    @property
    def label(self) -> str:
        return snapshot_label(self.path)


def snapshot_label(path: Path) -> str:
    """A snapshot's `SOURCE-SLUG/TREE`, shortened: `hf--acme--tiny/3f2a9c1d0b7e`."""
    return f"{path.parent.name}/{path.name[:12]}"


@dataclass(frozen=True)
class CacheUse:
    snapshots: tuple[SnapshotUse, ...]
    models: tuple[ModelUse, ...]
    blobs: int
    blob_bytes: int  # on disk: every blob once, however many snapshots link it
    shared_bytes: int  # bytes of the blobs that more than one snapshot links
    loose_blobs: int  # blobs that no snapshot links
    loose_bytes: int


def disk_use(cache: Cache) -> CacheUse:
    """What each snapshot holds and shares, and which registered project's model uses it."""
    blob_of = _blobs_by_inode(cache)
    linked = {path: _snapshot_blobs(path, blob_of) for path in cache._snapshot_folders()}
    links = _count_links(linked.values())
    models = registered_models(cache)
    snapshots = tuple(
        SnapshotUse(
            path=path,
            files=len(files),
            size=sum(size for _, size in files),
            shared=sum(size for key, size in files if links[key] > 1),
            models=tuple(model for model in models if model.snapshot == path),
        )
        for path, files in linked.items()
    )
    loose = [size for sha, size in blob_of.values() if sha not in links]
    shared = {key: size for files in linked.values() for key, size in files if links[key] > 1}
    return CacheUse(
        snapshots=snapshots,
        models=tuple(models),
        blobs=len(blob_of),
        blob_bytes=sum(size for _, size in blob_of.values()),
        shared_bytes=sum(shared.values()),
        loose_blobs=len(loose),
        loose_bytes=sum(loose),
    )


def registered_models(cache: Cache) -> list[ModelUse]:
    """Every model a registered project locks; a project without a readable lock has none."""
    from modelmora.errors import ModelmoraError
    from modelmora.lockfile import LOCK_NAME, read

    models = []
    for root in cache.projects():
        try:
            lock = read(Path(root) / LOCK_NAME)
        except (ModelmoraError, OSError):
            continue
        for model in lock.models.values():
            models.append(ModelUse(root, model.name, cache.snapshot_path(model)))
    return models


def gc_preview(cache: Cache) -> list[SnapshotUse]:
    """The snapshots `gc` would remove now: no registered lock and no running install uses them."""
    keep = {model.snapshot for model in registered_models(cache)}
    with cache.exclusive():
        keep |= cache._leased(drop_stale=False)[1]
    return [snapshot for snapshot in disk_use(cache).snapshots if snapshot.path not in keep]


def _blobs_by_inode(cache: Cache) -> dict[tuple[int, int], tuple[str, int]]:
    """(device, inode) of each blob -> (its sha256, its size): snapshot files are hard links."""
    found = {}
    for sha in cache.blob_digests():
        info = cache.blob_path(sha).stat()
        found[(info.st_dev, info.st_ino)] = (sha, info.st_size)
    return found


def _snapshot_blobs(
    snapshot: Path, blob_of: dict[tuple[int, int], tuple[str, int]]
) -> list[tuple[str, int]]:
    """(blob sha256, size) per file; a copied file (no hard links across devices) is its own."""
    files = []
    for path in walk_files(snapshot):
        info = path.stat()
        sha, size = blob_of.get((info.st_dev, info.st_ino), (f"copy:{path}", info.st_size))
        files.append((sha, size))
    return files


def _count_links(snapshots: Iterable[list[tuple[str, int]]]) -> dict[str, int]:
    """How many snapshots link each blob (a blob linked twice in one snapshot counts once)."""
    counts: dict[str, int] = {}
    for files in snapshots:
        for sha in {sha for sha, _ in files}:
            counts[sha] = counts.get(sha, 0) + 1
    return counts

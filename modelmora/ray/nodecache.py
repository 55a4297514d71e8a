"""A model's files on the node a replica runs on: fetched into that node's cache from the lock only,
and each file's sha256 checked before the model loads.

A node downloads nothing the lock does not name, from nowhere but the locked source (the Hub at the
locked commit, the URL, the project's folder), and a blob whose bytes no longer hash to the lock's
digest is fetched again; one that still does not match fails the replica with the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

from modelmora import sources
from modelmora.cache import Cache
from modelmora.errors import IntegrityError
from modelmora.files import sha256_file
from modelmora.lockfile import LockedFile, LockedModel

logger = logging.getLogger("modelmora.ray")


def ensure_model(model: LockedModel, root: Path, cache: Cache | None = None) -> Path:
    """The model's snapshot in this node's cache, every file verified; `root` is the project's
    folder, where folder sources are relative to."""
    cache = cache or Cache()
    with cache.lease():
        cache.protect([model])
        for file in model.files:
            ensure_file(cache, model, file, root)
        snapshot = cache.build_snapshot(model)
    for file in model.files:
        check_snapshot_file(cache, snapshot, model, file)
    return snapshot


def ensure_file(cache: Cache, model: LockedModel, file: LockedFile, root: Path) -> None:
    """The blob is there and hashes to the lock's digest: fetched if missing, refetched if not."""
    if cache.has_blob(file) and is_intact(cache.blob_path(file.sha256), file):
        return
    if cache.has_blob(file):
        logger.warning(
            "%s/%s: corrupt in this node's cache; fetching it again", model.name, file.path
        )
        old_inode = cache.discard_blob(file.sha256)
        sources.download(cache, model, file, root)
        cache.relink(file.sha256, old_inode)
    else:
        sources.download(cache, model, file, root)
    if not is_intact(cache.blob_path(file.sha256), file):
        raise corrupt(model, file)


def check_snapshot_file(cache: Cache, snapshot: Path, model: LockedModel, file: LockedFile) -> None:
    """A snapshot file that is the verified blob itself (a hard link) needs no second hash."""
    path, blob = snapshot / file.path, cache.blob_path(file.sha256)
    if path.exists() and path.samefile(blob):
        return
    if not path.exists() or not is_intact(path, file):
        raise corrupt(model, file)


def is_intact(path: Path, file: LockedFile) -> bool:
    return path.stat().st_size == file.size and sha256_file(path) == file.sha256


def corrupt(model: LockedModel, file: LockedFile) -> IntegrityError:
    return IntegrityError(
        f"model '{model.name}': {file.path} does not match the lock's sha256 {file.sha256} "
        "on this node",
        "run `modelmora cache verify --repair` on the node, or check the model's source",
    )

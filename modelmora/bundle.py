"""Offline bundles: a lock's models and every blob they need, in one verified, deterministic tar.

    modelmora-bundle.json    first: {"format": "modelmora-bundle", "version": 1, "models": [...]}
    blobs/sha256/SHA256      each blob the models need, once, in sha256 order

Here: what goes in a bundle and `create`, which writes the tar as a stream (POSIX pax, mtime 0,
uid and gid 0, mode 0444, no user names), so the same lock always gives the same bytes and nothing
is staged on disk. Reading one back is `bundleimport.py`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from modelmora import lockfile
from modelmora.cache import Cache, OnBytes
from modelmora.errors import BundleError, CacheError, IntegrityError, LockError
from modelmora.files import CHUNK, current_umask
from modelmora.lockfile import Lock, LockedFile, LockedModel
from modelmora.progress import SilentProgress

if TYPE_CHECKING:
    from modelmora.project import Progress

FORMAT = "modelmora-bundle"
FORMAT_VERSION = 1
MANIFEST_MEMBER = "modelmora-bundle.json"
BLOB_PREFIX = "blobs/sha256/"


@dataclass(frozen=True)
class CreateResult:
    models: tuple[str, ...]
    blobs: int
    blob_bytes: int
    size: int  # bytes of the bundle itself
    sha256: str  # of the bundle itself


# --- what goes in -------------------------------------------------------------------------------


def select(lock: Lock, names: Sequence[str]) -> Lock:
    """The models `names` pick from `lock` (all of it when empty); `NAME` picks all its versions."""
    if not lock.models:
        raise LockError(f"{lockfile.LOCK_NAME} has no models", "add one with `modelmora add`")
    if not names:
        return lock
    chosen: dict[str, LockedModel] = {}
    for name in names:
        keys = [key for key in lock.models if name in (key, key.partition("@")[0])]
        if not keys:
            raise _unknown_model(name, list(lock.models))
        chosen.update((key, lock.models[key]) for key in keys)
    return lock.with_models(chosen.values())


def _unknown_model(name: str, names: list[str]) -> LockError:
    """The error for a name the lock lacks, suggesting a model or version near it."""
    names = sorted({*names, *(key.partition("@")[0] for key in names)})
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"pick from: {', '.join(names)}"
    return LockError(f"no model named '{name}' in {lockfile.LOCK_NAME}", hint)


def cache_lock(cache: Cache) -> Lock:
    """Every model that a project registered in `cache` locks and the cache holds whole, once per
    snapshot, named FOLDER/NAME after its project: what `modelmora cache export` bundles."""
    from modelmora.project import registered_locks

    found: dict[Path, LockedModel] = {}
    for project, lock in sorted(registered_locks(cache), key=lambda item: str(item[0].root)):
        for model in lock.models.values():
            if all(cache.has_blob(file) for file in model.files):
                named = replace(model, name=f"{project.root.name}/{model.name}")
                found.setdefault(cache.snapshot_path(model), named)
    if not found:
        raise CacheError(
            f"no project has installed models in the cache {cache.root}",
            "run `modelmora install` in a project first",
        )
    return Lock().with_models(_unique_names(found.values()))


def _unique_names(models: Iterable[LockedModel]) -> list[LockedModel]:
    """`NAME`, then `NAME~2`, `NAME~3` for other snapshots under the same name."""
    counts: dict[str, int] = {}
    unique = []
    for model in models:
        counts[model.name] = count = counts.get(model.name, 0) + 1
        unique.append(model if count == 1 else replace(model, name=f"{model.name}~{count}"))
    return unique


def blobs_of(models: Iterable[LockedModel]) -> list[LockedFile]:
    """Each blob the models need, once, in sha256 order; `path` is a file that uses it."""
    unique: dict[str, LockedFile] = {}
    for model in sorted(models, key=lambda m: m.name):
        for file in sorted(model.files):
            label = f"{model.name}/{file.path}"
            unique.setdefault(file.sha256, LockedFile(label, file.size, file.sha256))
    return [unique[sha256] for sha256 in sorted(unique)]


def manifest_bytes(lock: Lock) -> bytes:
    records = [_record(lock.models[name]) for name in sorted(lock.models)]
    data = {"format": FORMAT, "version": FORMAT_VERSION, "models": records}
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _record(model: LockedModel) -> dict[str, Any]:
    files = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in sorted(model.files)]
    return {"name": model.name, **model.inputs(), "commit": model.commit, "files": files}


# --- create -------------------------------------------------------------------------------------


def create(
    lock: Lock, cache: Cache, out: BinaryIO, progress: Progress | None = None
) -> CreateResult:
    """Write the bundle of `lock` to `out` as one stream; every blob must be in the cache."""
    progress = progress or SilentProgress()
    blobs = blobs_of(lock.models.values())
    with holding(cache, lock):
        _check_cached(lock, cache)
        progress.begin(len(blobs), sum(blob.size for blob in blobs), "Bundling")
        sink = _HashingWriter(out)
        with _writer(sink) as tar:
            data = manifest_bytes(lock)
            tar.addfile(_member(MANIFEST_MEMBER, len(data)), io.BytesIO(data))
            for blob in blobs:
                _add_blob(tar, cache, blob, progress)
    return CreateResult(
        models=tuple(sorted(lock.models)),
        blobs=len(blobs),
        blob_bytes=sum(blob.size for blob in blobs),
        size=sink.size,
        sha256=sink.digest.hexdigest(),
    )


def create_file(
    lock: Lock, cache: Cache, path: Path, progress: Progress | None = None
) -> CreateResult:
    """`create` into a temp file beside `path`, renamed over it once whole and fsynced."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise BundleError(f"cannot write {path}: {error.strerror}", "choose another -o") from None
    temp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as out:
            result = create(lock, cache, out, progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except OSError as error:  # a full disk, most likely
        raise BundleError(f"cannot write {path}: {error.strerror}", "free space there") from None
    finally:
        temp.unlink(missing_ok=True)
    return result


@contextlib.contextmanager
def holding(cache: Cache, lock: Lock) -> Iterator[None]:
    """Keep the lock's blobs and snapshots from `cache gc` meanwhile (a read-only cache has no gc
    to fear)."""
    if cache.is_read_only():
        yield
        return
    with cache.lease():
        cache.protect(lock.models.values())
        yield


def _check_cached(lock: Lock, cache: Cache) -> None:
    for model in lock.models.values():
        for file in model.files:
            if not cache.has_blob(file):
                raise LockError(
                    f"model '{model.name}' is not installed here ({file.path} is not in the cache)",
                    "run `modelmora install` first, then `modelmora bundle create` again",
                )


def _writer(out: _HashingWriter) -> tarfile.TarFile:
    """A pax tar written straight to `out` in 1 MiB copies; plain "w" mode never seeks, and its
    bytes are those of a stream-mode tar: headers, data, padding, end blocks, a full record."""
    sink = cast("BinaryIO", out)  # only `write` and `tell` are called in "w" mode
    return tarfile.TarFile(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK)


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_blob(tar: tarfile.TarFile, cache: Cache, blob: LockedFile, progress: Progress) -> None:
    progress.start(blob.sha256, blob.path, blob.size)
    with cache.blob_path(blob.sha256).open("rb") as handle:
        reader = _HashingReader(handle, lambda count: progress.advance(blob.sha256, count))
        try:
            tar.addfile(_member(BLOB_PREFIX + blob.sha256, blob.size), reader)
        except OSError:
            if reader.count < blob.size:  # tarfile ran out of data: the blob is short
                raise _corrupt_blob(blob) from None
            raise
    if reader.digest.hexdigest() != blob.sha256:
        raise _corrupt_blob(blob)
    progress.finish(blob.sha256)


def _corrupt_blob(blob: LockedFile) -> IntegrityError:
    return IntegrityError(
        f"the cache's copy of {blob.path} (sha256:{blob.sha256}) is corrupt",
        "run `modelmora cache verify --repair`, then `modelmora bundle create` again",
    )


class _HashingWriter:
    """Counts and hashes what the tar writes, on its way to the real output."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.size, self.digest = out, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)

    def tell(self) -> int:
        return self.size


class _HashingReader:
    def __init__(self, handle: BinaryIO, on_bytes: OnBytes) -> None:
        self.handle, self.on_bytes, self.digest, self.count = handle, on_bytes, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        self.count += len(data)
        self.on_bytes(len(data))
        return data

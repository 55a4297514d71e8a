"""Offline bundles: a lock's models and every blob they need, in one verified, deterministic tar.

    modelmora-bundle.json    first: {"format": "modelmora-bundle", "version": 1, "models": [...]}
    blobs/sha256/SHA256      each blob the models need, once, in sha256 order

`create` writes the tar as a stream (POSIX pax, mtime 0, uid and gid 0, mode 0444, no user names),
so the same lock always gives the same bytes and nothing is staged on disk. `import_bundle` reads it
as a stream: each blob is hashed on its way in and reaches the cache only through
`Cache.store_stream`'s atomic rename, after its sha256 and size matched the manifest. A blob the
cache holds already is hashed and skipped, so running an interrupted import again completes it.
Snapshots are built last, once every blob is in. The lock's sha256s stay the trust anchor: a blob
is stored under the hash of its bytes, so an altered bundle can never put other bytes under a name
that a lock asks for.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from modelmora import lockfile
from modelmora.cache import Cache, OnBytes, check_relative
from modelmora.errors import BundleError, CacheError, IntegrityError, LockError, ModelmoraError
from modelmora.files import CHUNK, current_umask
from modelmora.lockfile import Lock, LockedFile, LockedModel
from modelmora.progress import SilentProgress

if TYPE_CHECKING:
    from modelmora.project import Progress

FORMAT = "modelmora-bundle"
FORMAT_VERSION = 1
MANIFEST_MEMBER = "modelmora-bundle.json"
BLOB_PREFIX = "blobs/sha256/"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_BLOB_MEMBER = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_RECOPY = "copy the bundle again from where it was made (compare `sha256sum`), then import it"


@dataclass(frozen=True)
class CreateResult:
    models: tuple[str, ...]
    blobs: int
    blob_bytes: int
    size: int  # bytes of the bundle itself
    sha256: str  # of the bundle itself


@dataclass(frozen=True)
class ImportResult:
    models: tuple[str, ...]
    blobs_stored: int
    bytes_stored: int
    blobs_skipped: int
    snapshots: int


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
    with _leased(cache, lock):
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as out:
            result = create(lock, cache, out, progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return result


@contextlib.contextmanager
def _leased(cache: Cache, lock: Lock) -> Iterator[None]:
    """Keep the lock's blobs from `cache gc` meanwhile; a read-only cache has no gc to fear."""
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


def _reader(stream: BinaryIO, label: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK)
    except tarfile.ReadError as error:
        raise _not_a_bundle(label, f"it is not a tar archive ({error})") from None


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
        except OSError:  # the blob is shorter than its size: tarfile ran out of data
            raise _corrupt_blob(blob) from None
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
        self.handle, self.on_bytes, self.digest = handle, on_bytes, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        self.on_bytes(len(data))
        return data


# --- import -------------------------------------------------------------------------------------


def import_bundle(
    stream: BinaryIO, cache: Cache, *, label: str, progress: Progress | None = None
) -> ImportResult:
    """Verify and store every blob of the bundle read from `stream`, then build its snapshots.

    `label` names the bundle in errors. A bad blob stops the import with the member's name; the
    blobs stored before it were verified and stay, so the next import skips them.
    """
    progress = progress or SilentProgress()
    with _reader(stream, label) as tar:
        lock = _read_manifest(tar, label)
        with _leased(cache, lock):
            wanted = {blob.sha256: blob for blob in blobs_of(lock.models.values())}
            progress.begin(len(wanted), sum(blob.size for blob in wanted.values()), "Importing")
            stored = _import_blobs(tar, cache, wanted, label, progress)
            for model in lock.models.values():
                cache.build_snapshot(model)
    stored_blobs = [wanted[sha256] for sha256 in stored]
    return ImportResult(
        models=tuple(sorted(lock.models)),
        blobs_stored=len(stored_blobs),
        bytes_stored=sum(blob.size for blob in stored_blobs),
        blobs_skipped=len(wanted) - len(stored_blobs),
        snapshots=len(lock.models),
    )


def _read_manifest(tar: tarfile.TarFile, label: str) -> Lock:
    first = tar.next()
    if first is None or first.name != MANIFEST_MEMBER or not first.isfile():
        found = f"'{first.name}'" if first is not None else "nothing"
        raise _not_a_bundle(label, f"its first member is {found}, not {MANIFEST_MEMBER}")
    if first.size > MAX_MANIFEST_BYTES:
        raise _not_a_bundle(label, f"its {MANIFEST_MEMBER} has {first.size} bytes")
    try:
        data = json.loads(_read_member(tar, first, label))
    except ValueError as error:
        raise _not_a_bundle(label, f"its {MANIFEST_MEMBER} is not JSON ({error})") from None
    return _parse_manifest(data, label)


def _parse_manifest(data: Any, label: str) -> Lock:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _not_a_bundle(label, f"its {MANIFEST_MEMBER} does not say format = {FORMAT!r}")
    if (version := data.get("version")) != FORMAT_VERSION:
        raise BundleError(
            f"{label} is a bundle of format version {version!r}; this modelmora reads version "
            f"{FORMAT_VERSION}",
            "create it again with this modelmora's `modelmora bundle create`, or import it with "
            "the modelmora that made it",
        )
    records = {"version": lockfile.LOCK_VERSION, "models": data.get("models")}
    try:
        lock = lockfile.parse(records, MANIFEST_MEMBER)
        for model in lock.models.values():
            for file in model.files:
                check_relative(file.path)
                _check_sha256(file.sha256)
    except ModelmoraError as error:
        raise BundleError(f"{label}: {error.message}", _RECOPY) from None
    _check_sizes(lock, label)
    return lock


def _check_sha256(sha256: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise BundleError(f"{MANIFEST_MEMBER} is malformed ('{sha256}' is not a sha256 digest)")


def _check_sizes(lock: Lock, label: str) -> None:
    sizes: dict[str, int] = {}
    for model in lock.models.values():
        for file in model.files:
            if sizes.setdefault(file.sha256, file.size) != file.size:
                raise BundleError(
                    f"{label}: its {MANIFEST_MEMBER} gives sha256:{file.sha256} two sizes",
                    _RECOPY,
                )


def _not_a_bundle(label: str, why: str) -> BundleError:
    return BundleError(
        f"{label} is not a modelmora bundle: {why}",
        "make one with `modelmora bundle create -o FILE` in the project that has the models",
    )


def _import_blobs(
    tar: tarfile.TarFile,
    cache: Cache,
    wanted: dict[str, LockedFile],
    label: str,
    progress: Progress,
) -> list[str]:
    """Store each blob member; return the sha256s stored (not those the cache had)."""
    stored: list[str] = []
    seen: set[str] = set()
    last = MANIFEST_MEMBER
    while (member := _next_member(tar, label, last)) is not None:
        last = member.name
        blob = _expected_blob(member, wanted, seen, label)
        seen.add(blob.sha256)
        progress.start(blob.sha256, blob.path, blob.size)
        if _import_blob(tar, member, cache, blob, label, progress):
            stored.append(blob.sha256)
        progress.finish(blob.sha256)
    if missing := sorted(set(wanted) - seen):
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise IntegrityError(
            f"{label} is truncated or damaged: {BLOB_PREFIX}{missing[0]}{more} is missing",
            _RECOPY,
        )
    return stored


def _next_member(tar: tarfile.TarFile, label: str, last: str) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except tarfile.TarError as error:
        raise IntegrityError(f"{label} is damaged after {last} ({error})", _RECOPY) from None


def _expected_blob(
    member: tarfile.TarInfo, wanted: dict[str, LockedFile], seen: set[str], label: str
) -> LockedFile:
    match = _BLOB_MEMBER.fullmatch(member.name)
    blob = wanted.get(match.group(1)) if match and member.isfile() else None
    if blob is None or blob.sha256 in seen:
        why = "listed twice" if blob is not None else "not a blob its manifest lists"
        raise IntegrityError(f"{label}: member {member.name} is {why}", _RECOPY)
    if member.size != blob.size:
        raise IntegrityError(
            f"{label}: {member.name} has {member.size} bytes, its manifest says {blob.size}",
            _RECOPY,
        )
    return blob


def _import_blob(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    cache: Cache,
    blob: LockedFile,
    label: str,
    progress: Progress,
) -> bool:
    """Store one blob member (False: the cache had it, so its bytes were only checked)."""
    chunks = _member_chunks(tar, member, label, lambda n: progress.advance(blob.sha256, n))
    expected = LockedFile(member.name, blob.size, blob.sha256)
    try:
        if cache.has_blob(blob):
            _check_digest(chunks, expected)
            return False
        cache.store_stream(chunks, expected=expected)
    except IntegrityError as error:
        raise IntegrityError(
            f"{label}: {error.message}; nothing of it was stored", _RECOPY
        ) from None
    return True


def _check_digest(chunks: Iterable[bytes], expected: LockedFile) -> None:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    if (digest.hexdigest(), size) != (expected.sha256, expected.size):
        raise IntegrityError(
            f"{expected.path}: sha256 mismatch: expected {expected.sha256}, "
            f"got {digest.hexdigest()} ({size} bytes, expected {expected.size})"
        )


def _member_chunks(
    tar: tarfile.TarFile, member: tarfile.TarInfo, label: str, on_bytes: OnBytes
) -> Iterator[bytes]:
    """The member's bytes; a bundle that ends inside it raises IntegrityError naming it."""
    handle = tar.extractfile(member)
    if handle is None:
        raise IntegrityError(f"{label}: member {member.name} is not a file", _RECOPY)
    try:
        while chunk := handle.read(CHUNK):
            on_bytes(len(chunk))
            yield chunk
    except tarfile.TarError:
        raise IntegrityError(f"{member.name}: the bundle ends inside it (truncated)") from None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, label: str) -> bytes:
    try:
        return b"".join(_member_chunks(tar, member, label, lambda _: None))
    except IntegrityError as error:
        raise IntegrityError(f"{label}: {error.message}", _RECOPY) from None

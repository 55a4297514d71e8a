"""`modelmora bundle import`: a bundle read as a stream, every blob verified before it is stored.

Each blob is hashed on its way in and reaches the cache only through `Cache.store_stream`'s atomic
rename, after its sha256 and size matched the bundle's manifest; a bad one stops the import with
its member's name, and nothing of it is left behind. A blob the cache holds already is hashed and
skipped, so running an interrupted import again completes it. Snapshots are built last, once every
blob is in. The lock's sha256s stay the trust anchor: a blob is stored under the hash of its bytes,
so an altered bundle can never put other bytes under a name that a lock asks for.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from modelmora import lockfile
from modelmora.bundle import (
    BLOB_PREFIX,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_MEMBER,
    blobs_of,
    holding,
)
from modelmora.cache import Cache, OnBytes, check_relative
from modelmora.errors import BundleError, CacheError, IntegrityError, ModelmoraError
from modelmora.files import CHUNK
from modelmora.lockfile import Lock, LockedFile
from modelmora.progress import SilentProgress

if TYPE_CHECKING:
    from modelmora.project import Progress

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_BLOB_MEMBER = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_RECOPY = "copy the bundle again from where it was made (compare `sha256sum`), then import it"


@dataclass(frozen=True)
class ImportResult:
    models: tuple[str, ...]
    blobs_stored: int
    bytes_stored: int
    blobs_skipped: int
    snapshots: int


def import_bundle(
    stream: BinaryIO, cache: Cache, *, label: str, progress: Progress | None = None
) -> ImportResult:
    """Verify and store every blob of the bundle read from `stream`, then build its snapshots.

    `label` names the bundle in errors. A bad blob stops the import with the member's name; the
    blobs stored before it were verified and stay, so the next import skips them.
    """
    progress = progress or SilentProgress()
    if cache.is_read_only():
        raise CacheError(
            f"the cache {cache.root} is read-only", "import where it is writable ($MODELMORA_HOME)"
        )
    with _reader(stream, label) as tar:
        lock = _read_manifest(tar, label)
        with holding(cache, lock):
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


def _reader(stream: BinaryIO, label: str) -> tarfile.TarFile:
    arriving = cast("BinaryIO", _Arriving(stream))  # a stream-mode ("r|") tar only calls `read`
    try:
        return tarfile.open(fileobj=arriving, mode="r|", bufsize=CHUNK)
    except tarfile.ReadError as error:
        raise _not_a_bundle(label, f"it is not a tar archive ({error})") from None


class _Arriving:
    """Hands tarfile what a pipe has delivered (`read1`: one read, however short), so each blob
    is checked and stored as it arrives instead of once a whole MiB has come."""

    def __init__(self, stream: BinaryIO) -> None:
        self.read: Callable[[int], bytes] = getattr(stream, "read1", stream.read)


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
    except OSError as error:  # a full disk, most likely
        raise CacheError(
            f"cannot store {member.name} in {cache.root}: {error.strerror}",
            "free space, then import again: the files stored so far are kept",
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

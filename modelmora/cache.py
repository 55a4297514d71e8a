"""The content-addressed store: every file once under its sha256, snapshots that link to the blobs.

    $MODELMORA_HOME/
      blobs/sha256/ab/abcdef...        read-only file contents, named by their sha256
      snapshots/SLUG/TREE/...          one folder per locked model, its files linked to blobs
      tmp/                             partial downloads (`SHA.incomplete`, resumable), temp files
      locks/                           file locks, so several processes can share one cache
      leases/ID.json, ID.lock          what each running install uses, kept from `gc` while it runs
      git-blobs/AB/SHA1                the sha256 of small Hub files known by their git sha1
      projects.json                    the projects that use this cache, for `cache gc`
      derived/onnx/KEY/                ONNX exports of torch weights (modelmora.runtimes.onnx)

No network here: sources hand us byte streams. A blob appears only by an atomic rename of a file
whose sha256 was checked, and a snapshot only by an atomic rename of a finished folder, so a crash
leaves partial downloads to resume but never a half-installed model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from filelock import FileLock, Timeout

from modelmora.errors import CacheError, IntegrityError, UnsafeFileError
from modelmora.files import (
    CHUNK,
    link_or_copy,
    replace_symlink,
    sha256_file,
    walk_files,
    write_atomic,
)
from modelmora.lockfile import LockedFile, LockedModel

LOCK_POLL_S = 0.1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # an undecodable byte in a local file name


@dataclass
class _Lease:
    """What one running install uses; `ID.json` is rewritten under the gc lock on every claim."""

    path: Path
    blobs: set[str] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)

    def dumps(self) -> str:
        return json.dumps({"blobs": sorted(self.blobs), "snapshots": sorted(self.snapshots)}) + "\n"


def default_root() -> Path:
    if home := os.environ.get("MODELMORA_HOME"):
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "modelmora"


class ByteSource(Protocol):
    """Opens a file's bytes from `offset`; yields (the offset the source honoured, chunks)."""

    def __call__(
        self, offset: int
    ) -> contextlib.AbstractContextManager[tuple[int, Iterator[bytes]]]: ...


OnBytes = Callable[[int], None]
OnProgress = Callable[[int], None]  # called with how many bytes of the file are on disk so far


class DownloadStopped(Exception):
    """A download gave up because its stop event was set (another one failed, or Ctrl-C).

    Not an error to report: its partial file stays in `tmp/` for the next install to resume.
    """


@dataclass(frozen=True)
class Corrupt:
    sha256: str
    path: Path
    actual: str


@dataclass(frozen=True)
class GcReport:
    blobs: int
    snapshots: int
    bytes_freed: int


def check_relative(path: str) -> str:
    """Refuse a file path that could escape the snapshot folder, or that the lock cannot carry."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or "\\" in path or ".." in pure.parts or path.startswith("~"):
        raise UnsafeFileError(f"refusing file path {path!r}: it escapes the model folder")
    if control := _CONTROL.search(path):
        raise UnsafeFileError(
            f"refusing file path {path!r}: it contains a control character "
            f"(U+{ord(control.group()):04X})",
            "leave it out with `exclude` in modelmora.toml, or rename it",
        )
    if _SURROGATE.search(path):
        raise UnsafeFileError(
            f"refusing file path {path!r}: it is not valid UTF-8",
            "leave it out with `exclude` in modelmora.toml, or rename it",
        )
    return path


def tree_digest(files: Iterable[LockedFile]) -> str:
    """A digest of a file set: the same files give the same snapshot, whatever their source."""
    lines = "".join(f"{f.path}\0{f.size}\0{f.sha256}\n" for f in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def source_slug(source: str) -> str:
    scheme, _, rest = source.partition("://")
    if not rest:
        scheme, rest = "local", Path(source).name
    rest = re.sub(r"[^A-Za-z0-9._-]+", "--", rest.split("?")[0]).strip("-.")
    return f"{scheme}--{rest}"[:120]


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_root()).absolute()
        self._gc_lock: FileLock | None = None
        self._lease: _Lease | None = None
        self._lease_guard = threading.Lock()

    # --- layout ---------------------------------------------------------------------------------

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def tmp(self) -> Path:
        return self._ensure(self.root / "tmp")

    @property
    def locks(self) -> Path:
        return self._ensure(self.root / "locks")

    def is_read_only(self) -> bool:
        """A cache that exists but cannot be written: a read-only volume that servers share."""
        return self.root.is_dir() and not os.access(self.root, os.W_OK)

    def _ensure(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    def blob_path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise CacheError(f"'{sha256}' is not a sha256 digest", "run `modelmora lock` again")
        return self.blobs / sha256[:2] / sha256

    def has_blob(self, file: LockedFile) -> bool:
        try:
            return self.blob_path(file.sha256).stat().st_size == file.size
        except FileNotFoundError:
            return False

    @property
    def leases(self) -> Path:
        return self._ensure(self.root / "leases")

    def lock(self, name: str) -> FileLock:
        return FileLock(str(self.locks / f"{name}.lock"))

    def exclusive(self) -> FileLock:
        """Held by `gc` from reading what is in use until it has removed the rest; a claim on a
        lease takes it too, so a claim lands either before gc looks or after it is done."""
        if self._gc_lock is None:
            self._gc_lock = FileLock(str(self.locks / "gc.lock"))
        return self._gc_lock

    # --- leases: what running installs use ------------------------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Keep what this install claims from `gc` until the block ends.

        `protect` claims a lock's blobs and snapshots, and `store_stream` claims each blob it
        stores, before they are used. The lease is alive while its `ID.lock` is held, so a
        crashed install's lease is dropped by the next `gc`.
        """
        if self.is_read_only():
            raise CacheError(
                f"the cache {self.root} is read-only",
                "serve from it with `modelmora serve --frozen --offline`, "
                "or install where it is writable",
            )
        name = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
        holder = FileLock(str(self.leases / f"{name}.lock"))
        with holder:
            self._lease = _Lease(self.leases / f"{name}.json")
            try:
                yield
            finally:
                self._lease.path.unlink(missing_ok=True)
                self._lease = None
        Path(holder.lock_file).unlink(missing_ok=True)

    def protect(self, models: Iterable[LockedModel]) -> None:
        """Claim the blobs and snapshots of `models` for the current lease."""
        if self._lease is None:
            raise RuntimeError("Cache.protect needs an active Cache.lease()")
        blobs: set[str] = set()
        snapshots: set[str] = set()
        for model in models:
            blobs.update(file.sha256 for file in model.files)
            snapshots.add(str(self.snapshot_path(model)))
        self._claim(blobs, snapshots)

    def _claim(self, blobs: set[str], snapshots: set[str]) -> None:
        lease = self._lease
        if lease is None:
            return
        with self._lease_guard, self.exclusive():
            lease.blobs |= blobs
            lease.snapshots |= snapshots
            write_atomic(lease.path, lease.dumps())

    def _leased(self, drop_stale: bool) -> tuple[set[str], set[Path]]:
        """What live leases claim. Hold `exclusive()`. A lease whose lock is free is stale."""
        blobs: set[str] = set()
        snapshots: set[Path] = set()
        for path in sorted(self.leases.glob("*.json")):
            if not _is_held(path.with_suffix(".lock")):
                if drop_stale:
                    path.unlink(missing_ok=True)
                    path.with_suffix(".lock").unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                data = json.loads(path.read_text())
                blobs.update(data["blobs"])
                snapshots.update(Path(s) for s in data["snapshots"])
        return blobs, snapshots

    # --- adding blobs ---------------------------------------------------------------------------

    def fetch(
        self,
        file: LockedFile,
        source: ByteSource,
        on_progress: OnProgress | None = None,
        stop: threading.Event | None = None,
    ) -> Path:
        """Make sure the blob for `file` exists, downloading it from `source` if it does not.

        One process downloads a blob at a time (a file lock); the others wait and find it there.
        A partial download left by a killed process is re-hashed and resumed from where it ended.
        Setting `stop` makes the download raise DownloadStopped at its next chunk, keeping the
        partial file.
        """
        blob = self.blob_path(file.sha256)
        if self.has_blob(file):
            return blob
        with _holding(self.lock(file.sha256), stop):
            if self.has_blob(file):
                return blob
            partial = self.tmp / f"{file.sha256}.incomplete"
            self._download(file, source, partial, on_progress or (lambda _: None), stop)
            self._publish(partial, blob)
        return blob

    def _download(
        self,
        file: LockedFile,
        source: ByteSource,
        partial: Path,
        on_progress: OnProgress,
        stop: threading.Event | None,
    ) -> None:
        digest, offset = _rehash_prefix(partial, file.size)
        on_progress(offset)
        if offset == file.size and offset:  # complete already: a Range request would get 416
            return _check_digest(partial, file, digest.hexdigest())
        _check_stop(stop)
        with source(offset) as (start, chunks), partial.open("r+b" if start else "wb") as out:
            if start != offset:  # the source ignored our Range request: start over
                digest, offset = hashlib.sha256(), 0
            out.seek(offset)
            out.truncate()
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                offset += len(chunk)
                on_progress(offset)
                _check_stop(stop)
            out.flush()
            os.fsync(out.fileno())
        _check_digest(partial, file, digest.hexdigest())

    def _publish(self, temp: Path, blob: Path) -> None:
        temp.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, blob)

    def store_stream(
        self,
        chunks: Iterable[bytes],
        on_bytes: OnBytes | None = None,
        expected: LockedFile | None = None,
    ) -> LockedFile:
        """Store bytes whose hash we do not know yet (small Hub files, URLs at lock time).

        With `expected`, bytes whose sha256 or size differ are refused before they are published.
        """
        digest, size = hashlib.sha256(), 0
        fd, name = tempfile.mkstemp(prefix="stream.", suffix=".tmp", dir=self.tmp)
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            file = LockedFile(path="", size=size, sha256=digest.hexdigest())
            if expected is not None:
                _check_expected(file, expected)
            self._claim({file.sha256}, set())
            with self.lock(file.sha256):
                if not self.has_blob(file):
                    self._publish(temp, self.blob_path(file.sha256))
        finally:
            temp.unlink(missing_ok=True)
        return file

    def store_file(self, path: Path, expected: LockedFile | None = None) -> LockedFile:
        """Copy a local file into the store (never a link: the original may change later)."""
        with path.open("rb") as handle:
            stored = self.store_stream(_read_chunks(handle))
        if expected is not None and stored.sha256 != expected.sha256:
            raise IntegrityError(
                f"{path} changed since it was locked (sha256 {stored.sha256}, "
                f"lock says {expected.sha256})",
                "run `modelmora lock` to lock the new content",
            )
        return stored

    def remember_git_blob(self, git_oid: str, file: LockedFile) -> None:
        """Record the sha256 of a git blob (the Hub names small files only by their git sha1)."""
        write_atomic(self._git_index(git_oid), f"{file.sha256} {file.size}\n")

    def sha256_of_git_blob(self, git_oid: str) -> LockedFile | None:
        try:
            sha256, size = self._git_index(git_oid).read_text().split()
        except (FileNotFoundError, ValueError):
            return None
        file = LockedFile(path="", size=int(size), sha256=sha256)
        return file if self.has_blob(file) else None

    def _git_index(self, git_oid: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{40}", git_oid):
            raise CacheError(f"'{git_oid}' is not a git object id")
        return self.root / "git-blobs" / git_oid[:2] / git_oid

    # --- snapshots ------------------------------------------------------------------------------

    def snapshot_path(self, model: LockedModel) -> Path:
        return self.snapshots / source_slug(model.source) / tree_digest(model.files)

    def has_snapshot(self, model: LockedModel) -> bool:
        return self.snapshot_path(model).is_dir()

    def build_snapshot(self, model: LockedModel) -> Path:
        """Link the model's blobs into a snapshot folder, published by one atomic rename."""
        final = self.snapshot_path(model)
        if final.is_dir():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with self.lock(f"snapshot-{final.name}"):
            if final.is_dir():
                return final
            building = Path(tempfile.mkdtemp(prefix=f".{final.name[:12]}.", dir=final.parent))
            try:
                for file in model.files:
                    self._link_into(building, file)
                building.chmod(0o755)  # mkdtemp makes it private; snapshots are shared
                os.rename(building, final)
            finally:
                shutil.rmtree(building, ignore_errors=True)
        return final

    def _link_into(self, folder: Path, file: LockedFile) -> None:
        blob = self.blob_path(file.sha256)
        if not self.has_blob(file):
            raise CacheError(f"blob {file.sha256} for {file.path} is missing from the cache")
        target = folder / check_relative(file.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(blob, target)

    def relink(self, sha256: str, old_inode: tuple[int, int]) -> int:
        """Point snapshot files that shared a replaced blob's inode at the new blob."""
        blob, count = self.blob_path(sha256), 0
        for path in walk_files(self.snapshots):
            info = path.lstat()
            if (info.st_dev, info.st_ino) == old_inode:
                path.unlink()
                link_or_copy(blob, path)
                count += 1
        return count

    # --- verify and gc --------------------------------------------------------------------------

    def blob_digests(self) -> list[str]:
        if not self.blobs.is_dir():
            return []
        return sorted(p.name for p in self.blobs.glob("??/*") if _SHA256.match(p.name))

    def verify(self, on_blob: OnBytes | None = None) -> list[Corrupt]:
        """Re-hash every blob, a few at a time (hashlib releases the GIL on large buffers)."""

        def check(sha256: str) -> Corrupt | None:
            path = self.blob_path(sha256)
            actual = sha256_file(path)
            if on_blob:
                on_blob(path.stat().st_size)
            return None if actual == sha256 else Corrupt(sha256, path, actual)

        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            results = list(pool.map(check, self.blob_digests()))
        return [result for result in results if result is not None]

    def discard_blob(self, sha256: str) -> tuple[int, int]:
        """Remove a (corrupt) blob; return its (device, inode) so snapshots can be relinked."""
        path = self.blob_path(sha256)
        info = path.stat()
        path.unlink()
        return info.st_dev, info.st_ino

    def gc(self, keep_blobs: set[str], keep_snapshots: set[Path], dry_run: bool) -> GcReport:
        """Remove the blobs and snapshots that neither the keep sets nor a live lease name.

        Hold `exclusive()` from before reading what the keep sets come from (the registered
        projects' locks) until this returns, as `project.gc_cache` does.
        """
        with self.exclusive():
            leased_blobs, leased_snapshots = self._leased(drop_stale=not dry_run)
            keep_blobs, keep_snapshots = (
                keep_blobs | leased_blobs,
                keep_snapshots | leased_snapshots,
            )
            blobs = [sha for sha in self.blob_digests() if sha not in keep_blobs]
            snapshots = [s for s in self._snapshot_folders() if s not in keep_snapshots]
            freed = sum(self.blob_path(sha).stat().st_size for sha in blobs)
            if not dry_run:
                for snapshot in snapshots:
                    _remove_tree(snapshot)
                for sha in blobs:
                    self.blob_path(sha).unlink(missing_ok=True)
        return GcReport(blobs=len(blobs), snapshots=len(snapshots), bytes_freed=freed)

    def _snapshot_folders(self) -> list[Path]:
        if not self.snapshots.is_dir():
            return []
        return sorted(
            p for p in self.snapshots.glob("*/*") if p.is_dir() and not p.name.startswith(".")
        )

    # --- project registry -----------------------------------------------------------------------

    def register_project(self, project: Path) -> None:
        with self.lock("projects"):
            projects = set(self.projects())
            if str(project) not in projects:
                write_atomic(self.root / "projects.json", _dump_projects(projects | {str(project)}))

    def projects(self) -> list[str]:
        try:
            data = json.loads((self.root / "projects.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        return sorted(str(p) for p in data.get("projects", []))

    def forget_projects(self, gone: set[str]) -> None:
        with self.lock("projects"):
            write_atomic(self.root / "projects.json", _dump_projects(set(self.projects()) - gone))


def link_project_model(project_root: Path, name: str, snapshot: Path) -> Path:
    link = project_root / ".modelmora" / "models" / name
    replace_symlink(link, snapshot)
    return link


def _is_held(lock_file: Path) -> bool:
    probe = FileLock(str(lock_file), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release()
    return False


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise DownloadStopped


@contextlib.contextmanager
def _holding(lock: FileLock, stop: threading.Event | None) -> Iterator[None]:
    """Hold `lock`; stop waiting for it when `stop` is set (its holder may download for long)."""
    while True:
        try:
            lock.acquire(timeout=LOCK_POLL_S)
            break
        except Timeout:
            _check_stop(stop)
    try:
        yield
    finally:
        lock.release()


def _dump_projects(projects: set[str]) -> str:
    return json.dumps({"projects": sorted(projects)}, indent=2) + "\n"


def _rehash_prefix(partial: Path, size: int) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    try:
        with partial.open("rb") as handle:
            offset = 0
            for chunk in _read_chunks(handle):
                digest.update(chunk)
                offset += len(chunk)
    except FileNotFoundError:
        return digest, 0
    if offset > size:
        partial.unlink()
        return hashlib.sha256(), 0
    return digest, offset


def _check_digest(partial: Path, file: LockedFile, actual: str) -> None:
    received = partial.stat().st_size
    if actual == file.sha256 and received == file.size:
        return
    partial.unlink(missing_ok=True)
    raise IntegrityError(
        f"{file.path}: sha256 mismatch: expected {file.sha256}, got {actual} ({received} bytes, "
        f"expected {file.size})",
        "the download was deleted; try again, or `modelmora lock --upgrade` if upstream changed",
    )


def _check_expected(file: LockedFile, expected: LockedFile) -> None:
    if (file.sha256, file.size) != (expected.sha256, expected.size):
        raise IntegrityError(
            f"{expected.path or expected.sha256}: sha256 mismatch: expected {expected.sha256}, "
            f"got {file.sha256} ({file.size} bytes, expected {expected.size})"
        )


def _read_chunks(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def _remove_tree(path: Path) -> None:
    # Snapshot files are read-only links; removing a link needs write access to its folder only.
    shutil.rmtree(path, ignore_errors=True)

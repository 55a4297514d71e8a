"""What `--json` prints for the package manager's commands: one declared record per command.

Each record is a TypedDict built by an explicit function from the command's result, so the public
output is its own schema: renaming a field of an internal dataclass fails the type check here
instead of silently changing what scripts read. docs/json.md documents the same records. (The
serving commands print the server's published schemas: `ModelStatus`, `InferResponse`, `JobList`.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypedDict

if TYPE_CHECKING:
    from pathlib import Path

    from modelmora.audit import AuditEntry
    from modelmora.bundle import CreateResult
    from modelmora.bundleimport import ImportResult
    from modelmora.cache import GcReport
    from modelmora.diskuse import CacheUse, ModelUse, SnapshotUse
    from modelmora.keys import ApiKey
    from modelmora.lockfile import Change, LockedFile
    from modelmora.project import InstallResult, LockResult, ModelInfo, VerifyResult


class LockChangeJson(TypedDict):
    name: str
    kind: Literal["added", "removed", "updated", "unchanged"]
    old_commit: str | None
    new_commit: str | None


class LockJson(TypedDict):
    """`modelmora lock --json`."""

    written: bool
    changes: list[LockChangeJson]
    warnings: list[str]


class StaleModelJson(TypedDict):
    name: str
    kind: str  # "added", "removed" or "changed", as lockfile.Change
    detail: str


class LockCheckJson(TypedDict):
    """`modelmora lock --check --json`."""

    fresh: bool
    stale: list[StaleModelJson]


class InstallJson(TypedDict):
    """`modelmora install --json`."""

    models: list[str]
    files_downloaded: int
    bytes_downloaded: int
    files_cached: int
    removed: list[str]


class FileJson(TypedDict):
    path: str
    size: int
    sha256: str


class ModelJson(TypedDict, total=False):
    """`modelmora list --json` (one per model) and `modelmora show NAME --json` (with `files`)."""

    name: str
    task: str
    source: str
    revision: str
    commit: str | None
    size: int
    installed: bool
    path: str | None
    files: list[FileJson]


class VerifyJson(TypedDict):
    """`modelmora cache verify --json`."""

    blobs: int
    bytes_checked: int
    corrupt: list[str]
    repaired: list[str]
    unrepairable: list[str]


class CacheModelJson(TypedDict):
    """`modelmora cache list --json` (one per model), and who uses a snapshot in `cache du`."""

    project: str
    model: str
    snapshot: str
    size: int
    installed: bool


class SnapshotJson(TypedDict):
    snapshot: str
    path: str
    files: int
    size: int
    shared: int
    models: list[CacheModelJson]


class CacheDuJson(TypedDict):
    """`modelmora cache du --json`."""

    root: str
    bytes: int
    shared_bytes: int
    blobs: int
    loose_blobs: int
    loose_bytes: int
    snapshots: list[SnapshotJson]


class GcJson(TypedDict):
    """`modelmora cache gc --json`."""

    blobs: int
    snapshots: int
    bytes_freed: int
    dry_run: bool
    removed: list[SnapshotJson]


def lock_json(result: LockResult) -> LockJson:
    changes: list[LockChangeJson] = [
        {
            "name": change.name,
            "kind": change.kind,
            "old_commit": change.old_commit,
            "new_commit": change.new_commit,
        }
        for change in result.changes
    ]
    return {"written": result.written, "changes": changes, "warnings": list(result.warnings)}


def lock_check_json(stale: list[Change]) -> LockCheckJson:
    models: list[StaleModelJson] = [
        {"name": change.name, "kind": change.kind, "detail": change.describe()} for change in stale
    ]
    return {"fresh": not stale, "stale": models}


def install_json(result: InstallResult) -> InstallJson:
    return {
        "models": list(result.models),
        "files_downloaded": result.files_downloaded,
        "bytes_downloaded": result.bytes_downloaded,
        "files_cached": result.files_cached,
        "removed": list(result.removed),
    }


def model_json(info: ModelInfo, *, files: bool) -> ModelJson:
    data: ModelJson = {
        "name": info.name,
        "task": info.task,
        "source": info.source,
        "revision": info.revision,
        "commit": info.commit,
        "size": info.size,
        "installed": info.installed,
        "path": str(info.path.resolve()) if info.path else None,
    }
    if files:
        data["files"] = [file_json(file) for file in info.files]
    return data


def file_json(file: LockedFile) -> FileJson:
    return {"path": file.path, "size": file.size, "sha256": file.sha256}


def verify_json(result: VerifyResult) -> VerifyJson:
    return {
        "blobs": result.blobs,
        "bytes_checked": result.bytes_checked,
        "corrupt": list(result.corrupt),
        "repaired": list(result.repaired),
        "unrepairable": list(result.unrepairable),
    }


def gc_json(report: GcReport, removed: list[SnapshotUse], *, dry_run: bool) -> GcJson:
    return {
        "blobs": report.blobs,
        "snapshots": report.snapshots,
        "bytes_freed": report.bytes_freed,
        "dry_run": dry_run,
        "removed": [snapshot_json(snapshot, {}) for snapshot in removed],
    }


def cache_du_json(use: CacheUse, root: Path) -> CacheDuJson:
    by_path = {snapshot.path: snapshot for snapshot in use.snapshots}
    return {
        "root": str(root),
        "bytes": use.blob_bytes,
        "shared_bytes": use.shared_bytes,
        "blobs": use.blobs,
        "loose_blobs": use.loose_blobs,
        "loose_bytes": use.loose_bytes,
        "snapshots": [snapshot_json(snapshot, by_path) for snapshot in use.snapshots],
    }


def snapshot_json(snapshot: SnapshotUse, by_path: dict[Path, SnapshotUse]) -> SnapshotJson:
    return {
        "snapshot": snapshot.label,
        "path": str(snapshot.path),
        "files": snapshot.files,
        "size": snapshot.size,
        "shared": snapshot.shared,
        "models": [cache_model_json(model, by_path) for model in snapshot.models],
    }


def cache_model_json(model: ModelUse, by_path: dict[Path, SnapshotUse]) -> CacheModelJson:
    """`installed`: the snapshot the project's lock points at is in the cache."""
    from modelmora.diskuse import snapshot_label

    found = by_path.get(model.snapshot)
    return {
        "project": model.project,
        "model": model.name,
        "snapshot": snapshot_label(model.snapshot),
        "size": found.size if found else 0,
        "installed": found is not None,
    }


class BundleCreateJson(TypedDict):
    """`modelmora bundle create --json`."""

    output: str
    models: list[str]
    blobs: int
    blob_bytes: int
    size: int
    sha256: str


class BundleImportJson(TypedDict):
    """`modelmora bundle import --json`."""

    models: list[str]
    blobs_stored: int
    bytes_stored: int
    blobs_skipped: int
    snapshots: int


def bundle_create_json(result: CreateResult, output: str) -> BundleCreateJson:
    return {
        "output": output,
        "models": list(result.models),
        "blobs": result.blobs,
        "blob_bytes": result.blob_bytes,
        "size": result.size,
        "sha256": result.sha256,
    }


def bundle_import_json(result: ImportResult) -> BundleImportJson:
    return {
        "models": list(result.models),
        "blobs_stored": result.blobs_stored,
        "bytes_stored": result.bytes_stored,
        "blobs_skipped": result.blobs_skipped,
        "snapshots": result.snapshots,
    }


class KeyJson(TypedDict):
    """An item of `modelmora keys list --json`; also `keys revoke --json`."""

    name: str
    prefix: str
    scope: Literal["infer", "admin"]
    requests_per_second: float | None
    burst: int | None
    tokens_per_minute: int | None
    token_burst: int | None
    created_at: float
    revoked_at: float | None


class KeyCreatedJson(KeyJson):
    """`modelmora keys create --json`: the key and its secret, shown this once."""

    secret: str


class AuditJson(TypedDict):
    """An item of `modelmora audit --json`."""

    id: int
    at: float
    actor: str
    action: str
    target: str
    before: object
    after: object


def key_json(key: ApiKey) -> KeyJson:
    limits = key.limits
    return {
        "name": key.name,
        "prefix": key.prefix,
        "scope": key.scope,
        "requests_per_second": limits.requests_per_second,
        "burst": limits.burst,
        "tokens_per_minute": limits.tokens_per_minute,
        "token_burst": limits.token_burst,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


def key_created_json(key: ApiKey, secret: str) -> KeyCreatedJson:
    return {**key_json(key), "secret": secret}


def audit_json(entry: AuditEntry) -> AuditJson:
    return {
        "id": entry.id,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
    }

"""The package manager's use cases as plain functions: init, add, remove, lock, install, list.

No printing here: progress goes to a callback object and results come back as records, so the CLI,
the server and tests drive the same code.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import unquote, urlparse

from modelmora import lockfile, manifest, manifestedit, sources
from modelmora.cache import Cache, GcReport, link_project_model
from modelmora.errors import LockError, ManifestError, ModelmoraError, NotFoundError, OfflineError
from modelmora.files import write_atomic, write_if_changed
from modelmora.lockfile import Lock, LockedFile, LockedModel
from modelmora.manifest import MANIFEST_NAME, Manifest, ModelSpec
from modelmora.progress import SilentProgress

MAX_CONNECTIONS = 8
InstallMode = Literal["sync", "locked", "frozen"]


class Progress(Protocol):
    """Receives download progress; every method may be called from several threads."""

    def begin(self, files: int, total_bytes: int, verb: str = "Downloading") -> None: ...
    def start(self, key: str, label: str, size: int) -> None: ...
    def advance(self, key: str, count: int) -> None: ...
    def finish(self, key: str) -> None: ...


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def lock_path(self) -> Path:
        return self.root / lockfile.LOCK_NAME

    @property
    def models_dir(self) -> Path:
        return self.root / ".modelmora" / "models"

    @property
    def jobs_path(self) -> Path:
        """The server's async jobs (SQLite): they outlive a restart of `modelmora serve`."""
        return self.root / ".modelmora" / "jobs.sqlite3"

    @property
    def registry_path(self) -> Path:
        """The project's registry (SQLite): API keys and the audit log."""
        return self.root / ".modelmora" / "registry.sqlite3"

    def manifest(self) -> Manifest:
        return manifest.load(self.manifest_path)

    def lock(self) -> Lock:
        return lockfile.read(self.lock_path)

    def lock_or_empty(self) -> Lock:
        return self.lock() if self.lock_path.exists() else Lock()


def find_project(start: Path | None = None) -> Project:
    """The nearest folder at or above `start` that holds a modelmora.toml."""
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / MANIFEST_NAME).is_file():
            return Project(folder)
    raise ManifestError(f"no {MANIFEST_NAME} in {here} or above", "run `modelmora init` first")


# --- init, add, remove --------------------------------------------------------------------------


def init(root: Path, name: str | None = None) -> Project:
    project = Project(root.absolute())
    if project.manifest_path.exists():
        raise ManifestError(
            f"{project.manifest_path} already exists", "edit it, or `modelmora add` models"
        )
    project_name = name or _slug(project.root.name) or "models"
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(
        project.manifest_path, manifestedit.render_new(project_name, _template("modelmora.toml"))
    )
    gitignore = project.root / ".gitignore"
    if not gitignore.exists():
        write_atomic(gitignore, ".modelmora/\n")
    return project


def scratch_project(
    source: str,
    *,
    task: str | None = None,
    offline: bool = False,
    progress: Progress | None = None,
    cache: Cache | None = None,
) -> Project:
    """A throwaway project in the cache that holds one model, for `modelmora serve SOURCE`.

    Made once per source (a folder is taken by its absolute path) and reused, so a second try
    installs nothing; its manifest and lock lie in the cache's `scratch/` folder.
    """
    if sources.kind(source) == "folder":
        source = str(Path(source).expanduser().resolve())
    cache = cache or Cache()
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    scratch = Project(cache.root / "scratch" / key)
    if not scratch.manifest_path.exists():
        init(scratch.root, name="scratch")
    if not scratch.manifest().models:
        add(scratch, source, task=task, offline=offline, progress=progress, cwd=scratch.root)
    return scratch


def _template(name: str) -> str:
    packaged = Path(__file__).parent / "templates" / name
    source_tree = Path(__file__).parent.parent / "templates" / name
    return (packaged if packaged.exists() else source_tree).read_text()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")


# File stems that say nothing about the model: the folder above names it better.
_GENERIC_STEMS = {"model", "pytorch_model", "weights", "download", "checkpoint", "main", "resolve"}


def default_name(source: str) -> str:
    """A manifest key from the source: the Hub repository, the package, the URL's file or folder."""
    base = manifest.split_revision(source)[0].rstrip("/")
    if base.startswith("pkg://"):
        return _slug(base[len("pkg://") :].split("/", 1)[0]) or "model"
    if base.startswith(("https://", "http://")):
        return _url_name(urlparse(base).path) or "model"
    return _slug(base.rsplit("/", 1)[-1].removesuffix(".git")) or "model"


def _url_name(path: str) -> str:
    parts = [unquote(part) for part in path.split("/") if part]
    if "resolve" in parts[2:]:  # a Hub file URL: /ORG/REPO/resolve/REV/FILE
        return _slug(parts[parts.index("resolve", 2) - 1])
    names = [_slug(Path(parts[-1]).stem)] if parts else []
    names += [_slug(part) for part in reversed(parts[:-1])]
    useful = [n for n in names if n and n not in _GENERIC_STEMS]
    return useful[0] if useful else ""


@dataclass(frozen=True)
class AddResult:
    name: str
    locked: LockedModel
    install: InstallResult
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class AddOptions:
    """What `modelmora add` may set besides the source."""

    name: str | None = None
    task: str | None = None
    revision: str | None = None
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    allow_pickle: bool | None = None
    device: str | None = None
    replace: bool = False


def add(
    project: Project,
    source: str,
    *,
    name: str | None = None,
    task: str | None = None,
    revision: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    allow_pickle: bool | None = None,
    device: str | None = None,
    replace: bool = False,
    offline: bool = False,
    progress: Progress | None = None,
    cwd: Path | None = None,
) -> AddResult:
    """Add a model to the manifest, lock and install it; on any error nothing is written.

    A model of the same name is refused unless its source is the same or `replace` is set; either
    way its other settings (serving, scheduling) are kept. None leaves a setting as it is.
    """
    options = AddOptions(name, task, revision, include, exclude, allow_pickle, device, replace)
    cache = Cache()
    source = _source_for_manifest(project, source, cwd or Path.cwd(), offline)
    name = options.name or default_name(_name_source(project, source))
    current = project.manifest()
    existing = current.models.get(name)
    _check_conflict(current, name, source, existing, options.replace)
    task = options.task or _guess_task(project, source, options.revision, existing, offline)
    text = _added(project, name, source, task, options, existing)
    staged, old = manifest.loads(text, project.manifest_path), project.lock_or_empty()
    notes: list[str] = []
    flagged = name if options.task else None
    with cache.lease():  # until the lock is written, gc knows this model only from the lease
        lock = _relock(project, staged, old, cache, set(), offline, notes, flagged)
        result = _install(project, lock, cache, offline, progress or SilentProgress())
        with EDITS:  # the files again, as they are now: a server may have changed them meanwhile
            text = _added(project, name, source, task, options, existing)
            staged = manifest.loads(text, project.manifest_path)
            models = {**project.lock_or_empty().models, **lock.models}
            lock = lock.with_models(m for key, m in models.items() if key in staged.models)
            write_atomic(project.manifest_path, text)
            write_if_changed(project.lock_path, lockfile.dumps(lock))
    return AddResult(name, lock.models[name], result, tuple(notes))


def _added(
    project: Project,
    name: str,
    source: str,
    task: str,
    options: AddOptions,
    existing: ModelSpec | None,
) -> str:
    """The manifest text with the model added; a new version of a model gets no traffic yet."""
    text = _edited_manifest(project, name, source, task, options, existing)
    model = name.partition("@")[0]
    routes = project.manifest().routes
    if existing is None and model in routes:
        text = manifestedit.set_route(text, model, routes[model])
    return text


def _source_for_manifest(project: Project, source: str, cwd: Path, offline: bool) -> str:
    """Check the form first; a relative folder is found from `cwd` and stored from the root."""
    manifest.check_source(source)
    source_kind = sources.kind(source)
    if source_kind == "hub" and sources.is_offline(offline):
        raise OfflineError(
            f"cannot add '{source}' while offline: the Hub must be asked for its commit and files",
            "drop --offline (and HF_HUB_OFFLINE) for this `add`",
        )
    if source_kind != "folder" or source.startswith(("file://", "~")) or Path(source).is_absolute():
        return source
    folder = (cwd / Path(source).expanduser()).resolve()
    if not folder.is_dir():
        raise NotFoundError(f"source '{source}': {folder} is not a folder", "check the path")
    relative = Path(os.path.relpath(folder, project.root)).as_posix()
    return relative if relative.startswith(".") else f"./{relative}"


def _name_source(project: Project, source: str) -> str:
    if sources.kind(source) == "folder":
        return str(sources.local_folder(source, project.root))
    return source


def _check_conflict(
    current: Manifest, name: str, source: str, existing: ModelSpec | None, replace: bool
) -> None:
    model, _, version = name.partition("@")
    unversioned = current.models.get(model)
    if version and unversioned is not None:
        raise ManifestError(
            f"model '{model}' has no versions, so '{name}' cannot be added beside it",
            f"move its source into [models.{model}.versions.V1] first (docs/versions.md)",
        )
    if not version and current.versions(model) and existing is None:
        raise ManifestError(
            f"model '{model}' has versions; name one: --name {model}@VERSION",
            f"see `modelmora versions {model}`",
        )
    if existing is None or replace or existing.source == manifest.split_revision(source)[0]:
        return
    raise ManifestError(
        f"model '{name}' already exists in {MANIFEST_NAME} with source '{existing.source}'",
        "pass --replace to give it the new source (its other settings are kept), "
        "or choose another --name",
    )


def _edited_manifest(
    project: Project,
    name: str,
    source: str,
    task: str,
    options: AddOptions,
    existing: ModelSpec | None,
) -> str:
    """The manifest text with the model set; a new source drops the old source's revision."""
    table = {
        "source": source,
        "revision": options.revision,
        "task": task,
        "include": tuple(options.include) if options.include else None,
        "exclude": tuple(options.exclude) if options.exclude else None,
        "allow_pickle": options.allow_pickle,
        "device": options.device,
    }
    moved = existing is not None and existing.source != manifest.split_revision(source)[0]
    drop = ("revision",) if moved and options.revision is None else ()
    return manifestedit.add_model(project.manifest_path.read_text(), name, table, drop)


def _guess_task(
    project: Project,
    source: str,
    revision: str | None,
    existing: ModelSpec | None,
    offline: bool,
) -> str:
    """Ask the source what the model is for, so `add` needs no --task for the common cases."""
    guessed = sources.guess_task(source, revision, project.root, offline)
    if guessed is not None:
        return guessed
    if existing is not None:
        return existing.task
    raise ManifestError(
        f"cannot tell what task '{source}' is for",
        f"pass --task {', '.join(manifest.BUILTIN_TASKS[:-1])} or {manifest.BUILTIN_TASKS[-1]}",
    )


def remove(project: Project, name: str) -> None:
    """Remove a model (all its versions), or one version with `name@version`."""
    with EDITS:
        _remove(project, name)


def _remove(project: Project, name: str) -> None:
    text = manifestedit.remove_model(project.manifest_path.read_text(), name)
    staged = manifest.loads(text, project.manifest_path)  # e.g. a route left with no version
    lock = project.lock_or_empty()
    remaining = [model for key, model in lock.models.items() if key in staged.models]
    write_atomic(project.manifest_path, text)
    write_if_changed(project.lock_path, lockfile.dumps(lock.with_models(remaining)))
    for key in set(lock.models) - set(staged.models):
        (project.models_dir / key).unlink(missing_ok=True)


EDITS = threading.Lock()
"""Held while the manifest and lock are read, edited and written back, so that a server's
registration finishing in a thread and an admin change on its event loop do not lose each other's
edit."""


# --- lock ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockChange:
    name: str
    kind: Literal["added", "removed", "updated", "unchanged"]
    old_commit: str | None
    new_commit: str | None


@dataclass(frozen=True)
class LockResult:
    lock: Lock
    changes: tuple[LockChange, ...]
    written: bool
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return any(change.kind != "unchanged" for change in self.changes)


def lock(
    project: Project,
    *,
    upgrade: Iterable[str] | bool = False,
    dry_run: bool = False,
    offline: bool = False,
) -> LockResult:
    """Resolve what changed in the manifest (and what `upgrade` names); keep the rest as locked."""
    return _lock(project, Cache(), upgrade=upgrade, dry_run=dry_run, offline=offline)


def _lock(
    project: Project,
    cache: Cache,
    *,
    upgrade: Iterable[str] | bool = False,
    dry_run: bool = False,
    offline: bool = False,
) -> LockResult:
    current = project.manifest()
    old = project.lock_or_empty()
    names = set(current.models) if upgrade is True else set(upgrade or ())
    unknown = names - set(current.models)
    if unknown:
        raise ManifestError(
            f"no model named '{sorted(unknown)[0]}' in {MANIFEST_NAME}", "see `modelmora list`"
        )
    notes: list[str] = []
    new = _relock(project, current, old, cache, names, offline, notes)
    written = False if dry_run else write_if_changed(project.lock_path, lockfile.dumps(new))
    return LockResult(new, tuple(_diff(old, new)), written, tuple(notes))


def check_lock(project: Project) -> Lock:
    """The lock, if it is fresh against the manifest; else a LockError naming what changed."""
    lock = project.lock()
    lockfile.check_fresh(project.manifest(), lock)
    return lock


def _relock(
    project: Project,
    current: Manifest,
    old: Lock,
    cache: Cache,
    upgrade: set[str],
    offline: bool,
    notes: list[str] | None = None,
    task_flag: str | None = None,
) -> Lock:
    """`notes` collects warnings; `task_flag` names the model whose task `add --task` set."""
    models = []
    for name, spec in current.models.items():
        locked = old.models.get(name)
        if locked and name not in upgrade and locked.inputs() == spec.lock_inputs():
            models.append(locked)
        else:
            resolved = sources.resolve(spec, project.root, cache, offline)
            note = _check_task(spec, resolved.architectures, from_flag=name == task_flag)
            models.append(_locked_model(spec, resolved))
            if note and notes is not None:
                notes.append(note)
    return Lock().with_models(models)


def _check_task(spec: ModelSpec, architectures: Sequence[str], from_flag: bool) -> str | None:
    """An error where config.json's architecture cannot do the task; a warning where unsure."""
    conflict = manifest.task_conflict(spec.task, architectures)
    if conflict is None:
        return None
    names, implied = ", ".join(architectures), manifest.architecture_task(architectures)
    said = f"model '{spec.name}': task {spec.task} but its config.json names {names}"
    if conflict == "unsure":
        return f"{said}; check that it can do {spec.task}"
    fix = (
        f"pass --task {implied}, or leave --task out to use what the config says"
        if from_flag
        else f'set task = "{implied}" for it in {MANIFEST_NAME}'
    )
    raise ManifestError(f"{said}, which is for {implied}", fix)


def _locked_model(spec: ModelSpec, resolved: sources.Resolved) -> LockedModel:
    inputs = spec.lock_inputs()
    return LockedModel(
        name=spec.name,
        source=spec.source,
        revision=inputs["revision"],
        task=spec.task,
        commit=resolved.commit,
        files=tuple(sorted(resolved.files)),
        include=tuple(inputs["include"]),
        exclude=tuple(inputs["exclude"]),
        allow_pickle=spec.allow_pickle,
    )


def _diff(old: Lock, new: Lock) -> list[LockChange]:
    changes = []
    for name in sorted(set(old.models) | set(new.models)):
        before, after = old.models.get(name), new.models.get(name)
        kind: Literal["added", "removed", "updated", "unchanged"]
        if before is None:
            kind = "added"
        elif after is None:
            kind = "removed"
        else:
            kind = "unchanged" if before == after else "updated"
        old_commit = before.commit if before else None
        changes.append(LockChange(name, kind, old_commit, after.commit if after else None))
    return changes


# --- install ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstallResult:
    models: tuple[str, ...]
    files_downloaded: int
    bytes_downloaded: int
    files_cached: int
    removed: tuple[str, ...] = field(default_factory=tuple)


def install(
    project: Project,
    *,
    mode: InstallMode = "sync",
    offline: bool = False,
    progress: Progress | None = None,
) -> InstallResult:
    """Make the project's models match the lock exactly, downloading only what the cache lacks.

    sync: lock first if the manifest changed. locked: fail if the lock is stale. frozen: install
    the lock as it is, without reading the manifest.
    """
    cache = Cache()
    with cache.lease():
        if mode == "frozen":
            current = project.lock()
        elif mode == "locked":
            current = check_lock(project)
        else:
            current = _lock(project, cache, offline=offline).lock
        return _install(project, current, cache, offline, progress or SilentProgress())


def _fetch_verb(missing: Sequence[tuple[LockedModel, LockedFile]]) -> str:
    """`Copying` when every file comes from a folder on this machine, else `Downloading`."""
    local = all(sources.kind(model.source) in ("folder", "package") for model, _ in missing)
    return "Copying" if local else "Downloading"


def _install(
    project: Project, lock: Lock, cache: Cache, offline: bool, progress: Progress
) -> InstallResult:
    """Install `lock` under the cache's lease: what it uses is claimed before it is looked at."""
    cache.protect(lock.models.values())
    missing = _missing_files(lock, cache)
    progress.begin(len(missing), sum(file.size for _, file in missing), _fetch_verb(missing))
    _download_all(project, cache, missing, offline, progress)
    for model in lock.models.values():
        link_project_model(project.root, model.name, cache.build_snapshot(model))
    removed = _remove_stale_links(project, set(lock.models))
    cache.register_project(project.root)
    cached = len({f.sha256 for m in lock.models.values() for f in m.files}) - len(missing)
    return InstallResult(
        models=tuple(sorted(lock.models)),
        files_downloaded=len(missing),
        bytes_downloaded=sum(file.size for _, file in missing),
        files_cached=cached,
        removed=removed,
    )


def _missing_files(lock: Lock, cache: Cache) -> list[tuple[LockedModel, LockedFile]]:
    """One (model, file) per blob the cache lacks: a file shared by models is fetched once."""
    seen: dict[str, tuple[LockedModel, LockedFile]] = {}
    for model in lock.models.values():
        for file in model.files:
            if file.sha256 not in seen and not cache.has_blob(file):
                seen[file.sha256] = (model, file)
    return list(seen.values())


def _download_all(
    project: Project,
    cache: Cache,
    missing: Sequence[tuple[LockedModel, LockedFile]],
    offline: bool,
    progress: Progress,
) -> None:
    """Fetch in parallel; the first failure (or Ctrl-C) stops the others at their next chunk."""
    stop = threading.Event()

    def fetch(item: tuple[LockedModel, LockedFile]) -> None:
        model, file = item
        progress.start(file.sha256, f"{model.name}/{file.path}", file.size)
        on_progress = _advancer(progress, file.sha256)
        sources.download(cache, model, file, project.root, offline, on_progress, stop)
        progress.finish(file.sha256)

    # Largest first, so the long downloads start early and the connections stay busy.
    ordered = sorted(missing, key=lambda item: -item[1].size)
    pool = ThreadPoolExecutor(max_workers=MAX_CONNECTIONS)
    try:
        done, _ = wait([pool.submit(fetch, item) for item in ordered], return_when=FIRST_EXCEPTION)
    finally:
        stop.set()  # nothing is left to run, or something failed: either way, stop the rest
        pool.shutdown(wait=True, cancel_futures=True)
    _raise_first_failure(done)


def _raise_first_failure(done: Iterable[Future[None]]) -> None:
    for future in done:
        if (error := future.exception()) is not None:
            raise error


def _advancer(progress: Progress, key: str) -> Callable[[int], None]:
    """Turn "bytes on disk" into advances; a retry that re-reads its partial file adds nothing."""
    counted = 0

    def advance(done: int) -> None:
        nonlocal counted
        if done > counted:
            progress.advance(key, done - counted)
            counted = done

    return advance


def _remove_stale_links(project: Project, keep: set[str]) -> tuple[str, ...]:
    if not project.models_dir.is_dir():
        return ()
    stale = sorted(
        p.name
        for p in project.models_dir.iterdir()
        if p.name not in keep and not p.name.startswith(".")
    )
    for name in stale:
        (project.models_dir / name).unlink(missing_ok=True)
    return tuple(stale)


# --- list, show, path ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str
    source: str
    revision: str
    commit: str | None
    size: int
    files: tuple[LockedFile, ...]
    installed: bool
    path: Path | None


def list_models(project: Project) -> list[ModelInfo]:
    """Every model in the manifest, with what the lock and the cache know of it."""
    current, lock, cache = project.manifest(), project.lock_or_empty(), Cache()
    return [
        _info(spec, lock.models.get(name), project, cache) for name, spec in current.models.items()
    ]


def show(project: Project, name: str) -> ModelInfo:
    for info in list_models(project):
        if info.name == name:
            return info
    raise ManifestError(f"no model named '{name}' in {MANIFEST_NAME}", "see `modelmora list`")


def _info(spec: ModelSpec, locked: LockedModel | None, project: Project, cache: Cache) -> ModelInfo:
    fresh = locked is not None and locked.inputs() == spec.lock_inputs()
    link = project.models_dir / spec.name
    installed = fresh and locked is not None and link.resolve() == cache.snapshot_path(locked)
    return ModelInfo(
        name=spec.name,
        task=spec.task,
        source=spec.source,
        revision=spec.revision or "",
        commit=locked.commit if fresh and locked else None,
        size=locked.size if fresh and locked else 0,
        files=locked.files if fresh and locked else (),
        installed=installed,
        path=link if installed else None,
    )


def model_path(project: Project, name: str) -> Path:
    info = show(project, name)
    if info.path is None:
        raise LockError(f"model '{name}' is not installed", "run `modelmora install`")
    return info.path.resolve()


@dataclass(frozen=True)
class InstalledModel:
    """What the server needs of a model: its manifest entry, its lock entry and its folder."""

    spec: ModelSpec
    locked: LockedModel
    path: Path


def installed_models(
    project: Project, *, frozen: bool = False, offline: bool = False
) -> list[InstalledModel]:
    """Every model of the project, installed and checked against the lock (for `serve`).

    Like `uv run`, a stale lock is updated and missing models are installed first; with `frozen`
    nothing is changed, and a stale lock or a missing model is an error instead.
    """
    if frozen:
        lock = check_lock(project)
    else:
        install(project, offline=offline)
        lock = project.lock()
    cache = Cache()
    models = [
        InstalledModel(spec, lock.models[name], cache.snapshot_path(lock.models[name]))
        for name, spec in project.manifest().models.items()
    ]
    for model in models:
        check_installed(cache, model.locked)
    return models


def check_installed(cache: Cache, model: LockedModel) -> None:
    """Every locked file is in the model's snapshot with its locked size (no re-hash: `verify`)."""
    snapshot = cache.snapshot_path(model)
    for file in model.files:
        try:
            size = (snapshot / file.path).stat().st_size
        except FileNotFoundError:
            raise _not_installed(cache, model.name, file.path) from None
        if size != file.size:
            raise LockError(
                f"model '{model.name}': {file.path} has {size} bytes, the lock says {file.size}",
                "run `modelmora cache verify --repair`",
            )


def _not_installed(cache: Cache, name: str, path: str) -> LockError:
    if cache.is_read_only():  # a volume many servers share: installing is done elsewhere
        return LockError(
            f"model '{name}' is not installed ({path} is missing) in the read-only cache "
            f"{cache.root}",
            "run `modelmora install --frozen` where that cache is writable",
        )
    return LockError(
        f"model '{name}' is not installed ({path} is missing)", "run `modelmora install`"
    )


# --- cache maintenance --------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    blobs: int
    bytes_checked: int
    corrupt: tuple[str, ...]
    repaired: tuple[str, ...]
    unrepairable: tuple[str, ...]


def verify_cache(cache: Cache, *, repair: bool = False, offline: bool = False) -> VerifyResult:
    checked: list[int] = []
    corrupt = cache.verify(on_blob=checked.append)
    repaired, unrepairable = [], []
    if repair:
        known = _known_files(cache)
        for bad in corrupt:
            if bad.sha256 in known and _repair(cache, bad.sha256, known[bad.sha256], offline):
                repaired.append(bad.sha256)
            else:
                unrepairable.append(bad.sha256)
    return VerifyResult(
        blobs=len(checked),
        bytes_checked=sum(checked),
        corrupt=tuple(bad.sha256 for bad in corrupt),
        repaired=tuple(repaired),
        unrepairable=tuple(unrepairable),
    )


def _repair(
    cache: Cache, sha256: str, where: tuple[Project, LockedModel, LockedFile], offline: bool
) -> bool:
    project, model, file = where
    old_inode = cache.discard_blob(sha256)
    try:
        sources.download(cache, model, file, project.root, offline)
    except ModelmoraError:
        return False
    cache.relink(sha256, old_inode)
    return True


def _known_files(cache: Cache) -> dict[str, tuple[Project, LockedModel, LockedFile]]:
    """Every blob that a registered project's lock names, with where to fetch it again."""
    known: dict[str, tuple[Project, LockedModel, LockedFile]] = {}
    for project, lock in _registered_locks(cache):
        for model in lock.models.values():
            for file in model.files:
                known.setdefault(file.sha256, (project, model, file))
    return known


def registered_locks(cache: Cache) -> list[tuple[Project, Lock]]:
    """The lock of every project that installed into `cache` (gone projects are forgotten)."""
    return _registered_locks(cache)


def _registered_locks(cache: Cache) -> list[tuple[Project, Lock]]:
    found, gone = [], set()
    for root in cache.projects():
        project = Project(Path(root))
        if not project.lock_path.is_file():
            gone.add(root)
            continue
        try:
            found.append((project, project.lock()))
        except ModelmoraError:
            continue
    if gone:
        cache.forget_projects(gone)
    return found


def gc_cache(cache: Cache, *, dry_run: bool = False) -> GcReport:
    """Remove blobs and snapshots that no registered project's lock and no running install use."""
    keep_blobs: set[str] = set()
    keep_snapshots: set[Path] = set()
    with cache.exclusive():
        for _, lock in _registered_locks(cache):
            for model in lock.models.values():
                keep_blobs.update(file.sha256 for file in model.files)
                keep_snapshots.add(cache.snapshot_path(model))
        return cache.gc(keep_blobs, keep_snapshots, dry_run)


def cache_dir() -> Path:
    return Cache().root

"""Where models come from: the Hugging Face Hub, plain URLs, local folders and installed packages.

The only module that talks to the network. It resolves a manifest entry to a commit and a list of
files with their sha256, and opens byte streams for the cache to store. Hub files are always
fetched at the locked commit, never at a branch.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import json
import os
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from modelmora.cache import (
    ByteSource,
    Cache,
    DownloadStopped,
    OnProgress,
    check_relative,
    tree_digest,
)
from modelmora.errors import (
    IntegrityError,
    NotFoundError,
    OfflineError,
    SourceError,
    TransientError,
    UnsafeFileError,
)
from modelmora.files import CHUNK, sha256_file
from modelmora.lockfile import LockedFile, LockedModel
from modelmora.manifest import (
    BUILTIN_TASKS,
    PICKLE_SUFFIXES,
    ModelSpec,
    architecture_task,
    split_revision,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

TIMEOUT = 30.0
RETRY_STATUSES = (429, 500, 502, 503, 504)
DOWNLOAD_ATTEMPTS = 5
RETRY_BASE_S = 0.5
RETRY_CAP_S = 8.0
RETRY_AFTER_CAP_S = 60.0
NETWORK_HINT = "check your connection and HF_ENDPOINT, or use --offline to work from the cache"
URL_NETWORK_HINT = "check your connection and the URL, or use --offline to work from the cache"
LOADABLE_WEIGHTS = (".safetensors", ".bin", ".pt")
_TRUE = {"1", "true", "yes", "on"}
_PIPELINE_TASKS = {
    "feature-extraction": "embedding",
    "sentence-similarity": "embedding",
    "text-generation": "text-generation",
    "text2text-generation": "text-generation",
    "text-classification": "text-classification",
    "text-to-image": "text-to-image",
}


@dataclass(frozen=True)
class Resolved:
    commit: str
    files: tuple[LockedFile, ...]
    task: str | None = None  # what the source says the model is for, when it says
    architectures: tuple[str, ...] = ()  # config.json's `architectures`, when it has one


@dataclass(frozen=True)
class _Candidate:
    path: str
    size: int
    sha256: str | None  # None: not known until fetched
    git_oid: str | None = None


def is_offline(offline: bool = False) -> bool:
    return offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def kind(source: str) -> str:
    if source.startswith("hf://"):
        return "hub"
    if source.startswith(("https://", "http://")):
        return "url"
    if source.startswith("pkg://"):
        return "package"
    return "folder"


def local_folder(source: str, root: Path) -> Path:
    """The folder behind a `file://`, relative-path or `pkg://MODULE/SUBPATH` source."""
    if source.startswith("pkg://"):
        return _package_folder(source)
    raw = source[len("file://") :] if source.startswith("file://") else source
    folder = (root / Path(raw).expanduser()).resolve()
    if not folder.is_dir():
        raise NotFoundError(f"source '{source}': {folder} is not a folder", "check the path")
    return folder


def _package_folder(source: str) -> Path:
    module, _, subpath = source[len("pkg://") :].partition("/")
    # find_spec locates the package without importing (running) it.
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            f"source '{source}': Python package '{module}' is not installed",
            f"install it with `pip install {module.replace('_', '-')}`",
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / subpath
    if not folder.is_dir():
        raise NotFoundError(f"source '{source}': package '{module}' has no folder '{subpath}'")
    return folder


# --- resolve ------------------------------------------------------------------------------------


def resolve(spec: ModelSpec, root: Path, cache: Cache, offline: bool = False) -> Resolved:
    """Pin a manifest entry: the commit and every file with its size and sha256."""
    source_kind = kind(spec.source)
    if source_kind == "hub":
        if is_offline(offline):
            raise OfflineError(
                f"cannot resolve '{spec.source}' while offline",
                "run `modelmora lock` with network access first, or drop --offline",
            )
        return _resolve_hub(spec, cache)
    if source_kind == "url":
        if is_offline(offline):
            raise OfflineError(f"cannot fetch '{spec.source}' while offline", "drop --offline")
        return _resolve_url(spec, cache)
    return _resolve_folder(spec, local_folder(spec.source, root))


def _resolve_folder(spec: ModelSpec, folder: Path) -> Resolved:
    paths = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not _is_hidden(path.relative_to(folder))
    )
    candidates = [_Candidate(p, (folder / p).stat().st_size, None) for p in paths]
    chosen = select(spec, candidates)
    files = tuple(LockedFile(c.path, c.size, sha256_file(folder / c.path)) for c in chosen)
    architectures = _architectures(folder / "config.json") if _has_config(files) else ()
    return Resolved(tree_digest(files), files, guess_folder_task(folder), architectures)


def _has_config(files: Sequence[LockedFile]) -> bool:
    return any(file.path == "config.json" for file in files)


def _architectures(config: Path) -> tuple[str, ...]:
    try:
        names = json.loads(config.read_text()).get("architectures") or ()
    except (OSError, ValueError, AttributeError):
        return ()
    return tuple(str(name) for name in names)


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in relative.parts)


def _resolve_url(spec: ModelSpec, cache: Cache) -> Resolved:
    name = check_relative(unquote(Path(urlparse(spec.source).path).name) or "download")
    with _open_url(spec.source, {}, 0) as (_, chunks):
        stored = cache.store_stream(chunks)
    file = LockedFile(name, stored.size, stored.sha256)
    return Resolved(commit=stored.sha256, files=(file,))


def _resolve_hub(spec: ModelSpec, cache: Cache) -> Resolved:
    repo_id = spec.source[len("hf://") :]
    api = _hub_api()
    with (
        _network_errors(spec.source, NETWORK_HINT),
        _hub_errors(spec.source, spec.revision or "main"),
    ):
        info = api.model_info(repo_id, revision=spec.revision or "main")
        commit = str(info.sha)
        entries = api.list_repo_tree(repo_id, revision=commit, recursive=True)
        candidates = [_hub_candidate(entry) for entry in entries if hasattr(entry, "size")]
    chosen = select(spec, candidates)
    files = tuple(_hub_file(repo_id, commit, candidate, cache) for candidate in chosen)
    configs = [cache.blob_path(file.sha256) for file in files if file.path == "config.json"]
    architectures = _architectures(configs[0]) if configs else ()
    return Resolved(commit, files, _hub_task(info), architectures)


def _hub_candidate(entry: Any) -> _Candidate:
    lfs = getattr(entry, "lfs", None)
    sha256 = lfs.sha256 if lfs is not None else None
    size = lfs.size if lfs is not None else entry.size
    return _Candidate(entry.path, int(size), sha256, getattr(entry, "blob_id", None))


def _hub_file(repo_id: str, commit: str, candidate: _Candidate, cache: Cache) -> LockedFile:
    if candidate.sha256 is not None:
        return LockedFile(candidate.path, candidate.size, candidate.sha256)
    # The Hub gives only a git sha1 for small (non-LFS) files: fetch and hash them once, then
    # remember which sha256 that git blob has, so locking another project needs no download.
    known = cache.sha256_of_git_blob(candidate.git_oid) if candidate.git_oid else None
    if known is not None:
        return LockedFile(candidate.path, known.size, known.sha256)
    with _open_hub(repo_id, commit, candidate.path, 0) as (_, chunks):
        stored = cache.store_stream(chunks)
    if candidate.git_oid:
        cache.remember_git_blob(candidate.git_oid, stored)
    return LockedFile(candidate.path, stored.size, stored.sha256)


def _hub_task(info: Any) -> str | None:
    if getattr(info, "library_name", None) == "sentence-transformers":
        return "embedding"
    return _PIPELINE_TASKS.get(getattr(info, "pipeline_tag", None) or "")


def select(spec: ModelSpec, candidates: Sequence[_Candidate]) -> list[_Candidate]:
    """Apply include/exclude, refuse unsafe paths and pickle weights, prefer safetensors."""
    chosen = [c for c in candidates if _matches(c.path, spec.patterns, spec.exclude)]
    for candidate in chosen:
        check_relative(candidate.path)
    pickles = [c.path for c in chosen if c.path.endswith(PICKLE_SUFFIXES)]
    if pickles and not spec.allow_pickle:
        raise UnsafeFileError(
            f"model '{spec.name}': refusing pickle file '{pickles[0]}': loading it can run code",
            "exclude it, or set allow_pickle = true in modelmora.toml (`modelmora add "
            "--allow-pickle`) if you trust this model",
        )
    if any(c.path.endswith(".safetensors") for c in chosen):
        chosen = [c for c in chosen if not _is_pickle_weight(c.path)]
    pickle_only = [c.path for c in candidates if _is_pickle_weight(c.path)]
    if pickle_only and not spec.allow_pickle and not any(_is_weight(c.path) for c in chosen):
        raise UnsafeFileError(
            f"model '{spec.name}' has only pickle weights ({pickle_only[0]}), which can run code",
            f"if you trust this model, {_include_hint(spec, pickle_only[0], chosen)}",
        )
    if not chosen:
        raise SourceError(
            f"model '{spec.name}': no file matches {_patterns(spec)}",
            "check `include` and `exclude` in modelmora.toml",
        )
    _check_weights(spec, candidates, chosen)
    return chosen


def _check_weights(
    spec: ModelSpec, candidates: Sequence[_Candidate], chosen: Sequence[_Candidate]
) -> None:
    """A built-in task loads with transformers, which needs weights among the files taken."""
    if spec.runtime is not None or spec.task not in BUILTIN_TASKS:
        return
    if any(c.path.endswith(LOADABLE_WEIGHTS) for c in chosen):
        return
    left_out = [c.path for c in candidates if c.path.endswith(LOADABLE_WEIGHTS)]
    taken = ", ".join(c.path for c in chosen[:4]) + (", ..." if len(chosen) > 4 else "")
    hint = (
        _include_hint(spec, left_out[0], chosen)
        if left_out
        else "the source has no weights transformers can load; check the source"
    )
    raise SourceError(
        f"model '{spec.name}' has no weights among its selected files ({taken}): the "
        f"{spec.task} task needs a *.safetensors, *.bin or *.pt file",
        hint,
    )


def _include_hint(spec: ModelSpec, weight: str, chosen: Sequence[_Candidate]) -> str:
    """How to take a weight file that `include` or allow_pickle leaves out: settings, flags."""
    taken = [p for p in spec.patterns if any(_matches(c.path, (p,), ()) for c in chosen)]
    include = [*taken, "*" + Path(weight).suffix]
    pickle = weight.endswith(PICKLE_SUFFIXES)
    settings = ("allow_pickle = true and " if pickle else "") + f"include = {json.dumps(include)}"
    flags = (" --allow-pickle" if pickle else "") + "".join(f" --include '{p}'" for p in include)
    return f"set {settings} (`modelmora add {spec.source} --name {spec.name}{flags}`)"


def _is_weight(path: str) -> bool:
    return path.endswith((".safetensors", ".onnx", ".gguf", ".msgpack", ".h5", *PICKLE_SUFFIXES))


def _is_pickle_weight(path: str) -> bool:
    return path.endswith(PICKLE_SUFFIXES)


def _patterns(spec: ModelSpec) -> str:
    return "include " + json.dumps(list(spec.patterns))


def _matches(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    def hit(pattern: str) -> bool:
        return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(Path(path).name, pattern)

    return any(hit(p) for p in include) and not any(hit(p) for p in exclude)


def guess_task(source: str, revision: str | None, root: Path, offline: bool = False) -> str | None:
    """What the source says the model is for: the Hub's pipeline tag or the folder's config."""
    source, suffix = split_revision(source)
    if kind(source) in ("folder", "package"):
        return guess_folder_task(local_folder(source, root))
    if kind(source) != "hub" or is_offline(offline):
        return None
    repo_id, rev = source[len("hf://") :], revision or suffix or "main"
    with _network_errors(source, NETWORK_HINT), _hub_errors(source, rev):
        return _hub_task(_hub_api().model_info(repo_id, revision=rev))


def guess_folder_task(folder: Path) -> str | None:
    """Read what a saved transformers folder is for from its config files."""
    if (folder / "modules.json").is_file() or (
        folder / "config_sentence_transformers.json"
    ).is_file():
        return "embedding"
    if (folder / "model_index.json").is_file():
        return _pipeline_task(folder / "model_index.json")
    return architecture_task(_architectures(folder / "config.json"))


_IMAGE_INPUT_PIPELINES = ("Img2Img", "Inpaint", "Upscale", "Video", "ControlNet")


def _pipeline_task(model_index: Path) -> str | None:
    """A diffusers pipeline folder: text-to-image, unless its class takes an image in."""
    try:
        pipeline = str(json.loads(model_index.read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        return None
    return None if any(kind in pipeline for kind in _IMAGE_INPUT_PIPELINES) else "text-to-image"


# --- fetch --------------------------------------------------------------------------------------


def download(
    cache: Cache,
    model: LockedModel,
    file: LockedFile,
    root: Path,
    offline: bool = False,
    on_progress: OnProgress | None = None,
    stop: threading.Event | None = None,
) -> Path:
    """Put a locked file's blob in the cache, retrying transient failures from the partial file.

    Setting `stop` ends the download (DownloadStopped) at its next chunk or during a retry's wait.
    """
    source = byte_source(model, file, root, offline)
    stop = stop or threading.Event()
    attempt = 1
    while True:
        try:
            return cache.fetch(file, source, on_progress, stop)
        except IntegrityError as error:
            if kind(model.source) in ("hub", "url"):
                raise
            raise IntegrityError(
                f"{error.message}: the local file changed since it was locked or while it was read",
                f"restore it, or `modelmora lock --upgrade {model.name}` to lock it as it is now",
            ) from None
        except TransientError as error:
            if attempt == DOWNLOAD_ATTEMPTS:
                raise TransientError(
                    f"{error.message} (gave up after {attempt} attempts)", error.hint
                ) from None
            if stop.wait(retry_delay(attempt, error.retry_after)):
                raise DownloadStopped from None
            attempt += 1


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt`: the server's Retry-After (up to a
    minute), else exponential backoff capped at RETRY_CAP_S, jittered so that parallel downloads
    do not all retry at the same instant."""
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP_S)
    backoff: float = RETRY_BASE_S * 2.0 ** (attempt - 1)
    return min(backoff, RETRY_CAP_S) * random.uniform(0.5, 1.0)


def byte_source(
    model: LockedModel, file: LockedFile, root: Path, offline: bool = False
) -> ByteSource:
    """Where to read one locked file's bytes from, starting at an offset."""
    source_kind = kind(model.source)
    if source_kind in ("hub", "url") and is_offline(offline):
        raise OfflineError(
            f"{model.name}: {file.path} is not in the cache and offline mode is on",
            "run `modelmora install` with network access, or drop --offline / HF_HUB_OFFLINE",
        )
    if source_kind == "hub":
        repo_id = model.source[len("hf://") :]
        return lambda offset: _open_hub(repo_id, model.commit, file.path, offset)
    if source_kind == "url":
        return lambda offset: _open_url(model.source, {}, offset)
    folder = local_folder(model.source, root)
    return lambda offset: _open_file(folder / check_relative(file.path), offset)


@contextlib.contextmanager
def _open_file(path: Path, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise NotFoundError(
            f"{path} is gone", "run `modelmora lock` to lock what is there now"
        ) from None
    with handle:
        handle.seek(offset)
        yield offset, iter(lambda: handle.read(CHUNK), b"")


def _hub_api() -> HfApi:
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint())


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _open_hub(
    repo_id: str, commit: str, path: str, offset: int
) -> contextlib.AbstractContextManager[tuple[int, Iterator[bytes]]]:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    url = hf_hub_url(repo_id, path, revision=commit, endpoint=hub_endpoint())
    return _open_url(
        url, build_hf_headers(), offset, what=f"hf://{repo_id}/{path}", hint=NETWORK_HINT
    )


@contextlib.contextmanager
def _open_url(
    url: str,
    headers: dict[str, str],
    offset: int,
    what: str | None = None,
    hint: str = URL_NETWORK_HINT,
) -> Iterator[tuple[int, Iterator[bytes]]]:
    from huggingface_hub import get_session

    label = what or url
    request_headers = {**headers, **({"Range": f"bytes={offset}-"} if offset else {})}
    with _network_errors(label, hint):
        stream_context = get_session().stream(
            "GET", url, headers=request_headers, follow_redirects=True, timeout=TIMEOUT
        )
        with stream_context as response:
            _raise_for_status(response.status_code, response.headers, label)
            start = offset if response.status_code == 206 else 0
            # Chunks as they arrive (not gathered to 1 MiB): a stop is noticed between them.
            yield start, _guarded(response.iter_bytes(), label, hint)


def _guarded(chunks: Iterator[bytes], label: str, hint: str) -> Iterator[bytes]:
    with _network_errors(label, hint):
        yield from chunks


def _raise_for_status(status: int, headers: Mapping[str, str], label: str) -> None:
    if status in (200, 206):
        return
    if status in RETRY_STATUSES:
        raise TransientError(
            f"{label}: the server answered HTTP {status}",
            "try again later",
            retry_after=_retry_after(headers.get("retry-after")),
        )
    if status == 404:
        raise NotFoundError(f"{label}: not found (HTTP 404)", "check the source and revision")
    if status in (401, 403):
        raise SourceError(
            f"{label}: access denied (HTTP {status})", "set HF_TOKEN to a token with access"
        )
    raise SourceError(f"{label}: the server answered HTTP {status}", "try again later")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


@contextlib.contextmanager
def _network_errors(label: str, hint: str) -> Iterator[None]:
    from huggingface_hub.utils import httpx  # type: ignore[attr-defined]

    try:
        yield
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as error:
        raise TransientError(_network_message(label, error), hint) from None
    except httpx.HTTPError as error:
        raise SourceError(_network_message(label, error), hint) from None


def _network_message(label: str, error: Exception) -> str:
    return f"{label}: network error: {error or type(error).__name__}"


@contextlib.contextmanager
def _hub_errors(source: str, revision: str) -> Iterator[None]:
    from huggingface_hub import errors

    try:
        yield
    except errors.RepositoryNotFoundError:
        raise NotFoundError(
            f"repository '{source}' not found at {hub_endpoint()}",
            "check the name, or set HF_TOKEN if it is private or gated",
        ) from None
    except errors.RevisionNotFoundError:
        raise NotFoundError(
            f"revision '{revision}' not found in '{source}'", "check the branch, tag or commit"
        ) from None
    except errors.HfHubHTTPError as error:
        raise SourceError(f"{source}: the Hub answered: {error}".splitlines()[0]) from None

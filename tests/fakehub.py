"""A loopback fake of the Hugging Face Hub that the real `huggingface_hub` client talks to.

    hub = FakeHub()
    endpoint = hub.start()  # "http://127.0.0.1:PORT"
    sha = hub.add_commit("org/tiny", {"config.json": b"{}", "model.safetensors": weights})
    HfApi(endpoint=endpoint).model_info("org/tiny", files_metadata=True)
    hub.stop()

Routes (model repos only):
- `GET /api/models/{repo}` and `GET /api/models/{repo}/revision/{rev}` (`?blobs=true`);
- `GET /api/models/{repo}/tree/{rev}[/{path}]` (`?recursive=true&expand=true`), all in one page;
- `GET /api/models/{repo}/refs`;
- `HEAD` and `GET /{repo}/resolve/{rev}/{path}`, with `Range: bytes=N-` / `bytes=N-M` (206).
Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) and an
`{"error": ...}` body, so the client raises `RepositoryNotFoundError`, `RevisionNotFoundError` and
`RemoteEntryNotFoundError`. `rev` is a branch (`refs/pr/1` included), a tag or a full commit sha.

Pointing the client at the fake. `huggingface_hub.constants` is computed once, at import, from the
environment: setting `HF_ENDPOINT` (or `HF_HOME`, `HF_HUB_OFFLINE`, ...) later changes nothing in
this process. Recommended: the `fake_hub` fixture of `conftest.py`, which sets `HF_ENDPOINT` for
child processes and patches both `constants.ENDPOINT` and `constants.HUGGINGFACE_CO_URL_TEMPLATE`.
Patching `ENDPOINT` alone is a trap: `hf_hub_url` formats the template (still huggingface.co) and
swaps the prefix only when it starts with `constants.ENDPOINT`: downloads would leave the machine.
Passing `endpoint=` to `HfApi`, `hf_hub_download` and `snapshot_download` works with no patching;
the module-level shortcuts (`huggingface_hub.model_info`, ...) are bound to an `HfApi` built at
import and ignore both.

Wire facts this fake honours, read from huggingface_hub 2.4:
- `hf_hub_download` sends `HEAD /resolve` with redirects off and follows only same-origin redirects.
  It names the blob after `X-Linked-Etag`, else `ETag` (quotes and `W/` stripped), takes the size
  from `X-Linked-Size`, else `Content-Length`, and gives up without `X-Repo-Commit`. Then it GETs
  the URL the HEAD ended on: with no redirect, a download "at main" fetches `/resolve/main/...`,
  not the commit.
- A redirect to another origin is a CDN to the client: the HEAD stops there and the GET goes to
  `Location` without `Authorization`. `FakeHub(redirect_lfs=True)` does that for LFS files, to
  `http://localhost:PORT/...?cdn=1` (another origin than 127.0.0.1), served without auth.
- A body cut short of `Content-Length` is a `RemoteProtocolError`: `http_get` sleeps one second and
  retries, with `Range: bytes=N-` only if it had received whole chunks of
  `constants.DOWNLOAD_CHUNK_SIZE` (10 MiB; patch it to test resuming), else from byte 0.
  A reset connection (`ReadError`) is not retried.
- Nothing checks downloaded bytes against the sha256; only their count is checked.

`requests` logs `(method, path with query, headers)` with lower-case header names.

Faults, each keyed by `(repo_id, path)` and applied to `GET /resolve` only (HEAD is never affected):
- `fail_after[key] = N`: the next GET sends N body bytes, then a clean FIN (`RemoteProtocolError`);
- `reset_after[key] = N`: the next GET sends N body bytes, then resets the connection (RST: the
  client gets `ReadError`, and may lose bytes that were in flight);
- `fail_status[key] = [500, 503]`: the next GETs answer these statuses, one each, then the file;
- `gates[key] = threading.Event()`: the next GET waits until the event is set before answering;
- `slow[key] = bytes_per_s`: every GET of that file trickles at that rate (`throttle_bytes_per_s`
  does the same for every file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
RANGE_PATTERN = re.compile(r"bytes=(\d*)-(\d*)")
CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class Blob:
    """One file of a commit, with the identifiers the Hub reports for it."""

    data: bytes
    is_lfs: bool
    sha256: str
    git_oid: str  # sha1 of the git blob: the pointer file for an LFS file
    pointer_size: int

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.is_lfs else self.git_oid


def make_blob(data: bytes, is_lfs: bool) -> Blob:
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
    stored = pointer.encode() if is_lfs else data
    return Blob(data, is_lfs, sha256, git_blob_oid(stored), len(pointer))


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    files: Mapping[str, Blob]
    date: datetime
    title: str


@dataclass
class Repo:
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def find(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(sha)


class HubError(Exception):
    """An error answer: status, `X-Error-Code`, message and extra headers."""

    def __init__(
        self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    fail_after: int | None = None
    reset_after: int | None = None
    bytes_per_s: float | None = None


class FakeHub:
    """An in-memory Hub of model repos, served over loopback HTTP/1.1 with keep-alive."""

    def __init__(self, token: str | None = None, redirect_lfs: bool = False) -> None:
        self.token = token
        self.redirect_lfs = redirect_lfs
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.corrupt: dict[tuple[str, str], bytes] = {}
        self.fail_after: dict[tuple[str, str], int] = {}
        self.reset_after: dict[tuple[str, str], int] = {}
        self.fail_status: dict[tuple[str, str], list[int]] = {}
        self.gates: dict[tuple[str, str], threading.Event] = {}
        self.slow: dict[tuple[str, str], float] = {}
        self.throttle_bytes_per_s: float | None = None
        # Extra fields merged into a repo's model_info answer, e.g. {"gated": "auto"}.
        self.model_metadata: dict[str, dict[str, Any]] = {}
        self._repos: dict[str, Repo] = {}
        self._commit_count = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("FakeHub is already started")
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._thread.join()
        self._server.close_connections()
        self._server.server_close()
        self._server = self._thread = None

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes],
        branch: str = "main",
        lfs_threshold: int = 1024,
        tags: Sequence[str] = (),
    ) -> str:
        """Commit `files` (the whole tree, not a diff) on top of `branch`, and move the branch."""
        blobs = {path: make_blob(data, len(data) >= lfs_threshold) for path, data in files.items()}
        with self._lock:
            repo = self._repos.setdefault(repo_id, Repo())
            parent = repo.branches.get(branch)
            sha = commit_sha(repo_id, blobs, parent)
            date = EPOCH + timedelta(minutes=self._commit_count)
            self._commit_count += 1
            repo.commits[sha] = Commit(sha, parent, blobs, date, f"Commit {self._commit_count}")
            repo.branches[branch] = sha
            repo.tags.update(dict.fromkeys(tags, sha))
        return sha

    def paths(self, method: str | None = None) -> list[str]:
        """The request paths logged so far, optionally only those of one method."""
        with self._lock:
            return [path for verb, path, _ in self.requests if method in (None, verb)]

    def log(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, path, headers))

    def take_fail_after(self, key: tuple[str, str]) -> int | None:
        with self._lock:
            return self.fail_after.pop(key, None)

    def take_reset_after(self, key: tuple[str, str]) -> int | None:
        with self._lock:
            return self.reset_after.pop(key, None)

    def take_fail_status(self, key: tuple[str, str]) -> int | None:
        with self._lock:
            statuses = self.fail_status.get(key)
            return statuses.pop(0) if statuses else None

    def wait_at_gate(self, key: tuple[str, str]) -> None:
        with self._lock:
            gate = self.gates.pop(key, None)
        if gate is not None:
            gate.wait(timeout=120)  # a bound, so a test that forgets to open it cannot hang stop()

    def repo(self, repo_id: str) -> Repo:
        """A copy of the repo's state, safe to read while tests add commits."""
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
            return Repo(dict(repo.commits), dict(repo.branches), dict(repo.tags))

    def lookup(self, repo_id: str, revision: str) -> tuple[Repo, Commit]:
        repo = self.repo(repo_id)
        commit = repo.find(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, commit

    def split_repo_id(self, segments: list[str]) -> tuple[str, list[str]]:
        """Split url segments into a known repo id (`name` or `owner/name`) and the rest."""
        with self._lock:
            for size in (2, 1):
                repo_id = unquote("/".join(segments[:size]))
                if len(segments) >= size and repo_id in self._repos:
                    return repo_id, segments[size:]
        raise HubError(404, "RepoNotFound", f"Repository {'/'.join(segments[:2])} not found")

    def check_auth(self, authorization: str | None) -> None:
        if self.token is None or authorization == f"Bearer {self.token}":
            return
        if authorization is None:
            raise HubError(401, "RepoNotFound", "Repository not found (authentication required)")
        raise HubError(401, None, "Invalid credentials in Authorization header")


def commit_sha(repo_id: str, blobs: Mapping[str, Blob], parent: str | None) -> str:
    lines = [f"{repo_id}\0{parent or ''}\n"] + [f"{p}\0{blobs[p].git_oid}\n" for p in sorted(blobs)]
    return hashlib.sha1("".join(lines).encode()).hexdigest()


def iso(date: datetime) -> str:
    return date.strftime("%Y-%m-%dT%H:%M:%S.000Z")


# ---------------------------------------------------------------- answers


def model_info(hub: FakeHub, repo_id: str, repo: Repo, commit: Commit, blobs: bool) -> Reply:
    first = min(repo.commits.values(), key=lambda c: c.date)
    config = read_json(commit.files.get("config.json"))
    card = describe_model(commit, config)
    info: dict[str, Any] = {
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/")[0] if "/" in repo_id else None,
        "sha": commit.sha,
        "lastModified": iso(commit.date),
        "createdAt": iso(first.date),
        "private": False,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "siblings": [sibling(path, commit.files[path], blobs) for path in sorted(commit.files)],
        "spaces": [],
        "usedStorage": sum(blob.size for blob in commit.files.values()),
        **card,
        **hub.model_metadata.get(repo_id, {}),
    }
    return json_reply(info)


def sibling(path: str, blob: Blob, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": path}
    entry: dict[str, Any] = {"rfilename": path, "size": blob.size, "blobId": blob.git_oid}
    if blob.is_lfs:
        entry["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
    return entry


def describe_model(commit: Commit, config: dict[str, Any] | None) -> dict[str, Any]:
    """What the Hub derives from a repo's files: library, pipeline tag, tags, config, weights."""
    if config is None:
        return {"tags": []}
    pipeline_tag = guess_pipeline_tag(commit, config)
    library = "sentence-transformers" if "modules.json" in commit.files else "transformers"
    tags = [library, config.get("model_type", ""), pipeline_tag]
    card: dict[str, Any] = {
        "library_name": library,
        "pipeline_tag": pipeline_tag,
        "config": {key: config[key] for key in ("architectures", "model_type") if key in config},
    }
    weights = [blob for path, blob in commit.files.items() if path.endswith(".safetensors")]
    if weights:
        tags.append("safetensors")
        card["safetensors"] = count_parameters(weights)
    return {**card, "tags": [tag for tag in tags if tag]}


def guess_pipeline_tag(commit: Commit, config: dict[str, Any]) -> str:
    architectures = " ".join(config.get("architectures") or [])
    if "modules.json" in commit.files:
        return "sentence-similarity"
    for marker, tag in (
        ("ForSequenceClassification", "text-classification"),
        ("ForCausalLM", "text-generation"),
        ("LMHeadModel", "text-generation"),
        ("ForMaskedLM", "fill-mask"),
    ):
        if marker in architectures:
            return tag
    return "feature-extraction"


def count_parameters(weights: list[Blob]) -> dict[str, Any] | None:
    parameters: dict[str, int] = {}
    for blob in weights:
        for tensor in safetensors_header(blob).values():
            count = 1
            for dim in tensor.get("shape", []):
                count *= dim
            parameters[tensor["dtype"]] = parameters.get(tensor["dtype"], 0) + count
    return {"parameters": parameters, "total": sum(parameters.values())} if parameters else None


def safetensors_header(blob: Blob) -> dict[str, dict[str, Any]]:
    """The tensors a safetensors file declares; none when the bytes are not safetensors."""
    try:
        (length,) = struct.unpack("<Q", blob.data[:8])
        header = json.loads(blob.data[8 : 8 + length])
    except (struct.error, ValueError):
        return {}
    if not isinstance(header, dict):
        return {}
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def read_json(blob: Blob | None) -> dict[str, Any] | None:
    try:
        data = json.loads(blob.data) if blob is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def tree(repo: Repo, commit: Commit, path: str, recursive: bool, expand: bool) -> Reply:
    prefix = path.strip("/")
    folders = folder_paths(commit.files)
    if prefix and f"{prefix}/" not in folders:
        raise HubError(404, "EntryNotFound", f"{prefix} does not exist on {commit.sha}", at(commit))
    entries = []
    for entry in sorted(folders | set(commit.files)):
        name = entry.rstrip("/")
        parent = name.rsplit("/", 1)[0] if "/" in name else ""
        if parent == prefix or (recursive and name.startswith(f"{prefix}/" if prefix else "")):
            entries.append(tree_entry(repo, commit, entry, expand))
    return json_reply(entries)


def folder_paths(files: Mapping[str, Blob]) -> set[str]:
    """Every folder holding a file, with a trailing slash: {"a/", "a/b/"} for "a/b/c.txt"."""
    parts = (path.split("/")[:-1] for path in files)
    return {"/".join(p[: i + 1]) + "/" for p in parts for i in range(len(p))}


def tree_entry(repo: Repo, commit: Commit, entry: str, expand: bool) -> dict[str, Any]:
    if entry.endswith("/"):
        folder = entry.rstrip("/")
        info: dict[str, Any] = {"type": "directory", "oid": tree_oid(commit, folder), "size": 0}
        info["path"] = folder
    else:
        blob = commit.files[entry]
        info = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": entry}
        if blob.is_lfs:
            info["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
    if expand:
        last = last_commit(repo, commit, info["path"])
        info["lastCommit"] = {"id": last.sha, "title": last.title, "date": iso(last.date)}
    return info


def tree_oid(commit: Commit, folder: str) -> str:
    inside = sorted(p for p in commit.files if p.startswith(f"{folder}/"))
    return hashlib.sha1(
        "".join(f"{p}\0{commit.files[p].git_oid}\n" for p in inside).encode()
    ).hexdigest()


def fingerprint(commit: Commit, path: str) -> str | None:
    blob = commit.files.get(path)
    return blob.git_oid if blob is not None else tree_oid(commit, path)


def last_commit(repo: Repo, commit: Commit, path: str) -> Commit:
    """The oldest ancestor of `commit` from which `path` has not changed."""
    current = commit
    while current.parent is not None:
        parent = repo.commits[current.parent]
        if fingerprint(parent, path) != fingerprint(commit, path):
            break
        current = parent
    return current


def refs(repo: Repo) -> Reply:
    def ref(name: str, kind: str, sha: str) -> dict[str, str]:
        return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}

    branches = {n: s for n, s in repo.branches.items() if not n.startswith("refs/pr/")}
    prs = {
        n.removeprefix("refs/pr/"): s for n, s in repo.branches.items() if n.startswith("refs/pr/")
    }
    return json_reply(
        {
            "branches": [ref(name, "heads", sha) for name, sha in sorted(branches.items())],
            "tags": [ref(name, "tags", sha) for name, sha in sorted(repo.tags.items())],
            "converts": [],
            "pullRequests": [ref(name, "pr", sha) for name, sha in sorted(prs.items())],
        }
    )


def resolve(
    hub: FakeHub, repo_id: str, commit: Commit, path: str, range_header: str | None
) -> Reply:
    blob = commit.files.get(path)
    if blob is None:
        raise HubError(404, "EntryNotFound", f"{path} does not exist on {commit.sha}", at(commit))
    headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes"}
    if blob.is_lfs:
        headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
    body = hub.corrupt.get((repo_id, path), blob.data)
    return ranged(body, range_header, headers)


def ranged(body: bytes, range_header: str | None, headers: dict[str, str]) -> Reply:
    headers = {**headers, "Content-Type": "application/octet-stream"}
    match = RANGE_PATTERN.fullmatch((range_header or "").replace(" ", ""))
    if range_header is None or match is None or match.groups() == ("", ""):
        return Reply(200, headers, body)
    first, last = match.groups()
    start = int(first) if first else max(len(body) - int(last), 0)
    end = min(int(last), len(body) - 1) if first and last else len(body) - 1
    if start >= len(body) or start > end:
        message = f"Range {range_header} not satisfiable for {len(body)} bytes"
        raise HubError(416, None, message, {"Content-Range": f"bytes */{len(body)}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
    return Reply(206, headers, body[start : end + 1])


def cdn_redirect(hub: FakeHub, repo_id: str, commit: Commit, path: str) -> Reply:
    port = hub.endpoint.rsplit(":", 1)[1]
    location = f"http://localhost:{port}/{repo_id}/resolve/{commit.sha}/{quote(path)}?cdn=1"
    blob = commit.files[path]
    headers = {
        "X-Repo-Commit": commit.sha,
        "ETag": f'"{blob.git_oid}"',
        "X-Linked-Etag": f'"{blob.sha256}"',
        "X-Linked-Size": str(blob.size),
        "Location": location,
    }
    return Reply(302, headers)


def at(commit: Commit) -> dict[str, str]:
    return {"X-Repo-Commit": commit.sha}


def json_reply(payload: Any) -> Reply:
    return Reply(200, {"Content-Type": "application/json"}, json.dumps(payload).encode())


def error_reply(error: HubError) -> Reply:
    headers = {
        "Content-Type": "application/json",
        "X-Error-Message": error.message,
        **error.headers,
    }
    if error.code is not None:
        headers["X-Error-Code"] = error.code
    return Reply(error.status, headers, json.dumps({"error": error.message}).encode())


# ---------------------------------------------------------------- routing


def route(hub: FakeHub, method: str, target: str, headers: Mapping[str, str]) -> Reply:
    url = urlsplit(target)
    query = {key: values[-1] for key, values in parse_qs(url.query).items()}
    segments = url.path.strip("/").split("/")
    if query.get("cdn") != "1":
        hub.check_auth(headers.get("authorization"))
    if segments[:2] == ["api", "models"]:
        return route_api(hub, segments[2:], query)
    if "resolve" in segments[1:3]:
        return route_resolve(hub, method, segments, query, headers.get("range"))
    raise HubError(404, None, f"Not found: {method} {url.path}")


def route_api(hub: FakeHub, segments: list[str], query: dict[str, str]) -> Reply:
    repo_id, rest = hub.split_repo_id(segments)
    if not rest or rest[0] == "revision":
        repo, commit = hub.lookup(repo_id, unquote("/".join(rest[1:])) or "main")
        return model_info(hub, repo_id, repo, commit, is_true(query.get("blobs")))
    if rest[0] == "tree" and len(rest) >= 2:
        repo, commit = hub.lookup(repo_id, unquote(rest[1]))
        path = unquote("/".join(rest[2:]))
        return tree(
            repo, commit, path, is_true(query.get("recursive")), is_true(query.get("expand"))
        )
    if rest == ["refs"]:
        return refs(hub.repo(repo_id))
    raise HubError(404, None, f"Not found: /api/models/{repo_id}/{'/'.join(rest)}")


def route_resolve(
    hub: FakeHub, method: str, segments: list[str], query: dict[str, str], range_header: str | None
) -> Reply:
    index = segments.index("resolve", 1)
    repo_id, rest = hub.split_repo_id(segments[:index])
    if rest:
        raise HubError(404, "RepoNotFound", f"Repository {'/'.join(segments[:index])} not found")
    if len(segments) < index + 3:
        raise HubError(404, None, "Not found: missing revision or file path")
    _, commit = hub.lookup(repo_id, unquote(segments[index + 1]))
    path = unquote("/".join(segments[index + 2 :]))
    blob = commit.files.get(path)
    if hub.redirect_lfs and blob is not None and blob.is_lfs and query.get("cdn") != "1":
        return cdn_redirect(hub, repo_id, commit, path)
    reply = resolve(hub, repo_id, commit, path, range_header)
    return reply if method != "GET" else faulty(hub, (repo_id, path), reply)


def faulty(hub: FakeHub, key: tuple[str, str], reply: Reply) -> Reply:
    """`reply` with the faults the test armed for this file."""
    hub.wait_at_gate(key)
    status = hub.take_fail_status(key)
    if status is not None:
        raise HubError(status, None, f"Injected failure: HTTP {status}")
    return Reply(
        reply.status,
        reply.headers,
        reply.body,
        fail_after=hub.take_fail_after(key),
        reset_after=hub.take_reset_after(key),
        bytes_per_s=hub.slow.get(key),
    )


def is_true(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


# ---------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 60  # an idle keep-alive connection is dropped after this many seconds
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

    def do_GET(self) -> None:
        self.answer()

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.log_request_headers()
        self.send(error_reply(HubError(405, None, f"{self.command} is not supported by FakeHub")))

    do_PUT = do_PATCH = do_DELETE = do_POST

    def answer(self) -> None:
        headers = self.log_request_headers()
        try:
            reply = route(self.server.hub, self.command, self.path, headers)
        except HubError as error:
            reply = error_reply(error)
        self.send(reply)

    def log_request_headers(self) -> dict[str, str]:
        headers = {key.lower(): value for key, value in self.headers.items()}
        self.server.hub.log(self.command, self.path, headers)
        return headers

    def send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.write_body(reply)

    def write_body(self, reply: Reply) -> None:
        body = reply.body
        rate = reply.bytes_per_s or self.server.hub.throttle_bytes_per_s
        chunk = max(1024, int(rate / 20)) if rate else CHUNK_SIZE
        cuts = [n for n in (reply.fail_after, reply.reset_after) if n is not None]
        end = min([len(body), *cuts])
        for start in range(0, end, chunk):
            piece = body[start : min(start + chunk, end)]
            self.wfile.write(piece)
            if rate:
                time.sleep(len(piece) / rate)
        if reply.reset_after is not None and end < len(body):
            self.reset_connection()
        elif end < len(body):
            self.close_connection = True
            self.connection.shutdown(
                socket.SHUT_WR
            )  # a clean FIN mid-body, as a killed server sends

    def reset_connection(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST, as a crashed proxy or NAT does."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the socket closes only once its file objects are closed
        self.wfile.close()
        self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    """Serves each connection in a daemon thread, and can close them all on stop."""

    daemon_threads = True

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._conn_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve, args=(request, client_address), daemon=True)
        with self._conn_lock:
            self._connections.add(request)
            self._handlers.add(thread)
        thread.start()

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._connections.discard(request)
                self._handlers.discard(threading.current_thread())

    def close_connections(self) -> None:
        with self._conn_lock:
            connections, threads = list(self._connections), list(self._handlers)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-answer are expected; anything else is a bug in the fake.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

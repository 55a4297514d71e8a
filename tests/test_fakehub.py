"""The fake Hub answers the real `huggingface_hub` client the way the Hub does."""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fakehub import FakeHub, git_blob_oid
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from waiting import eventually

REPO = "org/tiny"
WEIGHTS = bytes(range(256)) * 20  # 5120 bytes: over the LFS threshold
FILES = {
    "config.json": b'{"model_type": "bert", "architectures": ["BertModel"]}',
    "model.safetensors": WEIGHTS,
    "sub/dir/notes.txt": b"hello",
    "README.md": b"# tiny\n",
}


@pytest.fixture
def commit(fake_hub: FakeHub) -> str:
    return fake_hub.add_commit(REPO, FILES)


@contextmanager
def connection(hub: FakeHub) -> Iterator[http.client.HTTPConnection]:
    port = int(hub.endpoint.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def fetch(
    conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.headers, response.read()


def test_model_info_reports_the_commit_and_file_metadata(fake_hub: FakeHub, commit: str) -> None:
    info = HfApi().model_info(REPO, files_metadata=True)

    assert info.id == REPO and info.sha == commit and info.private is False
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert sorted(siblings) == sorted(FILES)
    weights = siblings["model.safetensors"]
    assert weights.size == len(WEIGHTS) and weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert siblings["README.md"].lfs is None
    assert siblings["README.md"].blob_id == git_blob_oid(FILES["README.md"])
    assert "blobs=true" in fake_hub.paths("GET")[-1]


def test_model_info_without_metadata_lists_names_only(fake_hub: FakeHub, commit: str) -> None:
    info = HfApi().model_info(REPO)

    assert {s.rfilename for s in info.siblings or []} == set(FILES)
    assert all(s.size is None for s in info.siblings or [])
    assert info.library_name == "transformers" and info.pipeline_tag == "feature-extraction"


def test_revisions_are_branches_tags_prs_or_commits(fake_hub: FakeHub) -> None:
    first = fake_hub.add_commit(REPO, FILES, tags=["v1.0"])
    second = fake_hub.add_commit(REPO, {**FILES, "README.md": b"# two\n"})
    pr = fake_hub.add_commit(REPO, {"README.md": b"# pr\n"}, branch="refs/pr/1")
    api = HfApi()

    assert api.model_info(REPO).sha == second
    assert api.model_info(REPO, revision="main").sha == second
    assert api.model_info(REPO, revision="v1.0").sha == first
    assert api.model_info(REPO, revision=first).sha == first
    assert api.model_info(REPO, revision="refs/pr/1").sha == pr
    assert "/revision/refs%2Fpr%2F1" in fake_hub.paths("GET")[-1]
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", second)]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", first)]
    assert [(p.ref, p.target_commit) for p in refs.pull_requests or []] == [("refs/pr/1", pr)]


def test_commit_shas_are_deterministic(fake_hub: FakeHub) -> None:
    with FakeHub() as other:
        assert other.add_commit(REPO, FILES) == fake_hub.add_commit(REPO, FILES)
    assert fake_hub.add_commit(REPO, FILES) != fake_hub.add_commit("org/other", FILES)


def test_list_repo_tree_recursive_reports_lfs_sha256(fake_hub: FakeHub, commit: str) -> None:
    entries = {e.path: e for e in HfApi().list_repo_tree(REPO, recursive=True, revision=commit)}

    assert sorted(entries) == sorted([*FILES, "sub", "sub/dir"])
    assert isinstance(entries["sub/dir"], RepoFolder)
    weights = entries["model.safetensors"]
    assert isinstance(weights, RepoFile) and weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert weights.lfs.size == weights.size == len(WEIGHTS)
    config = entries["config.json"]
    assert isinstance(config, RepoFile) and config.lfs is None
    assert config.blob_id == git_blob_oid(FILES["config.json"])
    assert f"/tree/{commit}?recursive=true" in fake_hub.paths("GET")[-1]


def test_list_repo_tree_of_a_folder_lists_its_children(fake_hub: FakeHub, commit: str) -> None:
    top = [e.path for e in HfApi().list_repo_tree(REPO)]
    sub = [e.path for e in HfApi().list_repo_tree(REPO, "sub", expand=True)]

    assert sorted(top) == ["README.md", "config.json", "model.safetensors", "sub"]
    assert sub == ["sub/dir"]


def test_expand_reports_the_last_commit_that_changed_a_path(fake_hub: FakeHub) -> None:
    first = fake_hub.add_commit(REPO, FILES)
    second = fake_hub.add_commit(REPO, {**FILES, "README.md": b"# two\n"})
    entries = {e.path: e for e in HfApi().list_repo_tree(REPO, recursive=True, expand=True)}

    readme, config = entries["README.md"], entries["config.json"]
    assert readme.last_commit is not None and readme.last_commit.oid == second
    assert config.last_commit is not None and config.last_commit.oid == first


def test_download_at_a_commit_fetches_the_commit(fake_hub: FakeHub, commit: str) -> None:
    path = hf_hub_download(REPO, "sub/dir/notes.txt", revision=commit)

    assert Path(path).read_bytes() == b"hello"
    assert Path(path).parent.parent.parent.name == commit
    assert fake_hub.paths("HEAD") == [f"/{REPO}/resolve/{commit}/sub/dir/notes.txt"]
    assert fake_hub.paths("GET") == [f"/{REPO}/resolve/{commit}/sub/dir/notes.txt"]


def test_download_at_a_branch_names_blobs_after_the_etag(
    fake_hub: FakeHub, commit: str, isolated_env: Path
) -> None:
    weights = Path(hf_hub_download(REPO, "model.safetensors"))
    readme = Path(hf_hub_download(REPO, "README.md"))

    assert weights.read_bytes() == WEIGHTS
    assert weights.resolve().name == hashlib.sha256(WEIGHTS).hexdigest()
    assert readme.resolve().name == git_blob_oid(FILES["README.md"])
    refs = isolated_env / "hf-home" / "hub" / "models--org--tiny" / "refs" / "main"
    assert refs.read_text() == commit
    assert f"/{REPO}/resolve/main/README.md" in fake_hub.paths("GET")


def test_file_metadata_comes_from_linked_etag_and_size(fake_hub: FakeHub, commit: str) -> None:
    weights = get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors"))
    readme = get_hf_file_metadata(hf_hub_url(REPO, "README.md", revision=commit))

    assert (weights.commit_hash, weights.size) == (commit, len(WEIGHTS))
    assert weights.etag == hashlib.sha256(WEIGHTS).hexdigest()
    assert readme.etag == git_blob_oid(FILES["README.md"])
    assert readme.size == len(FILES["README.md"])


def test_snapshot_download_resolves_then_fetches_at_the_commit(
    fake_hub: FakeHub, commit: str, tmp_path: Path
) -> None:
    folder = Path(snapshot_download(REPO, local_dir=tmp_path / "out"))

    for name, data in FILES.items():
        assert (folder / name).read_bytes() == data
    resolves = [p for p in fake_hub.paths("GET") if "/resolve/" in p]
    assert len(resolves) == len(FILES)
    assert all(p.startswith(f"/{REPO}/resolve/{commit}/") for p in resolves)


def test_snapshot_download_into_the_cache(fake_hub: FakeHub, commit: str, tmp_path: Path) -> None:
    folder = Path(snapshot_download(REPO, cache_dir=tmp_path / "cache"))

    assert folder.name == commit
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: HfApi().model_info("org/missing"), RepositoryNotFoundError),
        (lambda: HfApi().model_info(REPO, revision="nope"), RevisionNotFoundError),
        (lambda: list(HfApi().list_repo_tree(REPO, "nowhere")), EntryNotFoundError),
        (lambda: list(HfApi().list_repo_tree(REPO, revision="nope")), RevisionNotFoundError),
        (lambda: hf_hub_download("org/missing", "config.json"), RepositoryNotFoundError),
        (lambda: hf_hub_download(REPO, "config.json", revision="nope"), RevisionNotFoundError),
        (lambda: hf_hub_download(REPO, "missing.json"), EntryNotFoundError),
    ],
)
def test_misses_raise_the_client_errors(
    fake_hub: FakeHub, commit: str, call: Callable[[], object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        call()


def test_range_requests_answer_206(fake_hub: FakeHub, commit: str) -> None:
    url = f"/{REPO}/resolve/{commit}/model.safetensors"
    size = len(WEIGHTS)
    with connection(fake_hub) as conn:
        status, headers, body = fetch(conn, url, {"Range": "bytes=100-"})
        assert (status, body) == (206, WEIGHTS[100:])
        assert headers["Content-Range"] == f"bytes 100-{size - 1}/{size}"
        status, headers, body = fetch(conn, url, {"Range": "bytes=10-19"})
        assert (status, body, headers["Content-Length"]) == (206, WEIGHTS[10:20], "10")
        status, _, body = fetch(conn, url, {"Range": "bytes=-5"})
        assert (status, body) == (206, WEIGHTS[-5:])
        status, headers, _ = fetch(conn, url, {"Range": f"bytes={size}-"})
        assert (status, headers["Content-Range"]) == (416, f"bytes */{size}")
        status, headers, body = fetch(conn, url)
        assert (status, body, headers["Accept-Ranges"]) == (200, WEIGHTS, "bytes")
    assert fake_hub.requests[0][2]["range"] == "bytes=100-"


def test_keep_alive_answers_many_requests_on_one_connection(fake_hub: FakeHub, commit: str) -> None:
    with connection(fake_hub) as conn:
        for name, data in FILES.items():
            assert fetch(conn, f"/{REPO}/resolve/main/{name}")[2] == data
        status, headers, body = fetch(conn, f"/{REPO}/resolve/main/missing")
        assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
        assert headers["X-Repo-Commit"] == commit and b'"error"' in body


def test_fail_after_cuts_the_body_once(fake_hub: FakeHub, commit: str) -> None:
    url = f"/{REPO}/resolve/main/model.safetensors"
    fake_hub.fail_after[(REPO, "model.safetensors")] = 1000
    with connection(fake_hub) as conn, pytest.raises(http.client.IncompleteRead) as cut:
        fetch(conn, url)
    assert len(cut.value.partial) == 1000
    assert fake_hub.fail_after == {}
    with connection(fake_hub) as conn:
        assert fetch(conn, url)[2] == WEIGHTS


def test_head_requests_leave_fail_after_armed(fake_hub: FakeHub, commit: str) -> None:
    fake_hub.fail_after[(REPO, "model.safetensors")] = 10
    get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors"))

    assert fake_hub.fail_after == {(REPO, "model.safetensors"): 10}


@pytest.mark.slow
def test_hf_hub_download_resumes_a_cut_download_with_a_range(
    fake_hub: FakeHub, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client only counts whole chunks as received, and they are 10 MiB by default.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    fake_hub.fail_after[(REPO, "model.safetensors")] = 2048

    path = hf_hub_download(REPO, "model.safetensors", revision=commit)

    assert Path(path).read_bytes() == WEIGHTS
    ranges = [headers.get("range") for method, _, headers in fake_hub.requests if method == "GET"]
    assert ranges == [None, "bytes=2048-"]


def test_corrupt_serves_other_bytes_under_the_same_metadata(fake_hub: FakeHub, commit: str) -> None:
    fake_hub.corrupt[(REPO, "model.safetensors")] = b"x" * len(WEIGHTS)

    path = hf_hub_download(REPO, "model.safetensors", revision=commit)

    assert Path(path).read_bytes() == b"x" * len(WEIGHTS)
    assert Path(path).resolve().name == hashlib.sha256(WEIGHTS).hexdigest()


def test_throttle_slows_downloads(fake_hub: FakeHub, commit: str) -> None:
    fake_hub.throttle_bytes_per_s = 20_000
    started = time.monotonic()
    with connection(fake_hub) as conn:
        assert fetch(conn, f"/{REPO}/resolve/main/model.safetensors")[2] == WEIGHTS
    assert time.monotonic() - started >= 0.2


def test_a_token_hub_refuses_anonymous_and_wrong_tokens(
    fake_hub: FakeHub, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.token = "secret"

    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(REPO)
    with pytest.raises(HfHubHTTPError) as wrong:
        HfApi(token="wrong").model_info(REPO)
    assert not isinstance(wrong.value, RepositoryNotFoundError)
    assert wrong.value.response.status_code == 401
    assert HfApi(token="secret").model_info(REPO).sha == commit
    monkeypatch.setenv("HF_TOKEN", "secret")
    assert Path(hf_hub_download(REPO, "README.md")).read_bytes() == FILES["README.md"]
    assert fake_hub.requests[-1][2]["authorization"] == "Bearer secret"


def test_redirect_lfs_sends_downloads_to_a_cdn_without_auth(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with FakeHub(token="secret", redirect_lfs=True) as hub:
        commit = hub.add_commit(REPO, FILES)
        path = hf_hub_download(
            REPO, "model.safetensors", endpoint=hub.endpoint, token="secret", cache_dir=tmp_path
        )
        assert Path(path).read_bytes() == WEIGHTS
        method, target, headers = hub.requests[-1]
        assert method == "GET" and target.endswith(f"/resolve/{commit}/model.safetensors?cdn=1")
        assert headers["host"].startswith("localhost:") and "authorization" not in headers


def test_fixture_points_the_default_client_at_the_fake(fake_hub: FakeHub) -> None:
    assert constants.ENDPOINT == fake_hub.endpoint == os.environ["HF_ENDPOINT"]
    assert hf_hub_url(REPO, "a.txt").startswith(f"{fake_hub.endpoint}/{REPO}/resolve/main/")


def test_isolated_env_keeps_homes_and_caches_under_tmp_path(isolated_env: Path) -> None:
    for name in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "MODELMORA_HOME"):
        assert Path(os.environ[name]).is_relative_to(isolated_env)
    assert Path(constants.HF_HUB_CACHE).is_relative_to(isolated_env)
    assert os.environ["HF_HUB_DISABLE_XET"] == "1" and constants.HF_HUB_DISABLE_XET
    assert "HF_TOKEN" not in os.environ and "HF_HUB_OFFLINE" not in os.environ
    assert constants.ENDPOINT == "https://huggingface.co"


def test_stop_closes_idle_keep_alive_connections() -> None:
    hub = FakeHub()
    hub.add_commit(REPO, FILES)
    hub.start()
    with connection(hub) as conn:
        assert fetch(conn, f"/{REPO}/resolve/main/README.md")[0] == 200
        hub.stop()
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            fetch(conn, f"/{REPO}/resolve/main/README.md")
    hub.stop()  # a second stop is harmless


def test_fail_status_answers_the_statuses_then_the_file(fake_hub: FakeHub, commit: str) -> None:
    url = f"/{REPO}/resolve/{commit}/model.safetensors"
    fake_hub.fail_status[(REPO, "model.safetensors")] = [503, 429]
    with connection(fake_hub) as conn:
        assert [fetch(conn, url)[0] for _ in range(3)] == [503, 429, 200]
        assert fetch(conn, url)[2] == WEIGHTS


def test_reset_after_resets_the_connection_once(fake_hub: FakeHub, commit: str) -> None:
    url = f"/{REPO}/resolve/{commit}/model.safetensors"
    fake_hub.reset_after[(REPO, "model.safetensors")] = 1000
    with connection(fake_hub) as conn, pytest.raises(ConnectionResetError):
        conn.request("GET", url)
        response = conn.getresponse()
        while response.read(100):
            pass
    with connection(fake_hub) as conn:
        assert fetch(conn, url)[2] == WEIGHTS


def test_a_gate_holds_the_next_get_until_it_opens(fake_hub: FakeHub, commit: str) -> None:
    gate = fake_hub.gates[(REPO, "README.md")] = threading.Event()
    answers: list[bytes] = []

    def get() -> None:
        with connection(fake_hub) as conn:
            answers.append(fetch(conn, f"/{REPO}/resolve/{commit}/README.md")[2])

    getter = threading.Thread(target=get)
    getter.start()
    eventually(lambda: fake_hub.paths("GET") != [])
    assert answers == [] and getter.is_alive()
    gate.set()
    getter.join(timeout=60)
    assert answers == [FILES["README.md"]] and fake_hub.gates == {}


@pytest.mark.slow
def test_slow_trickles_one_file_only(fake_hub: FakeHub, commit: str) -> None:
    fake_hub.slow[(REPO, "model.safetensors")] = 1024
    with connection(fake_hub) as conn:
        conn.request("GET", f"/{REPO}/resolve/{commit}/model.safetensors")
        response = conn.getresponse()
        assert response.read(1024) == WEIGHTS[:1024]
        conn.close()
    with connection(fake_hub) as conn:
        assert fetch(conn, f"/{REPO}/resolve/{commit}/README.md")[2] == FILES["README.md"]

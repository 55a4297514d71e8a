"""The package manager end to end: lock, install, verify, gc against a loopback fake Hub."""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fakehub import FakeHub
from waiting import eventually

from modelmora import project, sources
from modelmora.cache import Cache
from modelmora.errors import (
    IntegrityError,
    LockError,
    NotFoundError,
    OfflineError,
    SourceError,
    UnsafeFileError,
)
from modelmora.project import Project

REPO = "acme/tiny"
CONFIG = b'{"architectures": ["BertModel"], "model_type": "bert"}'


def weights(seed: int, size: int = 300_000) -> bytes:
    return random.Random(seed).randbytes(size)


def tiny_repo(seed: int = 0, size: int = 300_000) -> dict[str, bytes]:
    return {
        "config.json": CONFIG,
        "tokenizer.json": b'{"version": "1.0"}',
        "model.safetensors": weights(seed, size),
        "README.md": b"# tiny\n",
    }


def make_project(root: Path, models: dict[str, str]) -> Project:
    """A project whose manifest has one `[models.NAME]` per entry of TOML body lines."""
    root.mkdir(parents=True, exist_ok=True)
    tables = "".join(f"\n[models.{name}]\n{body}\n" for name, body in models.items())
    (root / "modelmora.toml").write_text(f'[project]\nname = "{root.name}"\n{tables}')
    return Project(root)


def hub_model(repo: str = REPO, extra: str = "") -> str:
    return f'source = "hf://{repo}"\ntask = "embedding"\n{extra}'


def snapshot_digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def resolve_gets(hub: FakeHub, name: str) -> list[str]:
    return [p for p in hub.paths("GET") if "/resolve/" in p and p.endswith(name)]


def test_lock_is_deterministic_and_a_new_upstream_commit_does_not_make_it_stale(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    first = fake_hub.add_commit(REPO, tiny_repo(0))
    demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
    result = project.lock(demo)
    text = demo.lock_path.read_bytes()
    locked = result.lock.models["tiny"]
    assert locked.commit == first and len(first) == 40
    assert {f.path for f in locked.files} == {"config.json", "tokenizer.json", "model.safetensors"}
    # The LFS file's sha256 comes from the tree API: its bytes were never downloaded.
    assert resolve_gets(fake_hub, "model.safetensors") == []

    fake_hub.add_commit(REPO, tiny_repo(1))
    again = project.lock(demo)
    assert not again.written and not again.changed
    assert demo.lock_path.read_bytes() == text

    upgraded = project.lock(demo, upgrade=["tiny"])
    assert upgraded.written
    assert [c.kind for c in upgraded.changes] == ["updated"]
    assert upgraded.lock.models["tiny"].commit != first


def test_lock_dry_run_writes_nothing(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit(REPO, tiny_repo())
    demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
    result = project.lock(demo, dry_run=True)
    assert [c.kind for c in result.changes] == ["added"]
    assert not demo.lock_path.exists()


def test_check_and_install_locked_fail_on_a_changed_manifest(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    fake_hub.add_commit(REPO, tiny_repo(), tags=["v1"])
    demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
    project.lock(demo)
    project.check_lock(demo)
    make_project(demo.root, {"tiny": hub_model(extra='revision = "v1"')})
    with pytest.raises(LockError, match=r"model 'tiny' changed \(revision: \"main\" -> \"v1\"\)"):
        project.check_lock(demo)
    with pytest.raises(LockError, match="run `modelmora lock`"):
        project.install(demo, mode="locked")


def test_install_frozen_into_an_empty_cache_reproduces_the_bytes(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = fake_hub.add_commit(REPO, tiny_repo())
    demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
    project.install(demo)
    expected = snapshot_digests(project.model_path(demo, "tiny"))
    fake_hub.add_commit(REPO, tiny_repo(7))  # upstream moves on; the lock must win

    ci = tmp_path / "ci-checkout"
    ci.mkdir()
    (ci / "modelmora.lock").write_bytes(demo.lock_path.read_bytes())
    (ci / "modelmora.toml").write_text("this manifest is not read by --frozen")
    monkeypatch.setenv("MODELMORA_HOME", str(tmp_path / "empty-cache"))
    result = project.install(Project(ci), mode="frozen")
    assert result.files_downloaded == 3
    assert snapshot_digests((ci / ".modelmora/models/tiny").resolve()) == expected
    fetched = [p for p in fake_hub.paths("GET") if "/resolve/" in p]
    assert fetched and all(f"/resolve/{commit}/" in p for p in fetched)
    assert (ci / "modelmora.lock").read_bytes() == demo.lock_path.read_bytes()


def test_install_frozen_without_a_lock(tmp_path: Path) -> None:
    demo = make_project(tmp_path / "demo", {})
    with pytest.raises(LockError, match=r"no modelmora\.lock.*run `modelmora lock`"):
        project.install(demo, mode="frozen")


def safetensors_gets(hub: FakeHub) -> list[str | None]:
    """The Range header of every GET of model.safetensors (None: from the start)."""
    return [
        headers.get("range")
        for method, path, headers in hub.requests
        if method == "GET" and path.endswith("/model.safetensors")
    ]


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "RETRY_BASE_S", 0.01)


def locked_demo(hub: FakeHub, root: Path, size: int = 2_000_000) -> Project:
    hub.add_commit(REPO, tiny_repo(size=size))
    demo = make_project(root, {"tiny": hub_model()})
    project.lock(demo)
    return demo


def assert_installed(demo: Project, size: int = 2_000_000) -> None:
    snapshot = project.model_path(demo, "tiny")
    assert (snapshot / "model.safetensors").read_bytes() == weights(0, size)
    assert list(Cache().tmp.iterdir()) == []


@pytest.mark.usefixtures("quick_retries")
def test_a_cut_download_is_retried_from_its_partial_file(fake_hub: FakeHub, tmp_path: Path) -> None:
    demo = locked_demo(fake_hub, tmp_path / "demo")
    fake_hub.fail_after[(REPO, "model.safetensors")] = 1_200_000
    project.install(demo)
    first, again = safetensors_gets(fake_hub)
    assert first is None and again is not None
    assert again.startswith("bytes=") and again != "bytes=0-"
    assert_installed(demo)


@pytest.mark.usefixtures("quick_retries")
def test_a_reset_connection_is_retried(fake_hub: FakeHub, tmp_path: Path) -> None:
    demo = locked_demo(fake_hub, tmp_path / "demo")
    fake_hub.reset_after[(REPO, "model.safetensors")] = 500_000
    project.install(demo)
    assert len(safetensors_gets(fake_hub)) == 2
    assert_installed(demo)


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_http_429_and_5xx_are_retried(fake_hub: FakeHub, tmp_path: Path, status: int) -> None:
    demo = locked_demo(fake_hub, tmp_path / "demo")
    fake_hub.fail_status[(REPO, "model.safetensors")] = [status, status]
    project.install(demo)
    assert len(safetensors_gets(fake_hub)) == 3
    assert_installed(demo)


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.parametrize("status", [400, 401, 403, 404, 416])
def test_other_4xx_are_not_retried(fake_hub: FakeHub, tmp_path: Path, status: int) -> None:
    demo = locked_demo(fake_hub, tmp_path / "demo")
    fake_hub.fail_status[(REPO, "model.safetensors")] = [status]
    with pytest.raises(SourceError, match=rf"model\.safetensors: .*HTTP {status}\)?; "):
        project.install(demo)
    assert len(safetensors_gets(fake_hub)) == 1


@pytest.mark.usefixtures("quick_retries")
def test_retries_give_up_after_a_few_attempts(fake_hub: FakeHub, tmp_path: Path) -> None:
    demo = locked_demo(fake_hub, tmp_path / "demo")
    fake_hub.fail_status[(REPO, "model.safetensors")] = [503] * 10
    with pytest.raises(SourceError, match=r"HTTP 503 \(gave up after 5 attempts\); try again"):
        project.install(demo)
    assert len(safetensors_gets(fake_hub)) == sources.DOWNLOAD_ATTEMPTS == 5


@pytest.mark.slow
@pytest.mark.usefixtures("quick_retries")
def test_a_timeout_is_retried(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = locked_demo(fake_hub, tmp_path / "demo")
    monkeypatch.setattr(sources, "TIMEOUT", 2.0)
    gate = fake_hub.gates[(REPO, "model.safetensors")] = threading.Event()
    try:
        project.install(demo)
    finally:
        gate.set()
    assert len(safetensors_gets(fake_hub)) >= 2
    assert_installed(demo)


def test_retry_delay_backs_off_exponentially_up_to_a_cap() -> None:
    delays = [sources.retry_delay(attempt) for attempt in range(1, 10)]
    assert 0.25 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1.0
    assert all(delay <= sources.RETRY_CAP_S for delay in delays)
    assert delays[-1] >= sources.RETRY_CAP_S / 2
    assert sources.retry_delay(1, retry_after=3.0) == 3.0
    assert sources.retry_delay(1, retry_after=3600.0) == sources.RETRY_AFTER_CAP_S


@pytest.mark.slow
def test_two_concurrent_installs_share_one_cache(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit(REPO, tiny_repo(size=3_000_000))
    fake_hub.throttle_bytes_per_s = 20_000_000
    projects = [make_project(tmp_path / f"p{i}", {"tiny": hub_model()}) for i in range(2)]
    project.lock(projects[0])
    projects[1].lock_path.write_bytes(projects[0].lock_path.read_bytes())
    command = [sys.executable, "-m", "modelmora", "install", "--frozen"]
    children = [
        subprocess.Popen(command, cwd=p.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for p in projects
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    cache = Cache()
    assert len(cache.blob_digests()) == 3
    assert [p.name for p in cache.tmp.iterdir()] == []
    assert len(resolve_gets(fake_hub, "model.safetensors")) == 1
    paths = {project.model_path(p, "tiny") for p in projects}
    assert len(paths) == 1


def test_verify_finds_a_corrupt_blob_and_repair_fixes_it(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit(REPO, tiny_repo())
    demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
    project.install(demo)
    snapshot = project.model_path(demo, "tiny")
    good = snapshot_digests(snapshot)
    cache = Cache()
    sha = hashlib.sha256(weights(0)).hexdigest()
    blob = cache.blob_path(sha)
    blob.chmod(0o644)
    with blob.open("r+b") as handle:
        handle.write(b"bitrot")

    found = project.verify_cache(cache)
    assert found.corrupt == (sha,) and found.blobs == 3
    fixed = project.verify_cache(cache, repair=True)
    assert fixed.repaired == (sha,)
    assert project.verify_cache(cache).corrupt == ()
    assert snapshot_digests(snapshot) == good


def test_a_server_sending_wrong_bytes_fails_with_both_hashes(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    fake_hub.add_commit(REPO, tiny_repo())
    demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
    project.lock(demo)
    fake_hub.corrupt[(REPO, "model.safetensors")] = weights(99)
    expected = hashlib.sha256(weights(0)).hexdigest()
    actual = hashlib.sha256(weights(99)).hexdigest()
    with pytest.raises(IntegrityError) as caught:
        project.install(demo, mode="frozen")
    assert expected in str(caught.value) and actual in str(caught.value)
    cache = Cache()
    assert not cache.blob_path(expected).exists()
    assert list(cache.tmp.iterdir()) == []
    assert not (demo.models_dir / "tiny").exists()


def test_pickle_weights_are_refused_unless_allowed(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit("acme/old", {"config.json": CONFIG, "pytorch_model.bin": weights(3)})
    demo = make_project(tmp_path / "demo", {"old": hub_model("acme/old")})
    with pytest.raises(UnsafeFileError, match=r"only pickle weights.*set allow_pickle = true"):
        project.lock(demo)
    make_project(demo.root, {"old": hub_model("acme/old", 'include = ["*"]')})
    with pytest.raises(UnsafeFileError, match=r"refusing pickle file 'pytorch_model\.bin'"):
        project.lock(demo)
    trusted = 'include = ["*.json", "*.bin"]\nallow_pickle = true'
    make_project(demo.root, {"old": hub_model("acme/old", trusted)})
    locked = project.lock(demo).lock.models["old"]
    assert "pytorch_model.bin" in {f.path for f in locked.files}


def test_safetensors_preferred_over_pickle(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit(REPO, {**tiny_repo(), "pytorch_model.bin": weights(4)})
    trusted = 'include = ["*"]\nallow_pickle = true'
    demo = make_project(tmp_path / "demo", {"tiny": hub_model(extra=trusted)})
    paths = {f.path for f in project.lock(demo).lock.models["tiny"].files}
    assert "model.safetensors" in paths and "pytorch_model.bin" not in paths


def test_a_remote_path_escaping_the_snapshot_is_refused(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit(REPO, {**tiny_repo(), "../../evil.json": b"{}"})
    demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
    with pytest.raises(UnsafeFileError, match="escapes the model folder"):
        project.lock(demo)
    assert not demo.lock_path.exists()


def test_a_hand_edited_lock_cannot_escape_the_snapshot(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit(REPO, tiny_repo())
    demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
    project.lock(demo)
    text = demo.lock_path.read_text().replace('"config.json"', '"/etc/evil.json"')
    demo.lock_path.write_text(text)
    with pytest.raises(UnsafeFileError):
        project.install(demo, mode="frozen")


def test_offline_mode_works_from_the_cache_and_fails_clearly_without_it(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.add_commit(REPO, tiny_repo())
    demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
    project.install(demo)
    fake_hub.stop()  # from here on, any network use would fail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert project.install(demo, mode="locked").files_downloaded == 0
    assert project.install(demo).files_downloaded == 0

    monkeypatch.setenv("MODELMORA_HOME", str(tmp_path / "empty"))
    with pytest.raises(OfflineError, match="not in the cache and offline mode is on"):
        project.install(demo, mode="frozen")
    make_project(demo.root, {"tiny": hub_model(), "new": hub_model("acme/new")})
    with pytest.raises(OfflineError, match="cannot resolve 'hf://acme/new' while offline"):
        project.lock(demo, offline=True)


def test_two_models_sharing_a_file_store_it_once(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit("acme/a", tiny_repo(0))
    fake_hub.add_commit("acme/b", tiny_repo(1))
    demo = make_project(tmp_path / "demo", {"a": hub_model("acme/a"), "b": hub_model("acme/b")})
    project.install(demo)
    assert len(Cache().blob_digests()) == 4  # config and tokenizer (shared), two weights
    assert len(resolve_gets(fake_hub, "config.json")) == 1
    a, b = (project.model_path(demo, n) / "config.json" for n in ("a", "b"))
    assert os.stat(a).st_ino == os.stat(b).st_ino


def test_warm_install_of_a_new_project_downloads_nothing(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit(REPO, tiny_repo())
    first = make_project(tmp_path / "one", {"tiny": hub_model()})
    project.install(first)
    second = make_project(tmp_path / "two", {"tiny": hub_model()})
    before = len(fake_hub.requests)
    result = project.install(second, mode="sync")
    assert result.files_downloaded == 0 and result.files_cached == 3
    gets = [p for _, p, _ in fake_hub.requests[before:] if "/resolve/" in p]
    assert gets == []


def test_unknown_repository_and_revision(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit(REPO, tiny_repo())
    demo = make_project(tmp_path / "demo", {"x": hub_model("acme/missing")})
    with pytest.raises(NotFoundError, match="repository 'hf://acme/missing' not found"):
        project.lock(demo)
    make_project(demo.root, {"x": hub_model(extra='revision = "nope"')})
    with pytest.raises(NotFoundError, match="revision 'nope' not found"):
        project.lock(demo)


def test_hf_token_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import point_hub_client_at

    with FakeHub(token="s3cret") as hub:
        point_hub_client_at(monkeypatch, hub.endpoint)
        hub.add_commit(REPO, tiny_repo())
        demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
        with pytest.raises(NotFoundError, match="set HF_TOKEN"):
            project.lock(demo)
        monkeypatch.setenv("HF_TOKEN", "s3cret")
        project.install(demo)
        assert project.model_path(demo, "tiny").is_dir()


def test_url_and_local_folder_sources(fake_hub: FakeHub, tmp_path: Path) -> None:
    commit = fake_hub.add_commit(REPO, {**tiny_repo(), "model.onnx": weights(5)})
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_bytes(CONFIG)
    (folder / "model.safetensors").write_bytes(weights(6))
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ignored")
    url = f"{fake_hub.endpoint}/{REPO}/resolve/{commit}/model.onnx"
    demo = make_project(
        tmp_path / "demo",
        {
            "web": f'source = "{url}"\ntask = "embedding"',
            "mine": 'source = "../my-model"\ntask = "embedding"',
        },
    )
    project.install(demo)
    lock = demo.lock()
    assert [f.path for f in lock.models["web"].files] == ["model.onnx"]
    assert lock.models["web"].commit == hashlib.sha256(weights(5)).hexdigest()
    assert {f.path for f in lock.models["mine"].files} == {"config.json", "model.safetensors"}
    assert (project.model_path(demo, "web") / "model.onnx").read_bytes() == weights(5)

    (folder / "model.safetensors").write_bytes(weights(8))  # changed after locking
    cache = Cache()
    for file in lock.models["mine"].files:
        cache.blob_path(file.sha256).unlink()
    with pytest.raises(IntegrityError, match=r"model\.safetensors: sha256 mismatch"):
        project.install(demo, mode="frozen")


def test_gc_removes_what_no_project_uses(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit("acme/a", tiny_repo(0))
    fake_hub.add_commit("acme/b", tiny_repo(1))
    demo = make_project(tmp_path / "demo", {"a": hub_model("acme/a"), "b": hub_model("acme/b")})
    project.install(demo)
    project.remove(demo, "b")
    cache = Cache()
    dry = project.gc_cache(cache, dry_run=True)
    assert (dry.blobs, dry.snapshots, dry.bytes_freed) == (1, 1, len(weights(1)))
    assert len(cache.blob_digests()) == 4
    done = project.gc_cache(cache)
    assert done == dry
    assert len(cache.blob_digests()) == 3
    assert project.model_path(demo, "a").is_dir()
    assert project.gc_cache(cache).blobs == 0


def test_add_locks_installs_and_guesses_the_task(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_commit(REPO, tiny_repo())
    demo = project.init(tmp_path / "demo")
    result = project.add(demo, "hf://acme/tiny", task="embedding")
    assert result.name == "tiny"
    assert project.model_path(demo, "tiny").is_dir()
    folder = tmp_path / "clf"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    (folder / "model.safetensors").write_bytes(weights(2))
    added = project.add(demo, str(folder), name="clf")
    assert added.locked.task == "text-classification"
    assert "[models.clf]" in demo.manifest_path.read_text()


def test_add_of_a_missing_repository_writes_nothing(fake_hub: FakeHub, tmp_path: Path) -> None:
    demo = project.init(tmp_path / "demo")
    before = demo.manifest_path.read_text()
    with pytest.raises(NotFoundError):
        project.add(demo, "hf://acme/nothing-here", task="embedding")
    assert demo.manifest_path.read_text() == before
    assert not demo.lock_path.exists()


@pytest.mark.slow
def test_transformers_loads_an_installed_snapshot(fake_hub: FakeHub, tmp_path: Path) -> None:
    import torch
    from modelfactory import build_embedding_model, model_files
    from transformers import AutoModel, AutoTokenizer

    built = build_embedding_model(tmp_path / "built")
    fake_hub.add_commit("acme/bert", model_files(built))
    demo = make_project(tmp_path / "demo", {"bert": hub_model("acme/bert")})
    project.install(demo)
    snapshot = demo.models_dir / "bert"
    model = AutoModel.from_pretrained(snapshot, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(snapshot, local_files_only=True)
    reference = AutoModel.from_pretrained(built, local_files_only=True)
    inputs = tokenizer(["hello world"], return_tensors="pt")
    with torch.no_grad():
        got, want = model(**inputs).last_hidden_state, reference(**inputs).last_hidden_state
    assert torch.equal(got, want)


def test_installed_models_installs_or_with_frozen_refuses(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    fake_hub.add_commit(REPO, tiny_repo())
    demo = make_project(tmp_path / "demo", {"tiny": hub_model(extra='device = "cpu"')})
    with pytest.raises(LockError, match=r"no modelmora\.lock"):
        project.installed_models(demo, frozen=True)
    project.lock(demo)
    with pytest.raises(LockError, match=r"model 'tiny' is not installed .*run `modelmora install`"):
        project.installed_models(demo, frozen=True)
    [served] = project.installed_models(demo)
    assert served.spec.device == "cpu" and served.locked.commit == demo.lock().models["tiny"].commit
    assert (served.path / "model.safetensors").stat().st_size == len(weights(0))
    assert project.installed_models(demo, frozen=True) == [served]


ROUND_TRIP_NAMES = [
    "with space.json",
    'double"quote.json',
    "single'quote.json",
    "hash#tag.json",
    "eq=ual.json",
    "percent%20.json",
    "question?.json",
    "brackets[1]{2}.json",
    "comma,semi;colon:.json",
    "ünïcödé 日本語 🙂.json",
    "zero\u200bwidth\u202eoverride.json",
    "nested/sub dir/deep.json",
    "-dash.json",
    '""".json',
]
REFUSED_NAMES = {
    "back\\slash.json": "escapes the model folder",
    "new\nline.json": r"control character \(U\+000A\)",
    "tab\there.json": r"control character \(U\+0009\)",
    "del\x7f.json": r"control character \(U\+007F\)",
    "c1\x85.json": r"control character \(U\+0085\)",
}


def copy_lock_to_empty_cache(
    demo: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Project:
    ci = tmp_path / "ci"
    ci.mkdir()
    (ci / "modelmora.lock").write_bytes(demo.lock_path.read_bytes())
    monkeypatch.setenv("MODELMORA_HOME", str(tmp_path / "empty-cache"))
    return Project(ci)


def odd_model(kind: str, files: dict[str, bytes], hub: FakeHub, root: Path) -> str:
    if kind == "hub":
        hub.add_commit(REPO, files)
        return hub_model(extra='include = ["*"]')
    for name, data in files.items():
        (root / "folder" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "folder" / name).write_bytes(data)
    return 'source = "../folder"\ntask = "embedding"\ninclude = ["*"]'


@pytest.mark.parametrize("kind", ["hub", "folder"])
@pytest.mark.parametrize("name", ROUND_TRIP_NAMES)
def test_odd_file_names_round_trip_from_lock_to_a_frozen_install(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, name: str
) -> None:
    files = {"config.json": CONFIG, "model.safetensors": b"w", name: b"payload of " + name.encode()}
    demo = make_project(tmp_path / "demo", {"odd": odd_model(kind, files, fake_hub, tmp_path)})
    project.lock(demo)
    ci = copy_lock_to_empty_cache(demo, tmp_path, monkeypatch)
    project.install(ci, mode="frozen")
    expected = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    assert snapshot_digests((ci.models_dir / "odd").resolve()) == expected


@pytest.mark.parametrize("kind", ["hub", "folder"])
@pytest.mark.parametrize("name", sorted(REFUSED_NAMES))
def test_unsafe_file_names_are_refused_at_lock_time(
    fake_hub: FakeHub, tmp_path: Path, kind: str, name: str
) -> None:
    files = {"config.json": CONFIG, name: b"payload"}
    demo = make_project(tmp_path / "demo", {"odd": odd_model(kind, files, fake_hub, tmp_path)})
    with pytest.raises(UnsafeFileError) as caught:
        project.lock(demo)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and repr(name) in message
    assert re.search(REFUSED_NAMES[name], message), message
    assert not demo.lock_path.exists()


def test_a_file_name_that_is_not_utf8_is_refused_at_lock_time(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_bytes(CONFIG)
    (folder / os.fsdecode(b"caf\xe9.json")).write_bytes(b"{}")
    demo = make_project(tmp_path / "demo", {"odd": 'source = "../folder"\ntask = "embedding"'})
    with pytest.raises(UnsafeFileError, match=r"caf\\udce9\.json.*not valid UTF-8"):
        project.lock(demo)
    assert not demo.lock_path.exists()


def open_when(gate: threading.Event, condition: Callable[[], bool]) -> threading.Thread:
    """A thread that sets `gate` once `condition` holds (or once `eventually` gives up)."""

    def watch() -> None:
        try:
            eventually(condition)
        finally:
            gate.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def has_bytes(path: Path) -> Callable[[], bool]:
    return lambda: path.exists() and path.stat().st_size > 0


def test_a_failed_download_stops_the_others_and_keeps_their_partial_files(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 3_000_000
    ci = copy_lock_to_empty_cache(
        locked_demo(fake_hub, tmp_path / "demo", size), tmp_path, monkeypatch
    )
    sha = hashlib.sha256(weights(0, size)).hexdigest()
    partial = Cache().tmp / f"{sha}.incomplete"
    fake_hub.slow[(REPO, "model.safetensors")] = 100_000  # half a minute for the whole file
    gate = fake_hub.gates[(REPO, "tokenizer.json")] = threading.Event()
    fake_hub.fail_status[(REPO, "tokenizer.json")] = [403]
    watcher = open_when(gate, has_bytes(partial))
    with pytest.raises(SourceError, match=r"tokenizer\.json: access denied \(HTTP 403\)"):
        project.install(ci, mode="frozen")
    watcher.join()
    assert not Cache().blob_path(sha).exists()
    kept = partial.stat().st_size
    assert 0 < kept < size

    del fake_hub.slow[(REPO, "model.safetensors")]
    project.install(ci, mode="frozen")
    assert safetensors_gets(fake_hub)[-1] == f"bytes={kept}-"
    assert (ci.models_dir / "tiny" / "model.safetensors").read_bytes() == weights(0, size)


def test_gc_during_a_first_install_keeps_everything_the_install_uses(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    fake_hub.add_commit(REPO, tiny_repo())
    other = make_project(tmp_path / "other", {})
    project.install(other)  # gc runs from a registered project that uses nothing
    garbage = Cache().store_stream([b"no project uses this"])
    demo = make_project(tmp_path / "demo", {"tiny": hub_model()})
    gate = fake_hub.gates[(REPO, "model.safetensors")] = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        installing = pool.submit(project.install, demo)
        try:
            # Locking stored the small files; the weights' download is held at the gate.
            eventually(lambda: resolve_gets(fake_hub, "model.safetensors"))
            report = project.gc_cache(Cache())
        finally:
            gate.set()
        installing.result(timeout=120)
    assert (report.blobs, report.bytes_freed) == (1, garbage.size)
    assert not Cache().blob_path(garbage.sha256).exists()
    assert snapshot_digests(project.model_path(demo, "tiny")) == {
        path: hashlib.sha256(data).hexdigest()
        for path, data in tiny_repo().items()
        if path != "README.md"
    }
    assert project.gc_cache(Cache()).blobs == 0
    assert list(Cache().leases.iterdir()) == []

"""Offline bundles: a lock's blobs carried between two empty caches, verified on the way in.

The models come from the loopback fake Hub; the second cache is filled from the bundle alone and
installs with the Hub stopped and offline mode on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from clirun import Result
from fakehub import FakeHub
from test_project import hub_model, make_project, snapshot_digests, tiny_repo
from waiting import eventually

from modelmora import bundle, bundleimport, project
from modelmora.cache import Cache
from modelmora.errors import IntegrityError, LockError
from modelmora.lockfile import Lock, LockedFile, LockedModel
from modelmora.project import Project

Cli = Callable[..., Result]
SIZE = 20_000  # bytes of each model's weights: tiny, so the tests stay fast


@pytest.fixture
def demo(fake_hub: FakeHub, tmp_path: Path) -> Project:
    """Two models that share config.json and tokenizer.json, installed in the first cache."""
    fake_hub.add_commit("acme/a", tiny_repo(0, SIZE))
    fake_hub.add_commit("acme/b", tiny_repo(1, SIZE))
    demo = make_project(tmp_path / "demo", {"a": hub_model("acme/a"), "b": hub_model("acme/b")})
    project.install(demo)
    return demo


def use_cache(monkeypatch: pytest.MonkeyPatch, root: Path) -> Cache:
    monkeypatch.setenv("MODELMORA_HOME", str(root))
    return Cache()


def go_offline(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.stop()  # from here on, any use of the Hub would fail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def blob_bytes(cache: Cache) -> dict[str, bytes]:
    return {sha: cache.blob_path(sha).read_bytes() for sha in cache.blob_digests()}


def leftovers(cache: Cache) -> list[str]:
    """Temp and partial files in the cache's tmp/ folder."""
    return sorted(p.name for p in cache.tmp.iterdir())


def member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Each member's (first data byte, size) in the tar."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


def biggest_blob(path: Path) -> str:
    offsets = member_offsets(path)
    return max((name for name in offsets if name.startswith("blobs/")), key=lambda n: offsets[n][1])


def test_a_bundle_round_trips_between_two_empty_caches(
    demo: Project,
    fake_hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli_run: Cli,
) -> None:
    first = Cache()
    made = cli_run("bundle", "create", "-o", str(tmp_path / "models.tar"), cwd=demo.root)
    assert made.stdout.startswith("Bundled 2 models (4 files")  # config, tokenizer shared
    assert "Bundling 4 files" in made.stderr and "bundled b/model.safetensors" in made.stderr

    go_offline(fake_hub, monkeypatch)
    second = use_cache(monkeypatch, tmp_path / "second-cache")
    imported = cli_run("bundle", "import", str(tmp_path / "models.tar"), "--json", cwd=tmp_path)
    assert json.loads(imported.stdout) == {
        "models": ["a", "b"],
        "blobs_stored": 4,
        "bytes_stored": sum(len(data) for data in blob_bytes(first).values()),
        "blobs_skipped": 0,
        "snapshots": 2,
    }
    assert blob_bytes(second) == blob_bytes(first)
    installed = cli_run("install", "--frozen", "--offline", "--json", cwd=demo.root)
    assert json.loads(installed.stdout)["files_downloaded"] == 0
    for name in ("a", "b"):
        model = demo.lock().models[name]
        assert project.model_path(demo, name) == second.snapshot_path(model)
        assert snapshot_digests(second.snapshot_path(model)) == snapshot_digests(
            first.snapshot_path(model)
        )
    assert leftovers(second) == []


def test_the_same_lock_gives_the_same_bundle_bytes(
    demo: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = demo.lock()
    one, two, three = (tmp_path / f"{n}.tar" for n in ("one", "two", "three"))
    first = bundle.create_file(lock, Cache(), one)
    assert bundle.create_file(bundle.select(lock, ["b", "a"]), Cache(), two) == first
    # Made again from another cache that was filled from the bundle: still the same bytes.
    other = use_cache(monkeypatch, tmp_path / "other-cache")
    with one.open("rb") as stream:
        bundleimport.import_bundle(stream, other, label="one.tar")
    bundle.create_file(lock, other, three)
    assert one.read_bytes() == two.read_bytes() == three.read_bytes()
    assert first.size == one.stat().st_size

    with tarfile.open(one) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == bundle.MANIFEST_MEMBER and names[1:] == sorted(names[1:])
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o444)
    }


def test_a_tampered_blob_is_refused_by_name_and_nothing_of_it_is_stored(
    demo: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_run: Cli
) -> None:
    good, path = tmp_path / "good.tar", tmp_path / "models.tar"
    bundle.create_file(demo.lock(), Cache(), good)
    path.write_bytes(good.read_bytes())
    bad = biggest_blob(path)
    offset, size = member_offsets(path)[bad]
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0xFF
    path.write_bytes(data)

    cache = use_cache(monkeypatch, tmp_path / "second-cache")
    refused = cli_run("bundle", "import", str(path), cwd=tmp_path, code=1)
    line = refused.stderr.splitlines()[-1]  # after the progress lines of the files before it
    assert line.startswith("error: ") and f"{bad}: sha256 mismatch" in line
    assert "nothing of it was stored" in line and "copy the bundle again" in line
    sha256 = bad.rsplit("/", 1)[1]
    assert sha256 not in cache.blob_digests()
    assert leftovers(cache) == [] and cache.verify() == []
    assert not cache.snapshots.exists() or list(cache.snapshots.rglob("*")) == []

    # A blob the cache holds already is checked too: the bundle is still refused.
    with good.open("rb") as stream:
        bundleimport.import_bundle(stream, cache, label="good.tar")
    with path.open("rb") as stream, pytest.raises(IntegrityError, match=bad):
        bundleimport.import_bundle(stream, cache, label="models.tar")


def test_a_truncated_bundle_is_refused_naming_the_file_then_a_rerun_resumes(
    demo: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "models.tar"
    whole = bundle.create_file(demo.lock(), Cache(), path)
    bad = biggest_blob(path)
    offset, size = member_offsets(path)[bad]
    cache = use_cache(monkeypatch, tmp_path / "second-cache")

    inside = io.BytesIO(path.read_bytes()[: offset + size // 2])  # the copy stopped mid-file
    with pytest.raises(IntegrityError, match=f"{bad}: the bundle ends inside it"):
        bundleimport.import_bundle(inside, cache, label="models.tar")
    assert bad.rsplit("/", 1)[1] not in cache.blob_digests()
    assert leftovers(cache) == [] and cache.verify() == []
    assert not cache.snapshots.exists() or list(cache.snapshots.iterdir()) == []

    last = sorted(n for n in member_offsets(path) if n.startswith("blobs/"))[-1]
    cut = member_offsets(path)[last][0] - 512  # just before the last member's header
    with pytest.raises(IntegrityError, match=f"truncated or damaged: {last} is missing"):
        bundleimport.import_bundle(io.BytesIO(path.read_bytes()[:cut]), cache, label="models.tar")
    before = len(cache.blob_digests())
    assert before == whole.blobs - 1 and cache.verify() == []

    with path.open("rb") as stream:
        resumed = bundleimport.import_bundle(stream, cache, label="models.tar")
    assert (resumed.blobs_skipped, resumed.blobs_stored) == (before, 1)
    with path.open("rb") as stream:
        again = bundleimport.import_bundle(stream, cache, label="models.tar")
    assert (again.blobs_skipped, again.blobs_stored) == (whole.blobs, 0)


def test_names_pick_a_subset_and_a_name_takes_all_its_versions(
    demo: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_run: Cli
) -> None:
    path = tmp_path / "a.tar"
    made = cli_run("bundle", "create", "a", "-o", str(path), "--json", cwd=demo.root)
    created = json.loads(made.stdout)
    assert created["models"] == ["a"] and created["blobs"] == 3 and made.stderr == ""
    assert created["size"] == path.stat().st_size and created["output"] == str(path)
    assert created["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile(bundle.MANIFEST_MEMBER).read())  # type: ignore[union-attr]
    assert [model["name"] for model in manifest["models"]] == ["a"]
    assert manifest["format"] == "modelmora-bundle" and manifest["version"] == 1
    cache = use_cache(monkeypatch, tmp_path / "second-cache")
    with path.open("rb") as stream:
        assert bundleimport.import_bundle(stream, cache, label="a.tar").models == ("a",)
    assert cache.has_snapshot(demo.lock().models["a"])
    assert not cache.has_snapshot(demo.lock().models["b"])

    def model(name: str) -> LockedModel:
        return LockedModel(name, "hf://acme/x", "main", "embedding", "c" * 40, ())

    versions = Lock().with_models(model(n) for n in ("chat@v1", "chat@v2", "chat-large", "e"))
    assert sorted(bundle.select(versions, ["chat"]).models) == ["chat@v1", "chat@v2"]
    assert sorted(bundle.select(versions, ["chat@v2", "e"]).models) == ["chat@v2", "e"]
    with pytest.raises(
        LockError, match=r"no model named 'chta' in modelmora\.lock; did you mean 'chat'"
    ):
        bundle.select(versions, ["chta"])
    with pytest.raises(
        LockError, match=r"no model named 'zz'.*pick from: chat, chat-large, chat@v1"
    ):
        bundle.select(versions, ["zz"])


def test_a_corrupt_cache_blob_is_not_bundled(demo: Project, tmp_path: Path) -> None:
    cache = Cache()
    weights = next(f for f in demo.lock().models["a"].files if f.path == "model.safetensors")
    blob = cache.blob_path(weights.sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"x" * weights.size)
    out = tmp_path / "models.tar"
    with pytest.raises(IntegrityError, match=r"a/model\.safetensors.*cache verify --repair"):
        bundle.create_file(demo.lock(), cache, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tar")) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".models.tar")] == []


def manifest_tar(path: Path, manifest: dict[str, object]) -> Path:
    data = json.dumps(manifest).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(bundle.MANIFEST_MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_bad_input_gets_one_line_with_the_fix(
    demo: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_run: Cli
) -> None:
    def error(*args: str, cwd: Path = tmp_path) -> str:
        stderr = cli_run(*args, cwd=cwd, code=1).stderr
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        return stderr

    out = str(tmp_path / "x.tar")
    assert "no model named 'c' in modelmora.lock; pick from: a, b" in error(
        "bundle", "create", "c", "-o", out, cwd=demo.root
    )
    assert "--json and -o - both want stdout" in error(
        "bundle", "create", "-o", "-", "--json", cwd=demo.root
    )
    no_lock = make_project(tmp_path / "no-lock", {"a": hub_model("acme/a")})
    assert "no modelmora.lock in" in error("bundle", "create", "-o", out, cwd=no_lock.root)
    use_cache(monkeypatch, tmp_path / "empty-cache")
    assert "model 'a' is not installed here" in error("bundle", "create", "-o", out, cwd=demo.root)
    assert not Path(out).exists()

    assert "no bundle at" in error("bundle", "import", str(tmp_path / "missing.tar"))
    (tmp_path / "notes.txt").write_text("not a tar at all\n" * 100)
    assert "is not a modelmora bundle: it is not a tar archive" in error(
        "bundle", "import", str(tmp_path / "notes.txt")
    )
    with tarfile.open(tmp_path / "other.tar", "w") as tar:
        tar.add(tmp_path / "notes.txt", arcname="notes.txt")
    assert "its first member is 'notes.txt', not modelmora-bundle.json" in error(
        "bundle", "import", str(tmp_path / "other.tar")
    )
    future = manifest_tar(tmp_path / "v2.tar", {"format": "modelmora-bundle", "version": 2})
    assert "format version 2; this modelmora reads version 1" in error(
        "bundle", "import", str(future)
    )
    evil = {"path": "../../escape", "size": 1, "sha256": "0" * 64}
    record = {
        "name": "m",
        "source": "hf://a/m",
        "task": "embedding",
        "commit": "c",
        "files": [evil],
    }
    escaping = manifest_tar(
        tmp_path / "evil.tar", {"format": "modelmora-bundle", "version": 1, "models": [record]}
    )
    assert "escapes the model folder" in error("bundle", "import", str(escaping))
    assert list(Cache().blobs.parent.parent.glob("snapshots/*")) == []


def test_cache_export_carries_every_installed_model_of_every_project(
    demo: Project,
    fake_hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli_run: Cli,
) -> None:
    fake_hub.add_commit("acme/c", tiny_repo(2, SIZE))
    other = make_project(tmp_path / "other", {"a": hub_model("acme/c"), "b": hub_model("acme/b")})
    project.install(other)
    out = tmp_path / "ci-cache.tar"
    exported = json.loads(cli_run("cache", "export", "-o", str(out), "--json", cwd=tmp_path).stdout)
    # other's b is demo's b (same files, one snapshot): it travels once.
    assert exported["models"] == ["demo/a", "demo/b", "other/a"] and exported["blobs"] == 5

    go_offline(fake_hub, monkeypatch)
    use_cache(monkeypatch, tmp_path / "ci-runner-cache")
    imported = cli_run("cache", "import", str(out), "--json", cwd=tmp_path)
    assert json.loads(imported.stdout)["snapshots"] == 3
    for each in (demo, other):
        installed = cli_run("install", "--frozen", "--offline", "--json", cwd=each.root)
        assert json.loads(installed.stdout)["files_downloaded"] == 0

    empty = use_cache(monkeypatch, tmp_path / "unused-cache")
    assert (
        "no project has installed models in the cache"
        in cli_run("cache", "export", "-o", str(out), cwd=tmp_path, code=1).stderr
    )
    assert empty.blob_digests() == []


@pytest.mark.slow
def test_a_bundle_streams_through_a_pipe(demo: Project, tmp_path: Path) -> None:
    """`bundle create -o - | bundle import -`: two real processes, no file in between."""
    env = {**os.environ, "MODELMORA_HOME": str(tmp_path / "piped-cache")}
    command = [sys.executable, "-m", "modelmora"]
    with subprocess.Popen(
        [*command, "bundle", "create", "-o", "-"], cwd=demo.root, stdout=subprocess.PIPE
    ) as create:
        imported = subprocess.run(
            [*command, "bundle", "import", "-", "--json"],
            stdin=create.stdout,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    assert create.returncode == 0 and imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["blobs_stored"] == 4
    piped = Cache(tmp_path / "piped-cache")
    assert blob_bytes(piped) == blob_bytes(Cache())
    assert all(piped.has_snapshot(model) for model in demo.lock().models.values())


@pytest.mark.slow
def test_an_import_killed_midway_completes_when_run_again(demo: Project, tmp_path: Path) -> None:
    """A real `bundle import -` killed (SIGKILL) inside a blob; the rerun stores only the rest."""
    path = tmp_path / "models.tar"
    whole = bundle.create_file(demo.lock(), Cache(), path)
    offsets = {n: where for n, where in member_offsets(path).items() if n.startswith("blobs/")}
    cut_in = max((n for n in offsets if offsets[n][1] == SIZE), key=lambda n: offsets[n][0])
    offset, size = offsets[cut_in]
    before = [n.rsplit("/", 1)[1] for n in offsets if offsets[n][0] < offset]
    target = Cache(tmp_path / "second-cache")
    env = {**os.environ, "MODELMORA_HOME": str(target.root)}
    command = [sys.executable, "-m", "modelmora", "bundle", "import", "-"]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    ) as child:
        assert child.stdin is not None
        child.stdin.write(path.read_bytes()[: offset + size // 2])
        child.stdin.flush()
        eventually(lambda: set(before) <= set(target.blob_digests()), what="the earlier blobs")
        child.kill()
    assert before and cut_in.rsplit("/", 1)[1] not in target.blob_digests()
    assert target.verify() == []

    with path.open("rb") as stream:
        resumed = bundleimport.import_bundle(stream, target, label="models.tar")
    assert (resumed.blobs_skipped, resumed.blobs_stored) == (len(before), whole.blobs - len(before))
    assert all(target.has_snapshot(model) for model in demo.lock().models.values())


def test_blobs_of_lists_each_blob_once_in_hash_order() -> None:
    shared = LockedFile("config.json", 2, "a" * 64)
    one = LockedModel("one", "hf://x/one", "main", "embedding", "c" * 40, (shared,))
    two = LockedModel(
        "two", "hf://x/two", "main", "embedding", "c" * 40, (LockedFile("w", 3, "0" * 64), shared)
    )
    assert bundle.blobs_of([two, one]) == [
        LockedFile("two/w", 3, "0" * 64),
        LockedFile("one/config.json", 2, "a" * 64),
    ]

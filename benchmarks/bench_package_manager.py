"""Package-manager benchmark: cold and warm installs, cache verify, bundles, CLI start-up.

    python benchmarks/bench_package_manager.py [--size-mb 200] [--rounds 3]

Everything runs on loopback against the fake Hub from tests/ (the same server for ModelMora and for
`huggingface_hub.snapshot_download`), in temporary folders, with nothing fetched from the internet.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakehub import FakeHub  # noqa: E402


def generated_repo(size_mb: int, seed: int) -> dict[str, bytes]:
    """A model-shaped repository: two weight shards that add up to `size_mb`, plus small files."""
    rng = random.Random(seed)
    half = size_mb * 1_000_000 // 2
    return {
        "config.json": b'{"architectures": ["BertModel"], "model_type": "bert"}',
        "tokenizer.json": rng.randbytes(400_000),
        "vocab.txt": rng.randbytes(200_000),
        "model-00001-of-00002.safetensors": rng.randbytes(half),
        "model-00002-of-00002.safetensors": rng.randbytes(half),
    }


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def fresh_env(base: Path, name: str) -> Path:
    home = base / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ["MODELMORA_HOME"] = str(home / "modelmora")
    return home


def write_project(folder: Path, repos: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tables = "".join(
        f'\n[models.m{i}]\nsource = "hf://{r}"\ntask = "embedding"\n' for i, r in enumerate(repos)
    )
    (folder / "modelmora.toml").write_text(f'[project]\nname = "{folder.name}"\n{tables}')


def cold_install(base: Path, size_mb: int, rounds: int) -> list[tuple[str, str]]:
    from huggingface_hub import snapshot_download

    from modelmora import project

    repo_bytes = sum(len(v) for v in generated_repo(size_mb, 0).values())
    ours, theirs = [], []
    for round_ in range(rounds):
        home = fresh_env(base, f"cold-{round_}")
        write_project(home / "project", ["bench/big"])
        demo = project.Project(home / "project")
        project.lock(demo)  # resolve once, outside the timing
        ours.append(timed(partial(project.install, demo, mode="frozen")))
        theirs.append(timed(partial(snapshot_download, "bench/big", cache_dir=home / "hf")))
    mb = repo_bytes / 1e6
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    return [
        (
            f"cold install {mb:.0f} MB: modelmora (sha256 verified)",
            f"{ours_s:.2f} s = {mb / ours_s:.0f} MB/s",
        ),
        (
            f"cold install {mb:.0f} MB: huggingface_hub.snapshot_download",
            f"{theirs_s:.2f} s = {mb / theirs_s:.0f} MB/s",
        ),
        ("cold install ratio (modelmora / snapshot_download speed)", f"{theirs_s / ours_s:.2f}x"),
    ]


def warm_install(base: Path, hub: FakeHub) -> list[tuple[str, str]]:
    from modelmora import project
    from modelmora.cache import Cache

    repos = [f"bench/small-{i}" for i in range(5)]
    for i, repo in enumerate(repos):
        hub.add_commit(repo, generated_repo(4, seed=100 + i))
    home = fresh_env(base, "warm")
    write_project(home / "first", repos)
    project.install(project.Project(home / "first"))
    write_project(home / "second", repos)
    second = project.Project(home / "second")
    blobs_before = _bytes_in(Cache().root / "blobs")
    result_box: list[project.InstallResult] = []
    seconds = timed(lambda: result_box.append(project.install(second)))
    copied = _bytes_in(Cache().root / "blobs") - blobs_before
    third = home / "third"
    write_project(third, repos)
    shutil.copy(second.lock_path, third / "modelmora.lock")
    frozen = timed(lambda: project.install(project.Project(third), mode="frozen"))
    result = result_box[0]
    return [
        ("warm install, new project, 5 cached models (lock + link)", f"{seconds:.3f} s"),
        ("warm install --frozen, new project with a lock, 5 cached models", f"{frozen:.3f} s"),
        (
            "  bytes downloaded / bytes copied into the cache",
            f"{result.bytes_downloaded} / {copied}",
        ),
    ]


def _bytes_in(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def verify_speed(base: Path) -> list[tuple[str, str]]:
    from modelmora.cache import Cache

    cache = Cache(base / "cold-0" / "modelmora")
    files = [str(cache.blob_path(sha)) for sha in cache.blob_digests()]
    size = sum(os.path.getsize(f) for f in files) / 1e6
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    ours = statistics.median(timed(cache.verify) for _ in range(3))
    sha256sum = statistics.median(
        timed(lambda: subprocess.run(["sha256sum", *files], stdout=subprocess.DEVNULL, check=True))
        for _ in range(3)
    )
    return [
        (f"cache verify {size:.0f} MB: modelmora", f"{ours:.2f} s = {size / ours:.0f} MB/s"),
        (
            f"cache verify {size:.0f} MB: sha256sum",
            f"{sha256sum:.2f} s = {size / sha256sum:.0f} MB/s",
        ),
        ("cache verify ratio (modelmora / sha256sum speed)", f"{sha256sum / ours:.2f}x"),
    ]


def bundle_speed(base: Path) -> list[tuple[str, str]]:
    """`bundle create` and `bundle import` of the cold-install project, beside tar and cp -r."""
    from modelmora import bundle, bundleimport
    from modelmora.cache import Cache
    from modelmora.project import Project

    cache = Cache(base / "cold-0" / "modelmora")
    lock = Project(base / "cold-0" / "project").lock()
    size = sum(blob.size for blob in bundle.blobs_of(lock.models.values())) / 1e6
    out, tar_out = base / "models.tar", base / "blobs.tar"
    create = statistics.median(
        timed(lambda: bundle.create_file(lock, cache, out)) for _ in range(3)
    )

    def import_fresh(name: str) -> None:
        with out.open("rb") as stream:
            bundleimport.import_bundle(stream, Cache(base / name), label="models.tar")

    imports = [timed(partial(import_fresh, f"import-{i}")) for i in range(3)]
    blobs = str(cache.root / "blobs")
    tar_c = timed(partial(_run, ["tar", "cf", str(tar_out), "-C", blobs, "."]))
    (base / "untar").mkdir()
    tar_x = timed(partial(_run, ["tar", "xf", str(tar_out), "-C", str(base / "untar")]))
    copy = timed(partial(_run, ["cp", "-r", blobs, str(base / "copied")]))
    return [
        (f"bundle create {size:.0f} MB (sha256 re-checked)", _speed(create, size)),
        (
            f"bundle import {size:.0f} MB (sha256 checked, fsync)",
            _speed(statistics.median(imports), size),
        ),
        (f"  tar cf of the cache's blobs {size:.0f} MB (no check)", _speed(tar_c, size)),
        ("  tar xf of that tar (no check, no fsync)", _speed(tar_x, size)),
        ("  cp -r of the cache's blobs (no check, no fsync)", _speed(copy, size)),
    ]


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True)


def _speed(seconds: float, mb: float) -> str:
    return f"{seconds:.2f} s = {mb / seconds:.0f} MB/s"


def help_time() -> list[tuple[str, str]]:
    command = [sys.executable, "-m", "modelmora", "--help"]
    runs = [
        timed(lambda: subprocess.run(command, stdout=subprocess.DEVNULL, check=True))
        for _ in range(10)
    ]
    return [("`modelmora --help` wall time (median of 10)", f"{statistics.median(runs):.3f} s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(
        HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1"
    )
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as temp, FakeHub() as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
        from huggingface_hub import constants

        constants.ENDPOINT = hub.endpoint
        constants.HUGGINGFACE_CO_URL_TEMPLATE = (
            hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        hub.add_commit("bench/big", generated_repo(args.size_mb, 0))
        base = Path(temp)
        rows = cold_install(base, args.size_mb, args.rounds)
        rows += warm_install(base, hub)
        rows += verify_speed(base)
        rows += bundle_speed(base)
        rows += help_time()
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  result")
    print(f"{'-' * width}  {'-' * 24}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

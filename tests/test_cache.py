"""The cache's leases: what a running install uses is never collected, a dead install's is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelmora.cache import Cache
from modelmora.lockfile import LockedFile, LockedModel

HOLD_A_LEASE = """
import sys
from modelmora.cache import Cache
from modelmora.lockfile import LockedFile, LockedModel

cache = Cache()
with cache.lease():
    stored = cache.store_stream([b"stored under the lease"])
    model = LockedModel("m", "hf://a/m", "main", "embedding", "c" * 40, (
        LockedFile("w.bin", int(sys.argv[2]), sys.argv[1]),
    ))
    cache.protect([model])
    print(stored.sha256, flush=True)
    sys.stdin.read()  # hold the lease until the parent closes our stdin
"""


def test_a_lease_held_by_another_process_keeps_its_blobs_until_it_ends() -> None:
    cache = Cache()
    old = cache.store_stream([b"cached long ago, used again by the install"])
    garbage = cache.store_stream([b"nobody uses this"])
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_A_LEASE, old.sha256, str(old.size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        stored = child.stdout.readline().strip()
        report = cache.gc(set(), set(), dry_run=False)
        assert report.blobs == 1 and set(cache.blob_digests()) == {old.sha256, stored}
        assert garbage.sha256 not in cache.blob_digests()
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    assert cache.gc(set(), set(), dry_run=False).blobs == 2
    assert cache.blob_digests() == [] and list(cache.leases.iterdir()) == []


def test_the_lease_of_a_killed_install_is_dropped(tmp_path: Path) -> None:
    cache = Cache()
    kept = cache.store_stream([b"claimed by an install that was killed"])
    (cache.leases / "4242-dead.json").write_text(
        f'{{"blobs": ["{kept.sha256}"], "snapshots": []}}\n'
    )
    assert cache.gc(set(), set(), dry_run=True).blobs == 1
    assert (cache.leases / "4242-dead.json").exists()  # a dry run changes nothing
    assert cache.gc(set(), set(), dry_run=False).blobs == 1
    assert list(cache.leases.iterdir()) == []


def test_a_lease_in_this_process_keeps_stored_and_protected_files() -> None:
    cache, other = Cache(), Cache()
    model = LockedModel("m", "hf://a/m", "main", "embedding", "c" * 40, ())
    with cache.lease():
        stored = cache.store_stream([b"small file fetched while locking"])
        cache.protect([model])
        cache.snapshot_path(model).mkdir(parents=True)
        report = other.gc(set(), set(), dry_run=False)
        assert (report.blobs, report.snapshots) == (0, 0)
    assert other.gc(set(), set(), dry_run=False).blobs == 1
    assert stored.sha256 not in other.blob_digests()


def test_protect_needs_a_lease() -> None:
    with pytest.raises(RuntimeError, match="lease"):
        Cache().protect([])


def test_a_lease_file_names_what_it_claims() -> None:
    cache = Cache()
    with cache.lease():
        cache.protect(
            [LockedModel("m", "hf://a/m", "", "embedding", "c", (LockedFile("x", 1, "a" * 64),))]
        )
        [lease] = cache.leases.glob("*.json")
        assert '"blobs": ["' + "a" * 64 + '"]' in lease.read_text()
    assert list(cache.leases.glob("*.json")) == []

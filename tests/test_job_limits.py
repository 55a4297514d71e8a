"""Async jobs and the tokens per minute: the store keeps who submitted a job, the keyring charges
that key once the job's tokens are known, and a real server then refuses the key as after a request.

Tests wait for conditions, never for a fixed time, and assert no upper bound on a duration.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from modelfactory import build_embedding_model
from servers import start_serve, stop
from waiting import eventually

from modelmora import keys, registry
from modelmora.serve.api.auth import KeyRing
from modelmora.serve.jobstore import SCHEMA_VERSION, JobStore

T = TypeVar("T")


def with_store(path: Path, use: Callable[[JobStore], Awaitable[T]]) -> T:
    async def scenario() -> T:
        async with JobStore(path) as store:
            return await use(store)

    return asyncio.run(scenario())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / ".modelmora" / "jobs.sqlite3"


# --- the store ------------------------------------------------------------------------------------


def test_the_store_keeps_the_submitting_key_across_a_reopen_and_a_requeue(db: Path) -> None:
    async def submit(store: JobStore) -> tuple[str, str]:
        keyed = await store.create("emb", "hi", key_name="app")
        anonymous = await store.create("emb", "hi")
        await store.mark_running(keyed.id)  # interrupted: queued again at the next start
        return keyed.id, anonymous.id

    async def reopen(store: JobStore) -> list[tuple[str, str | None]]:
        return [(job.id, job.key_name) for job in await store.requeue_interrupted()]

    keyed, anonymous = with_store(db, submit)

    assert sorted(with_store(db, reopen)) == sorted([(keyed, "app"), (anonymous, None)])


OLD_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    input TEXT NOT NULL,
    priority INTEGER NOT NULL,
    timeout REAL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT
);
CREATE INDEX jobs_by_state ON jobs (state, priority DESC, seq);
CREATE INDEX jobs_by_model ON jobs (model, seq);
INSERT INTO jobs (id, model, input, priority, state, created_at)
    VALUES ('old', 'emb', '"hi"', 1, 'queued', 1000.0);
PRAGMA user_version=1;
"""


def test_a_store_file_from_before_key_names_gets_the_column_and_keeps_its_jobs(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db)) as connection:
        connection.executescript(OLD_SCHEMA)

    async def use(store: JobStore) -> tuple[Any, ...]:
        old = await store.get("old")
        new = await store.create("emb", "there", key_name="app")
        return old.key_name, old.input, (await store.get(new.id)).key_name

    assert with_store(db, use) == (None, "hi", "app")
    assert with_store(db, lambda store: store.get("old")).state == "queued"  # reopened: no error
    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# --- the keyring ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_keyring_charges_a_key_by_name_and_skips_a_revoked_or_unknown_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.sqlite3"
    with closing(registry.connect(path)) as connection:
        limits = keys.Limits(tokens_per_minute=60, token_burst=5)
        _, secret = keys.create(connection, "app", "infer", limits, actor="test")
        _, gone = keys.create(connection, "gone", "infer", limits, actor="test")
        keys.revoke(connection, "gone", actor="test")
    ring = KeyRing(registry.connect(path), api_key="s3cret", clock=FakeClock())
    caller = ring.caller(secret)
    single = ring.caller("s3cret")
    assert caller is not None and caller.is_registered
    assert single is not None and not single.is_registered  # its jobs keep no key name

    assert caller.admit() is None
    ring.charge("app", 8)
    ring.charge("gone", 8)
    ring.charge("nobody", 8)
    refused = caller.admit()
    ring.close()

    assert refused is not None and not refused.allowed
    assert refused.headers()["Retry-After"] == "3"  # 3 tokens below zero at one a second
    assert ring.caller(gone) is None


# --- a real server --------------------------------------------------------------------------------


@pytest.fixture
def embedding_project(tmp_path: Path) -> Path:
    build_embedding_model(tmp_path / "tiny-bert")
    root = tmp_path / "served"
    root.mkdir()
    (root / "modelmora.toml").write_text(
        '[project]\nname = "served"\n\n[serve]\nkeep_alive = "10m"\n\n'
        '[models.bert]\nsource = "../tiny-bert"\ntask = "embedding"\n'
    )
    return root


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


INFER = {"inputs": ["hello"]}
BURST = 2


@pytest.mark.slow
def test_a_finished_jobs_tokens_make_its_key_wait_while_another_key_goes_on(
    embedding_project: Path,
) -> None:
    with closing(registry.connect(embedding_project / ".modelmora" / "registry.sqlite3")) as db:
        small = keys.Limits(tokens_per_minute=1, token_burst=BURST)
        _, limited = keys.create(db, "small", "infer", small, actor="test")
        _, free = keys.create(db, "free", "infer", keys.Limits(), actor="test")
    url, process = start_serve(embedding_project, "--preload", "bert", key=free)
    job_input = {"inputs": ["one two three four five six seven eight"]}
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            created = http.post(
                "/jobs", json={"model": "bert", "input": job_input}, headers=bearer(limited)
            )
            assert created.status_code == 202, created.text
            job_url = created.headers["Location"]

            def finished() -> dict[str, Any] | None:
                job: dict[str, Any] = http.get(job_url, headers=bearer(free)).json()
                return job if job["state"] in ("succeeded", "failed") else None

            job = eventually(finished, what="the job to finish")
            over = http.post("/infer/bert", json=INFER, headers=bearer(limited))
            others = http.post("/infer/bert", json=INFER, headers=bearer(free))
    finally:
        stop(process)

    assert job["state"] == "succeeded" and job["result"]["prompt_tokens"] > BURST
    assert "key_name" not in job and limited not in created.text
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
    assert "'small'" in over.json()["error"]["message"]
    assert int(over.headers["Retry-After"]) >= 1
    assert over.headers["RateLimit-Limit"] == str(BURST)
    assert over.headers["RateLimit-Remaining"] == "0"
    assert int(over.headers["RateLimit-Reset"]) >= 1
    assert others.status_code == 200
    stored = with_store(
        embedding_project / ".modelmora" / "jobs.sqlite3", lambda store: store.get(job["id"])
    )
    assert stored.key_name == "small"

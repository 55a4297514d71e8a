"""Async jobs, kept in SQLite so that a job once accepted runs, across crashes and restarts.

    create() ──► queued ──mark_running()──► running ──► succeeded | failed
                   ├──cancel()──► cancelled          a restart puts running jobs back to queued
                   └──mark_failed()──► failed        it failed before it started (its deadline)

One file (`.modelmora/jobs.sqlite3` in the project; the path is given) in WAL mode with
synchronous=FULL: `create()` returns once the job is committed and on disk, so a 202 never lies.
A file from an older version gets the columns it lacks when opened; its rows read NULL there.
A job may carry an idempotency key (the client's `Idempotency-Key`): unique per API key, so that a
second `create()` with the same key returns the first job instead of storing another.
All SQLite work runs on one dedicated thread with one connection: the event loop never waits on the
disk, and writes never contend. Finished jobs are removed `retention` seconds after they finish
(`purge_finished()`); the server calls it now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

from modelmora.errors import InvalidInputError, JobNotCancellableError, JobNotFoundError

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobInput = str | list[str] | dict[str, Any]
"""What a job runs on: a text or texts (an `/infer` request's `inputs`), or a whole request body."""
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
FINISHED_STATES = ("succeeded", "failed", "cancelled")
DEFAULT_RETENTION = 24 * 3600.0
SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
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
    error TEXT,
    key_name TEXT,
    idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_by_model ON jobs (model, seq);
"""
ADDED_COLUMNS = {"key_name": "TEXT", "idempotency_key": "TEXT"}
"""Columns added since the first schema, for files created before them."""
IDEMPOTENCY_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key"
    " ON jobs (coalesce(key_name, ''), idempotency_key) WHERE idempotency_key IS NOT NULL"
)
"""Created once the column is there (older files get it late). NULLs are distinct in a UNIQUE
index, hence coalesce: requests without a registered key share one scope, ''."""
T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    id: str
    model: str
    input: Any
    priority: int
    timeout: float | None
    """Seconds the job may take from when the runner takes it for its model (it may still wait in
    the model's queue then); None means the server's default."""
    state: JobState
    created_at: float
    """Unix time, like started_at and finished_at."""
    started_at: float | None
    finished_at: float | None
    attempts: int
    """How many times the job was started; more than one after a restart."""
    result: Any
    error: Mapping[str, Any] | None
    key_name: str | None = None
    """The API key that submitted the job, whose tokens per minute it spends; None without one."""
    idempotency_key: str | None = None
    """The client's `Idempotency-Key`: the same key (and API key) gets this job back."""
    progress: Mapping[str, int] | None = None
    """A running job's last progress report ({"step", "steps"} of text-to-image); kept in
    memory only, while the job runs."""

    @property
    def queue_ms(self) -> float | None:
        return _ms_between(self.created_at, self.started_at)

    @property
    def run_ms(self) -> float | None:
        return _ms_between(self.started_at, self.finished_at)

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    total: int
    page: int
    limit: int


class JobStore:
    """The jobs of one project. Open it (or use `async with`), then await its methods."""

    def __init__(self, path: Path, *, retention: float = DEFAULT_RETENTION) -> None:
        self.path = path
        self.retention = retention
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None
        self._progress: dict[str, Mapping[str, int]] = {}

    async def open(self) -> JobStore:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="modelmora-jobs")
        await self._run(self._connect)
        return self

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._disconnect)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def __aenter__(self) -> JobStore:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # the API

    async def create(
        self,
        model: str,
        input: Any,
        *,
        priority: int = 1,
        timeout: float | None = None,
        key_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Store a queued job; when this returns, the job is on disk."""
        job, _ = await self.create_once(
            model, input, priority=priority, timeout=timeout, key_name=key_name,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        return job

    async def create_once(
        self,
        model: str,
        input: Any,
        *,
        priority: int = 1,
        timeout: float | None = None,
        key_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Job, bool]:
        """`create`, and whether the job is new: False when `key_name` already stored a job with
        this idempotency key, which comes back as it is now (the new one is not stored)."""
        job_id = uuid.uuid4().hex
        row = (job_id, model, _dump(input), priority, timeout, "queued", time.time(), key_name)
        return await self._run(self._insert, (*row, idempotency_key))

    async def get(self, job_id: str) -> Job:
        return self._with_progress(await self._run(self._get, job_id))

    def report_progress(self, job_id: str, progress: Mapping[str, int]) -> None:
        """A running job's progress, which `get` and `list_jobs` show until it finishes; kept in
        memory: a report costs no disk write."""
        self._progress[job_id] = progress

    def _with_progress(self, job: Job) -> Job:
        progress = self._progress.get(job.id) if job.state == "running" else None
        return job if progress is None else dataclasses.replace(job, progress=progress)

    async def list_jobs(
        self,
        *,
        model: str | None = None,
        state: str | None = None,
        page: int = 1,
        limit: int = 50,
    ) -> JobPage:
        """Newest first, filtered by model and state."""
        if state is not None and state not in JOB_STATES:
            raise InvalidInputError(f"state '{state}' is not one of {', '.join(JOB_STATES)}")
        if page < 1 or limit < 1:
            raise InvalidInputError("page and limit start at 1")
        found = await self._run(self._list, model, state, page, limit)
        return dataclasses.replace(found, jobs=[self._with_progress(job) for job in found.jobs])

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job; cancelling a cancelled job again is fine, a started one is not."""
        return await self._run(self._cancel, job_id)

    async def mark_running(self, job_id: str) -> Job | None:
        """Start a queued job; None if it is not queued any more (cancelled meanwhile)."""
        return await self._run(self._mark_running, job_id)

    async def mark_succeeded(self, job_id: str, result: Any) -> Job:
        """Finish a running (or, if its start was never written, queued) job with its result."""
        self._progress.pop(job_id, None)
        return await self._run(self._finish, job_id, "succeeded", _dump(result), None)

    async def mark_failed(self, job_id: str, error: Mapping[str, Any]) -> Job:
        """Finish a queued or running job; `error` as the API shows it, e.g. {"code", "message"}."""
        self._progress.pop(job_id, None)
        return await self._run(self._finish, job_id, "failed", None, _dump(error))

    async def requeue_interrupted(self) -> list[Job]:
        """At start: jobs that were running go back to queued; all queued jobs, in run order."""
        return await self._run(self._requeue)

    async def purge_finished(self, older_than: float | None = None) -> int:
        """Remove jobs finished more than `older_than` seconds ago (default: the retention)."""
        age = self.retention if older_than is None else older_than
        return await self._run(self._purge, time.time() - age)

    # on the database thread

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the job store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: every statement commits on its own, or inside our BEGIN..COMMIT
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")  # committed means on disk, not only in WAL
        connection.execute("PRAGMA busy_timeout=5000")  # `modelmora jobs` may read meanwhile
        connection.executescript(SCHEMA)
        self._connection = connection
        with self._transaction():  # `modelmora jobs` may open an old file at the same time
            _add_missing_columns(connection)
            connection.execute(IDEMPOTENCY_INDEX)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._connection is not None, "opened by open()"
        return self._connection

    def _insert(self, row: tuple[Any, ...]) -> tuple[Job, bool]:
        """The new job, or the one stored before with the same idempotency key; and if new."""
        inserted = self._db.execute(
            "INSERT OR IGNORE INTO jobs (id, model, input, priority, timeout, state, created_at,"
            " key_name, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        ).rowcount
        if inserted:
            return self._get(row[0]), True
        *_, key_name, idempotency_key = row
        found = self._db.execute(
            "SELECT * FROM jobs WHERE coalesce(key_name, '') = ? AND idempotency_key = ?",
            (key_name or "", idempotency_key),
        ).fetchone()
        assert found is not None, "only the idempotency key is unique besides the new id"
        return _job_from(found), False

    def _get(self, job_id: str) -> Job:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(
                f"there is no job '{job_id}'",
                hint="finished jobs are removed after the retention time; list them with GET /jobs",
            )
        return _job_from(row)

    def _list(self, model: str | None, state: str | None, page: int, limit: int) -> JobPage:
        where, params = _filters(model=model, state=state)
        total = self._db.execute(f"SELECT COUNT(*) FROM jobs{where}", params).fetchone()[0]
        rows = self._db.execute(
            f"SELECT * FROM jobs{where} ORDER BY seq DESC LIMIT ? OFFSET ?",
            (*params, limit, (page - 1) * limit),
        ).fetchall()
        return JobPage([_job_from(row) for row in rows], total, page, limit)

    def _cancel(self, job_id: str) -> Job:
        changed = self._db.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?"
            " WHERE id = ? AND state = 'queued'",
            (time.time(), job_id),
        ).rowcount
        job = self._get(job_id)
        if not changed and job.state != "cancelled":
            raise JobNotCancellableError(
                f"job '{job_id}' is {job.state}, only a queued job can be cancelled",
                hint="wait for it to finish" if job.state == "running" else None,
            )
        return job

    def _mark_running(self, job_id: str) -> Job | None:
        changed = self._db.execute(
            "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1"
            " WHERE id = ? AND state = 'queued'",
            (time.time(), job_id),
        ).rowcount
        return self._get(job_id) if changed else None

    def _finish(self, job_id: str, state: JobState, result: str | None, error: str | None) -> Job:
        self._db.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = ?"
            " WHERE id = ? AND state IN ('queued', 'running')",
            (state, time.time(), result, error, job_id),
        )
        return self._get(job_id)

    def _requeue(self) -> list[Job]:
        with self._transaction():
            self._db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL WHERE state = 'running'"
            )
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, seq"
            ).fetchall()
        return [_job_from(row) for row in rows]

    def _purge(self, finished_before: float) -> int:
        marks = ", ".join("?" for _ in FINISHED_STATES)
        return self._db.execute(
            f"DELETE FROM jobs WHERE state IN ({marks}) AND finished_at < ?",
            (*FINISHED_STATES, finished_before),
        ).rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Several statements as one (each commits on its own otherwise: isolation_level=None)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    """Add the columns a file created by an older version lacks."""
    present = {row["name"] for row in connection.execute("PRAGMA table_info(jobs)")}
    for name, kind in ADDED_COLUMNS.items():
        if name not in present:
            connection.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")


def _filters(**equal_to: str | None) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause for the filters that are set; the names are ours, the values parameters."""
    chosen = {name: value for name, value in equal_to.items() if value is not None}
    if not chosen:
        return "", ()
    return " WHERE " + " AND ".join(f"{name} = ?" for name in chosen), tuple(chosen.values())


def _job_from(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        model=row["model"],
        input=json.loads(row["input"]),
        priority=row["priority"],
        timeout=row["timeout"],
        state=cast(JobState, row["state"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
        result=_load(row["result"]),
        error=_load(row["error"]),
        key_name=row["key_name"],
        idempotency_key=row["idempotency_key"],
    )


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _ms_between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else (end - start) * 1000

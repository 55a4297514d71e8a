"""The project's registry: one SQLite file in `.modelmora/`, its schema kept by migrations.

Each migration is a script that runs once, in order; `PRAGMA user_version` counts those applied.
The tables' own SQL lives beside the code that uses them (`accesstables.py`: keys and audit;
`versiontables.py`: versions and routes);
a later feature appends its script to `MIGRATIONS` and never edits one already shipped.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from modelmora import accesstables, versiontables

MIGRATIONS: tuple[str, ...] = (accesstables.SCHEMA, versiontables.SCHEMA)
BUSY_TIMEOUT_MS = 5000  # the server and a CLI command may write at once


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the registry at `path`, migrated to the newest schema.

    Autocommit mode: a change that spans statements opens its own `BEGIN IMMEDIATE`.
    `check_same_thread` is off because the server opens it on one thread and reads it on the
    event loop's; the connection is never used by two threads at once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    migrate(connection)
    return connection


def schema_version(connection: sqlite3.Connection) -> int:
    """How many migrations the file has had."""
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(connection: sqlite3.Connection) -> None:
    """Apply the migrations the file lacks, each with its version bump in one transaction."""
    if schema_version(connection) >= len(MIGRATIONS):
        return
    connection.execute("BEGIN IMMEDIATE")  # two processes opening a new file: one migrates
    try:
        for version in range(schema_version(connection), len(MIGRATIONS)):
            for statement in _statements(MIGRATIONS[version]):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version={version + 1}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """A script's statements: `executescript` would commit the transaction midway."""
    return [part.strip() for part in script.split(";") if part.strip()]

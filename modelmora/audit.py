"""The audit log in the project's registry: who changed what, when, and how it was before."""

from __future__ import annotations

import getpass
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

API_KEY_ACTOR = "api-key"
"""Who acts with the server's single `--api-key` / `MODELMORA_API_KEY`."""

Listener = Callable[[str, str, str, Any, Any], None]
"""Told of each entry recorded in this process: actor, action, target, before, after."""
LISTENERS: list[Listener] = []
"""Kafka's audit events (modelmora/kafka/events.py) listen here; called in the recording thread."""


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    before: Any
    after: Any


def cli_actor() -> str:
    """Who acts from the command line: `cli:` and the login name."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return "cli:unknown"


def record(
    connection: sqlite3.Connection,
    actor: str,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
) -> None:
    """Append one entry; `before` and `after` are stored as JSON."""
    connection.execute(
        "INSERT INTO audit (at, actor, action, target, before, after) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), actor, action, target, _json(before), _json(after)),
    )
    for listener in list(LISTENERS):
        listener(actor, action, target, before, after)


def entries(connection: sqlite3.Connection, limit: int = 50) -> list[AuditEntry]:
    """The newest `limit` entries, newest first."""
    rows = connection.execute(
        "SELECT id, at, actor, action, target, before, after FROM audit ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [_entry(*row) for row in rows]


def _entry(
    id: int, at: float, actor: str, action: str, target: str, before: str | None, after: str | None
) -> AuditEntry:
    return AuditEntry(id, at, actor, action, target, _parsed(before), _parsed(after))


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _parsed(text: str | None) -> Any:
    return None if text is None else json.loads(text)

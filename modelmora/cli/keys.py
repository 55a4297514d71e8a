"""`modelmora keys create|list|revoke` and `modelmora audit`: the project's API keys and audit log.

They read and write the project's registry directly, so they work with or without a running
server; a running server sees a new or revoked key within a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from modelmora import output
from modelmora.cli.app import app, console, current_project, emit_json, keys_app, say

if TYPE_CHECKING:
    import sqlite3

    from modelmora.audit import AuditEntry
    from modelmora.keys import ApiKey


@contextmanager
def _registry() -> Iterator[sqlite3.Connection]:
    from modelmora import registry

    connection = registry.connect(current_project().registry_path)
    try:
        yield connection
    finally:
        connection.close()


@keys_app.command("create")
def create(
    name: str = typer.Argument(..., help="What the key is for, e.g. the application's name."),
    scope: str = typer.Option("infer", help="infer (call models) or admin (also load, unload)."),
    rps: float | None = typer.Option(None, help="Requests per second this key may send."),
    burst: int | None = typer.Option(None, help="Requests at once above --rps [default: rps]."),
    tpm: int | None = typer.Option(None, help="Model tokens per minute this key may use."),
    token_burst: int | None = typer.Option(None, help="Tokens at once [default: tpm]."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Create an API key; its secret is printed this once."""
    from modelmora import audit, keys

    limits = keys.Limits(rps, burst, tpm, token_burst)
    with _registry() as connection:
        key, secret = keys.create(connection, name, scope, limits, audit.cli_actor())
    if as_json:
        return emit_json(output.key_created_json(key, secret))
    say(f"Created key {key.name!r} ({key.scope}); its secret, shown only now:")
    print(secret)


@keys_app.command("list")
def list_keys(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the project's API keys, revoked ones included; never their secrets."""
    from modelmora import keys

    with _registry() as connection:
        listed = keys.listed(connection)
    if as_json:
        return emit_json([output.key_json(key) for key in listed])
    _print_keys(listed)


@keys_app.command("revoke")
def revoke(
    name: str = typer.Argument(..., help="The key's name."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Revoke an API key; a running server refuses it within a second."""
    from modelmora import audit, keys

    with _registry() as connection:
        key = keys.revoke(connection, name, audit.cli_actor())
    if as_json:
        return emit_json(output.key_json(key))
    say(f"Revoked key {key.name!r}")


@app.command("audit")
def audit_log(
    limit: int = typer.Option(50, min=1, help="Entries to show."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show the audit log, newest first: key changes and the server's admin actions."""
    from modelmora import audit

    with _registry() as connection:
        entries = audit.entries(connection, limit)
    if as_json:
        return emit_json([output.audit_json(entry) for entry in entries])
    _print_audit(entries)


def _print_keys(listed: list[ApiKey]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "KEY", "SCOPE", "LIMITS", "CREATED", "STATE"):
        table.add_column(column)
    for key in listed:
        state = "revoked" if key.revoked_at is not None else "live"
        table.add_row(
            key.name, f"{key.prefix}…", key.scope, _limits(key), _when(key.created_at), state
        )
    console().print(table) if listed else say("No keys; create one with `modelmora keys create`")


def _limits(key: ApiKey) -> str:
    limits = key.limits
    parts = []
    if limits.requests_per_second is not None:
        parts.append(f"{limits.requests_per_second:g} req/s (burst {limits.request_burst()})")
    if limits.tokens_per_minute is not None:
        parts.append(f"{limits.tokens_per_minute} tok/min (burst {limits.tokens_burst()})")
    return ", ".join(parts) or "-"


def _print_audit(entries: list[AuditEntry]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("WHEN", "WHO", "ACTION", "TARGET", "CHANGE"):
        table.add_column(column)
    for entry in entries:
        change = _change(entry.before, entry.after)
        table.add_row(_when(entry.at), entry.actor, entry.action, entry.target, change)
    console().print(table) if entries else say("The audit log is empty")


def _change(before: object, after: object) -> str:
    """What changed, in a line: `state: unloaded -> ready`, or the fields set (+) or gone (-)."""
    from rich.markup import escape

    if isinstance(before, dict) and isinstance(after, dict):
        fields = sorted(set(before) | set(after))
        moved = [
            f"{k}: {before.get(k)} -> {after.get(k)}"
            for k in fields
            if before.get(k) != after.get(k)
        ]
        return escape(", ".join(moved) or "-")
    sign, value = ("+", after) if after is not None else ("-", before)
    if not isinstance(value, dict):
        return "-" if value is None else escape(f"{sign} {value}")
    return escape(sign + " " + ", ".join(f"{k}={v}" for k, v in value.items() if v is not None))


def _when(at: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")

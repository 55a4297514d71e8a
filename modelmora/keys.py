"""API keys for `modelmora serve`: created, listed and revoked in the project's registry.

A key's secret is shown once, when it is created; the registry keeps its sha256 (enough for a
random 256-bit token: nothing to brute-force) and a short prefix to tell keys apart. Scopes:
`infer` calls the models, `admin` also changes what is served (and implies `infer`).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Literal, cast

from modelmora import audit
from modelmora.errors import ModelmoraError

Scope = Literal["infer", "admin"]
SCOPES: tuple[Scope, ...] = ("infer", "admin")
SECRET_PREFIX = "mm_"
SHOWN_PREFIX = 8  # characters of the secret kept to tell keys apart: `mm_AbCd…`


@dataclass(frozen=True)
class Limits:
    """A key's rate limits; None: no limit of that kind. A burst defaults to one second's worth
    of requests (at least 1) and one minute's worth of tokens."""

    requests_per_second: float | None = None
    burst: int | None = None
    tokens_per_minute: int | None = None
    token_burst: int | None = None

    def request_burst(self) -> int:
        rate = self.requests_per_second or 0
        return self.burst if self.burst is not None else max(1, int(rate))

    def tokens_burst(self) -> int:
        return self.token_burst if self.token_burst is not None else self.tokens_per_minute or 0


@dataclass(frozen=True)
class ApiKey:
    name: str
    prefix: str
    scope: Scope
    limits: Limits
    created_at: float
    revoked_at: float | None = None

    def allows(self, needed: Scope) -> bool:
        """Whether the key may do what needs scope `needed`: admin implies infer."""
        return self.scope == "admin" or needed == "infer"

    def summary(self) -> dict[str, object]:
        """What the audit log keeps of a key: never its secret or hash."""
        return {
            "name": self.name,
            "prefix": self.prefix,
            "scope": self.scope,
            **asdict(self.limits),
        }


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(
    connection: sqlite3.Connection, name: str, scope: str, limits: Limits, actor: str
) -> tuple[ApiKey, str]:
    """Store a new key and audit it; the secret is returned here and never again."""
    checked_scope = _scope(scope)
    _check_limits(limits)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name, secret[:SHOWN_PREFIX], checked_scope, limits, time.time())
    connection.execute("BEGIN IMMEDIATE")
    try:
        _insert(connection, key, hash_secret(secret))
        audit.record(connection, actor, "key.create", name, after=key.summary())
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return key, secret


def _insert(connection: sqlite3.Connection, key: ApiKey, digest: str) -> None:
    limits = key.limits
    try:
        connection.execute(
            "INSERT INTO api_keys (name, secret_sha256, prefix, scope, requests_per_second,"
            " burst, tokens_per_minute, token_burst, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (key.name, digest, key.prefix, key.scope, limits.requests_per_second, limits.burst,
             limits.tokens_per_minute, limits.token_burst, key.created_at),
        )  # fmt: skip
    except sqlite3.IntegrityError:
        raise ModelmoraError(
            f"a key named {key.name!r} exists", "revoke it first, or choose another name"
        ) from None


def revoke(connection: sqlite3.Connection, name: str, actor: str) -> ApiKey:
    """Revoke the live key called `name`; a running server refuses it within a second."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        key = next((k for k in live(connection).values() if k.name == name), None)
        if key is None:
            raise ModelmoraError(f"no live key named {name!r}", "see `modelmora keys list`")
        now = time.time()
        connection.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name)
        )
        audit.record(connection, actor, "key.revoke", name, before=key.summary())
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return ApiKey(key.name, key.prefix, key.scope, key.limits, key.created_at, now)


def listed(connection: sqlite3.Connection) -> list[ApiKey]:
    """Every key, live and revoked, oldest first."""
    rows = connection.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY id")
    return [_key(row) for row in rows]


def live(connection: sqlite3.Connection) -> dict[str, ApiKey]:
    """The keys not revoked, by the sha256 of their secret: what the server checks against."""
    rows = connection.execute(
        f"SELECT secret_sha256, {_COLUMNS} FROM api_keys WHERE revoked_at IS NULL"
    )
    return {row[0]: _key(row[1:]) for row in rows}


_COLUMNS = (
    "name, prefix, scope, requests_per_second, burst, tokens_per_minute, token_burst,"
    " created_at, revoked_at"
)


def _key(row: tuple[object, ...]) -> ApiKey:
    name, prefix, scope, rps, burst, tpm, token_burst, created_at, revoked_at = row
    limits = Limits(
        cast("float | None", rps),
        cast("int | None", burst),
        cast("int | None", tpm),
        cast("int | None", token_burst),
    )
    return ApiKey(
        str(name),
        str(prefix),
        _scope(str(scope)),
        limits,
        cast(float, created_at),
        cast("float | None", revoked_at),
    )


def _scope(scope: str) -> Scope:
    if scope not in SCOPES:
        raise ModelmoraError(f"unknown scope {scope!r}", "use infer or admin")
    return scope


def _check_limits(limits: Limits) -> None:
    values = {
        "--rps": limits.requests_per_second,
        "--burst": limits.burst,
        "--tpm": limits.tokens_per_minute,
        "--token-burst": limits.token_burst,
    }
    for flag, value in values.items():
        if value is not None and value <= 0:
            raise ModelmoraError(f"{flag} {value}: must be above 0", "leave it out for no limit")
    if limits.burst is not None and limits.requests_per_second is None:
        raise ModelmoraError("--burst goes with --rps", "pass --rps too")
    if limits.token_burst is not None and limits.tokens_per_minute is None:
        raise ModelmoraError("--token-burst goes with --tpm", "pass --tpm too")

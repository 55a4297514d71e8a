"""Who may call the API: API keys, their scopes and rate limits, and the audit of admin actions.

The keys live in the project's registry (`modelmora keys create`); the server re-reads them when
the file has changed (`PRAGMA data_version`), checked at most every `REFRESH_SECONDS`, so a new or
revoked key counts within a second, without a restart. `--api-key` is one more key, with the admin
scope and no limits. A key is looked up by the sha256 of what the client sends, so the secret is
never compared byte by byte.
"""

from __future__ import annotations

import hmac
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from modelmora import audit, keys
from modelmora.errors import ForbiddenError
from modelmora.serve.api.http import app_state, error_response
from modelmora.serve.limits import Decision, TokenBucket
from modelmora.serve.supervisor import InferenceResult

REFRESH_SECONDS = 0.5


@dataclass
class Caller:
    """The holder of one key, as the server knows it, with that key's buckets."""

    name: str
    scope: keys.Scope
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    limits: keys.Limits = field(default_factory=keys.Limits)
    is_registered: bool = False
    """A key of the registry, known by its name; not the single `--api-key`."""

    def allows(self, needed: keys.Scope) -> bool:
        return self.scope == "admin" or needed == "infer"

    def admit(self) -> Decision | None:
        """The refusal, if a limit refuses this request now; None when it may go on."""
        if self.tokens is not None and not (spent := self.tokens.check()).allowed:
            return spent
        if self.requests is not None and not (taken := self.requests.take()).allowed:
            return taken
        return None

    def charge(self, used: int) -> None:
        """Count the tokens a finished request used against the key's tokens per minute."""
        if self.tokens is not None and used > 0:
            self.tokens.charge(used)


def caller_for(key: keys.ApiKey, clock: Callable[[], float]) -> Caller:
    limits = key.limits
    requests = tokens = None
    if limits.requests_per_second is not None:
        requests = TokenBucket(limits.requests_per_second, limits.request_burst(), clock)
    if limits.tokens_per_minute is not None:
        tokens = TokenBucket(limits.tokens_per_minute / 60, limits.tokens_burst(), clock)
    return Caller(key.name, key.scope, requests, tokens, limits, is_registered=True)


class KeyRing:
    """The keys the server accepts, read from the registry, and the audit log's writer."""

    def __init__(
        self,
        registry: sqlite3.Connection | None,
        api_key: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry, self.clock = registry, clock
        self.api_key_sha256 = keys.hash_secret(api_key) if api_key else None
        self.callers: dict[str, Caller] = {}
        self.data_version = -1
        self.checked_at = -float("inf")
        self.refresh()

    def is_guarding(self) -> bool:
        """Whether requests need a key: there is `--api-key` or a live key in the registry."""
        self.refresh()
        return self.api_key_sha256 is not None or bool(self.callers)

    def caller(self, secret: str) -> Caller | None:
        """The holder of `secret`, or None for an unknown or revoked key."""
        digest = keys.hash_secret(secret)
        if self.api_key_sha256 is not None and hmac.compare_digest(digest, self.api_key_sha256):
            return Caller(audit.API_KEY_ACTOR, "admin")
        return self.callers.get(digest)

    def charge(self, name: str, tokens: int) -> None:
        """Count tokens used after the request that spent them (an async job's) against the live
        key called `name`; a key revoked since is skipped."""
        self.refresh()
        caller = next((c for c in self.callers.values() if c.name == name), None)
        if caller is not None:
            caller.charge(tokens)

    def refresh(self) -> None:
        """Re-read the keys if the registry changed since the last look (at most so often)."""
        now = self.clock()
        if self.registry is None or now - self.checked_at < REFRESH_SECONDS:
            return
        self.checked_at = now
        version = self.registry.execute("PRAGMA data_version").fetchone()[0]
        if version != self.data_version:
            self.data_version = version
            self.callers = self._reload(keys.live(self.registry))

    def _reload(self, live: dict[str, keys.ApiKey]) -> dict[str, Caller]:
        """Live keys as callers; a key whose limits did not change keeps its buckets."""
        callers = {}
        for digest, key in live.items():
            known = self.callers.get(digest)
            same = known is not None and known.limits == key.limits and known.scope == key.scope
            callers[digest] = known if known is not None and same else caller_for(key, self.clock)
        return callers

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()

    def record(self, actor: str, action: str, target: str, before: Any, after: Any) -> None:
        """Write one entry to the audit log; without a registry (no project) there is none."""
        if self.registry is not None:
            audit.record(self.registry, actor, action, target, before, after)


def require_admin(request: Request) -> str:
    """Who makes this admin request; a key with the `infer` scope only gets a 403.

    On a server with no keys at all every request may act, as `anonymous`.
    """
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:
        return "anonymous"
    if not caller.allows("admin"):
        raise ForbiddenError(
            f"the key {caller.name!r} has the infer scope; this route needs admin",
            "use an admin key (`modelmora keys create NAME --scope admin`)",
        )
    return caller.name


def key_name(request: Request) -> str | None:
    """The registry key that made this request; None on an open server or with `--api-key`."""
    caller: Caller | None = getattr(request.state, "caller", None)
    return caller.name if caller is not None and caller.is_registered else None


def record_admin(
    request: Request, actor: str, action: str, target: str, before: Any, after: Any
) -> None:
    """Write an admin action to the audit log: who, what, on what, and the state around it."""
    keyring = app_state(request).keys
    if keyring is not None:
        keyring.record(actor, action, target, before, after)


class AuthMiddleware:
    """Once the server has keys, every route but the `public` ones needs `Authorization: Bearer
    KEY`; a key over its limits gets a 429. The request's token usage is charged once it ends."""

    def __init__(self, app: ASGIApp, keyring: KeyRing, public: frozenset[str]) -> None:
        self.app, self.keyring, self.public = app, keyring, public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        if not self.keyring.is_guarding():
            await self.app(scope, receive, send)
            return
        caller = self.keyring.caller(_bearer(scope))
        if caller is None:
            await _unauthorized(scope["path"])(scope, receive, send)
            return
        refusal = caller.admit()
        if refusal is not None:
            await _rate_limited(scope["path"], caller, refusal)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        try:
            await self.app(scope, receive, send)
        finally:
            caller.charge(_tokens_used(scope))


def _bearer(scope: Scope) -> str:
    given = Headers(scope=scope).get("authorization", "")
    scheme, _, secret = given.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


def _unauthorized(path: str) -> Any:
    return error_response(
        path,
        401,
        "invalid_api_key",
        "missing, unknown or revoked API key; send `Authorization: Bearer KEY`",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _rate_limited(path: str, caller: Caller, refusal: Decision) -> Any:
    headers = refusal.headers()
    wait = headers["Retry-After"]
    return error_response(
        path,
        429,
        "rate_limited",
        f"the key {caller.name!r} is over its rate limit; retry in {wait} s",
        headers=headers,
    )


def record_usage(request: Request, chunk: Any) -> None:
    """Keep a streamed answer's usage (its last chunk's) for the key's tokens per minute."""
    if isinstance(chunk, dict) and "finish_reason" in chunk:
        request.state.tokens_used = tokens_used_by(chunk)


def _tokens_used(scope: Scope) -> int:
    """What the request's model reported it used; 0 when it did not say."""
    state = scope.get("state", {})
    if "tokens_used" in state:  # a stream's, once its last chunk has gone
        return int(state["tokens_used"])
    timing = state.get("timing")
    return tokens_used_by(timing.result if isinstance(timing, InferenceResult) else None)


def tokens_used_by(result: object) -> int:
    """What a runtime's result says it used: prompt and completion tokens; 0 when it did not say."""
    if not isinstance(result, dict):
        return 0
    return int(result.get("prompt_tokens", 0)) + int(result.get("completion_tokens", 0))

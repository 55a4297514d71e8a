"""The client's own errors; the server's come back as the `modelmora.errors` class it raised."""

from __future__ import annotations

from modelmora.errors import ServeError, UnavailableError


class CircuitOpenError(UnavailableError):
    """The breaker of a server is open: the call failed fast, nothing was sent."""

    code = "circuit_open"

    def __init__(self, url: str, failures: int, seconds_left: float) -> None:
        super().__init__(
            f"calls to {url} fail fast: its last {failures} attempts failed (circuit open)",
            hint=f"one call goes through as a probe in {seconds_left:.1f} s",
            retry_after=seconds_left,
        )
        self.url = url


class ServerUnreachableError(ServeError):
    """No server answered: the connection failed or timed out, after the retries."""

    code = "server_unreachable"


class StoredResultError(ServeError):
    """A result the server kept in object storage could not be fetched, or was not the one the
    server announced (its size or sha256 differ)."""

    code = "stored_result"

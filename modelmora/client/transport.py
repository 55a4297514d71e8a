"""What both clients share about HTTP: default address, headers, and the errors of giving up."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from modelmora.client.calls import route_headers
from modelmora.client.errors import ServerUnreachableError
from modelmora.errors import DeadlineExceededError, ServeError

if TYPE_CHECKING:
    from modelmora.client.resilience import Attempts
    from modelmora.client.results import Job

DEFAULT_URL = "http://127.0.0.1:8000"


def base_headers(api_key: str | None, route_key: str | None) -> dict[str, str]:
    """Sent with every call: the key, and the route key that keeps a caller on one version."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return {**headers, **route_headers(route_key)}


def gave_up(url: str, error: httpx.TransportError, attempts: Attempts) -> ServeError:
    """The last connection error or timeout of a call, as one line that says what to do."""
    tries = f"{attempts.count} attempt{'s' if attempts.count > 1 else ''}"
    if isinstance(error, httpx.TimeoutException):  # connecting too: the last one may get 50 ms
        return DeadlineExceededError(
            f"{url} did not answer {attempts.method} {attempts.path} in time ({tries}: "
            f"{type(error).__name__})",
            hint="raise the client's timeout or its retry deadline",
        )
    return ServerUnreachableError(
        f"no ModelMora server answers at {url} ({tries}; {type(error).__name__}: {error})",
        hint="start one with `modelmora serve`",
    )


def wait_deadline(job: Job, timeout: float) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"job '{job.id}' is still {job.state} after {timeout:g} s",
        hint="wait longer, or cancel it (jobs.cancel) while it is queued",
    )

"""`GET /errors` (admin): the server's recent errors, for the web UI and for a person without
access to the logs.

A logging handler on the server's loggers keeps, in a bounded ring buffer, every record at WARNING
or above (with its traceback) and every access record of a 5xx response, but for `/ready`, whose
503 says "not yet" by design (load balancers poll it while the server starts). Nothing is written
anywhere: the buffer is the last `CAPACITY` entries since the server started. A 5xx is seen only
while the access log is on (the default; `access_log = false` or a log level above `info` turns
it off).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from modelmora.serve.api.auth import require_admin
from modelmora.serve.api.http import PydanticResponse
from modelmora.serve.api.openapi import Endpoint

CAPACITY = 200
LOGGERS = ("modelmora", "uvicorn.error")
"""The loggers the server configures; both stop propagation, so the handler sits on each."""
ACCESS_LOGGER = "modelmora.access"
NOT_ERRORS = frozenset({"/ready"})


class RecentError(BaseModel):
    """One error log record, or one request answered with a 5xx."""

    at: float
    """Unix time."""
    level: str
    logger: str
    message: str
    status: int | None = None
    method: str | None = None
    path: str | None = None
    request_id: str | None = None
    model: str | None = None
    traceback: str | None = None


class RecentErrors(BaseModel):
    errors: list[RecentError]
    """Newest first."""
    capacity: int
    """How many the server keeps; older ones are dropped."""


class ErrorBuffer(logging.Handler):
    """The ring buffer, fed as a logging handler (from any thread)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__()
        self.capacity = capacity
        self.entries: deque[RecentError] = deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        entry = error_entry(record)
        if entry is not None:
            self.entries.append(entry)

    def recent(self) -> list[RecentError]:
        return list(reversed(self.entries))

    def attach(self) -> None:
        """Listen from now on; called once the server's logging is configured (it would drop a
        handler added before)."""
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self)


def error_entry(record: logging.LogRecord) -> RecentError | None:
    """The entry of a record worth keeping: WARNING and above, or an access record of a 5xx."""
    fields: dict[str, Any] = getattr(record, "fields", None) or {}
    status, method, path = (
        fields.get("status"),
        _text(fields.get("method")),
        _text(fields.get("path")),
    )
    is_5xx = isinstance(status, int) and status >= 500 and path not in NOT_ERRORS
    if record.name == ACCESS_LOGGER:
        if not is_5xx:
            return None
        message = f"{method} {path} answered {status}"
    elif record.levelno < logging.WARNING:
        return None
    else:
        message = record.getMessage()
    trace = logging.Formatter().formatException(record.exc_info) if record.exc_info else None
    return RecentError(
        at=record.created,
        level=record.levelname,
        logger=record.name,
        message=message,
        status=status if isinstance(status, int) else None,
        method=method,
        path=path,
        request_id=_text(fields.get("request_id")),
        model=_text(fields.get("model")),
        traceback=trace,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


async def recent_errors(request: Request) -> Response:
    """The recent errors, newest first."""
    require_admin(request)
    buffer: ErrorBuffer = request.app.state.recent_errors
    return PydanticResponse(RecentErrors(errors=buffer.recent(), capacity=buffer.capacity))


ENDPOINT = Endpoint("/errors", "GET", recent_errors, response=RecentErrors, tag="admin")

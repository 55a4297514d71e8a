"""What every route shares: settings, per-app state, bounded JSON bodies, error shapes."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelmora.errors import InvalidInputError, PayloadTooLargeError, ServeError
from modelmora.serve.api.schemas import FieldError
from modelmora.serve.config import ServerSettings
from modelmora.serve.scheduler import Scheduler
from modelmora.serve.supervisor import Supervisor

if TYPE_CHECKING:
    import sqlite3

    from modelmora.project import Project
    from modelmora.serve.api.auth import KeyRing
    from modelmora.serve.jobrunner import JobRunner
    from modelmora.serve.registrations import Registrations
    from modelmora.serve.traffic import Shadows, Traffic
    from modelmora.storage import Storage

API_VERSION = "1"
API_VERSION_HEADER = "X-ModelMora-API-Version"
ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True)
class AppState:
    """What routes reach through `request.app.state.modelmora`."""

    supervisor: Supervisor
    settings: ServerSettings
    scheduler: Scheduler
    jobs: JobRunner | None = None
    """None when the server has no jobs file (no project folder)."""
    keys: KeyRing | None = None
    """The API keys and the audit log; None: every request may do anything."""
    traffic: Traffic | None = None
    """Which version answers; None is a server whose models have no versions."""
    shadows: Shadows | None = None
    project: Project | None = None
    """The project served, whose manifest, lock and registry the admin routes edit."""
    registry: sqlite3.Connection | None = None
    registrations: Registrations | None = None
    """Models being registered at run time; None without a project."""
    storage: Storage | None = None
    """Where results over its threshold go (`[storage]`); None keeps every result inline."""


def app_state(request: Request) -> AppState:
    """The supervisor, scheduler and settings of the app serving `request`."""
    return cast(AppState, request.app.state.modelmora)


def client_gone(request: Request) -> Callable[[], bool]:
    """Whether the request's client has closed its connection, known now, without awaiting.

    Starlette's `is_disconnected` awaits the ASGI `receive` under a cancelled scope, which costs
    a turn of the event loop per request; the scheduler checks every request of a batch just
    before it leaves, and those turns kept the worker waiting. With the body read, `receive`
    answers at once only when the client has gone, else it waits: a first step that does not
    finish means the client is still there, and the pending receive is closed unawaited.
    """

    def check() -> bool:
        message = first_step(request.receive())
        return message is not None and message.get("type") == "http.disconnect"

    return check


def first_step(awaitable: Awaitable[T]) -> T | None:
    """The awaitable's result if it finishes without suspending; else None, and it is closed."""
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as finished:
        return cast(T, finished.value)
    steps.close()
    return None


class RequestValidationError(InvalidInputError):
    """A request body or query that does not match its schema; names the first bad field."""

    def __init__(self, errors: list[FieldError], headline: FieldError | None = None) -> None:
        first = headline or _headline(errors, [False] * len(errors))
        where = f"{first.field}: " if first.field else ""
        super().__init__(f"{where}{first.message}")
        self.errors = errors
        self.field = first.field or None

    @classmethod
    def from_pydantic(cls, error: ValidationError) -> RequestValidationError:
        """Turn pydantic's errors into field paths like `messages.0.content`."""
        items = error.errors(include_url=False)
        errors = [_field_error(item) for item in items]
        # In a union, the branch refused for its type (a list is not `str`) is the least telling.
        wrong_type = [item["type"].endswith("_type") for item in items]
        return cls(errors, _headline(errors, wrong_type))


def _headline(errors: list[FieldError], wrong_type: list[bool]) -> FieldError:
    """The most specific error about the first bad field: `inputs.1` says more than `inputs`.

    Among equally specific ones, a union branch that fails on the value (too many items) says
    more than one that fails on the type (`Input should be a valid string` for a list).
    """
    top = errors[0].field.split(".")[0]
    same_field = [i for i, e in enumerate(errors) if e.field.split(".")[0] == top]
    best = max(same_field, key=lambda i: (errors[i].field.count("."), not wrong_type[i]))
    return errors[best]


def _field_error(item: Any) -> FieldError:
    """One pydantic error; union branches (`str`, `list[str]`) stay out of the field path."""
    field = ".".join(str(part) for part in item["loc"] if not _is_type_tag(part))
    message = item["msg"]
    if item["type"] == "json_invalid":
        message = f"the request body is not valid JSON ({item['ctx']['error']})"
    elif item["type"] == "value_error":
        message = str(item["ctx"]["error"])  # without pydantic's "Value error, " prefix
    elif item["type"] == "extra_forbidden":
        message = _unknown_field(field)
    elif item["type"] in ("too_long", "too_short") and item["ctx"].get("field_type") == "List":
        message = _list_length(item["ctx"])
    return FieldError(field=field, message=message)


_OTHER_API_SPELLING = {
    "max_new_tokens": "max_tokens",
    "max_tokens": "max_new_tokens",
    "inputs": "input",
    "input": "inputs",
}
"""A field of the native API sent to the OpenAI one, or the other way round."""


_NOT_IMPLEMENTED = frozenset(
    {
        "audio", "function_call", "functions", "metadata", "modalities", "parallel_tool_calls",
        "prediction", "reasoning_effort", "response_format", "service_tier", "store", "suffix",
        "tool_choice", "tools", "web_search_options",
    }
)  # fmt: skip
"""OpenAI parameters that ModelMora does not implement (those with a no-op value are fields)."""


def _unknown_field(field: str) -> str:
    other = _OTHER_API_SPELLING.get(field)
    if other is not None:
        return f"unknown field; this API calls it `{other}`"
    if field in _NOT_IMPLEMENTED:
        return "not supported by ModelMora; leave it out"
    return "unknown field; check its spelling against /docs"


def _list_length(ctx: dict[str, Any]) -> str:
    """A list with too many or no items, with the bound: the real cause, in plain words."""
    given = ctx["actual_length"]
    if "max_length" in ctx:
        most = ctx["max_length"]
        return f"too many items: {given}, at most {most}; split them across requests"
    least = ctx["min_length"]
    return f"send at least {least} {'item' if least == 1 else 'items'}, not {given}"


def _is_type_tag(part: str | int) -> bool:
    """pydantic puts the tried union member (`str`, `list[str]`, `function-after[...]`) in `loc`."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing it before parsing once it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is larger than {limit} bytes", hint="send fewer or shorter inputs"
    )


async def read_json(request: Request, schema: type[ModelT]) -> ModelT:
    """Read, bound and validate a JSON body; any problem becomes a 413 or 422 naming the field."""
    body = await read_body(request, app_state(request).settings.max_body_bytes)
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError.from_pydantic(error) from None


def read_query(request: Request, schema: type[ModelT]) -> ModelT:
    """Validate the query string against `schema`."""
    try:
        return schema.model_validate(dict(request.query_params))
    except ValidationError as error:
        raise RequestValidationError.from_pydantic(error) from None


class PydanticResponse(Response):
    """JSON rendered by pydantic's serializer (faster than json.dumps for float lists)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return cast(BaseModel, content).model_dump_json().encode()


# Error shapes: one for the native API, OpenAI's own for /v1/*, Triton's for /v2/*.


def is_openai_path(path: str) -> bool:
    """Whether `path` belongs to the OpenAI-compatible API, which has its own error shape."""
    return path == "/v1" or path.startswith("/v1/")


def is_oip_path(path: str) -> bool:
    """Whether `path` belongs to the Open Inference Protocol, whose errors are `{"error": str}`."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    path: str,
    status: int,
    code: str,
    message: str,
    *,
    detail: Any = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error in the shape the API under `path` uses; OpenAI's and the Open Inference Protocol
    answer bad input with 400 (Triton: 400 bad input, 404 unknown model, 503 unavailable)."""
    if is_oip_path(path):
        return JSONResponse(
            {"error": message}, status_code=400 if status == 422 else status, headers=headers
        )
    if is_openai_path(path):
        status = 400 if status == 422 else status
        body: dict[str, Any] = {
            "error": {
                "message": message,
                "type": _openai_type(status),
                "param": param,
                "code": code,
            }
        }
    else:
        body = {"error": {"code": code, "message": message, "detail": detail}}
    return JSONResponse(body, status_code=status, headers=headers)


def _openai_type(status: int) -> str:
    """OpenAI's coarse error `type` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def serve_error_response(path: str, error: ServeError) -> Response:
    """A ServeError as a response, with Retry-After on 503 and 429."""
    headers = {}
    if error.status in (429, 503) and error.retry_after is not None:
        # The real wait, rounded up; none when nothing will change by itself (a failed model).
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    fields = error.errors if isinstance(error, RequestValidationError) else None
    detail = [item.model_dump() for item in fields] if fields else None
    param = error.field if isinstance(error, RequestValidationError) else None
    return error_response(
        path, error.status, error.code, str(error), detail=detail, param=param, headers=headers
    )


async def handle_serve_error(request: Request, error: Exception) -> Response:
    """Exception handler: a ServeError raised by a route."""
    return serve_error_response(request.url.path, cast(ServeError, error))


async def handle_http_exception(request: Request, error: Exception) -> Response:
    """Exception handler: Starlette's own 404 (no such route) and 405 (wrong method)."""
    exc = cast(HTTPException, error)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {exc.detail}; see /docs for the routes"
    return error_response(request.url.path, exc.status_code, code, message, headers=exc.headers)

"""Each API call as data: its request, whether it may be sent twice, and how its answer is read.

Both clients send these `Call`s through the same retries and breaker; only the I/O differs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx

from modelmora.client.results import (
    Embeddings,
    Generation,
    Inference,
    Job,
    Prediction,
    Predictions,
)
from modelmora.errors import (
    DeadlineExceededError,
    OverloadedError,
    ServeError,
    UnavailableError,
    serve_error_class,
)

if TYPE_CHECKING:
    from modelmora.serve.status import ModelStatus
    from modelmora.versionjson import RouteBody, RouteUpdateBody, VersionsBody

T = TypeVar("T")
VERSION_HEADER = "x-modelmora-model-version"
ROUTE_KEY_HEADER = "X-ModelMora-Route-Key"
_OPENAI_NAMES = {"max_new_tokens": "max_tokens"}
"""The native sampling options that /v1/completions spells otherwise."""


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    may_resend: bool = True
    may_be_stored: bool = False
    """True for an inference, whose result may come as a `result_url` into object storage."""
    """False for a call that would act twice if sent twice (and carries no idempotency key)."""


def route_headers(route_key: str | None) -> dict[str, str]:
    return {ROUTE_KEY_HEADER: route_key} if route_key else {}


# inference


def infer(
    name: str, inputs: Any, options: Mapping[str, Any], route_key: str | None
) -> Call[Inference]:
    return Call("POST", f"/infer/{name}", _inference, {"inputs": inputs, **options},
                headers=route_headers(route_key), may_be_stored=True)  # fmt: skip


def embed(
    name: str, texts: list[str], options: Mapping[str, Any], route_key: str | None
) -> Call[Embeddings]:
    return Call("POST", f"/infer/{name}", _embeddings, {"inputs": texts, **options},
                headers=route_headers(route_key), may_be_stored=True)  # fmt: skip


def classify(
    name: str, text: str, options: Mapping[str, Any], route_key: str | None
) -> Call[Predictions]:
    return Call("POST", f"/infer/{name}", _predictions, {"inputs": [text], **options},
                headers=route_headers(route_key), may_be_stored=True)  # fmt: skip


def generate(
    name: str, prompt: str, options: Mapping[str, Any], route_key: str | None
) -> Call[Generation]:
    return Call("POST", f"/infer/{name}", _generation, {"inputs": prompt, **options},
                headers=route_headers(route_key), may_be_stored=True)  # fmt: skip


def image(
    name: str, prompt: str, options: Mapping[str, Any], route_key: str | None
) -> Call[Mapping[str, Any]]:
    """A text-to-image request; with `stream` in options, its answer is server-sent events."""
    return Call("POST", f"/infer/{name}", _checked, {"inputs": prompt, **options},
                headers=route_headers(route_key))  # fmt: skip


def stream(name: str, prompt: str, options: Mapping[str, Any], route_key: str | None) -> Call[Any]:
    """A streamed completion (`/v1/completions`); options take the native names or OpenAI's."""
    named = {_OPENAI_NAMES.get(key, key): value for key, value in options.items()}
    body = {"model": name, "prompt": prompt, "stream": True, **named}
    return Call("POST", "/v1/completions", _checked, body, headers=route_headers(route_key))


def sse_text(line: str) -> str:
    """The text of one server-sent event line; an error event is raised."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return ""
    event = json.loads(line.removeprefix("data: "))
    if "error" in event:
        error = event["error"]
        raise serve_error_class(error.get("code"))(error.get("message", "stream failed"))
    choices = event.get("choices") or [{}]
    text: str = choices[0].get("text") or ""
    return text


# jobs


def submit_job(
    name: str, input: Any, options: Mapping[str, Any], idempotency_key: str | None
) -> Call[Job]:
    """POST /jobs with a key of its own, which its retries reuse: the server makes one job."""
    headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
    return Call("POST", "/jobs", _job, {"model": name, "input": input, **options}, headers=headers)


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", f"/jobs/{job_id}", _job)


def cancel_job(job_id: str) -> Call[Job]:
    return Call("DELETE", f"/jobs/{job_id}", _job)  # cancelling twice is fine


# models and versions


def models_page(page: int) -> Call[Any]:
    return Call("GET", "/models", _checked, params={"page": page, "limit": 1000})


def model(name: str) -> Call[ModelStatus]:
    return Call("GET", f"/models/{name}", _model_status)


def load(name: str) -> Call[ModelStatus]:
    return Call("POST", f"/models/{name}/load", _model_status)  # loading a loaded model is a no-op


def unload(name: str) -> Call[ModelStatus]:
    return Call("POST", f"/models/{name}/unload", _model_status)


def versions(name: str) -> Call[VersionsBody]:
    return Call("GET", f"/models/{name}/versions", _versions)


def set_route(name: str, route: RouteBody) -> Call[RouteUpdateBody]:
    return Call("PUT", f"/models/{name}/route", _route_update, route.model_dump())


def promote(name: str, version: str) -> Call[RouteUpdateBody]:
    return Call("POST", f"/models/{name}/promote", _route_update, {"version": version})


def rollback(name: str) -> Call[RouteUpdateBody]:
    """Not resent: a second rollback would go back one route further."""
    return Call("POST", f"/models/{name}/rollback", _route_update, may_resend=False)


def deprecate(name: str, version: str, undo: bool) -> Call[VersionsBody]:
    body = {"version": version, "undo": undo}
    return Call("POST", f"/models/{name}/deprecate", _versions, body)


# reading answers


def model_statuses(rows: list[Any]) -> list[ModelStatus]:
    from modelmora.serve.status import ModelStatus  # a pydantic record; no server code

    return [ModelStatus.model_validate(row) for row in rows]


def _checked(response: httpx.Response) -> Any:
    """The JSON body, or the server's error raised as the ServeError it stands for."""
    if response.is_error:
        raise error_from(response)
    return response.json()


def _version(response: httpx.Response) -> str | None:
    version: str | None = response.headers.get(VERSION_HEADER)
    return version


def _inference(response: httpx.Response) -> Inference:
    body = _checked(response)
    return Inference(body["model"], body["revision"], _version(response), body["result"], body)


def _embeddings(response: httpx.Response) -> Embeddings:
    body = _checked(response)
    result = body["result"]
    return Embeddings(result["embeddings"], body["model"], _version(response),
                      result.get("prompt_tokens", 0))  # fmt: skip


def _predictions(response: httpx.Response) -> Predictions:
    body = _checked(response)
    result = body["result"]
    labels = [Prediction(item["label"], item["score"]) for item in result["predictions"][0]]
    return Predictions(labels, body["model"], _version(response), result.get("prompt_tokens", 0))


def _generation(response: httpx.Response) -> Generation:
    body = _checked(response)
    result = body["result"]
    return Generation(
        result["text"], body["model"], _version(response), result.get("prompt_tokens", 0),
        result.get("completion_tokens", 0), result.get("finish_reason"),
    )  # fmt: skip


def _job(response: httpx.Response) -> Job:
    body = _checked(response)
    fields = {name: body.get(name) for name in Job.__dataclass_fields__ if name != "is_replayed"}
    return Job(**fields, is_replayed=response.headers.get("idempotent-replayed") == "true")


def _model_status(response: httpx.Response) -> ModelStatus:
    return model_statuses([_checked(response)])[0]


def _versions(response: httpx.Response) -> VersionsBody:
    from modelmora.versionjson import VersionsBody

    return VersionsBody.model_validate(_checked(response))


def _route_update(response: httpx.Response) -> RouteUpdateBody:
    from modelmora.versionjson import RouteUpdateBody

    return RouteUpdateBody.model_validate(_checked(response))


def error_from(response: httpx.Response) -> ServeError:
    """The ServeError that a server's error response stands for."""
    try:
        error: Mapping[str, Any] = response.json()["error"]
        code, message = str(error.get("code")), str(error.get("message"))
    except (ValueError, KeyError, TypeError):
        code, message = "", response.text[:200] or response.reason_phrase
    if response.status_code == 401:
        return ServeError(message, hint="pass the server's API key (--api-key)")
    cls = serve_error_class(code)
    if cls is ServeError:  # not the server's shape: a proxy's or a gateway's answer
        cls = _BY_STATUS.get(response.status_code, ServeError)
    return cls(message, retry_after=retry_after(response))


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds; an HTTP date (which ModelMora never sends) counts as absent."""
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


_BY_STATUS: dict[int, type[ServeError]] = {
    429: OverloadedError,
    502: UnavailableError,
    503: UnavailableError,
    504: DeadlineExceededError,
}

"""Talk to a running `modelmora serve`: the calls behind `modelmora ps`, `run`, `load`, `stop`,
and the version commands (`versions`, `route`, `promote`, `rollback`, `deprecate`).

Plain httpx; no server code is imported, so the CLI stays light. Errors come back as the
`ServeError` subclass the server raised, with its message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from modelmora.errors import ServeError, serve_error_class
from modelmora.serve.api.schemas import InferResponse
from modelmora.serve.status import ModelStatus
from modelmora.versionjson import (
    DeprecateBody,
    PromoteBody,
    RouteBody,
    RouteUpdateBody,
    VersionsBody,
)

DEFAULT_URL = "http://127.0.0.1:8000"
_OPENAI_NAMES = {"max_new_tokens": "max_tokens"}
"""The native sampling options that /v1/completions spells otherwise."""


class Client:
    """A connection to one server; `api_key` when it was started with one."""

    def __init__(
        self, url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 300.0
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def models(self) -> list[ModelStatus]:
        """Every served model with its state, memory, pid and expiry (all pages)."""
        rows: list[ModelStatus] = []
        page = 1
        while True:
            body = self._call("GET", "/models", params={"page": page, "limit": 1000})
            rows += [ModelStatus.model_validate(item) for item in body["models"]]
            if len(rows) >= body["total"] or not body["models"]:
                return rows
            page += 1

    def model(self, name: str) -> ModelStatus:
        """One model's status."""
        return ModelStatus.model_validate(self._call("GET", f"/models/{name}"))

    def load(self, name: str) -> ModelStatus:
        """Load a model now (a failed one too); its status once it is ready."""
        return ModelStatus.model_validate(self._call("POST", f"/models/{name}/load"))

    def unload(self, name: str) -> ModelStatus:
        """Unload a model: its worker process ends and gives its memory back."""
        return ModelStatus.model_validate(self._call("POST", f"/models/{name}/unload"))

    def versions(self, name: str) -> VersionsBody:
        """A model's versions, its route and the history of its routes."""
        return VersionsBody.model_validate(self._call("GET", f"/models/{name}/versions"))

    def set_route(self, name: str, route: RouteBody) -> RouteUpdateBody:
        """Give a model a new route (admin)."""
        body = self._call("PUT", f"/models/{name}/route", json=route.model_dump())
        return RouteUpdateBody.model_validate(body)

    def promote(self, name: str, version: str) -> RouteUpdateBody:
        """All of a model's traffic to one version (admin)."""
        payload = PromoteBody(version=version).model_dump()
        body = self._call("POST", f"/models/{name}/promote", json=payload)
        return RouteUpdateBody.model_validate(body)

    def rollback(self, name: str) -> RouteUpdateBody:
        """Back to the route a model had before its current one (admin)."""
        return RouteUpdateBody.model_validate(self._call("POST", f"/models/{name}/rollback"))

    def deprecate(self, name: str, version: str, undo: bool = False) -> VersionsBody:
        """Mark a version deprecated, or active again with `undo` (admin)."""
        payload = DeprecateBody(version=version, undo=undo).model_dump()
        body = self._call("POST", f"/models/{name}/deprecate", json=payload)
        return VersionsBody.model_validate(body)

    def infer(self, name: str, inputs: Any, **options: Any) -> InferResponse:
        """One inference: `inputs` is a text or list of texts; options are the task's fields."""
        body = self._call("POST", f"/infer/{name}", json={"inputs": inputs, **options})
        return InferResponse.model_validate(body)

    def stream_text(self, name: str, prompt: str, **options: Any) -> Iterator[str]:
        """Generated text as it comes (text-generation models), through /v1/completions.

        Options take the native names (`max_new_tokens`) as `infer` does, or OpenAI's.
        """
        named = {_OPENAI_NAMES.get(key, key): value for key, value in options.items()}
        payload = {"model": name, "prompt": prompt, "stream": True, **named}
        with (
            self._unreachable_as_error(),
            self._http.stream("POST", "/v1/completions", json=payload) as response,
        ):
            if response.is_error:
                response.read()
                raise _error(response)
            for line in response.iter_lines():
                piece = _sse_text(line)
                if piece:
                    yield piece

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; the parsed JSON body, or the server's error raised as a ServeError."""
        with self._unreachable_as_error():
            response = self._http.request(method, path, **kwargs)
        if response.is_error:
            raise _error(response)
        return response.json()

    @contextmanager
    def _unreachable_as_error(self) -> Iterator[None]:
        """A connection problem becomes one line that says how to start a server."""
        try:
            yield
        except httpx.TransportError as error:
            raise ServeError(
                f"no ModelMora server answers at {self.url} ({type(error).__name__}: {error})",
                hint="start one with `modelmora serve`",
            ) from None


def _sse_text(line: str) -> str:
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


def _error(response: httpx.Response) -> ServeError:
    """The ServeError that a server's error response stands for."""
    try:
        error: Mapping[str, Any] = response.json()["error"]
        code, message = str(error.get("code")), str(error.get("message"))
    except (ValueError, KeyError, TypeError):
        code, message = "", response.text[:200] or response.reason_phrase
    if response.status_code == 401:
        return ServeError(message, hint="pass the server's API key (--api-key)")
    retry_after = response.headers.get("retry-after")
    cls = serve_error_class(code)
    return cls(message, retry_after=float(retry_after) if retry_after else None)

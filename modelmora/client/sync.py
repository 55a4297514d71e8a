"""`Client`: a running ModelMora server over HTTP, with retries and a circuit breaker."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from modelmora.client import calls, images, stored
from modelmora.client.calls import Call
from modelmora.client.images import EventReader, Images, ProgressHook
from modelmora.client.resilience import Attempts, CircuitBreaker, RetryCounters, RetryPolicy
from modelmora.client.results import Embeddings, Generation, Inference, Job, Predictions
from modelmora.client.transport import DEFAULT_URL, base_headers, gave_up, wait_deadline
from modelmora.errors import ServeError

if TYPE_CHECKING:
    from modelmora.serve.status import ModelStatus
    from modelmora.versionjson import RouteBody, RouteUpdateBody, VersionsBody

T = TypeVar("T")


class Client:
    """A connection to one server: `api_key` when it has keys, `route_key` to stay on one
    version, `timeout` per attempt; `retry` and `breaker` say how failures are met."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        route_key: str | None = None,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self.counters = RetryCounters()
        self.jobs = Jobs(self)
        headers = base_headers(api_key, route_key)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # inference

    def embed(
        self, model: str, texts: list[str], *, route_key: str | None = None, **options: Any
    ) -> Embeddings:
        """One vector per text; options are the task's fields (`normalize`, `timeout`, ...)."""
        return self.send(calls.embed(model, texts, options, route_key))

    def classify(
        self, model: str, text: str, *, route_key: str | None = None, **options: Any
    ) -> Predictions:
        """A text's labels, best first (`top_k` of them)."""
        return self.send(calls.classify(model, text, options, route_key))

    def generate(
        self, model: str, prompt: str, *, route_key: str | None = None, **sampling: Any
    ) -> Generation:
        """A completion, whole; sampling options as in the native API (`max_new_tokens`, ...)."""
        return self.send(calls.generate(model, prompt, sampling, route_key))

    def stream(
        self, model: str, prompt: str, *, route_key: str | None = None, **sampling: Any
    ) -> Iterator[str]:
        """A completion as it comes, chunk by chunk. Retried until its first byte, not after."""
        response = self.open(calls.stream(model, prompt, sampling, route_key), stream=True)
        try:
            if response.is_error:
                response.read()
                raise calls.error_from(response)
            for line in response.iter_lines():
                piece = calls.sse_text(line)
                if piece:
                    yield piece
        finally:
            response.close()

    def infer(
        self, model: str, inputs: Any, *, route_key: str | None = None, **options: Any
    ) -> Inference:
        """Any task: `inputs` and the task's fields as `POST /infer/{model}` takes them."""
        return self.send(calls.infer(model, inputs, options, route_key))

    def generate_image(
        self,
        model: str,
        prompt: str,
        *,
        route_key: str | None = None,
        on_progress: ProgressHook | None = None,
        **options: Any,
    ) -> Images:
        """PNG images for a text-to-image model (`size`, `n`, `steps`, `guidance`, `seed`,
        `negative_prompt`); `on_progress(step, steps)` after each denoising step, if given."""
        if on_progress is None:
            call = calls.image(model, prompt, options, route_key)
            response = self.open(call)
            body = call.parse(response)
        else:
            call = calls.image(model, prompt, {**options, "stream": True}, route_key)
            response = self.open(call, stream=True)
            body = self._events(response, EventReader(on_progress))
        version = images.version_of(body, response.headers.get(calls.VERSION_HEADER))
        return images.images_of(body, version, self.timeout)

    def _events(self, response: httpx.Response, reader: EventReader) -> Mapping[str, Any]:
        try:
            if response.is_error:
                response.read()
                raise calls.error_from(response)
            for line in response.iter_lines():
                reader.feed(line)
        finally:
            response.close()
        if reader.body is None:
            raise ServeError("the server ended the stream without a result", hint="try again")
        return reader.body

    stream_text = stream

    # models

    def models(self) -> list[ModelStatus]:
        """Every served model with its state, memory, pid and expiry (all pages)."""
        rows: list[Any] = []
        page = 1
        while True:
            body = self.send(calls.models_page(page))
            rows += body["models"]
            if len(rows) >= body["total"] or not body["models"]:
                return calls.model_statuses(rows)
            page += 1

    def status(self, name: str) -> ModelStatus:
        """One model's status."""
        return self.send(calls.model(name))

    model = status

    def load(self, name: str) -> ModelStatus:
        """Load a model now (a failed one too); its status once it is ready."""
        return self.send(calls.load(name))

    def unload(self, name: str) -> ModelStatus:
        """Unload a model: its worker process ends and gives its memory back."""
        return self.send(calls.unload(name))

    def versions(self, name: str) -> VersionsBody:
        return self.send(calls.versions(name))

    def set_route(self, name: str, route: RouteBody) -> RouteUpdateBody:
        return self.send(calls.set_route(name, route))

    def promote(self, name: str, version: str) -> RouteUpdateBody:
        return self.send(calls.promote(name, version))

    def rollback(self, name: str) -> RouteUpdateBody:
        return self.send(calls.rollback(name))

    def deprecate(self, name: str, version: str, undo: bool = False) -> VersionsBody:
        return self.send(calls.deprecate(name, version, undo))

    # sending

    def send(self, call: Call[T]) -> T:
        """One call through the breaker and the retries; its answer, parsed."""
        response = self.open(call)
        where = stored.location_in(response) if call.may_be_stored else None
        if where is not None:
            response = stored.inlined(response, stored.fetch(where, self.timeout))
        return call.parse(response)

    def open(self, call: Call[Any], *, stream: bool = False) -> httpx.Response:
        """The response the call ends with: a success, or the error to report."""
        attempts = Attempts(self.url, call.method, call.path, call.may_resend, self.retry,
                            self.breaker, self.counters, self.timeout)  # fmt: skip
        while True:
            request = self._http.build_request(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers,
                timeout=attempts.begin(),
            )  # fmt: skip
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                delay = attempts.after_error(error)
                if delay is None:
                    raise gave_up(self.url, error, attempts) from None
                time.sleep(delay)
                continue
            except BaseException:
                attempts.abandon()
                raise
            delay = attempts.after_answer(response)
            if delay is None:
                return response
            response.close()
            time.sleep(delay)


class Jobs:
    """A client's async jobs: `submit` (idempotent: retries reuse its key), `get`, `wait`,
    `cancel`."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def submit(
        self, model: str, input: Any, *, idempotency_key: str | None = None, **options: Any
    ) -> Job:
        """Queue a job (`priority`, `timeout` as options); the key is made here unless given."""
        return self._client.send(calls.submit_job(model, input, options, idempotency_key))

    def get(self, job_id: str) -> Job:
        return self._client.send(calls.get_job(job_id))

    def cancel(self, job_id: str) -> Job:
        return self._client.send(calls.cancel_job(job_id))

    def result(self, job: Job) -> Any:
        """A finished job's result, fetched from object storage when the server kept it there."""
        where = stored.location(job.result)
        return job.result if where is None else stored.fetch(where, self._client.timeout)

    def wait(self, job_id: str, timeout: float = 300.0, poll: float = 1.0) -> Job:
        """The job once it is finished; DeadlineExceededError after `timeout` seconds."""
        give_up_at, pause = time.monotonic() + timeout, 0.05
        while not (job := self.get(job_id)).is_finished:
            if time.monotonic() >= give_up_at:
                raise wait_deadline(job, timeout)
            time.sleep(min(pause, max(give_up_at - time.monotonic(), 0.0)))
            pause = min(pause * 2, poll)
        return job

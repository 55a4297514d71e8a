"""`AsyncClient`: `Client` for asyncio; the same calls, retries and breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
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

T = TypeVar("T")


class AsyncClient:
    """See `Client`: the same arguments, methods to await, `stream` to iterate with `async for`."""

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
        self.jobs = AsyncJobs(self)
        headers = base_headers(api_key, route_key)
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def embed(
        self, model: str, texts: list[str], *, route_key: str | None = None, **options: Any
    ) -> Embeddings:
        return await self.send(calls.embed(model, texts, options, route_key))

    async def classify(
        self, model: str, text: str, *, route_key: str | None = None, **options: Any
    ) -> Predictions:
        return await self.send(calls.classify(model, text, options, route_key))

    async def generate(
        self, model: str, prompt: str, *, route_key: str | None = None, **sampling: Any
    ) -> Generation:
        return await self.send(calls.generate(model, prompt, sampling, route_key))

    async def stream(
        self, model: str, prompt: str, *, route_key: str | None = None, **sampling: Any
    ) -> AsyncIterator[str]:
        response = await self.open(calls.stream(model, prompt, sampling, route_key), stream=True)
        try:
            if response.is_error:
                await response.aread()
                raise calls.error_from(response)
            async for line in response.aiter_lines():
                piece = calls.sse_text(line)
                if piece:
                    yield piece
        finally:
            await response.aclose()

    async def generate_image(
        self,
        model: str,
        prompt: str,
        *,
        route_key: str | None = None,
        on_progress: ProgressHook | None = None,
        **options: Any,
    ) -> Images:
        """As `Client.generate_image`."""
        if on_progress is None:
            call = calls.image(model, prompt, options, route_key)
            response = await self.open(call)
            body = call.parse(response)
        else:
            call = calls.image(model, prompt, {**options, "stream": True}, route_key)
            response = await self.open(call, stream=True)
            body = await self._events(response, EventReader(on_progress))
        version = images.version_of(body, response.headers.get(calls.VERSION_HEADER))
        return await images.images_of_async(body, version, self.timeout)

    async def _events(self, response: httpx.Response, reader: EventReader) -> Mapping[str, Any]:
        try:
            if response.is_error:
                await response.aread()
                raise calls.error_from(response)
            async for line in response.aiter_lines():
                reader.feed(line)
        finally:
            await response.aclose()
        if reader.body is None:
            raise ServeError("the server ended the stream without a result", hint="try again")
        return reader.body

    async def infer(
        self, model: str, inputs: Any, *, route_key: str | None = None, **options: Any
    ) -> Inference:
        return await self.send(calls.infer(model, inputs, options, route_key))

    async def models(self) -> list[ModelStatus]:
        rows: list[Any] = []
        page = 1
        while True:
            body = await self.send(calls.models_page(page))
            rows += body["models"]
            if len(rows) >= body["total"] or not body["models"]:
                return calls.model_statuses(rows)
            page += 1

    async def status(self, name: str) -> ModelStatus:
        return await self.send(calls.model(name))

    async def load(self, name: str) -> ModelStatus:
        return await self.send(calls.load(name))

    async def unload(self, name: str) -> ModelStatus:
        return await self.send(calls.unload(name))

    async def send(self, call: Call[T]) -> T:
        response = await self.open(call)
        where = stored.location_in(response) if call.may_be_stored else None
        if where is not None:
            response = stored.inlined(response, await stored.fetch_async(where, self.timeout))
        return call.parse(response)

    async def open(self, call: Call[Any], *, stream: bool = False) -> httpx.Response:
        attempts = Attempts(self.url, call.method, call.path, call.may_resend, self.retry,
                            self.breaker, self.counters, self.timeout)  # fmt: skip
        while True:
            request = self._http.build_request(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers,
                timeout=attempts.begin(),
            )  # fmt: skip
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                delay = attempts.after_error(error)
                if delay is None:
                    raise gave_up(self.url, error, attempts) from None
                await asyncio.sleep(delay)
                continue
            except BaseException:
                attempts.abandon()
                raise
            delay = attempts.after_answer(response)
            if delay is None:
                return response
            await response.aclose()
            await asyncio.sleep(delay)


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def submit(
        self, model: str, input: Any, *, idempotency_key: str | None = None, **options: Any
    ) -> Job:
        return await self._client.send(calls.submit_job(model, input, options, idempotency_key))

    async def get(self, job_id: str) -> Job:
        return await self._client.send(calls.get_job(job_id))

    async def cancel(self, job_id: str) -> Job:
        return await self._client.send(calls.cancel_job(job_id))

    async def result(self, job: Job) -> Any:
        """A finished job's result, fetched from object storage when the server kept it there."""
        where = stored.location(job.result)
        return (
            job.result if where is None else await stored.fetch_async(where, self._client.timeout)
        )

    async def wait(self, job_id: str, timeout: float = 300.0, poll: float = 1.0) -> Job:
        give_up_at, pause = time.monotonic() + timeout, 0.05
        while not (job := await self.get(job_id)).is_finished:
            if time.monotonic() >= give_up_at:
                raise wait_deadline(job, timeout)
            await asyncio.sleep(min(pause, max(give_up_at - time.monotonic(), 0.0)))
            pause = min(pause * 2, poll)
        return job

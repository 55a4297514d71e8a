"""What the server records: request ids, one JSON log line per request, Prometheus metrics."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelmora.serve.api.http import API_VERSION, API_VERSION_HEADER, error_response
from modelmora.serve.api.openapi import Endpoint
from modelmora.serve.config import LogFormat
from modelmora.serve.scheduler import PRIORITIES, ModelStats, Scheduler
from modelmora.serve.supervisor import InferenceResult, Supervisor
from modelmora.serve.tasks import TaskGroup

access_log = logging.getLogger("modelmora.access")
error_log = logging.getLogger("modelmora.serve.app")
_REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_COSINE_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    """The app's own Prometheus registry: never the global one, so two apps stay apart."""

    def __init__(
        self, supervisor: Supervisor, scheduler: Scheduler, task_groups: Sequence[TaskGroup] = ()
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = self._counter(
            "requests", "HTTP requests.", "endpoint", "model", "version", "status"
        )
        self.latency = self._histogram(
            "request_duration_seconds",
            "HTTP request latency.",
            _LATENCY_BUCKETS,
            "endpoint",
            "model",
            "version",
        )
        self.shadow_requests = self._counter(
            "shadow_requests",
            "Requests copied to a shadow version: sent, dropped (it was busy) or failed.",
            "model",
            "shadow",
            "outcome",
        )
        self.shadow_latency = self._histogram(
            "shadow_duration_seconds",
            "Time a shadow copy took.",
            _LATENCY_BUCKETS,
            "model",
            "shadow",
        )
        self.shadow_agreement = self._counter(
            "shadow_comparisons",
            "Classification inputs whose top label the shadow agreed or disagreed on.",
            "model",
            "shadow",
            "outcome",
        )
        self.shadow_cosine = self._histogram(
            "shadow_cosine",
            "Cosine similarity of each shadow embedding to the answered one.",
            _COSINE_BUCKETS,
            "model",
            "shadow",
        )
        self.queue = self._histogram(
            "queue_seconds", "Time requests waited for a worker.", _LATENCY_BUCKETS, "model"
        )
        self.load_wait = self._histogram(
            "load_wait_seconds",
            "Time requests waited for their model to load.",
            _LOAD_BUCKETS,
            "model",
        )
        self.inference = self._histogram(
            "inference_seconds", "Time a worker spent on a request.", _LATENCY_BUCKETS, "model"
        )
        self.load_time = self._histogram(
            "model_load_seconds",
            "Time to start a worker and load its model.",
            _LOAD_BUCKETS,
            "model",
        )
        self.events = self._counter(
            "model_events", "Loads, unloads, evictions, crashes.", "model", "event"
        )
        self.registry.register(WorkerCollector(supervisor))
        self.registry.register(SchedulerCollector(supervisor, scheduler))
        self.registry.register(TaskCollector(task_groups))
        ProcessCollector(registry=self.registry)
        supervisor.add_listener(self.on_model_event)

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(f"modelmora_{name}", doc, labels, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...], *labels: str
    ) -> Histogram:
        return Histogram(f"modelmora_{name}", doc, labels, buckets=buckets, registry=self.registry)

    def on_model_event(self, event: str, model: str, seconds: float) -> None:
        """Supervisor listener: count the event; a load also records how long it took."""
        self.events.labels(model, event).inc()
        if event == "load":
            self.load_time.labels(model).observe(seconds)

    def observe_shadow(self, model: str, shadow: str, outcome: str, value: float | None) -> None:
        """One event of a shadow copy (see `traffic.Record`)."""
        if outcome in ("sent", "dropped", "failed"):
            self.shadow_requests.labels(model, shadow, outcome).inc()
        elif outcome == "seconds" and value is not None:
            self.shadow_latency.labels(model, shadow).observe(value)
        elif outcome == "cosine" and value is not None:
            self.shadow_cosine.labels(model, shadow).observe(value)
        elif outcome in ("agree", "disagree"):
            self.shadow_agreement.labels(model, shadow, outcome).inc()

    def observe_request(
        self, endpoint: str, served: str, status: int | str, seconds: float, timing: Any
    ) -> None:
        """Count one finished request; inference requests also split queue, load and compute.

        `served` is what answered (`minilm@v2`): the request metrics carry the model and the
        version apart, so that one query compares versions; the worker metrics carry `served`.
        A gRPC call's endpoint is `grpc:ModelInfer` and its status the gRPC code (`OK`).
        """
        name, _, version = served.partition("@")
        model = served
        self.requests.labels(endpoint, name, version, str(status)).inc()
        self.latency.labels(endpoint, name, version).observe(seconds)
        if isinstance(timing, InferenceResult):
            self.queue.labels(model).observe(timing.queue_ms / 1000)
            self.load_wait.labels(model).observe(timing.load_ms / 1000)
            self.inference.labels(model).observe(timing.inference_ms / 1000)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


class WorkerCollector(Collector):
    """Per-model gauges read from the supervisor at scrape time, so they are never stale; the
    resources are those of the last health check (absent until one has measured them)."""

    RESOURCES: ClassVar[dict[str, tuple[str, str]]] = {
        "cpu_percent": ("modelmora_worker_cpu_percent", "CPU of the worker, percent of a core."),
        "rss_bytes": ("modelmora_worker_rss_bytes", "Resident memory of the worker."),
        "uss_bytes": ("modelmora_worker_uss_bytes", "Memory only the worker holds."),
        "gpu_memory_bytes": ("modelmora_worker_gpu_memory_bytes", "GPU memory of the worker."),
        "gpu_utilization": (
            "modelmora_worker_gpu_utilization_percent",
            "Percent busy of the worker's GPU.",
        ),
    }

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        memory = GaugeMetricFamily(
            "modelmora_worker_memory_bytes", "Memory of the model's worker.", labels=["model"]
        )
        in_flight = GaugeMetricFamily(
            "modelmora_in_flight_requests", "Requests the model is working on.", labels=["model"]
        )
        state = GaugeMetricFamily(
            "modelmora_model_state", "1 for the model's current state.", labels=["model", "state"]
        )
        resources = {
            field: GaugeMetricFamily(metric, doc, labels=["model"])
            for field, (metric, doc) in self.RESOURCES.items()
        }
        for status in self.supervisor.statuses():
            if status.memory_bytes is not None:
                memory.add_metric([status.name], status.memory_bytes)
            in_flight.add_metric([status.name], status.in_flight)
            state.add_metric([status.name, status.state], 1)
            for field, family in resources.items():
                if (value := getattr(status, field)) is not None:
                    family.add_metric([status.name], value)
        pressure = GaugeMetricFamily(
            "modelmora_memory_pressure",
            "1 while available RAM is under min_available_memory or a GPU over its fraction.",
        )
        pressure.add_metric([], 1 if self.supervisor.pressure is not None else 0)
        yield from (memory, in_flight, state, *resources.values(), pressure)


class SchedulerCollector(Collector):
    """Per-model queue depth and batching counters, read from the scheduler at scrape time."""

    COUNTERS: ClassVar[dict[str, tuple[str, str]]] = {
        "batches": ("modelmora_batches", "Batches sent to the model's worker."),
        "batched_inputs": ("modelmora_batched_inputs", "Inputs sent in those batches."),
        "rejected": ("modelmora_requests_rejected", "Requests refused with 429 (queue full)."),
        "dropped": ("modelmora_requests_dropped", "Requests whose client left before compute."),
        "queue_seconds": ("modelmora_scheduler_queue_seconds", "Time requests spent queued."),
        "compute_seconds": ("modelmora_scheduler_compute_seconds", "Time batches computed."),
    }

    def __init__(self, supervisor: Supervisor, scheduler: Scheduler) -> None:
        self.supervisor = supervisor
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        names = self.supervisor.names()
        yield self.queue_depth(names)
        stats = {name: self.scheduler.stats(name) for name in names}
        for field, (metric, doc) in self.COUNTERS.items():
            family = CounterMetricFamily(metric, doc, labels=["model"])
            for name, numbers in stats.items():
                family.add_metric([name], getattr(numbers, field))
            yield family
        yield self.expired(stats)
        yield self.batch_sizes(stats)

    def queue_depth(self, names: list[str]) -> Metric:
        family = GaugeMetricFamily(
            "modelmora_queue_depth", "Requests queued, per priority.", labels=["model", "priority"]
        )
        for name in names:
            depth = self.scheduler.depth(name)
            for label, level in PRIORITIES.items():
                family.add_metric([name, label], depth[level])
        return family

    def expired(self, stats: dict[str, ModelStats]) -> Metric:
        family = CounterMetricFamily(
            "modelmora_requests_expired",
            "Requests answered 504 at their deadline, while queued or computing.",
            labels=["model", "where"],
        )
        for name, numbers in stats.items():
            family.add_metric([name, "queued"], numbers.expired_queued)
            family.add_metric([name, "computing"], numbers.expired_computing)
        return family

    def batch_sizes(self, stats: dict[str, ModelStats]) -> Metric:
        family = HistogramMetricFamily(
            "modelmora_batch_size", "Inputs per batch sent to the worker.", labels=["model"]
        )
        for name, numbers in stats.items():
            family.add_metric([name], size_buckets(numbers.batch_sizes), numbers.batched_inputs)
        return family


class TaskCollector(Collector):
    """Background tasks that failed, per owner: each was logged with its traceback when it did."""

    def __init__(self, groups: Sequence[TaskGroup]) -> None:
        self.groups = groups

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "modelmora_background_task_failures",
            "Background tasks (loads, batches, jobs) that failed; the log has each traceback.",
            labels=["owner"],
        )
        for group in self.groups:
            family.add_metric([group.name], group.failures)
        yield family


def size_buckets(counts: dict[int, int]) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets from a {batch size: batches} count."""
    buckets = [
        (str(bound), float(sum(n for size, n in counts.items() if size <= bound)))
        for bound in _BATCH_BUCKETS
    ]
    return [*buckets, ("+Inf", float(sum(counts.values())))]


async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, queue vs inference time, loads, worker memory."""
    registry = cast(Metrics, request.app.state.metrics)
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)


METRICS_ENDPOINT = Endpoint("/metrics", "GET", metrics, tag="telemetry", media_type="text/plain")


MODEL_VERSION_HEADER = "X-ModelMora-Model-Version"
"""Which version of a model with versions answered the request."""


class RequestMiddleware:
    """Outermost middleware: request id in and out, API version header, access log, metrics.

    It also turns an unexpected exception into a 500 in the API's error shape itself, because
    Starlette's ServerErrorMiddleware answers outside this middleware, without the headers.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log_enabled: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-ID", request_id)
                headers.append(API_VERSION_HEADER, API_VERSION)
                version = scope.get("state", {}).get("version")
                if version:
                    headers.append(MODEL_VERSION_HEADER, version)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            error_log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            if response_started:
                raise
            response = error_response(
                scope["path"], 500, "internal_error", f"internal error; request id {request_id}"
            )
            await response(scope, receive, send_with_headers)
        finally:
            self._record(scope, status, time.perf_counter() - started, request_id)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        state = scope.get("state", {})
        model = state.get("model", "")
        route = scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        self.metrics.observe_request(endpoint, model, status, seconds, state.get("timing"))
        if self.access_log_enabled and access_log.isEnabledFor(logging.INFO):
            fields = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "request_id": request_id,
                "model": model or None,
            }
            access_log.info("request", extra={"fields": fields})


def _request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is a sane token, else a new one."""
    given = Headers(scope=scope).get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def log_entry(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    """A record as the log's JSON object: time, level, logger, message, its `fields`."""
    entry: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
            timespec="milliseconds"
        ),
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": record.getMessage(),
    }
    entry.update(getattr(record, "fields", {}))
    if record.exc_info:
        entry["exception"] = formatter.formatException(record.exc_info)
    return entry


def text_line(entry: dict[str, Any]) -> str:
    """A log entry for a person: `19:40:06.123 INFO    POST /infer/minilm 200 12.3 ms model=...`."""
    moment = str(entry.get("time", ""))[11:23]
    level = str(entry.get("level", "")).upper()
    message, shown = _headline(entry)
    known = {"time", "level", "logger", "message", "exception", *shown}
    extra = " ".join(f"{k}={v}" for k, v in entry.items() if k not in known and v is not None)
    line = f"{moment} {level:<7} {message} {extra}".rstrip()
    return f"{line}\n{entry['exception']}" if entry.get("exception") else line


_ACCESS = ("method", "path", "status", "duration_ms")


def _headline(entry: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """An access record reads as `POST /infer/minilm 200 12.3 ms`; others by their message."""
    if entry.get("message") != "request" or not all(key in entry for key in _ACCESS):
        return str(entry.get("message", "")), ()
    method, path, status, duration = (entry[key] for key in _ACCESS)
    return f"{method} {path} {status} {float(duration):.1f} ms", _ACCESS


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(log_entry(record, self), default=str)


class TextFormatter(logging.Formatter):
    """One line for a person: time (UTC), level, message, then the `fields` as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        return text_line(log_entry(record, self))


_FORMATTERS = {"json": "JsonFormatter", "text": "TextFormatter"}


def log_config(
    level: str, log_format: LogFormat = "auto", log_file: str | None = None
) -> dict[str, Any]:
    """logging.dictConfig for the server: uvicorn's loggers and ours, on stderr and in `log_file`.

    `auto` writes lines for a person on a terminal and JSON lines otherwise; the file always gets
    JSON lines, one record each, for `modelmora logs` and log shippers.
    """
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    handlers: dict[str, Any] = {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": log_format,
            "stream": "ext://sys.stderr",
        }
    }
    if log_file:
        handlers["file"] = {
            "class": "logging.FileHandler",
            "formatter": "json",
            "filename": log_file,
        }
    logger = {"handlers": list(handlers), "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {name: {"()": f"{__name__}.{cls}"} for name, cls in _FORMATTERS.items()},
        "handlers": handlers,
        "loggers": {name: logger for name in ("uvicorn", "uvicorn.error", "modelmora")},
    }

"""Runtimes for tests and benchmarks: no torch, so their workers start in milliseconds.

Serve one with `ServedModel(..., runtime="runtimes_for_tests:EchoRuntime")`; the supervisor hands
the worker its import path, so the worker finds this module as the tests do.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator
from typing import Any

from modelmora.errors import InvalidInputError
from modelmora.runtimes import ModelSpec


class EchoRuntime:
    """Answers with its request and its pid.

    {"invalid": "field"} raises InvalidInputError naming that field; stream() yields the strings
    of {"pieces": [...]}, then a last chunk with finish_reason.
    """

    device = "cpu"

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}

    def load(self, spec: ModelSpec) -> None:
        self.options = dict(spec.options)
        time.sleep(self.options.get("load_ms", 0) / 1000)

    def warm_up(self) -> None:
        pass

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        if "invalid" in request:
            raise InvalidInputError(f"{request['invalid']}: this value is not accepted")
        return {"echo": request, "pid": os.getpid()}

    def stream(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for piece in request.get("pieces", []):
            yield {"text": piece}
        yield {"text": "", "finish_reason": "stop"}

    def accelerator_memory(self) -> int | None:
        return None


class SlowRuntime(EchoRuntime):
    """Sleeps request["ms"] before answering, and as long before each streamed piece."""

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        time.sleep(request.get("ms", 0) / 1000)
        return super().infer(request)

    def stream(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for chunk in super().stream(request):
            time.sleep(request.get("ms", 0) / 1000)
            yield chunk


class FailOnLoadRuntime(EchoRuntime):
    """Its load raises, as a corrupt checkpoint would."""

    def load(self, spec: ModelSpec) -> None:
        raise RuntimeError(spec.options.get("message", "the weights are corrupt"))


class CrashRuntime(EchoRuntime):
    """Dies mid-request like a segfault or the OOM killer: {"signal": 9} or {"exit": 7}."""

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        time.sleep(request.get("ms", 0) / 1000)
        if "signal" in request:
            os.kill(os.getpid(), request["signal"])
        if "exit" in request:
            os._exit(request["exit"])
        return super().infer(request)


class RecordingRuntime(EchoRuntime):
    """A batched `embedding` runtime you control: it appends each batch it sees to a file.

    Options: {"record": PATH, "batch_ms": N}. An input "sleep:N" makes its batch take N ms more.
    With PATH /dev/null it is the server benchmark's runtime that does no work.
    The vector of a text is `text_vector(text)` and its tokens its words, so that a test knows the
    answer of every input whatever batch it went in.
    """

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        texts: list[str] = request["inputs"]
        with open(self.options["record"], "a") as record:
            record.write(json.dumps(texts) + "\n")
        sleep_ms = self.options.get("batch_ms", 0) + sum(map(requested_sleep_ms, texts))
        time.sleep(sleep_ms / 1000)
        tokens = [len(text.split()) for text in texts]
        return {
            "embeddings": [text_vector(text) for text in texts],
            "dimensions": 2,
            "prompt_tokens": sum(tokens),
            "input_tokens": tokens,
        }


def requested_sleep_ms(text: str) -> float:
    return float(text.removeprefix("sleep:")) if text.startswith("sleep:") else 0.0


def text_vector(text: str) -> list[float]:
    return [float(len(text)), float(zlib.crc32(text.encode()) % 1000)]


def recorded_batches(path: str | os.PathLike[str]) -> list[list[str]]:
    """The batches a RecordingRuntime saw, in order."""
    if not os.path.exists(path):
        return []
    with open(path) as record:
        return [json.loads(line) for line in record]

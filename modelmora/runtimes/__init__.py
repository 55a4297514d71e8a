"""Runtimes: the per-task model code that runs inside a worker process.

A runtime is a class with a constructor that takes no argument and the methods of `Runtime`. The
worker creates one, calls `load(spec)` then `warm_up()`, then `infer()` or `stream()` once per
request, one request at a time.

Which class serves a task, first match wins:
1. the model's own `runtime = "package.module:Class"` in the manifest;
2. the built-in runtimes below, for the model's backend (torch, or onnx for the tasks it serves);
3. a plugin: an entry point in the group `modelmora.runtimes` whose name is the task.

This module imports neither torch nor transformers, so the server process may import it; the task
modules import them inside functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from modelmora.errors import ModelmoraError

ENTRY_POINT_GROUP = "modelmora.runtimes"

BUILTIN_RUNTIMES = {
    "embedding": "modelmora.runtimes.embedding:EmbeddingRuntime",
    "text-classification": "modelmora.runtimes.classification:ClassificationRuntime",
    "text-generation": "modelmora.runtimes.generation:GenerationRuntime",
    "text-to-image": "modelmora.runtimes.image:ImageRuntime",
}
ONNX_RUNTIMES = {
    "embedding": "modelmora.runtimes.onnx:OnnxEmbeddingRuntime",
    "text-classification": "modelmora.runtimes.onnx:OnnxClassificationRuntime",
}


@dataclass(frozen=True)
class ModelSpec:
    """What a runtime needs to load a model; built by the supervisor, sent to the worker."""

    name: str
    task: str
    path: str
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 1
    runtime: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    backend: str = "torch"


class Runtime(Protocol):
    """One loaded model. Requests and results are JSON-able dicts (see the serving contract)."""

    device: str
    """Where the model really runs once loaded, for example `cpu` or `cuda:0`."""

    def load(self, spec: ModelSpec) -> None: ...

    def warm_up(self) -> None: ...

    def infer(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]: ...

    def accelerator_memory(self) -> int | None:
        """Bytes held on the accelerator (CUDA), or None when the model runs on the CPU."""
        ...


RuntimeFactory = Callable[[], Runtime]


def resolve_runtime(
    task: str, override: str | None = None, backend: str = "torch"
) -> RuntimeFactory:
    """The class that serves `task`; raises ModelmoraError naming the fix when there is none."""
    override = override or pinned_runtime(task, backend)
    if override:
        return _as_factory(import_object(override), override)
    if task in BUILTIN_RUNTIMES:
        return _as_factory(import_object(BUILTIN_RUNTIMES[task]), task)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == task:
            return _as_factory(entry_point.load(), entry_point.value)
    raise ModelmoraError(
        f"no runtime serves the task '{task}'",
        hint=f"install a plugin with a '{ENTRY_POINT_GROUP}' entry point named '{task}', "
        "or set runtime = 'package.module:Class' on the model",
    )


def pinned_runtime(task: str, backend: str, override: str | None = None) -> str | None:
    """The runtime a model names for itself: its manifest's `runtime`, else the built-in class of
    a backend other than torch; None leaves the choice to `resolve_runtime`'s usual order."""
    if override or backend == "torch":
        return override
    if backend != "onnx" or task not in ONNX_RUNTIMES:
        raise ModelmoraError(f"backend '{backend}' does not serve the task '{task}'")
    return ONNX_RUNTIMES[task]


def import_object(reference: str) -> Any:
    """Import `package.module:Name` (the entry-point syntax) and return the object."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ModelmoraError(f"runtime '{reference}' is not of the form 'package.module:Class'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelmoraError(f"cannot import runtime module '{module_name}': {error}") from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ModelmoraError(f"module '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)
    return target


def _as_factory(candidate: Any, reference: str) -> RuntimeFactory:
    if not callable(candidate):
        raise ModelmoraError(f"runtime '{reference}' is not a class")
    factory: RuntimeFactory = candidate
    return factory

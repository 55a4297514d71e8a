"""Which served version answers a request, and the shadow copies of requests.

    "minilm" + route key ──► Traffic.resolve ──► Target(name="minilm@v3", version="v3",
                                                        shadow="minilm@v4" or None)

A model without versions is served under its name and resolves to itself. A model with versions is
served as one slot per version (`minilm@v2`); a request that names the model goes where its route
sends it (`routing.choose`), one that names a version goes there. Routes change at run time
(`set_route`); a request already resolved keeps its version, so a change drops nothing in flight.

A shadow copy runs after the client has its answer, at low priority, and never more than
`bound` at once per shadow version: past that it is dropped and counted. For embeddings and
classification the shadow's answer is compared with the primary's (cosine of the vectors, agreement
of the top labels) and the comparison goes to the metrics.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from modelmora.errors import ServeError, UnknownModelError
from modelmora.routing import Route, choose, shadows, split_reference
from modelmora.serve.tasks import TaskGroup

logger = logging.getLogger("modelmora.serve")

SHADOW_BOUND = 4
"""Shadow copies a shadow version runs at once, by default; more are dropped."""
SHADOW_TIMEOUT = 30.0


class Models(Protocol):
    """What resolving needs of the supervisor: whether a name is served."""

    def names(self) -> list[str]: ...


@dataclass(frozen=True)
class Target:
    """Where one request goes."""

    name: str
    """The served name: `minilm@v3`, or `minilm` for a model without versions."""
    model: str
    version: str | None
    shadow: str | None = None
    """The served name of the shadow version, when this request is mirrored."""


class Traffic:
    """The routes of the models with versions, changed at run time."""

    def __init__(self, routes: Mapping[str, Route], models: Models) -> None:
        self.routes = dict(routes)
        self.models = models

    def resolve(self, reference: str, key: str | None = None) -> Target:
        """The version for a request naming `reference` (`minilm` or `minilm@v2`), 404 if none."""
        model, version = split_reference(reference)
        route = self.routes.get(model)
        if version is None and route is not None:
            version = choose(route, key)
            mirrored = route.shadow != version and shadows(route)
            shadow = f"{model}@{route.shadow}" if mirrored else None
            return Target(f"{model}@{version}", model, version, shadow)
        if reference not in self.models.names():
            raise self.unknown(model, version)
        return Target(reference, model, version)

    def unknown(self, model: str, version: str | None) -> UnknownModelError:
        versions = sorted(self.routes[model].weights) if model in self.routes else []
        served = [n.partition("@")[2] for n in self.models.names() if n.startswith(f"{model}@")]
        if version is not None and served:
            return UnknownModelError(
                f"model '{model}' has no version '{version}'", f"its versions: {', '.join(served)}"
            )
        if version is not None and not versions:
            return UnknownModelError(
                f"model '{model}' has no versions", f"name it without @: '{model}'"
            )
        names = sorted({n.partition("@")[0] for n in self.models.names()})
        return UnknownModelError(
            f"model '{model}' is not served here", f"the models are: {', '.join(names) or 'none'}"
        )

    def set_route(self, model: str, route: Route) -> None:
        self.routes[model] = route

    def forget(self, model: str) -> None:
        self.routes.pop(model, None)


# --- shadows ------------------------------------------------------------------------------------

Run = Callable[[str], Awaitable[Mapping[str, Any]]]
"""Runs the mirrored request on a served name and returns the runtime's result."""
Record = Callable[[str, str, str, float | None], None]
"""(primary, shadow, outcome, value): sent, dropped, failed, seconds, agree, disagree, cosine."""


class Shadows:
    """The shadow copies in flight, at most `bound` per shadow version."""

    def __init__(self, record: Record | None = None, bound: int = SHADOW_BOUND) -> None:
        self.record: Record = record or (lambda *outcome: None)
        self.bound = bound
        self.running: Counter[str] = Counter()
        self.tasks = TaskGroup("shadows", logger, expected=(ServeError,))

    def mirror(self, target: Target, task: str, answer: Mapping[str, Any], run: Run) -> None:
        """Start the shadow copy of an answered request, or drop it when the shadow is busy."""
        if target.shadow is None:
            return
        if self.running[target.shadow] >= self.bound:
            self.record(target.name, target.shadow, "dropped", None)
            return
        self.running[target.shadow] += 1
        self.record(target.name, target.shadow, "sent", None)
        self.tasks.start(self._shadow(target, target.shadow, task, answer, run), "shadow")

    async def _shadow(
        self, target: Target, shadow: str, task: str, answer: Mapping[str, Any], run: Run
    ) -> None:
        started = time.perf_counter()
        try:
            result = await run(shadow)
        except ServeError as error:
            self.record(target.name, shadow, "failed", None)
            logger.info("shadow %s of %s failed: %s", shadow, target.name, error)
            return
        finally:
            self.running[shadow] -= 1
        self.record(target.name, shadow, "seconds", time.perf_counter() - started)
        for outcome, value in compare(task, answer, result):
            self.record(target.name, shadow, outcome, value)

    async def close(self) -> None:
        await self.tasks.close()


def compare(
    task: str, primary: Mapping[str, Any], shadow: Mapping[str, Any]
) -> list[tuple[str, float | None]]:
    """How far the shadow's answer is from the primary's: a cosine per vector, or per input
    whether the top labels agree. Nothing for other tasks."""
    if task == "embedding":
        pairs = zip(primary.get("embeddings", []), shadow.get("embeddings", []), strict=False)
        return [("cosine", cosine(a, b)) for a, b in pairs]
    if task == "text-classification":
        pairs = zip(primary.get("predictions", []), shadow.get("predictions", []), strict=False)
        return [("agree" if top(a) == top(b) else "disagree", None) for a, b in pairs]
    return []


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms else 0.0


def top(predictions: Any) -> str | None:
    """The top label of one input's predictions (a list of {label, score}, best first)."""
    if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
        return str(predictions[0].get("label"))
    return None

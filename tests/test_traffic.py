"""Resolving a request to a served version, and the bound on shadow copies (serve.traffic).

No server: a fake list of served names, and shadows whose runs wait on an event we hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from modelmora.errors import InvalidInputError, UnknownModelError
from modelmora.routing import Route
from modelmora.serve.traffic import Shadows, Target, Traffic, compare, cosine


class Served:
    def __init__(self, *names: str) -> None:
        self.served = list(names)

    def names(self) -> list[str]:
        return self.served


def traffic(route: Route) -> Traffic:
    return Traffic({"minilm": route}, Served("minilm@v1", "minilm@v2", "plain"))


def test_a_name_resolves_by_its_route_and_a_version_to_itself() -> None:
    routes = traffic(Route({"v2": 100}))

    assert routes.resolve("minilm") == Target("minilm@v2", "minilm", "v2")
    assert routes.resolve("minilm@v1") == Target("minilm@v1", "minilm", "v1")
    assert routes.resolve("plain") == Target("plain", "plain", None)


def test_unknown_names_and_versions_say_what_there_is() -> None:
    routes = traffic(Route({"v2": 100}))

    with pytest.raises(UnknownModelError, match="no version 'v9'; its versions: v1, v2"):
        routes.resolve("minilm@v9")
    with pytest.raises(UnknownModelError, match="'plain' has no versions"):
        routes.resolve("plain@v1")
    with pytest.raises(UnknownModelError, match="the models are: minilm, plain"):
        routes.resolve("other")
    with pytest.raises(InvalidInputError):
        routes.resolve("minilm@bad version")


def test_the_same_key_gets_the_same_version_until_the_weights_change() -> None:
    routes = traffic(Route({"v1": 50, "v2": 50}))
    first = {key: routes.resolve("minilm", key).version for key in map(str, range(200))}

    again = {key: routes.resolve("minilm", key).version for key in map(str, range(200))}
    routes.set_route("minilm", Route({"v1": 100}))
    promoted = {routes.resolve("minilm", key).version for key in map(str, range(200))}

    assert first == again and set(first.values()) == {"v1", "v2"}
    assert promoted == {"v1"}


def test_only_a_mirrored_request_names_the_shadow_and_never_the_version_itself() -> None:
    mirrored = traffic(Route({"v1": 100}, shadow="v2", shadow_fraction=1.0))
    never = traffic(Route({"v1": 100}, shadow="v2", shadow_fraction=0.0))
    itself = traffic(Route({"v2": 100}, shadow="v2", shadow_fraction=1.0))

    assert mirrored.resolve("minilm").shadow == "minilm@v2"
    assert never.resolve("minilm").shadow is None
    assert itself.resolve("minilm").shadow is None
    assert mirrored.resolve("minilm@v1").shadow is None  # a version named by hand is not copied


def test_shadow_copies_beyond_the_bound_are_dropped_and_counted() -> None:
    asyncio.run(asyncio.wait_for(shadow_bound(), timeout=10))


async def shadow_bound() -> None:
    events: list[tuple[str, str, str, float | None]] = []
    shadows = Shadows(lambda *event: events.append(event), bound=2)
    release = asyncio.Event()
    started = 0

    async def run(name: str) -> Mapping[str, Any]:
        nonlocal started
        started += 1
        await release.wait()
        return {"embeddings": [[0.0, 1.0]]}

    target = Target("minilm@v1", "minilm", "v1", shadow="minilm@v2")
    answer = {"embeddings": [[1.0, 0.0]]}
    for _ in range(5):
        shadows.mirror(target, "embedding", answer, run)
    await asyncio.sleep(0)
    outcomes = [event[2] for event in events]
    assert outcomes.count("sent") == 2 and outcomes.count("dropped") == 3 and started == 2

    release.set()
    while [event[2] for event in events].count("cosine") < 2:
        await asyncio.sleep(0)
    cosines = [event[3] for event in events if event[2] == "cosine"]
    assert cosines == [0.0, 0.0]  # orthogonal answers
    shadows.mirror(target, "embedding", answer, run)  # room again once the copies are done
    assert [event[2] for event in events].count("sent") == 3
    await shadows.close()


def test_answers_are_compared_by_cosine_or_by_top_label() -> None:
    same = compare("embedding", {"embeddings": [[1, 2]]}, {"embeddings": [[2, 4]]})
    labels = compare(
        "text-classification",
        {"predictions": [[{"label": "a"}], [{"label": "b"}]]},
        {"predictions": [[{"label": "a"}], [{"label": "c"}]]},
    )

    assert same == [("cosine", pytest.approx(1.0))]
    assert labels == [("agree", None), ("disagree", None)]
    assert compare("text-generation", {"text": "x"}, {"text": "y"}) == []
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0

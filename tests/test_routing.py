"""Weighted routes, sticky keys and shadows (modelmora.routing): pure, no server."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from modelmora.errors import InvalidInputError
from modelmora.routing import Route, choose, shadows, split_reference


def test_weights_90_10_over_2000_requests_land_within_a_few_points() -> None:
    route = Route({"v3": 90, "v2": 10})
    draw = random.Random(7)
    drawn = Counter(choose(route, draw=draw) for _ in range(2000))
    keyed = Counter(choose(route, key=f"user-{i}") for i in range(2000))
    for counts in (drawn, keyed):
        assert set(counts) == {"v2", "v3"}
        assert abs(counts["v2"] / 2000 - 0.10) < 0.03


def test_a_key_gets_the_same_version_while_the_weights_stay_the_same() -> None:
    route = Route({"a": 50, "b": 50})
    first = {key: choose(route, key=key) for key in (f"k{i}" for i in range(200))}
    again = Route({"b": 50, "a": 50})  # the same weights, written in another order
    assert all(choose(again, key=key) == version for key, version in first.items())
    assert set(first.values()) == {"a", "b"}


def test_a_version_of_weight_zero_gets_nothing_and_one_version_gets_everything() -> None:
    route = Route({"old": 0, "new": 5})
    assert route.versions == ["new"]
    assert {choose(route, draw=random.Random(i)) for i in range(50)} == {"new"}
    assert {choose(route, key=str(i)) for i in range(50)} == {"new"}


def test_shadows_mirror_about_their_fraction_and_never_without_a_shadow() -> None:
    draw = random.Random(3)
    route = Route({"v1": 1}, shadow="v2", shadow_fraction=0.25)
    mirrored = sum(shadows(route, draw) for _ in range(4000))
    assert abs(mirrored / 4000 - 0.25) < 0.03
    assert not any(shadows(Route({"v1": 1}), draw) for _ in range(100))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({}, "at least one version"),
        ({"v1": -1}, "whole number >= 0"),
        ({"v1": 1.5}, "whole number >= 0"),
        ({"v1": True}, "whole number >= 0"),
        ({"v1": 0, "v2": 0}, "every weight of the route is 0"),
        ({"bad name": 1}, "not a valid version name"),
    ],
)
def test_a_bad_route_is_one_line_naming_what_is_wrong(
    weights: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Route(weights)


def test_a_bad_shadow_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        Route({"v1": 1}, shadow="v2", shadow_fraction=1.5)
    with pytest.raises(InvalidInputError, match="not a valid version name"):
        Route({"v1": 1}, shadow="v 2", shadow_fraction=0.1)


def test_a_reference_names_a_model_or_one_of_its_versions() -> None:
    assert split_reference("minilm") == ("minilm", None)
    assert split_reference("minilm@v2") == ("minilm", "v2")
    with pytest.raises(InvalidInputError, match="no name before '@'"):
        split_reference("@v2")
    with pytest.raises(InvalidInputError, match="not a valid version name"):
        split_reference("minilm@")

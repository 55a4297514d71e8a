"""Which version of a model answers a request: weighted routes, sticky keys, shadows. Pure.

A client names a model (`minilm`, its route decides) or one version (`minilm@v2`). A route gives
each version a weight; a request goes to a version with probability weight / total. A request with a
route key (`X-ModelMora-Route-Key`, or OpenAI's `user`) goes where the key hashes to, so that the
same key gets the same version for as long as the weights stay the same. A route may also mirror a
fraction of its requests to a shadow version, whose answers the client never sees.

    choose(route, key=None)  ->  "v3"          (a weighted draw, or the key's place)
    shadows(route)           ->  True | False  (mirror this request?)
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from modelmora.errors import InvalidInputError

VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SEPARATOR = "@"


@dataclass(frozen=True)
class Route:
    """A model's traffic: each version's weight, and an optional shadow."""

    weights: Mapping[str, int]
    shadow: str | None = None
    shadow_fraction: float = 0.0
    _cumulative: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_weights(self.weights)
        if not 0.0 <= self.shadow_fraction <= 1.0:
            raise InvalidInputError(
                f"shadow fraction {self.shadow_fraction:g} is not between 0 and 1",
                hint="mirror for example 0.1 of the requests",
            )
        if self.shadow is not None:
            check_version(self.shadow)
        total, steps = 0, []
        for version in sorted(self.weights):  # sorted: the same weights place keys the same
            if self.weights[version] > 0:
                total += self.weights[version]
                steps.append((total, version))
        object.__setattr__(self, "_cumulative", tuple(steps))

    @property
    def total(self) -> int:
        return self._cumulative[-1][0]

    @property
    def versions(self) -> list[str]:
        """The versions that get traffic, in the route's order."""
        return [version for _, version in self._cumulative]


def check_weights(weights: Mapping[str, int]) -> None:
    if not weights:
        raise InvalidInputError("a route needs at least one version", hint="for example v1 = 100")
    for version, weight in weights.items():
        check_version(version)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise InvalidInputError(
                f"the weight of version '{version}' is {weight!r}, not a whole number >= 0",
                hint="weights are shares, for example v3 = 90, v2 = 10",
            )
    if sum(weights.values()) == 0:
        raise InvalidInputError("every weight of the route is 0", hint="give one version a share")


def check_version(version: str) -> str:
    if not VERSION.match(version):
        raise InvalidInputError(
            f"version '{version}' is not a valid version name",
            hint="use letters, digits, '.', '_' and '-', at most 64, for example v2 or 2024-06",
        )
    return version


def split_reference(reference: str) -> tuple[str, str | None]:
    """`minilm@v2` -> ("minilm", "v2"); `minilm` -> ("minilm", None)."""
    name, separator, version = reference.partition(SEPARATOR)
    if not separator:
        return name, None
    if not name:
        raise InvalidInputError(f"model '{reference}' has no name before '@'", hint="name@version")
    return name, check_version(version)


def choose(route: Route, key: str | None = None, draw: random.Random | None = None) -> str:
    """The version for one request: the key's place when there is a key, else a weighted draw."""
    if key is not None:
        point = key_point(key, route.total)
    else:
        point = (draw or random).randrange(route.total)
    for bound, version in route._cumulative:
        if point < bound:
            return version
    raise AssertionError("a point below the total falls in some step")  # pragma: no cover


def key_point(key: str, total: int) -> int:
    """Where a key falls in [0, total): the same for the same key, spread evenly across keys."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % total


def shadows(route: Route, draw: random.Random | None = None) -> bool:
    """Whether to mirror this request to the route's shadow."""
    if route.shadow is None or route.shadow_fraction <= 0:
        return False
    return (draw or random).random() < route.shadow_fraction

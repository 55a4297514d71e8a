"""Room for models: which loaded models to evict so that another fits, under a count limit and a
memory budget. Pure functions over `Occupant` records, so the policy is tested without processes.

Only idle models are evicted, least recently used first, and only as many as the new model needs;
when evicting every idle model would not be enough, nothing is evicted and the load waits for a
busy model to become idle. A model alone may exceed the budget: something must be able to load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Occupant:
    """A model that holds room: loaded, or loading."""

    name: str
    memory: int
    """Bytes measured at its last load, else the size of its weight files."""
    last_used: float
    is_idle: bool
    """Loaded with nothing waiting or computing: it may be evicted."""


@dataclass(frozen=True)
class Limits:
    max_models: int = 0
    """How many models may hold room at once; 0 means no limit."""
    memory_budget: int | None = None
    """Bytes all models together may hold; None means no limit."""


def fits(memory: int, occupants: Sequence[Occupant], limits: Limits) -> bool:
    """Whether a model of `memory` bytes fits beside the occupants."""
    if limits.max_models and len(occupants) >= limits.max_models:
        return False
    if limits.memory_budget is None or not occupants:
        return True
    return sum(occupant.memory for occupant in occupants) + memory <= limits.memory_budget


def eviction_order(occupants: Sequence[Occupant]) -> list[Occupant]:
    """The idle occupants, least recently used first."""
    return sorted((o for o in occupants if o.is_idle), key=lambda occupant: occupant.last_used)


def evictions_for(memory: int, occupants: Sequence[Occupant], limits: Limits) -> list[str] | None:
    """The names to evict so that `memory` fits: [] when it fits now, None when it cannot yet."""
    staying = list(occupants)
    evicted: list[str] = []
    for victim in eviction_order(occupants):
        if fits(memory, staying, limits):
            return evicted
        staying.remove(victim)
        evicted.append(victim.name)
    return evicted if fits(memory, staying, limits) else None


def over_budget(occupants: Sequence[Occupant], limits: Limits, keep: str) -> list[str]:
    """After a load measured more than its estimate: idle models to evict, least recently used
    first, until the total is back within the budget; never `keep`, the model just loaded."""
    budget = limits.memory_budget
    if budget is None:
        return []
    used = sum(occupant.memory for occupant in occupants)
    evicted: list[str] = []
    for victim in eviction_order([o for o in occupants if o.name != keep]):
        if used <= budget:
            break
        used -= victim.memory
        evicted.append(victim.name)
    return evicted

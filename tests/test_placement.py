"""The room policy and the crash backoff as pure functions: no process, no event loop."""

from __future__ import annotations

import pytest

from modelmora.serve.config import SupervisorSettings
from modelmora.serve.placement import Limits, Occupant, evictions_for, fits, over_budget
from modelmora.serve.slot import restart_delay

GB = 10**9


def occupant(name: str, memory: int = GB, last_used: float = 0.0, idle: bool = True) -> Occupant:
    return Occupant(name, memory, last_used, idle)


def test_the_count_limit_counts_loading_and_loaded_models_alike() -> None:
    limits = Limits(max_models=2)
    assert fits(GB, [occupant("a")], limits)
    assert not fits(GB, [occupant("a"), occupant("b", idle=False)], limits)
    assert fits(100 * GB, [occupant("a")], Limits())  # no limit at all


def test_a_model_alone_may_exceed_the_budget() -> None:
    assert fits(10 * GB, [], Limits(memory_budget=GB))
    assert not fits(10 * GB, [occupant("a", memory=1)], Limits(memory_budget=GB))


def test_nothing_is_evicted_when_the_model_fits() -> None:
    assert evictions_for(GB, [occupant("a")], Limits(memory_budget=3 * GB)) == []


def test_evicts_the_least_recently_used_idle_models_and_no_more_than_needed() -> None:
    occupants = [
        occupant("recent", last_used=30.0),
        occupant("oldest", last_used=10.0),
        occupant("busy", last_used=0.0, idle=False),
        occupant("older", last_used=20.0),
    ]
    limits = Limits(memory_budget=4 * GB)
    assert evictions_for(2 * GB, occupants, limits) == ["oldest", "older"]
    assert evictions_for(GB, occupants, limits) == ["oldest"]
    assert evictions_for(GB, occupants, Limits(max_models=3)) == ["oldest", "older"]


def test_a_load_waits_rather_than_evicting_what_would_not_be_enough() -> None:
    occupants = [occupant("idle", last_used=1.0), occupant("busy", memory=3 * GB, idle=False)]
    assert evictions_for(2 * GB, occupants, Limits(memory_budget=4 * GB)) is None
    assert evictions_for(GB, [occupant("busy", idle=False)], Limits(max_models=1)) is None


def test_over_budget_after_a_load_evicts_idle_others_but_never_the_new_model() -> None:
    occupants = [
        occupant("new", memory=3 * GB, last_used=99.0),
        occupant("old", last_used=1.0),
        occupant("mid", last_used=2.0),
        occupant("busy", idle=False),
    ]
    assert over_budget(occupants, Limits(memory_budget=5 * GB), keep="new") == ["old"]
    assert over_budget(occupants, Limits(memory_budget=4 * GB), keep="new") == ["old", "mid"]
    assert over_budget(occupants, Limits(memory_budget=GB), keep="new") == ["old", "mid"]
    assert over_budget(occupants, Limits(), keep="new") == []


@pytest.mark.parametrize(
    ("streak", "delay"), [(1, 0.0), (2, 1.0), (3, 2.0), (4, 4.0), (7, 32.0), (8, 60.0), (50, 60.0)]
)
def test_restart_delay_doubles_from_the_second_crash_and_is_capped(
    streak: int, delay: float
) -> None:
    settings = SupervisorSettings(restart_backoff=1.0, max_restart_backoff=60.0)
    assert restart_delay(streak, settings) == delay

"""TaskGroup: the owner of background tasks logs each failure at once and leaves nothing behind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from modelmora.errors import UnavailableError
from modelmora.serve.tasks import TaskGroup


async def fail(error: BaseException) -> None:
    raise error


def test_a_failing_task_is_logged_and_counted_and_its_siblings_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        group = TaskGroup("test", logging.getLogger("modelmora.test"))
        sibling = group.start(asyncio.sleep(3600), "sibling")
        failing = group.start(fail(RuntimeError("the disk is full")), "write outcome")
        await asyncio.wait([failing])
        assert group.failures == 1 and not sibling.done()
        await group.close()
        assert sibling.cancelled() and not group.tasks

    with caplog.at_level(logging.ERROR, "modelmora.test"):
        asyncio.run(scenario())
    assert "background task 'test: write outcome' failed" in caplog.text
    assert "the disk is full" in caplog.text


def test_expected_errors_go_to_whoever_awaits_without_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        group = TaskGroup("test", logging.getLogger("modelmora.test"), expected=(UnavailableError,))
        load = group.start(fail(UnavailableError("no room")), "load")
        with pytest.raises(UnavailableError):
            await load
        assert group.failures == 0

    with caplog.at_level(logging.ERROR, "modelmora.test"):
        asyncio.run(scenario())
    assert caplog.text == ""


def test_close_lets_tasks_finish_within_the_grace_then_cancels_the_rest() -> None:
    async def scenario() -> None:
        group = TaskGroup("test", logging.getLogger("modelmora.test"))
        finished = asyncio.Event()

        async def quick() -> None:
            await asyncio.sleep(0)
            finished.set()

        quick_task = group.start(quick(), "quick")
        stuck = group.start(asyncio.Event().wait(), "stuck")
        await group.close(grace=0.2)
        assert finished.is_set() and quick_task.done() and not quick_task.cancelled()
        assert stuck.cancelled() and not group.tasks

    asyncio.run(scenario())


def test_failures_are_a_prometheus_counter_per_owner() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from modelmora.serve.api.telemetry import TaskCollector

    async def scenario() -> TaskGroup:
        group = TaskGroup("scheduler", logging.getLogger("modelmora.test"))
        await asyncio.gather(group.start(fail(OSError("gone")), "batch"), return_exceptions=True)
        return group

    group = asyncio.run(scenario())
    registry = CollectorRegistry()
    registry.register(TaskCollector([group]))
    text = generate_latest(registry).decode()
    assert 'modelmora_background_task_failures_total{owner="scheduler"} 1.0' in text

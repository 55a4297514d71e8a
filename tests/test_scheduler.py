"""The scheduler on its own: priorities, deadlines, backpressure, batching, disconnects, close.

The scheduler is pure asyncio and takes its dispatch as a callback, so a fake dispatch that the test
holds and releases with an asyncio.Event is the real unit here: no worker, no model. Each test runs
its own event loop with asyncio.run (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from modelmora.errors import (
    DeadlineExceededError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)
from modelmora.serve.scheduler import (
    CRITICAL,
    HIGH,
    LOW,
    NORMAL,
    Batch,
    BatchOutput,
    BatchSettings,
    ClientDisconnectedError,
    Scheduler,
    SubmitResult,
    estimate_tokens,
    parse_priority,
)

T = TypeVar("T")
MODEL = "m"


class FakeWorker:
    """The dispatch under test's control: records every batch, and holds it while `gate` is shut."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: Exception | None = None

    async def __call__(self, batch: Batch) -> BatchOutput:
        self.batches.append(batch)
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return BatchOutput([answer(text) for text in batch.inputs], {"inference_ms": 1.0})

    @property
    def inputs_seen(self) -> list[str]:
        return [text for batch in self.batches for text in batch.inputs]


def answer(text: str) -> str:
    return f"out:{text}"


def make(**settings: Any) -> tuple[Scheduler, FakeWorker]:
    worker = FakeWorker()
    return Scheduler(worker, lambda model: BatchSettings(**settings)), worker


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


def start(coroutine: Awaitable[T]) -> asyncio.Task[T]:
    return asyncio.ensure_future(coroutine)


async def hold_the_worker(scheduler: Scheduler, worker: FakeWorker) -> asyncio.Task[SubmitResult]:
    """Shut the gate and get one batch stuck in it, so everything after queues."""
    worker.gate.clear()
    seen = len(worker.batches)
    blocker = start(scheduler.submit(MODEL, ["blocker"], priority=LOW))
    await until(lambda: len(worker.batches) == seen + 1)
    return blocker


def test_parse_priority_reads_numbers_and_names() -> None:
    assert parse_priority(None) == NORMAL
    assert parse_priority("high") == HIGH
    assert parse_priority(" 3 ") == CRITICAL
    assert parse_priority(0) == LOW
    for bad in ("urgent", "4", "-1", 7):
        with pytest.raises(InvalidInputError):
            parse_priority(bad)


def test_high_priority_overtakes_queued_low_priority_under_saturation() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=1)
        blocker = await hold_the_worker(scheduler, worker)
        order = [("low1", LOW), ("normal1", NORMAL), ("low2", LOW), ("high1", HIGH)]
        order += [("critical1", CRITICAL), ("high2", HIGH), ("normal2", NORMAL)]
        tasks = [start(scheduler.submit(MODEL, [text], priority=p)) for text, p in order]
        await until(lambda: sum(scheduler.depth(MODEL).values()) == len(order))
        assert scheduler.depth(MODEL) == {LOW: 2, NORMAL: 2, HIGH: 2, CRITICAL: 1}
        worker.gate.set()
        await asyncio.gather(blocker, *tasks)
        expected = ["blocker", "critical1", "high1", "high2", "normal1", "normal2", "low1", "low2"]
        assert worker.inputs_seen == expected

    run(scenario)


def test_queued_request_fails_at_its_deadline_and_is_never_computed() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=1)
        blocker = await hold_the_worker(scheduler, worker)
        deadline = time.monotonic() + 0.1
        with pytest.raises(DeadlineExceededError) as caught:
            await scheduler.submit(MODEL, ["late"], deadline=deadline)
        late_by = time.monotonic() - deadline
        assert 0 <= late_by < 0.05, "answered at the deadline, not when the worker freed up"
        assert caught.value.status == 504
        assert not worker.gate.is_set(), "the blocking batch was still computing"
        worker.gate.set()
        await blocker
        assert worker.inputs_seen == ["blocker"]
        assert scheduler.stats(MODEL).expired_queued == 1

    run(scenario)


def test_request_past_its_deadline_or_with_a_bad_priority_is_refused_at_once() -> None:
    async def scenario() -> None:
        scheduler, worker = make()
        with pytest.raises(DeadlineExceededError):
            await scheduler.submit(MODEL, ["late"], deadline=time.monotonic() - 1)
        with pytest.raises(InvalidInputError):
            await scheduler.submit(MODEL, ["x"], priority=9)
        with pytest.raises(InvalidInputError):
            await scheduler.submit(MODEL, [])
        assert worker.batches == []
        assert sum(scheduler.depth(MODEL).values()) == 0

    run(scenario)


def test_computing_request_gets_504_at_its_deadline_while_the_batch_goes_on() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=4, max_batch_delay_ms=20)
        worker.gate.clear()
        patient = start(scheduler.submit(MODEL, ["patient"]))
        hasty = start(scheduler.submit(MODEL, ["hasty"], deadline=time.monotonic() + 0.05))
        await until(lambda: len(worker.batches) == 1)
        with pytest.raises(DeadlineExceededError):
            await hasty
        worker.gate.set()
        assert (await patient).outputs == ["out:patient"]
        assert scheduler.stats(MODEL).expired_computing == 1

    run(scenario)


def test_full_queue_answers_429_at_once_and_every_accepted_request_completes() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=2, max_queue=4)
        blocker = await hold_the_worker(scheduler, worker)
        accepted = [start(scheduler.submit(MODEL, [f"in{i}"])) for i in range(4)]
        await until(lambda: sum(scheduler.depth(MODEL).values()) == 4)
        started = time.monotonic()
        with pytest.raises(OverloadedError) as caught:
            await scheduler.submit(MODEL, ["one too many"])
        assert time.monotonic() - started < 0.01
        assert caught.value.status == 429
        assert caught.value.retry_after is not None and caught.value.retry_after >= 1
        worker.gate.set()
        results = await asyncio.gather(*accepted)
        assert [r.outputs for r in results] == [[f"out:in{i}"] for i in range(4)]
        await blocker
        stats = scheduler.stats(MODEL)
        assert (stats.rejected, stats.completed) == (1, 5)

    run(scenario)


def test_batches_form_under_concurrency_and_results_go_back_input_by_input() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=8)
        blocker = await hold_the_worker(scheduler, worker)
        texts = [f"sentence {i}" for i in range(30)]
        tasks = [start(scheduler.submit(MODEL, [text])) for text in texts]
        await until(lambda: sum(scheduler.depth(MODEL).values()) == 30)
        worker.gate.set()
        results = await asyncio.gather(*tasks)
        await blocker
        for text, result in zip(texts, results, strict=True):
            assert result.outputs == [answer(text)]
            assert result.timing == {"inference_ms": 1.0}
        sizes = [len(batch.inputs) for batch in worker.batches[1:]]
        assert sizes == [8, 8, 8, 6]
        assert results[-1].batch_sizes == (6,)
        assert scheduler.stats(MODEL).batch_sizes == {1: 1, 8: 3, 6: 1}

    run(scenario)


def test_batch_waits_up_to_the_delay_for_more_requests() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=8, max_batch_delay_ms=30)
        first = start(scheduler.submit(MODEL, ["a"]))
        await asyncio.sleep(0.01)
        second = start(scheduler.submit(MODEL, ["b"]))
        assert (await first).outputs == ["out:a"]
        assert (await second).batch_sizes == (2,)
        assert [batch.inputs for batch in worker.batches] == [("a", "b")]

    run(scenario)


def test_a_lone_client_does_not_wait_for_company_after_a_batch_of_one() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=8, max_batch_delay_ms=300)
        await scheduler.submit(MODEL, ["first"])  # no batch yet: it may wait for the delay
        started = time.monotonic()
        await scheduler.submit(MODEL, ["second"])
        assert time.monotonic() - started < 0.1
        blocker = await hold_the_worker(scheduler, worker)
        queued = [start(scheduler.submit(MODEL, [text])) for text in ("x", "y")]
        await until(lambda: sum(scheduler.depth(MODEL).values()) == 2)
        worker.gate.set()
        await asyncio.gather(blocker, *queued)  # a batch of two: clients came together again
        first = start(scheduler.submit(MODEL, ["p"]))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, scheduler.submit(MODEL, ["q"]))
        assert [len(batch.inputs) for batch in worker.batches] == [1, 1, 1, 2, 2]

    run(scenario)


def test_request_with_many_inputs_counts_by_inputs_and_may_be_split() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=4, max_queue=6)
        texts = [f"t{i}" for i in range(10)]
        result = await scheduler.submit(MODEL, texts)  # over max_queue, but the queue was empty
        assert result.outputs == [answer(t) for t in texts]
        assert result.batch_sizes == (4, 4, 2)
        blocker = await hold_the_worker(scheduler, worker)
        three = start(scheduler.submit(MODEL, ["x", "y", "z"]))
        await until(lambda: sum(scheduler.depth(MODEL).values()) == 1)
        with pytest.raises(OverloadedError):
            await scheduler.submit(MODEL, ["p", "q", "r", "s"])  # 3 + 4 inputs > 6
        small = start(scheduler.submit(MODEL, ["p"]))
        worker.gate.set()
        assert (await three).outputs == ["out:x", "out:y", "out:z"]
        assert (await small).batch_sizes == (4,), "one request's 3 inputs and another's 1"
        await blocker

    run(scenario)


def test_token_budget_bounds_the_padded_size_of_each_batch() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=32, max_batch_tokens=100)
        blocker = await hold_the_worker(scheduler, worker)
        texts = ["word " * n for n in (2, 30, 5, 1, 60, 8, 3, 100, 4, 4)]
        tasks = [start(scheduler.submit(MODEL, [text])) for text in texts]
        await until(lambda: sum(scheduler.depth(MODEL).values()) == len(texts))
        worker.gate.set()
        results = await asyncio.gather(*tasks)
        await blocker
        assert [r.outputs[0] for r in results] == [answer(t) for t in texts]
        for batch in worker.batches[1:]:
            tokens = [estimate_tokens(text) for text in batch.inputs]
            assert len(tokens) == 1 or max(tokens) * len(tokens) <= 100
        assert any(len(batch.inputs) > 1 for batch in worker.batches)

    run(scenario)


def test_requests_with_different_options_never_share_a_batch() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=8)
        blocker = await hold_the_worker(scheduler, worker)
        flags = [i % 3 == 0 for i in range(9)]
        tasks = [
            start(scheduler.submit(MODEL, [f"{flag}-{i}"], {"normalize": flag}))
            for i, flag in enumerate(flags)
        ]
        await until(lambda: sum(scheduler.depth(MODEL).values()) == 9)
        worker.gate.set()
        await asyncio.gather(blocker, *tasks)
        for batch in worker.batches[1:]:
            assert all(text.startswith(f"{batch.options['normalize']}-") for text in batch.inputs)
        assert sorted(len(batch.inputs) for batch in worker.batches[1:]) == [3, 6]

    run(scenario)


def test_sort_by_length_sends_longest_first_and_answers_in_order() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=8, sort_by_length=True)
        texts = ["mid " * 5, "s", "longest " * 20, "xy " * 2]
        result = await scheduler.submit(MODEL, texts)
        assert result.outputs == [answer(t) for t in texts]
        assert worker.batches[0].inputs == (texts[2], texts[0], texts[3], texts[1])

    run(scenario)


def test_disconnected_or_cancelled_clients_are_not_computed() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=8)
        blocker = await hold_the_worker(scheduler, worker)

        async def gone() -> bool:
            return True

        async def here() -> bool:
            return False

        left = start(scheduler.submit(MODEL, ["left"], is_disconnected=gone))
        stayed = start(scheduler.submit(MODEL, ["stayed"], is_disconnected=here))
        cancelled = start(scheduler.submit(MODEL, ["cancelled"]))
        await until(lambda: sum(scheduler.depth(MODEL).values()) == 3)
        cancelled.cancel()
        await until(lambda: sum(scheduler.depth(MODEL).values()) == 2)
        worker.gate.set()
        with pytest.raises(ClientDisconnectedError):
            await left
        assert (await stayed).outputs == ["out:stayed"]
        await blocker
        assert "left" not in worker.inputs_seen and "cancelled" not in worker.inputs_seen
        assert scheduler.stats(MODEL).dropped == 2

    run(scenario)


def test_in_flight_batches_are_bounded_and_the_next_one_fills_meanwhile() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=2, max_in_flight=2)
        worker.gate.clear()
        tasks = [start(scheduler.submit(MODEL, [f"in{i}"])) for i in range(6)]
        await until(lambda: len(worker.batches) == 2)
        await asyncio.sleep(0.01)
        assert len(worker.batches) == 2, "a third batch waits for a free slot"
        assert sum(scheduler.depth(MODEL).values()) == 2
        worker.gate.set()
        await asyncio.gather(*tasks)
        assert [len(batch.inputs) for batch in worker.batches] == [2, 2, 2]

    run(scenario)


def test_a_failing_batch_fails_only_its_own_requests() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=2)
        worker.error = RuntimeError("worker fell over")
        with pytest.raises(RuntimeError, match="fell over"):
            await scheduler.submit(MODEL, ["a", "b"])
        worker.error = None
        assert (await scheduler.submit(MODEL, ["c"])).outputs == ["out:c"]
        assert scheduler.stats(MODEL).failed == 1

    run(scenario)


def test_turn_queues_by_priority_and_holds_a_slot_until_it_ends() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=4)
        blocker = await hold_the_worker(scheduler, worker)
        granted = asyncio.Event()
        done = asyncio.Event()

        async def stream() -> None:
            async with scheduler.turn(MODEL, priority=LOW):
                granted.set()
                await done.wait()

        streaming = start(stream())
        urgent = start(scheduler.submit(MODEL, ["urgent"], priority=HIGH))
        await until(lambda: sum(scheduler.depth(MODEL).values()) == 2)
        worker.gate.set()
        await urgent
        await granted.wait()
        after = start(scheduler.submit(MODEL, ["after"]))
        await asyncio.sleep(0.01)
        assert "after" not in worker.inputs_seen, "the turn holds the model's only slot"
        done.set()
        await asyncio.gather(streaming, after, blocker)
        assert worker.inputs_seen == ["blocker", "urgent", "after"]

    run(scenario)


def test_turn_expires_in_the_queue_like_any_request() -> None:
    async def scenario() -> None:
        scheduler, worker = make()
        blocker = await hold_the_worker(scheduler, worker)
        with pytest.raises(DeadlineExceededError):
            async with scheduler.turn(MODEL, deadline=time.monotonic() + 0.02):
                pytest.fail("a turn past its deadline is never granted")
        worker.gate.set()
        await blocker

    run(scenario)


def test_close_fails_queued_requests_and_lets_the_batch_in_flight_finish() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=1)
        blocker = await hold_the_worker(scheduler, worker)
        queued = [start(scheduler.submit(MODEL, [f"in{i}"])) for i in range(3)]
        await until(lambda: sum(scheduler.depth(MODEL).values()) == 3)
        closing = start(scheduler.close(drain_timeout=5))
        for task in queued:
            with pytest.raises(UnavailableError):
                await task
        worker.gate.set()
        await closing
        assert (await blocker).outputs == ["out:blocker"]
        assert worker.inputs_seen == ["blocker"]
        with pytest.raises(UnavailableError):
            await scheduler.submit(MODEL, ["late"])

    run(scenario)


def test_close_cancels_batches_that_outlive_the_drain_timeout() -> None:
    async def scenario() -> None:
        scheduler, worker = make()
        blocker = await hold_the_worker(scheduler, worker)
        await scheduler.close(drain_timeout=0.01)
        with pytest.raises(UnavailableError):
            await blocker

    run(scenario)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchSettings(max_batch_size=0)
    with pytest.raises(ValueError, match="delay"):
        BatchSettings(max_batch_delay_ms=-1)
    assert math.isclose(BatchSettings().max_batch_delay_ms, 2.0)

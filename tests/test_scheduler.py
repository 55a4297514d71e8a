"""The scheduler on its own: priorities, deadlines, backpressure, batching, disconnects, close.

The scheduler is pure asyncio and takes its dispatch as a callback, so a fake dispatch that the test
holds and releases with an asyncio.Event is the real unit here: no worker, no model. Each test runs
its own event loop with asyncio.run (no pytest-asyncio). Tests wait for conditions, never for a
fixed time, and assert no upper bound on a duration: they must pass on a loaded machine. A batch
delay that must not elapse during a test is set far longer than the test's own timeout.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from modelmora.errors import (
    ClientDisconnectedError,
    DeadlineExceededError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)
from modelmora.serve.batching import Batch, BatchOutput, estimate_tokens
from modelmora.serve.config import BatchSettings
from modelmora.serve.scheduler import (
    CRITICAL,
    HIGH,
    LOW,
    NORMAL,
    Scheduler,
    SubmitResult,
    parse_priority,
)

T = TypeVar("T")
MODEL = "m"
NEVER_MS = 60_000.0
"""A batch delay that no test waits out: a batch leaves when full or not at all."""


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


def queued(scheduler: Scheduler) -> int:
    return sum(scheduler.depth(MODEL).values())


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
        assert time.monotonic() >= deadline - 0.001, "not before its deadline"
        assert caught.value.status == 504
        assert not worker.gate.is_set(), "at its deadline, while the worker was still busy"
        worker.gate.set()
        await blocker
        assert worker.inputs_seen == ["blocker"]
        assert scheduler.stats(MODEL).expired_queued == 1

    run(scenario)


def refused_at_once(submitting: Coroutine[Any, Any, Any]) -> BaseException:
    """What `submitting` raised in its first step, before it ever waited."""
    try:
        submitting.send(None)
    except BaseException as error:
        return error
    finally:
        submitting.close()
    pytest.fail("the request was queued")


def test_request_past_its_deadline_or_with_a_bad_priority_is_refused_at_once() -> None:
    async def scenario() -> None:
        scheduler, worker = make()
        late = scheduler.submit(MODEL, ["late"], deadline=time.monotonic() - 1)
        assert isinstance(refused_at_once(late), DeadlineExceededError)
        with pytest.raises(InvalidInputError):
            await scheduler.submit(MODEL, ["x"], priority=9)
        with pytest.raises(InvalidInputError):
            await scheduler.submit(MODEL, [])
        assert worker.batches == []
        assert sum(scheduler.depth(MODEL).values()) == 0

    run(scenario)


def test_computing_request_gets_504_at_its_deadline_while_the_batch_goes_on() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=2, max_batch_delay_ms=NEVER_MS)
        worker.gate.clear()

        async def hasty_request() -> SubmitResult:  # its deadline counts from when it queues
            return await scheduler.submit(MODEL, ["hasty"], deadline=time.monotonic() + 0.05)

        patient = start(scheduler.submit(MODEL, ["patient"]))
        hasty = start(hasty_request())  # fills the batch, which leaves at once
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
        caught = refused_at_once(scheduler.submit(MODEL, ["one too many"]))
        assert isinstance(caught, OverloadedError)
        assert caught.status == 429
        assert caught.retry_after is not None and caught.retry_after >= 1
        worker.gate.set()
        results = await asyncio.gather(*accepted)
        assert [r.outputs for r in results] == [[f"out:in{i}"] for i in range(4)]
        await blocker
        stats = scheduler.stats(MODEL)
        assert (stats.rejected, stats.completed) == (1, 5)

    run(scenario)


def test_background_requests_never_count_against_max_queue_nor_are_refused() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=1, max_queue=2)
        blocker = await hold_the_worker(scheduler, worker)
        jobs = [start(scheduler.submit(MODEL, [f"job{i}"] * 3, background=True)) for i in range(3)]
        await until(lambda: queued(scheduler) == 3)  # 9 inputs: more than max_queue, all taken
        live = [start(scheduler.submit(MODEL, [f"live{i}"], priority=HIGH)) for i in range(2)]
        await until(lambda: queued(scheduler) == 5)
        caught = refused_at_once(scheduler.submit(MODEL, ["one too many"]))
        assert isinstance(caught, OverloadedError), "live requests alone fill max_queue"
        worker.gate.set()
        await asyncio.gather(blocker, *jobs, *live)
        assert worker.inputs_seen[1:3] == ["live0", "live1"], "by priority, jobs or not"
        stats = scheduler.stats(MODEL)
        assert (stats.rejected, stats.completed) == (1, 6)

    run(scenario)


def test_on_start_is_called_when_the_request_is_dispatched_not_when_it_queues() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=4)
        blocker = await hold_the_worker(scheduler, worker)
        started: list[tuple[str, int]] = []

        async def stream() -> None:
            async with scheduler.turn(MODEL, on_start=lambda: started.append(("turn", 0))):
                pass

        batched = start(
            scheduler.submit(
                MODEL, ["a", "b"], on_start=lambda: started.append(("a b", len(worker.batches)))
            )
        )
        turn = start(stream())
        await until(lambda: queued(scheduler) == 2)
        assert started == [], "queued is not started"
        worker.gate.set()
        await asyncio.gather(blocker, batched, turn)
        assert started == [("a b", 1), ("turn", 0)], "once each, as the batch left, at the turn"

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


def test_batch_waits_for_more_requests_until_it_is_full() -> None:
    async def scenario() -> None:
        scheduler, worker = make(max_batch_size=2, max_batch_delay_ms=NEVER_MS)
        first = start(scheduler.submit(MODEL, ["a"]))
        await until(lambda: queued(scheduler) == 1)
        assert worker.batches == [], "the worker is free, yet the batch waits to fill"
        second = start(scheduler.submit(MODEL, ["b"]))
        assert (await first).outputs == ["out:a"]
        assert (await second).batch_sizes == (2,)
        assert [batch.inputs for batch in worker.batches] == [("a", "b")]

    run(scenario)


def test_batch_that_does_not_fill_leaves_once_its_oldest_request_waited_the_delay() -> None:
    async def scenario() -> None:
        scheduler, _ = make(max_batch_size=8, max_batch_delay_ms=20)
        result = await scheduler.submit(MODEL, ["alone"])
        assert result.batch_sizes == (1,)
        assert result.queue_ms >= 20 - 0.01, "it waited the delay for company first"

    run(scenario)


def test_a_lone_client_does_not_wait_for_company_after_a_batch_of_one() -> None:
    async def scenario() -> None:
        # A delay no test waits out: whatever leaves before the batch is full did not wait for it.
        scheduler, worker = make(max_batch_size=2, max_batch_delay_ms=NEVER_MS, max_batch_tokens=64)
        await scheduler.submit(MODEL, ["long " * 64])  # over the token budget: a batch of one now
        await scheduler.submit(MODEL, ["second"])  # after a batch of one: no delay
        blocker = await hold_the_worker(scheduler, worker)
        together = [start(scheduler.submit(MODEL, [text])) for text in ("x", "y")]
        await until(lambda: queued(scheduler) == 2)
        worker.gate.set()
        await asyncio.gather(blocker, *together)  # a batch of two: clients came together again
        first = start(scheduler.submit(MODEL, ["p"]))
        await until(lambda: queued(scheduler) == 1)
        assert len(worker.batches) == 4, "after a batch of two, a lone request waits again"
        await asyncio.gather(first, scheduler.submit(MODEL, ["q"]))
        assert [len(batch.inputs) for batch in worker.batches] == [1, 1, 1, 2, 2]

    run(scenario)


def test_closed_loop_clients_batch_together_once_every_client_answered_is_back() -> None:
    async def scenario() -> None:
        # A delay no test waits out: a batch that is not full leaves only because every client
        # of the last batch has sent its next request.
        scheduler, worker = make(max_batch_size=8, max_batch_delay_ms=NEVER_MS, max_batch_tokens=64)
        await scheduler.submit(MODEL, ["long " * 64])  # over the token budget: a batch of one now

        async def client(name: str) -> None:
            while len(worker.batches) < 6:
                await scheduler.submit(MODEL, [name])

        await asyncio.gather(*(client(f"c{i}") for i in range(5)))
        # The first client finds nobody expected and goes alone; the four that came meanwhile
        # wait for it to come back, and from then on the five go together every time.
        assert [len(batch.inputs) for batch in worker.batches] == [1, 1, 5, 5, 5, 5]

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

        def gone() -> bool:
            return True

        def here() -> bool:
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
        scheduler, worker = make(max_batch_size=2, max_in_flight=2, max_batch_delay_ms=NEVER_MS)
        worker.gate.clear()
        tasks = [start(scheduler.submit(MODEL, [f"in{i}"])) for i in range(6)]
        await until(lambda: scheduler.stats(MODEL).submitted == 6 and len(worker.batches) == 2)
        assert queued(scheduler) == 2, "a third batch, full, waits for a free slot"
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
        await until(lambda: queued(scheduler) == 1)  # after a batch of one: it would go at once
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
    assert math.isclose(BatchSettings().max_batch_delay_ms, 10.0)

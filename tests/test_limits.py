"""The token buckets behind per-key rate limits, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from modelmora.serve.limits import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_a_burst_through_then_refuses() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, capacity=3, clock=clock)

    taken = [bucket.take() for _ in range(3)]
    refused = bucket.take()

    assert all(d.allowed for d in taken)
    assert [d.remaining for d in taken] == [2, 1, 0]
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5)  # one token at 2 per second
    assert refused.limit == 3 and refused.remaining == 0
    assert refused.reset == pytest.approx(1.5)  # three tokens to refill


def test_the_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, capacity=3, clock=clock)
    for _ in range(3):
        bucket.take()

    clock.now += 0.5
    assert bucket.take().allowed
    assert not bucket.take().allowed
    clock.now += 60
    assert [bucket.take().allowed for _ in range(4)] == [True, True, True, False]


def test_a_refused_request_takes_nothing() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, capacity=1, clock=clock)
    bucket.take()
    for _ in range(10):
        assert not bucket.take().allowed

    clock.now += 1
    assert bucket.take().allowed


def test_usage_charged_later_may_go_below_zero_and_refuses_until_it_is_paid_back() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10 / 60, capacity=10, clock=clock)  # 10 tokens per minute

    assert bucket.check().allowed
    bucket.charge(25)  # the answer used more than the bucket held
    refused = bucket.check()
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(90)  # 15 tokens below zero at 1 per 6 s
    clock.now += 89
    assert not bucket.check().allowed
    clock.now += 2
    assert bucket.check().allowed


def test_headers_say_limit_remaining_reset_and_a_whole_retry_after() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, capacity=2, clock=clock)
    assert "Retry-After" not in bucket.take().headers()
    bucket.take()

    headers = bucket.take().headers()

    assert headers == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "1",
        "Retry-After": "1",  # 0.25 s, rounded up to a whole second, at least 1
    }


def test_a_bucket_needs_a_positive_rate_and_capacity() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, capacity=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, capacity=0)

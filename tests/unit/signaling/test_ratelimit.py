"""Per-connection token bucket; the clock is passed in, so no sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from signaling.ratelimit import TokenBucket

T0 = 1000.0  # an arbitrary monotonic-clock reading, in seconds


@pytest.mark.parametrize(("rate_per_s", "burst"), [(1.0, 1), (5.0, 3), (20.0, 40), (0.1, 10)])
def test_a_full_burst_is_allowed_at_once_and_the_next_message_is_refused(rate_per_s: float, burst: int) -> None:
    bucket = TokenBucket(rate_per_s=rate_per_s, burst=burst, now=T0)
    assert [bucket.allow(T0) for _ in range(burst)] == [True] * burst
    assert bucket.allow(T0) is False
    assert bucket.dropped == 1


def test_every_refusal_is_counted_and_allowed_messages_are_not() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2, now=T0)
    results = [bucket.allow(T0) for _ in range(7)]
    assert results == [True, True, False, False, False, False, False]
    assert bucket.dropped == 5


@pytest.mark.parametrize(
    ("elapsed_s", "allowed_after"),
    [
        pytest.param(0.0, 0, id="no-time-no-tokens"),
        pytest.param(0.09, 0, id="just-under-one-token"),
        pytest.param(0.1, 1, id="exactly-one-token"),
        pytest.param(0.25, 2, id="two-and-a-half-tokens"),
        pytest.param(0.5, 5, id="five-tokens"),
        pytest.param(1.0, 5, id="capped-at-burst"),
        pytest.param(3600.0, 5, id="a-long-idle-still-capped"),
    ],
)
def test_tokens_refill_at_the_rate_up_to_the_burst(elapsed_s: float, allowed_after: int) -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5, now=T0)
    for _ in range(5):
        assert bucket.allow(T0)
    assert not bucket.allow(T0)
    later = T0 + elapsed_s
    allowed = 0
    while bucket.allow(later):
        allowed += 1
    assert allowed == allowed_after


@pytest.mark.parametrize("idle_s", [0.0, 1.0, 10.0, 1e6])
def test_the_balance_never_exceeds_the_burst(idle_s: float) -> None:
    bucket = TokenBucket(rate_per_s=50.0, burst=4, now=T0)
    assert bucket.tokens == 4
    bucket.allow(T0 + idle_s)
    assert bucket.tokens == 3  # refilled to 4 at most, then one spent
    assert sum(bucket.allow(T0 + idle_s) for _ in range(100)) == 3


def test_a_client_sending_exactly_at_the_rate_is_never_refused() -> None:
    # 10/s in steps of 0.1 s: float refill must not leave it a hair short.
    bucket = TokenBucket(rate_per_s=10.0, burst=1, now=T0)
    now = T0
    for _ in range(10_000):
        assert bucket.allow(now)
        now += 0.1
    assert bucket.dropped == 0


def test_a_client_sending_faster_than_the_rate_gets_about_the_rate_through() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5, now=T0)
    # 100 messages per second for 10 seconds.
    allowed = sum(bucket.allow(T0 + i * 0.01) for i in range(1000))
    assert 5 + 99 <= allowed <= 5 + 100  # the burst, plus 10/s over ~10 s
    assert bucket.dropped == 1000 - allowed


def test_a_clock_stepping_backwards_neither_drains_nor_refills_the_bucket() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2, now=T0)
    assert bucket.allow(T0)  # one token left
    assert bucket.allow(T0 - 100)  # the step back did not take the last token away
    assert not bucket.allow(T0 - 100)  # ...nor add any
    assert not bucket.allow(T0 + 0.5)  # refill counts from the latest reading, T0
    assert bucket.allow(T0 + 1)
    assert bucket.dropped == 2


def test_a_slow_rate_takes_its_full_period_to_refill() -> None:
    bucket = TokenBucket(rate_per_s=0.5, burst=1, now=T0)
    assert bucket.allow(T0)
    assert not bucket.allow(T0 + 1.9)
    assert bucket.allow(T0 + 2.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"rate_per_s": 0}, id="zero-rate"),
        pytest.param({"rate_per_s": -1.0}, id="negative-rate"),
        pytest.param({"rate_per_s": float("inf")}, id="infinite-rate"),
        pytest.param({"rate_per_s": float("nan")}, id="nan-rate"),
        pytest.param({"burst": 0}, id="zero-burst"),
        pytest.param({"burst": -3}, id="negative-burst"),
        pytest.param({"burst": 2.5}, id="fractional-burst"),
        pytest.param({"burst": True}, id="bool-burst"),
    ],
)
def test_a_bucket_refuses_nonsense_settings(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"rate_per_s": 10.0, "burst": 5, "now": T0}
    args.update(kwargs)
    with pytest.raises(ValueError):
        TokenBucket(**args)

"""The send-side estimator (sfu/adapt/gcc.py) over synthetic feedback traces (tests/unit/sfu/gcc_sim.py: a
bottleneck with a drop-tail queue, delay, random loss; the sender sends what the estimate allows; the clock is the
simulation's)."""

from __future__ import annotations

import statistics

import pytest

from sfu.adapt.gcc import START_BPS, SendSideEstimator
from tests.unit.sfu.gcc_sim import Link, Result, Sim

LOW_LAYER_BPS = 150_000  # the teacher's smallest simulcast layer (docs/simulcast.md)


def sim(link: Link, seed: int = 1, **kw) -> Sim:
    return Sim(SendSideEstimator(0.0), link, seed=seed, **kw)


@pytest.mark.parametrize("capacity", [300_000, 1_000_000, 2_500_000])
def test_steady_link_converges_near_its_capacity(capacity: int) -> None:
    s = sim(Link(capacity_bps=capacity, delay_s=0.05, queue_bytes=30_000))
    s.run(40)
    late = s.estimates_between(20, 40)
    assert 0.7 * capacity <= statistics.median(late) <= 1.1 * capacity
    assert max(late) <= 1.3 * capacity


def test_capacity_step_down_is_followed_within_seconds() -> None:
    s = sim(Link(capacity_bps=1_000_000, delay_s=0.05, queue_bytes=30_000))
    s.run(20)
    assert statistics.median(s.estimates_between(15, 20)) > 700_000
    s.link.capacity_bps = 300_000
    s.run(20)
    assert max(s.estimates_between(23, 30)) <= 330_000  # near the new capacity within 3 s
    later = s.estimates_between(30, 40)
    assert 200_000 <= statistics.median(later) <= 330_000 and max(later) <= 400_000  # and around it after


def test_random_loss_with_plenty_of_bandwidth_does_not_lower_the_estimate() -> None:
    for seed in range(1, 6):
        s = sim(Link(capacity_bps=1e9, delay_s=0.05, loss=0.05), seed=seed, source_max_bps=1_000_000)
        s.run(60)
        assert min(s.estimates_between(5, 60)) >= START_BPS * 0.95, seed
        assert s.estimator.loss_bps is None
        assert 0.02 < s.estimator.loss < 0.09  # the loss is measured, and reported


def test_heavy_loss_lowers_the_estimate() -> None:
    s = sim(Link(capacity_bps=1e9, delay_s=0.05, loss=0.25), source_max_bps=1_000_000)
    s.run(20)
    assert s.estimator.estimate_bps < 0.5 * START_BPS
    assert s.estimator.loss == pytest.approx(0.25, abs=0.07)


def test_a_delay_step_is_one_transient_not_a_collapse() -> None:
    s = sim(Link(capacity_bps=1e9, delay_s=0.05), source_max_bps=400_000)
    s.run(20)
    before = s.estimator.decreases
    s.link.delay_s = 0.10  # +50 ms one way
    s.run(20)
    assert s.estimator.decreases - before <= 1
    assert min(s.estimates_between(20, 40)) >= 2 * LOW_LAYER_BPS
    assert statistics.median(s.estimates_between(30, 40)) >= 0.95 * statistics.median(s.estimates_between(15, 20))


def test_recovers_after_the_link_clears() -> None:
    s = sim(Link(capacity_bps=250_000, delay_s=0.15, queue_bytes=20_000, loss=0.013))
    s.run(30)
    assert statistics.median(s.estimates_between(20, 30)) < 300_000
    s.link.capacity_bps, s.link.loss, s.link.delay_s = 1e9, 0.0, 0.05
    s.run(20)
    assert s.estimator.estimate_bps >= 500_000  # 8 %/s from ~230k: no probing yet (issue 15, item 2)


def test_nothing_but_losses_and_nonsense_keeps_it_within_bounds() -> None:
    est = SendSideEstimator(0.0)
    for i in range(50):
        est.on_feedback([Result(i, i * 0.01, None, 1200)] * 5, i * 0.1)
    assert est.min_bps <= est.estimate_bps <= START_BPS
    # arrivals going backwards, equal send times, zero sizes: no exception, still within bounds
    est.on_feedback([Result(1, 5.0, 3.0, 0), Result(2, 5.0, 2.0, 0), Result(3, 4.0, 9e9, 1)], 6.0, rtt_s=-1)
    assert est.min_bps <= est.estimate_bps <= est.max_bps

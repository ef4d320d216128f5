"""The overload controller (sfu/adapt/overload.py): thresholds, hysteresis, the order of shedding, fairness; the
arrival stamps on the ICE receive queue; a subscriber's caps. Pure units with an injected clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sfu.adapt import overload as ov
from sfu.adapt.overload import (
    ARRIVAL_QUEUE_MAX,
    DOWN_STEP_S,
    ENTER_S,
    HOLD_S,
    MAX_LEVEL,
    RUNG_AUDIO,
    RUNG_CAMERA_OFF,
    RUNG_LAYER_Q,
    STEP_S,
    ArrivalStamps,
    OverloadController,
    rung_for,
)

SAMPLE_S = 0.25


class Run:
    """A controller fed a lag every SAMPLE_S of a fake clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.ctl = OverloadController(clock=lambda: self.now)

    def feed(self, lag: float, seconds: float) -> list[int]:
        levels = []
        for _ in range(round(seconds / SAMPLE_S)):
            self.now += SAMPLE_S
            levels.append(self.ctl.observe(lag))
        return levels


def test_a_slow_moment_is_not_overload() -> None:
    run = Run()
    run.feed(0.2, STEP_S)  # above the threshold, but not for STEP_S after the first such sample
    assert run.ctl.level == 0 and not run.ctl.overloaded
    run.feed(0.0, 2.0)
    assert run.ctl.level == 0 and run.ctl.overloads == 0


def test_enters_step_by_step_and_stops_at_the_top(caplog: pytest.LogCaptureFixture) -> None:
    run = Run()
    with caplog.at_level(logging.WARNING, logger="ketang.sfu.overload"):
        levels = run.feed(0.2, SAMPLE_S + STEP_S)
    assert levels[-1] == 1 and run.ctl.overloaded
    assert any("overloaded" in r.getMessage() for r in caplog.records)
    levels = run.feed(0.2, STEP_S * 3)
    assert levels[-1] == 4  # one level per STEP_S, no faster
    run.feed(0.2, STEP_S * (MAX_LEVEL + 5))
    assert run.ctl.level == MAX_LEVEL


def test_datagram_age_counts_even_when_the_loop_is_quick() -> None:
    """The ingress's backlog (datagrams read but not taken yet) is overload although timers run on time."""
    run = Run()
    for _ in range(3):
        run.now += SAMPLE_S
        run.ctl.late.worst = max(run.ctl.late.worst, 0.3)
        run.ctl.observe(0.0)
    assert run.ctl.level >= 1
    assert run.ctl.late.worst == 0.0  # taken at each sample


def test_hysteresis_between_the_thresholds_and_hold_before_each_step_down(
        caplog: pytest.LogCaptureFixture) -> None:
    run = Run()
    run.feed(0.2, SAMPLE_S + STEP_S * 3)
    assert run.ctl.level == 3
    run.feed((ENTER_S + ov.LEAVE_S) / 2, 30)  # between the thresholds: neither up nor down
    assert run.ctl.level == 3
    levels = run.feed(0.0, HOLD_S)
    assert levels[-1] == 3  # calm, but not for HOLD_S after the first calm sample
    run.feed(0.0, SAMPLE_S)
    assert run.ctl.level == 2
    levels = run.feed(0.0, DOWN_STEP_S)  # then one level down per DOWN_STEP_S while calm
    assert levels[-1] == 1 and levels.count(2) == round(DOWN_STEP_S / SAMPLE_S) - 1
    with caplog.at_level(logging.WARNING, logger="ketang.sfu.overload"):
        run.feed(0.0, DOWN_STEP_S)
    assert run.ctl.level == 0 and not run.ctl.overloaded
    assert any("no longer overloaded" in r.getMessage() for r in caplog.records)


def test_isolated_slow_moments_do_not_stop_the_recovery() -> None:
    run = Run()
    run.feed(0.2, SAMPLE_S + STEP_S * 2)
    assert run.ctl.level == 2
    for _ in range(8):  # a 180 ms spike every 2 s (a loaded machine's GC pauses, others' work)
        run.feed(0.0, 2.0 - SAMPLE_S)
        run.feed(0.18, SAMPLE_S)
    assert run.ctl.level == 0
    run2 = Run()
    run2.feed(0.2, SAMPLE_S + STEP_S * 2)
    for _ in range(8):  # but late two samples in a row, every 2 s: no calm, no step down
        run2.feed(0.0, 2.0 - 2 * SAMPLE_S)
        run2.feed(0.18, 2 * SAMPLE_S)
    assert run2.ctl.level == 2


def test_a_relapse_doubles_the_hold_and_a_long_calm_resets_it() -> None:
    run = Run()
    run.feed(0.2, SAMPLE_S + STEP_S)
    run.feed(0.0, SAMPLE_S + HOLD_S)
    assert run.ctl.level == 0
    run.feed(0.2, SAMPLE_S + STEP_S)  # the load came back at once
    assert run.ctl.level == 1 and run.ctl.hold_s == 2 * HOLD_S
    levels = run.feed(0.0, 2 * HOLD_S)
    assert levels[-1] == 1  # the longer hold
    run.feed(0.0, SAMPLE_S)
    assert run.ctl.level == 0
    run.feed(0.0, ov.RELAPSE_S + 1)
    assert run.ctl.hold_s == HOLD_S


def test_order_of_shedding_layers_then_camera_then_video() -> None:
    everyone = range(8)
    assert {rung_for(0, i) for i in everyone} == {0}
    assert {rung_for(4, i) for i in everyone} == {RUNG_LAYER_Q}
    assert {rung_for(8, i) for i in everyone} == {RUNG_CAMERA_OFF}
    assert {rung_for(MAX_LEVEL, i) for i in everyone} == {RUNG_AUDIO}
    for level in range(MAX_LEVEL):  # each level caps at least as much as the one below it, for everyone
        assert all(rung_for(level + 1, i) >= rung_for(level, i) for i in everyone)
    assert max(rung_for(level, i) for level in range(MAX_LEVEL + 1) for i in everyone) == RUNG_AUDIO


def test_fair_spread_a_quarter_more_at_each_level_in_every_lesson() -> None:
    for n in (4, 40, 400):  # lessons of different sizes shed the same share
        for level in range(1, MAX_LEVEL + 1):
            caps = [rung_for(level, i) for i in range(n)]
            full, part = divmod(level, 4)
            assert sum(1 for c in caps if c > full) == n * part // 4
    # within a lesson: every fourth classroom, spread through the join order, not the first quarter of it
    assert [rung_for(1, i) for i in range(8)] == [1, 0, 0, 0, 1, 0, 0, 0]


def test_arrival_stamps_age_bound_and_adopt_a_queue_in_use() -> None:
    async def main() -> None:
        plain: asyncio.Queue = asyncio.Queue()
        plain.put_nowait((b"early", 1))
        waiting = asyncio.ensure_future(plain.get())  # a task waiting on the queue (aiortc's DTLS task)
        await asyncio.sleep(0)
        assert waiting.done()  # (it took the early one)
        waiting = asyncio.ensure_future(plain.get())
        await asyncio.sleep(0)
        q = ArrivalStamps.adopt(plain)
        assert q is plain and isinstance(q, ArrivalStamps)
        clock = [50.0]
        q._now = lambda: clock[0]
        q.put_nowait((b"one", 1))
        assert await waiting == (b"one", 1)  # the waiter was woken through the adopted queue
        assert q.read_at == 50.0
        for i in range(ARRIVAL_QUEUE_MAX + 10):
            clock[0] = 60.0 + i
            q.put_nowait((bytes([i % 256]), 1))
        assert q.qsize() == ARRIVAL_QUEUE_MAX and q.overflowed == 10  # bounded: the oldest went
        item = q.get_nowait()
        assert item == (bytes([10]), 1) and q.read_at == 70.0
        q.put_nowait(None)  # the connection closing is never dropped
        assert ArrivalStamps.adopt(q) is q

    asyncio.run(main())


def test_subscriber_caps_follow_the_rung() -> None:
    from types import SimpleNamespace

    from sfu.peers.subscriber import Subscriber

    sub = Subscriber.__new__(Subscriber)  # the caps only: no peer connection
    sub.video, sub.camera, sub.ladder, sub.pinned_layer, sub.shed, sub.slots = True, True, None, None, 0, []
    camera, screen = SimpleNamespace(source="camera"), SimpleNamespace(source="screen")
    assert sub._flows(camera) and sub._flows(screen) and sub._layer_cap() is None
    sub.set_shed(RUNG_LAYER_Q)
    assert sub._flows(camera) and sub._layer_cap() == 0
    sub.set_shed(RUNG_CAMERA_OFF)
    assert not sub._flows(camera) and sub._flows(screen)
    sub.set_shed(RUNG_AUDIO)
    assert not sub._flows(camera) and not sub._flows(screen)
    sub.set_shed(0)
    assert sub._flows(camera) and sub._layer_cap() is None
    sub.pinned_layer = 1
    assert sub._layer_cap() == 1

"""Table-driven tests for sfu/rtp/keyframe.py. The clock is injected."""

from __future__ import annotations

import pytest

from sfu.rtp.keyframe import KEYFRAME_REQUEST_INTERVAL_S, KeyframeThrottle

# Steps: ("ask", now, expected should_request result) or ("keyframe", now, None).


@pytest.mark.parametrize(
    "interval_s, steps, requested, suppressed",
    [
        pytest.param(
            KEYFRAME_REQUEST_INTERVAL_S,
            [("ask", 10.0, True)] + [("ask", 10.0 + i * 0.01, False) for i in range(1, 50)],
            1,
            49,
            id="many requests within one interval send one pli",
        ),
        pytest.param(
            KEYFRAME_REQUEST_INTERVAL_S,
            [("ask", 0.0, True), ("ask", 0.1, False), ("ask", 0.49, False), ("ask", 0.5, True), ("ask", 0.6, False),
             ("ask", 0.99, False), ("ask", 1.0, True)],
            3,
            4,
            id="another pli is allowed once the interval is over",
        ),
        pytest.param(
            KEYFRAME_REQUEST_INTERVAL_S,
            [("ask", 0.0, True), ("ask", 0.3, False), ("ask", 0.7, True), ("ask", 1.1, False), ("ask", 1.2, True)],
            3,
            2,
            id="the interval runs from the last pli sent, not from the last request suppressed",
        ),
        pytest.param(
            KEYFRAME_REQUEST_INTERVAL_S,
            [("ask", 0.0, True), ("keyframe", 0.1, None), ("ask", 0.2, False), ("ask", 0.5, True)],
            2,
            1,
            id="a keyframe arriving does not reopen the interval early",
        ),
        pytest.param(
            KEYFRAME_REQUEST_INTERVAL_S, [("ask", -5.0, True)], 1, 0, id="the first request is always sent"
        ),
        pytest.param(
            2.0, [("ask", 0.0, True), ("ask", 1.9, False), ("ask", 2.0, True)], 2, 1, id="a custom interval is used"
        ),
        pytest.param(
            0.0, [("ask", 0.0, True), ("ask", 0.0, True), ("ask", 0.0, True)], 3, 0, id="a zero interval never throttles"
        ),
    ],
)
def test_keyframe_throttle(interval_s: float, steps: list, requested: int, suppressed: int) -> None:
    t = KeyframeThrottle(interval_s)
    for i, (op, now, expected) in enumerate(steps):
        if op == "ask":
            assert t.should_request(now) is expected, f"step {i}: should_request({now})"
        else:
            t.keyframe_seen(now)
    assert (t.requested, t.suppressed) == (requested, suppressed)


def test_keyframe_seen_is_recorded_for_stats() -> None:
    t = KeyframeThrottle()
    assert t.last_keyframe_at is None and t.keyframes == 0
    t.keyframe_seen(3.25)
    t.keyframe_seen(4.5)
    assert (t.last_keyframe_at, t.keyframes) == (4.5, 2)
    assert (t.requested, t.suppressed, t.last_request_at) == (0, 0, None)


def test_default_interval_is_half_a_second() -> None:
    assert KEYFRAME_REQUEST_INTERVAL_S == 0.5
    t = KeyframeThrottle()
    assert [t.should_request(x) for x in (0.0, 0.499, 0.5)] == [True, False, True]


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        KeyframeThrottle(-0.1)

"""What a classroom's link can carry, judged the same way by every decision about it.

The audio-first ladder (ladder.py: video, courseware only, or audio only) and the simulcast layer selector
(select.py: which layer while video flows) read the same reports, a REMB and receiver reports, and share these
thresholds and verdicts; they differ in how long trouble must last and how they try a rung up again. Pure.
"""

from __future__ import annotations

# a REMB below this share of what a rung needs means the link is not carrying it (a receiver's estimate sits at
# 1-1.5x of what it gets while the link keeps up, and drops to ~0.85x when its delay-based detector sees
# overuse); 0.8 also absorbs the rate measurement's swing when a key frame lands in its window
REMB_DOWN_RATIO = 0.8
# the server's own send-side estimate (transport-cc, gcc.py) is of the whole link: below this share of what a
# rung or layer needs *with everything else the classroom receives* the link delivers less than that. GoogCC's
# estimate of a link the traffic overfills settles near BETA (0.85) x what arrives; a false overuse on a link with
# room lands at 0.85 x the whole need (on the wire, with headers: a little more than the payload rates measured)
SEND_SIDE_DOWN_RATIO = 0.85
# loss above this in a receiver report is congestion (Google congestion control cuts its rate above 10 %; RTX
# repairs a little loss, the rural link in DESIGN.md runs at 1.3 %; this much stalls video)
LOSS_DOWN = 0.10
# reports older than this say nothing about the link now
STALE_S = 3.0


def fresh(at: float | None, now: float) -> bool:
    """Whether a report that came `at` still speaks for the link `now`."""
    return at is not None and now - at <= STALE_S


def remb_short(remb_bps: int | None, need_bps: float) -> bool:
    """Whether the classroom's estimate says its link cannot carry `need_bps` (no estimate, or nothing needed:
    it can)."""
    return remb_bps is not None and need_bps > 0 and remb_bps < REMB_DOWN_RATIO * need_bps


def send_side_short(estimate_bps: int | None, need_bps: float) -> bool:
    """Whether the send-side estimate says the link cannot carry `need_bps` (the rung's or layer's rate plus the
    rest the classroom receives)."""
    return estimate_bps is not None and need_bps > 0 and estimate_bps < SEND_SIDE_DOWN_RATIO * need_bps


def congested(loss: float) -> bool:
    """Whether a receiver report's loss (0..1) says the link is congested."""
    return loss > LOSS_DOWN

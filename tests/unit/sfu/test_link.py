"""The verdicts on a classroom's link that the ladder and the layer selector share (sfu/adapt/link.py), as tables;
and both use the one definition of the thresholds."""

from __future__ import annotations

import pytest

from sfu.adapt import ladder, link, select
from sfu.adapt.link import (
    LOSS_DOWN,
    REMB_DOWN_RATIO,
    STALE_S,
    congested,
    fresh,
    remb_short,
)


@pytest.mark.parametrize("at, now, want", [
    (None, 10.0, False),  # never came
    (10.0, 10.0, True),
    (10.0, 10.0 + STALE_S, True),
    (10.0, 10.0 + STALE_S + 0.01, False),
])
def test_fresh(at, now, want):
    assert fresh(at, now) is want


@pytest.mark.parametrize("remb, need, want", [
    (None, 1_000_000, False),  # no estimate: nothing says the link is short
    (500_000, 0, False),  # nothing needed
    (int(REMB_DOWN_RATIO * 1_000_000), 1_000_000, False),  # exactly at the ratio: carries it
    (int(REMB_DOWN_RATIO * 1_000_000) - 1, 1_000_000, True),
    (2_000_000, 1_000_000, False),
    (0, 150_000, True),
])
def test_remb_short(remb, need, want):
    assert remb_short(remb, need) is want


@pytest.mark.parametrize("loss, want", [(0.0, False), (LOSS_DOWN, False), (LOSS_DOWN + 0.001, True), (1.0, True)])
def test_congested(loss, want):
    assert congested(loss) is want


@pytest.mark.parametrize("name", ["REMB_DOWN_RATIO", "LOSS_DOWN", "STALE_S"])
def test_the_ladder_and_the_selector_share_one_definition(name):
    assert getattr(ladder, name) is getattr(link, name) is getattr(select, name)

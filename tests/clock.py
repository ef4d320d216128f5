"""The one fake clock of the tests: a callable returning `now`, which the test moves on by hand.

It is also an SFU `Clock` (sfu/rtp/clock.py): `monotonic()` is `now`; `wall()` is `now + wall_offset` when the
test gives a `wall_offset` (a fully fake clock), else the system's wall clock (tests that only move monotonic time).
"""

from __future__ import annotations

import time


class FakeClock:
    def __init__(self, now: float = 1000.0, wall_offset: float | None = None) -> None:
        self.now = now
        self.wall_offset = wall_offset

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return time.time() if self.wall_offset is None else self.now + self.wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds

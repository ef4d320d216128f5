"""The one clock of the SFU: monotonic seconds for intervals, wall-clock seconds for what goes on the wire.

Everything in sfu/ that needs the time is given a `Clock` (a constructor parameter, the system's by default) or a
`now` argument; nothing else reads `time.time()` or `time.monotonic()` (tests/unit/sfu/test_clock.py checks), so a
test moves time by hand instead of patching modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back: arrival times, intervals, timeouts."""

    def wall(self) -> float:
        """UNIX seconds: abs-send-time, NTP timestamps of sender reports."""


class SystemClock:
    """The machine's clocks (`monotonic` and `wall` are the `time` functions themselves: no extra call per packet).
    Calling it gives the monotonic time, so it also serves where a bare `() -> float` clock is expected."""

    __slots__ = ()
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)
    __call__ = staticmethod(time.monotonic)


SYSTEM_CLOCK = SystemClock()


class MonotonicOnly:
    """A Clock from a bare `() -> float` monotonic clock (what callers passed before there was a Clock); its wall
    time is the system's."""

    __slots__ = ("monotonic",)
    wall = staticmethod(time.time)

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self.monotonic = monotonic

    def __call__(self) -> float:
        return self.monotonic()


def as_clock(clock: Clock | Callable[[], float] | None) -> Clock:
    """A Clock from what a caller passed: a Clock as it is, None as the system's, a bare callable as its monotonic
    time (wall time then the system's)."""
    if clock is None:
        return SYSTEM_CLOCK
    if isinstance(clock, Clock):
        return clock
    return MonotonicOnly(clock)

"""Keyframe-request throttling: many subscribers, one PLI upstream per interval."""

from __future__ import annotations

# One keyframe request upstream per this many seconds per publisher stream. Roughly an encoder's time to produce a
# keyframe plus an RTT: asking again sooner only makes the encoder emit more expensive keyframes, not an earlier one.
KEYFRAME_REQUEST_INTERVAL_S = 0.5


class KeyframeThrottle:
    """At most one keyframe request (PLI) upstream per interval per publisher stream, however many subscribers ask.

    The clock is passed in (a monotonic one); nothing here reads it.
    """

    __slots__ = ("interval_s", "requested", "suppressed", "keyframes", "last_request_at", "last_keyframe_at")

    def __init__(self, interval_s: float = KEYFRAME_REQUEST_INTERVAL_S) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must not be negative, got {interval_s}")
        self.interval_s = interval_s
        self.requested = 0  # requests let through (PLIs the caller sent)
        self.suppressed = 0  # requests swallowed because one was sent within the interval
        self.keyframes = 0  # keyframes seen (stats)
        self.last_request_at: float | None = None
        self.last_keyframe_at: float | None = None

    def should_request(self, now: float) -> bool:
        """True: the caller sends a PLI now (it is recorded). False: one went out less than an interval ago."""
        last = self.last_request_at
        if last is None or now - last >= self.interval_s:
            self.last_request_at = now
            self.requested += 1
            return True
        self.suppressed += 1
        return False

    def keyframe_seen(self, now: float) -> None:
        """A keyframe arrived. Stats only: throttling stays purely time-based, so a keyframe that answers one request
        does not reopen the window early (a burst of late joiners after it would otherwise each trigger a PLI)."""
        self.keyframes += 1
        self.last_keyframe_at = now

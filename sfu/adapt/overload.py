"""Bounded delay when the node is short of CPU: late media is dropped, never queued, and the classrooms' video is
shed (layers, then the camera, then all video) before the audio is ever late.

Two measures of how far behind the process is, both in seconds:

* the **event loop's lag**: how late a timer due now runs (signalling's sampler feeds it, every 0.25 s);
* the **age of the teacher's datagrams** when the ingress takes them: read from the socket at once by the event
  loop, they wait in the ICE connection's queue while the DTLS/SRTP task works through the ones before them
  (`ArrivalStamps`, installed by `sfu/seams.py`). This is where a node short of CPU builds up its delay: the
  loop itself stays responsive (the fan-out yields between slices), so its lag alone would not show it.

The ingress drops a video packet that reaches it more than LATE_VIDEO_S after it was read (audio after
LATE_AUDIO_S): a late packet costs only its decryption, never the fan-out to every classroom. The controller
below turns sustained lateness into a node-wide **shed level**, which the Routers apply to their classrooms:

    level   each classroom's cap (a quarter of the classrooms more at each level, the same share in every lesson)
    1-4     simulcast cameras at most on their smallest layer (q)
    5-8     no camera: the courseware (when shared) and the audio
    9-12    audio only

Up one level every STEP_S while the lateness stays above ENTER_S; once it has stayed below LEAVE_S for the hold
time, down one level every DOWN_STEP_S while it stays there (between the two thresholds: hold where it is; one
late sample alone does not end the calm). The hold doubles (up to HOLD_MAX_S) when the load comes back within
RELAPSE_S of a step down, and is reset after a calm RELAPSE_S. Overloaded while the level is above 0: `/readyz`
503 "overloaded", no new lesson placed here; saturated from REFUSE_LEVEL (cameras going off): no new classroom
joins a lesson here either. Pure: the clock is an argument (`observe(lag, now)`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from sfu.rtp.clock import SYSTEM_CLOCK

__all__ = ["DOWN_STEP_S", "ENTER_S", "HOLD_MAX_S", "HOLD_S", "LATE_AUDIO_S", "LATE_VIDEO_S", "LEAVE_S", "MAX_LEVEL",
           "NODE", "REFUSE_LEVEL", "RELAPSE_S", "RUNG_AUDIO", "RUNG_CAMERA_OFF", "RUNG_LAYER_Q", "STEP_S",
           "ArrivalStamps", "Lateness", "OverloadController", "rung_for"]

log = logging.getLogger("ketang.sfu.overload")

# a video packet taken by the ingress later than this after its datagram was read is dropped (the classroom's
# decoder asks for a keyframe; the shedding below makes it rare); audio is kept longer: it is what must go on
LATE_VIDEO_S = 0.1
LATE_AUDIO_S = 0.4
# a queue of datagrams read but not taken yet keeps at most this many (the oldest go first): ~4 s of a teacher
ARRIVAL_QUEUE_MAX = 1024

ENTER_S = 0.05  # lateness above this is overload
LEAVE_S = 0.02  # ... and below this, calm
STEP_S = 0.5  # one level up per this long above ENTER_S
HOLD_S = 4.0  # calm this long before the first level down ...
DOWN_STEP_S = 1.0  # ... then one level down per this long while it stays calm
HOLD_MAX_S = 60.0
RELAPSE_S = 30.0  # back to overload this soon after a step down: the next hold is twice as long

SUB_STEPS = 4  # quarters of the classrooms
RUNG_NONE, RUNG_LAYER_Q, RUNG_CAMERA_OFF, RUNG_AUDIO = 0, 1, 2, 3
RUNGS = ("none", "layer_q", "camera_off", "audio_only")
MAX_LEVEL = RUNG_AUDIO * SUB_STEPS
# from this level on (cameras being turned off) a new classroom or observer is refused (`overloaded`); from level
# 1 the node is not ready (/readyz 503): no new lesson is placed here
REFUSE_LEVEL = SUB_STEPS + 1


def rung_for(level: int, index: int) -> int:
    """The cap of the classroom at `index` (its place among its lesson's classrooms) at shed `level`: whole rungs
    for everyone, and the next rung for the first `level % SUB_STEPS` of every SUB_STEPS classrooms."""
    full, part = divmod(max(0, min(level, MAX_LEVEL)), SUB_STEPS)
    return full + (1 if index % SUB_STEPS < part else 0)


class Lateness:
    """The worst age of work seen since the last read (the ingress notes each packet's: one comparison)."""

    __slots__ = ("dropped", "worst")

    def __init__(self) -> None:
        self.worst = 0.0
        self.dropped = {"audio": 0, "video": 0}  # late packets dropped by the ingress, by kind

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


class ArrivalStamps(asyncio.Queue):  # type: ignore[type-arg]
    """An asyncio.Queue that remembers when each item was put (the socket read) and, for the item got last, that
    time (`read_at`). Bounded: beyond ARRIVAL_QUEUE_MAX items the oldest is dropped (`overflowed`). Through the
    subclass hooks asyncio's own LifoQueue and PriorityQueue use (`_init`, `_put`, `_get`)."""

    def _init(self, maxsize: int) -> None:
        self._queue: deque[tuple[Any, float]] = deque()
        self._stamps()

    def _restamp(self, now: float) -> None:
        """(A plain asyncio.Queue just adopted) what it holds counts as read `now`."""
        self._queue = deque((item, now) for item in self._queue)
        self._stamps()

    def _stamps(self) -> None:
        self.read_at = math.inf  # (nothing got yet: no age)
        self.overflowed = 0
        self._now = SYSTEM_CLOCK.monotonic

    @classmethod
    def adopt(cls, queue: asyncio.Queue) -> ArrivalStamps:  # type: ignore[type-arg]
        """Turn a plain asyncio.Queue in use (a task may be waiting on it) into one of these, in place: what it
        holds counts as read now."""
        if isinstance(queue, cls):
            return queue
        if type(queue) is not asyncio.Queue:
            raise TypeError(f"cannot stamp arrivals in a {type(queue).__name__}")
        queue.__class__ = cls
        assert isinstance(queue, cls)
        queue._restamp(SYSTEM_CLOCK.monotonic())
        return queue

    def _put(self, item: Any) -> None:
        queue = self._queue
        if len(queue) >= ARRIVAL_QUEUE_MAX and item is not None:
            queue.popleft()
            self.overflowed += 1
        queue.append((item, self._now()))

    def _get(self) -> Any:
        item, self.read_at = self._queue.popleft()
        return item


class OverloadController:
    """The node's shed level from its lateness (module docstring)."""

    def __init__(self, clock: Callable[[], float] = SYSTEM_CLOCK.monotonic, enter_s: float = ENTER_S,
                 leave_s: float = LEAVE_S, step_s: float = STEP_S, hold_s: float = HOLD_S) -> None:
        self.clock = clock
        self.enter_s, self.leave_s, self.step_s, self.base_hold_s = enter_s, leave_s, step_s, hold_s
        self.level = 0
        self.lateness = 0.0  # the latest sample: the worse of
        self.loop_lag = 0.0  # ... the event loop's lag
        self.datagram_age = 0.0  # ... and the oldest datagram the ingress took since the sample before
        self.late = Lateness()
        self.hold_s = hold_s
        self.overloads = 0  # times the node entered overload
        self._above_since: float | None = None
        self._calm_since: float | None = None
        self._last_step = -1e18
        self._last_down: float | None = None
        self._entered_at: float | None = None
        self._high = False  # the previous sample was above ENTER_S
        self._relapse_counted = -1e18

    @property
    def saturated(self) -> bool:
        """Shedding cameras already (smaller layers were not enough): no new classroom joins a lesson here."""
        return self.level >= REFUSE_LEVEL

    @property
    def overloaded(self) -> bool:
        """Shedding now: the lateness stayed above the threshold for STEP_S at least (one slow moment is not)."""
        return self.level > 0

    def observe(self, loop_lag_s: float, now: float | None = None) -> int:
        """One sample: the loop's lag now, and (taken here) the worst datagram age since the last sample."""
        now = self.clock() if now is None else now
        was = self.overloaded
        self.loop_lag, self.datagram_age = loop_lag_s, self.late.take()
        lateness = self.lateness = max(loop_lag_s, self.datagram_age)
        high, was_high = lateness > self.enter_s, self._high
        self._high = high
        if high:
            if was_high:
                self._calm_since = None  # late twice in a row: not calm (one slow moment, a GC pause, is forgiven)
            if self._above_since is None:
                self._above_since = now
            if now - self._above_since >= self.step_s and now - self._last_step >= self.step_s \
                    and self.level < MAX_LEVEL:
                if self._last_down is not None and now - self._last_down < RELAPSE_S and self._relapse_counted < \
                        self._last_down:
                    self.hold_s = min(self.hold_s * 2, HOLD_MAX_S)  # the load came back: wait longer next time
                    self._relapse_counted = now
                self.level += 1
                self._last_step = now
        else:
            self._above_since = None
            if lateness < self.leave_s:
                if self._calm_since is None:
                    self._calm_since = now
                if self.level > 0 and now - self._calm_since >= self.hold_s and now - self._last_step >= DOWN_STEP_S:
                    self.level -= 1
                    self._last_step = self._last_down = now
                elif self.level == 0 and self._last_down is not None and now - self._last_down >= RELAPSE_S:
                    self.hold_s = self.base_hold_s  # calm for long: the next overload starts afresh
            # (between the thresholds: no step either way)
        if self.overloaded and not was:
            self.overloads += 1
            self._entered_at = now
            log.warning("overloaded: work runs %.0f ms late; late video is dropped and the classrooms' video shed "
                        "(level %d of %d); new joins are refused", lateness * 1000, self.level, MAX_LEVEL)
        elif was and not self.overloaded:
            log.warning("no longer overloaded after %.1f s (%d late packets dropped so far: audio %d, video %d)",
                        now - (self._entered_at or now), sum(self.late.dropped.values()), self.late.dropped["audio"],
                        self.late.dropped["video"])
        return self.level

    def rung(self, index: int) -> int:
        return rung_for(self.level, index)

    def stats(self) -> dict[str, Any]:
        return {"overloaded": self.overloaded, "saturated": self.saturated, "level": self.level, "max_level": MAX_LEVEL,
                "lateness_ms": round(self.lateness * 1000, 1),
                "loop_lag_ms": round(self.loop_lag * 1000, 1), "datagram_age_ms": round(self.datagram_age * 1000, 1), "hold_s": self.hold_s,
                "late_dropped": dict(self.late.dropped), "overloads": self.overloads}


# the node's: one event loop, one CPU budget (every lesson of this process shares it)
NODE = OverloadController()

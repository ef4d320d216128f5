"""Which simulcast layer of the teacher's camera a recording holds: the largest one that arrives.

A recording starts from the largest layer flowing once they all had time to start (StartingLayers). A
FlowTap rides each layer's producer like a consumer and only says "a packet arrived"; the LayerFollower keeps
when each layer last arrived and since when it has been arriving, decides (`wanted_layer`) which layer the file
should hold, and when that changes opens a depacketizer on the new layer, which asks for its key frame. The
writer (webm.RecordingFile) changes over at that key frame, so the file never holds a delta frame of a layer it
has no key frame of. The taps keep the producer's consumer shape (forward, skip, on_error, close).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from recorder.record.depacketize import Frame, TrackDepacketizer, vp8_dimensions
from sfu.producer import Producer

log = logging.getLogger("ketang.recorder")

# The recorded layer counts as stopped when it has sent nothing for this long while a smaller layer kept
# arriving. All layers share one transport and one pacer, so a stall of the network stalls them all (and
# nothing switches); one layer silent while another flows is the teacher's browser having dropped it. Shorter
# than the SFU's LAYER_STOPPED_S (1 s, a rate measure): every moment of it is a hole in the recording.
RECORD_LAYER_STOPPED_S = 0.3
# a larger layer must have kept arriving this long before the file switches up to it (Chromium turns its top
# layer off and on again as its bandwidth estimate wobbles: hysteresis)
RECORD_LAYER_UP_AFTER_S = 2.0
# the layers are looked at on packet arrival, at most this often
RECORD_LAYER_CHECK_S = 0.05
# the awaited layer's key frame is asked for again this often (a PLI is lost, or throttled by others' requests)
RECORD_KEYFRAME_RETRY_S = 0.5
RECORD_LAYER_TIMELINE_MAX = 200  # switches kept in the stats (the count goes on)
# a simulcast camera's layers start within a second of each other: the recording waits this long after the
# first one to see which is the largest the teacher's browser really sends
SIMULCAST_SETTLE_S = 1.5


class StartingLayers:
    """The layer each simulcast camera's recording starts from: its largest that flows (a browser sends fewer
    layers than asked for from a small camera), chosen once its layers have had SIMULCAST_SETTLE_S to start
    and kept for that camera. A file then follows the layers as they stop and come back (LayerFollower)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.chosen: list[Producer] = []  # the layers chosen so far, one per camera
        self._first_seen: dict[int, float] = {}  # id(camera) -> when one of its layers first flowed

    def choose(self, producer: Producer) -> Producer | None:
        """The layer to record `producer` from (itself when it is not simulcast); None: not known yet."""
        if not producer.layers:
            return producer
        chosen = next((layer for layer in self.chosen if layer in producer.layers), None)
        if chosen is not None:
            return chosen
        flowing = [layer for layer in producer.layers if layer.packets_in > 0]
        if not flowing:
            return None
        first = self._first_seen.setdefault(id(producer), self._clock())
        if self._clock() - first < SIMULCAST_SETTLE_S:
            return None
        self.chosen.append(flowing[-1])
        return flowing[-1]


def wanted_layer(now: float, current: int, last: Sequence[float], since: Sequence[float]) -> int:
    """The layer (index, smallest first) a track should record now, given when each layer last arrived and
    since when it has kept arriving. Down: the current layer stopped while others flow -> the largest one
    flowing. Up: a larger layer has kept flowing for RECORD_LAYER_UP_AFTER_S -> the largest such."""
    flowing = [i for i in range(len(last)) if now - last[i] <= RECORD_LAYER_STOPPED_S]
    if not flowing:
        return current  # nothing arrives at all (the teacher's network): nothing to switch to
    steady = [i for i in flowing if now - since[i] >= RECORD_LAYER_UP_AFTER_S]
    if current in flowing:
        return max(steady) if steady and max(steady) > current else current
    return max(steady or flowing)


class FollowedTrack(Protocol):
    """What the follower reads of the recorded video track (webm.Track)."""

    producer: Producer  # the layer written now
    last_ms: int  # the file time of the track's latest frame


class FlowTap:
    """What one layer's producer sees as a consumer: tells the follower a packet arrived, nothing more."""

    __slots__ = ("follower", "index")

    def __init__(self, follower: LayerFollower, index: int) -> None:
        self.follower, self.index = follower, index

    def forward(self, packet: Any, ast: bytes) -> None:
        self.follower.arrived(self.index)

    def skip(self, ext_seq: int) -> None:
        pass  # padding is a bandwidth probe, not the layer flowing

    def on_error(self) -> None:
        log.exception("following the layers of a recorded camera failed")

    def close(self) -> None:
        pass  # the layer's producer is closing: the recorder's own depacketizer sees it too


class LayerFollower:
    """Follows one video track across its simulcast layers (`layers`, smallest first).

    `listen(layer)` opens a depacketizer on a layer for the track (it asks for a key frame and emits nothing
    before one); `writing()` says whether the file is open and written (switches wait for that). The new
    depacketizer is `candidate` until the writer changes over at its key frame and calls `switched`; until
    then the old layer goes on being written."""

    def __init__(self, track: FollowedTrack, layers: list[Producer], name: str,
                 listen: Callable[[Producer], TrackDepacketizer], writing: Callable[[], bool]) -> None:
        self.track, self.layers, self.name = track, list(layers), name
        self._listen, self._writing = listen, writing
        self._clock = track.producer.clock.monotonic  # the producers' clock: the arrival times compared with it
        now = self._clock()
        n = len(self.layers)
        self.last = [layer.arrived_at if layer.packets_in else -1e9 for layer in self.layers]
        self.since = [now if now - last <= RECORD_LAYER_STOPPED_S else 1e18 for last in self.last]
        self.candidate: TrackDepacketizer | None = None
        self._asked_at = 0.0
        self._next_check = now
        self.switches = 0
        self.timeline: list[dict[str, Any]] = []  # {at_s, layer, size} of each switch
        self._taps = [FlowTap(self, i) for i in range(n)]
        for layer, tap in zip(self.layers, self._taps):
            layer.attach(tap)

    def arrived(self, index: int) -> None:
        now = self._clock()
        if now - self.last[index] > RECORD_LAYER_STOPPED_S:
            self.since[index] = now  # (again) arriving from now on
        self.last[index] = now
        if now >= self._next_check:
            self._next_check = now + RECORD_LAYER_CHECK_S
            self.check(now)

    def wanted(self, now: float) -> int:
        """The layer the track should be recording now."""
        return wanted_layer(now, self.layers.index(self.track.producer), self.last, self.since)

    def check(self, now: float) -> None:
        if not self._writing():
            return  # switches only once the file is open (the first frames wait there for a sender report)
        want = self.wanted(now)
        current = self.layers.index(self.track.producer)
        if want == current:
            self._drop_candidate()
            return
        layer = self.layers[want]
        if self.candidate is None or self.candidate.producer is not layer:
            self._drop_candidate()
            log.info("recording %s: layer %d -> %d, waiting for its key frame", self.name, current, want)
            self.candidate = self._listen(layer)  # asks for a key frame
            self._asked_at = now
        elif now - self._asked_at >= RECORD_KEYFRAME_RETRY_S:
            self._asked_at = now
            layer.request_keyframe()

    def switched(self, keyframe: Frame) -> None:
        """The writer changed over to the candidate at `keyframe` (already written)."""
        self.switches += 1
        layer = self.layers.index(self.track.producer)
        size = vp8_dimensions(keyframe.data)
        at_s = round(max(0.0, self.track.last_ms) / 1000, 3)
        log.info("recording %s: now layer %d (%s) at %.1f s", self.name, layer, size, at_s)
        if len(self.timeline) < RECORD_LAYER_TIMELINE_MAX:
            self.timeline.append({"at_s": at_s, "layer": layer, "size": list(size) if size else None})

    def _drop_candidate(self) -> None:
        if self.candidate is not None:
            self.candidate.close()
            self.candidate = None

    def close(self) -> None:
        self._drop_candidate()
        for layer, tap in zip(self.layers, self._taps):
            layer.detach(tap)

    def stats(self) -> dict[str, Any]:
        return {"layer": self.layers.index(self.track.producer), "layer_switches": self.switches,
                "layer_timeline": list(self.timeline)}

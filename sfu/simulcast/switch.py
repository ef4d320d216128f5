"""One subscriber's switching between simulcast layers, pure.

``LayerSwitcher`` is given the packets of every layer of a simulcast track, forwards the current layer's and,
when told to change layer, switches exactly at a key frame start of the target layer, after the current
layer's frame in progress has ended. Output sequence numbers, timestamps and VP8 picture ids / TL0PICIDX
continue across the switch. No clock (``now`` is an argument), no logging, no I/O; garbage never raises.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import NamedTuple

from sfu.rtp.seqmap import SEQ_HALF, SEQ_MASK, TS_MASK, SeqMap
from sfu.rtp.vp8 import Vp8Rewriter

# once the target layer's key frame has started, the current layer's frame in progress is finished first (so
# the subscriber never gets half a frame); the target's packets wait meanwhile, at most this long — longer
# than one frame at 10 fps plus pacing — or this many packets (a 720p VP8 key frame is 30-90 packets), after
# which the switch is made anyway (the old frame's end was lost; the key frame that follows repairs it)
PENDING_MAX_S = 0.15
PENDING_MAX_PACKETS = 256
# segments (stretches of output from one layer) remembered for retransmissions; older NACKs get nothing
SWITCHER_MAX_SEGMENTS = 8
# while waiting for the target's key frame, ask again this often (a PLI can be lost; the producer's throttle
# still limits requests to the teacher)
KEYFRAME_RETRY_S = 1.0


class Out(NamedTuple):
    """A packet to send to the subscriber."""

    seq: int  # extended output sequence number (send ``seq & 0xFFFF``)
    ts: int  # output RTP timestamp, 32 bits
    marker: int
    payload: bytes  # VP8 descriptor rewritten
    layer: int
    ext_seq: int  # the input packet's extended sequence number in its layer


class _Segment:
    """A stretch of the output taken from one layer, with that stretch's sequence and timestamp mapping."""

    __slots__ = ("closed", "first_in", "last_in", "layer", "out_start", "seq", "ts_offset")

    def __init__(self, layer: int, out_start: int, ts_offset: int, first_in: int) -> None:
        self.layer = layer
        self.seq = SeqMap(out_start)
        self.ts_offset = ts_offset & TS_MASK
        self.out_start = out_start
        self.first_in = first_in
        self.last_in = first_in - 1  # newest input forwarded in this segment (the first is, at once)
        self.closed = False


class LayerSwitcher:
    """One subscriber's view of a simulcast track: forwards the current layer, switches at key frames.

    ``push`` every packet of every layer (extended sequence number in its own layer, RTP timestamp, marker,
    key-frame-start flag, payload, arrival time); it returns the packets to send now, already renumbered.
    ``set_target`` starts a switch; the switch happens at the first key frame start of the target layer
    once the current layer's frame in progress has ended. Output sequence numbers have no gaps except where
    the teacher's uplink really lost a packet of the layer being forwarded (so the subscriber NACKs only
    real holes: ``lookup`` maps a NACK back to (layer, input seq)); timestamps continue from the last frame
    sent by the time elapsed (like ``Consumer`` on a producer change); VP8 picture ids and TL0PICIDX
    continue through a ``Vp8Rewriter``.
    """

    def __init__(self, first_seq_out: int, first_ts_out: int, clock_rate: int = 90000, target: int = 0,
                 vp8: bool = True) -> None:
        if first_seq_out < 0:
            raise ValueError("first_seq_out must be >= 0")
        self._first_seq = first_seq_out
        self._first_ts = first_ts_out & TS_MASK
        self._rate = clock_rate
        self.vp8 = vp8  # payloads are VP8: picture ids renumbered (``rewriter``)
        self.rewriter = Vp8Rewriter()
        self._segments: list[_Segment] = []
        self._open: _Segment | None = None
        self.target = target
        self.waiting: int | None = target  # the layer whose key frame start is awaited (None: not switching)
        # the open segment while nothing is awaited or held (waiting is None, so nothing pending): its layer's
        # packets newer than its last_in may take a caller's fast path (SimulcastConsumer.forward_layer), which
        # does what push does for them; None while switching or before the first key frame
        self.steady: _Segment | None = None
        self._asked_at: float | None = None
        self._pending: list[tuple[int, int, int, bytes, float]] = []  # target packets held: seq, ts, m, pl, at
        self._pending_since = 0.0
        self._frame_open = False  # the newest packet sent did not end its frame
        self._last_ts = 0  # output timestamp of the newest packet sent
        self._frame_arrival = 0.0  # arrival of the first packet of the newest frame sent
        # while waiting for a lower layer's key frame, forward nothing more of the current layer once its frame in
        # progress has ended (``set_target(..., hold=True)``: the link collapsed, and every packet of the larger
        # layer would only fill the queue the key frame must pass through); the picture stands still meanwhile
        self.holding = False
        self.held = 0  # packets of the current layer not forwarded while holding
        self.switches = 0
        self.cut_frames = 0  # switches made before the old layer's frame ended (its end was lost)
        self.forwarded = 0

    @property
    def current(self) -> int | None:
        """The layer being forwarded (None before the first key frame)."""
        return self._open.layer if self._open is not None else None

    def map_ts(self, ts: int) -> int | None:
        """A timestamp of the current layer in the subscriber's timestamp space (for sender reports: the
        current layer's producer's ``rtp_time_at(now)`` through this); None before the first key frame."""
        seg = self._open
        return None if seg is None else (ts + seg.ts_offset) & TS_MASK

    # -- control ---------------------------------------------------------------------------------------------

    def set_target(self, layer: int, now: float, hold: bool = False) -> bool:
        """Switch to ``layer`` at its next key frame; True when the caller should ask the teacher for one.
        ``hold``: going down, stop forwarding the current layer at the end of its frame in progress (`holding`)."""
        current = self.current
        if layer == self.target and (self.waiting is None or self.waiting == layer):
            if hold and self.waiting is not None and current is not None and layer < current:
                self.holding = True
            return False
        self.target = layer
        self._pending.clear()
        self.holding = False
        if layer == current:
            self.waiting = None
            self.steady = self._open
            return False
        self.holding = hold and current is not None and layer < current
        self.waiting = layer
        self.steady = None
        self._asked_at = now
        return True

    def keyframe_overdue(self, now: float) -> int | None:
        """The layer to ask a key frame of again, when waiting for one longer than KEYFRAME_RETRY_S."""
        if self.waiting is None:
            return None
        if self._asked_at is None or now - self._asked_at >= KEYFRAME_RETRY_S:
            self._asked_at = now
            return self.waiting
        return None

    # -- packets ---------------------------------------------------------------------------------------------

    def push(self, layer: int, ext_seq: int, ts: int, marker: int, keyframe: bool, payload: bytes,
             now: float) -> list[Out]:
        """One packet of any layer; returns what to send now (possibly several packets, or none)."""
        if not payload:
            self.skip(layer, ext_seq)
            return []
        out: list[Out] = []
        if layer == self.waiting:
            pending = self._pending
            if pending and ext_seq > pending[0][0]:
                # the target's key frame has started: hold its packets until the current frame has ended
                pending.append((ext_seq, ts, marker, payload, now))
                if len(pending) >= PENDING_MAX_PACKETS or now - self._pending_since > PENDING_MAX_S:
                    self._switch_pending(out, cut=self._frame_open)
                return out
            if keyframe and not pending:
                self._pending = [(ext_seq, ts, marker, payload, now)]
                self._pending_since = now
                if self._open is None or not self._frame_open:
                    self._switch_pending(out, cut=False)
                return out
            # before the target's key frame start: dropped below, unless a late packet of an old segment
        elif self.holding and self.waiting is not None:
            seg = self._open
            if seg is not None and layer == seg.layer and ext_seq > seg.last_in and not self._frame_open:
                self.held += 1
                return out  # the current layer's next frame: not sent (no hole: the next segment follows on)
        self._forward(layer, ext_seq, ts, marker, payload, now, out)
        if self._pending and (not self._frame_open or now - self._pending_since > PENDING_MAX_S):
            self._switch_pending(out, cut=self._frame_open)
        return out

    def advance(self, seg: _Segment, ext_seq: int, out_ts: int, marker: int, arrival: float) -> int | None:
        """The steady state's step for a new packet of the open segment (``steady``, ``ext_seq > seg.last_in``,
        ``out_ts`` its timestamp through ``seg.ts_offset``): what ``_forward`` does for it, but the VP8
        renumbering, which the caller does with ``rewriter.renumber`` while ``rewriter.current_source is seg``.
        Returns the extended output sequence number, or None when the packet is not to be sent."""
        seq = seg.seq.forward(ext_seq)
        if seq is None:
            return None
        seg.last_in = ext_seq
        if out_ts != self._last_ts:
            self._last_ts = out_ts
            self._frame_arrival = arrival
        self._frame_open = not marker
        self.forwarded += 1
        return seq

    def skip(self, layer: int, ext_seq: int) -> None:
        """A packet of ``layer`` that carries nothing to forward (padding): no hole for the subscriber."""
        seg = self._open
        if seg is not None and layer == seg.layer and ext_seq >= seg.first_in:
            seg.seq.drop(ext_seq)

    def _forward(self, layer: int, ext_seq: int, ts: int, marker: int, payload: bytes, now: float,
                 out: list[Out]) -> None:
        seg = self._segment_for(layer, ext_seq)
        if seg is None:
            return
        seq = seg.seq.forward(ext_seq)
        if seq is None:
            return
        out_ts = (ts + seg.ts_offset) & TS_MASK
        live = seg is self._open
        if self.vp8:
            if live:
                payload = self.rewriter.rewrite(payload, seg)
            else:
                remapped = self.rewriter.remap(payload, seg)
                if remapped is None:
                    return
                payload = remapped
        if live and ext_seq > seg.last_in:
            seg.last_in = ext_seq
            if out_ts != self._last_ts:
                self._frame_arrival = now
            self._last_ts = out_ts
            self._frame_open = not marker
        out.append(Out(seq, out_ts, marker, payload, layer, ext_seq))
        self.forwarded += 1

    def _segment_for(self, layer: int, ext_seq: int) -> _Segment | None:
        """The segment a packet belongs to: the open one, or a closed one it is a late packet of."""
        for seg in reversed(self._segments):
            if seg.layer != layer or ext_seq < seg.first_in:
                continue
            if seg.closed and ext_seq > seg.last_in:
                return None  # after that segment ended: it would land on the next segment's numbers
            return seg
        return None

    def _switch_pending(self, out: list[Out], cut: bool) -> None:
        """Start a segment of the target layer at its held key frame start, then send what was held."""
        pending = sorted(self._pending)
        self._pending = []
        layer = self.waiting
        if not pending or layer is None:
            return
        first_seq, first_ts, _, _, first_at = pending[0]
        old = self._open
        if old is None:
            out_start, out_ts = self._first_seq, self._first_ts
        else:
            old.closed = True
            newest = old.seq.newest_out
            out_start = (newest + 1) if newest is not None else old.out_start
            elapsed = max(1, round((first_at - self._frame_arrival) * self._rate))
            out_ts = (self._last_ts + elapsed) & TS_MASK
            self.switches += 1
            if cut:
                self.cut_frames += 1
        seg = _Segment(layer, out_start, out_ts - first_ts, first_seq)
        self._segments.append(seg)
        if len(self._segments) > SWITCHER_MAX_SEGMENTS:
            del self._segments[0]
        self._open = seg
        self.waiting = None
        self.holding = False
        self.steady = seg
        self._frame_arrival = first_at
        for ext_seq, ts, marker, payload, at in pending:
            self._forward(layer, ext_seq, ts, marker, payload, at, out)

    # -- retransmissions -------------------------------------------------------------------------------------

    def lookup(self, out_seq16: int) -> tuple[int, int] | None:
        """(layer, input extended seq) behind an output sequence number the subscriber NACKed; None if that
        number was never assigned (or is older than the segments remembered)."""
        seg = self._open
        if seg is None:
            return None
        newest = seg.seq.newest_out
        if newest is None:
            return None
        back = (newest - out_seq16) & SEQ_MASK
        if back >= SEQ_HALF:
            return None
        ext_out = newest - back
        starts = [s.out_start for s in self._segments]
        i = bisect_right(starts, ext_out) - 1
        if i < 0:
            return None
        found = self._segments[i]
        ext_in = found.seq.reverse(ext_out & SEQ_MASK)
        if ext_in is None or ext_in < found.first_in or ext_in > found.last_in:
            return None
        return found.layer, ext_in

    def superseded(self, layer: int) -> bool:
        """Whether a NACKed packet of ``layer`` (``lookup``) is not worth resending: a switch down has made it
        useless. While holding, the current layer's frames stop anyway (its link collapsed: the retransmissions
        would only delay the lower layer's key frame); after a switch down, the classroom decodes from the new
        layer's key frame on, so a packet of a larger layer than the one forwarded now is never shown."""
        seg = self._open
        if seg is None:
            return False
        return self.holding or layer > seg.layer

    def resend(self, layer: int, ext_seq: int, ts: int, payload: bytes) -> tuple[int, bytes] | None:
        """(output timestamp, rewritten payload) for a retransmission of a packet ``lookup`` named."""
        seg = self._segment_for(layer, ext_seq)
        if seg is None:
            return None
        if self.vp8:
            remapped = self.rewriter.remap(payload, seg)
            if remapped is None:
                return None
            payload = remapped
        return (ts + seg.ts_offset) & TS_MASK, payload

    def stats(self) -> dict:
        return {"current": self.current, "target": self.target, "waiting": self.waiting,
                "switches": self.switches, "cut_frames": self.cut_frames, "forwarded": self.forwarded}


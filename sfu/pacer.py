"""A classroom's output pacer (issue 15, item 2): its video leaves at a bounded rate, so that a keyframe or a
layer switch's burst does not overflow a small school-router queue, and its audio is never queued behind video
or probe padding.

One `Pacer` per classroom transport. Its budget grows at `rate_bps` (the subscriber sets PACING_FACTOR x the
send-side estimate) and holds at most `BURST_S` of it, like libwebrtc's pacer, which sends every 5 ms what a 5 ms
budget allows:

- **audio** (`send_audio`) goes out at once, and spends budget (the video then yields);
- **video** and retransmissions (`send_video`) go out at once while nothing is queued and budget is left, else
  they wait in a FIFO drained every `TICK_S` (a timer armed only while something waits). The queue is bounded to
  `QUEUE_MAX_S` of the pacing rate (at least QUEUE_MIN_BYTES): beyond it the *oldest* video is dropped (the
  classroom NACKs or asks for a keyframe; a queue that only grows would delay everything behind it);
- **probe padding** (sfu/adapt/probe.py) is sent on the same ticks, only when no video waits.

Video reaches the pacer unprotected; a packet that waited gets a new transport-wide number as it leaves (the
old one is forgotten, `TransportSeq.forget`), so the numbers go out in the order they are sent (audio does not
wait: a video packet numbered before it but sent after would be reported lost by the receiver before it
arrives) and the send-side estimate sees the link's delay, not the pacer's. Pure but for the timer: the clock and the
scheduler are passed in (the unit tests drive `tick` by hand).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from sfu.adapt.probe import Prober
from sfu.rtp.twcc import WIRE_OVERHEAD, TransportSeq

__all__ = ["BURST_S", "PACE_BELOW_TOP", "PACING_FACTOR", "PACING_OVER_SENT", "QUEUE_MAX_S", "QUEUE_MIN_BYTES", "TICK_S", "Pacer"]

TICK_S = 0.005
PACING_FACTOR = 2.0  # the pacing rate, times the estimate (libwebrtc: 2.5; GoogCC's own ramp-up needs headroom)
# ...and never below this multiple of what the classroom's streams send on average: the SFU cannot make the
# teacher's encoder slower at once (a layer switch waits for a keyframe), so the pacer spreads bursts but must not
# hold back the average: a pacer slower than the stream only grows its queue, drops, and drags the estimate down
PACING_OVER_SENT = 1.5
BURST_S = 0.010  # the budget holds at most this long of the pacing rate (unused budget is not saved up)
# the queue holds this long of the pacing rate, and at least QUEUE_MIN_BYTES (a 720p keyframe is 50-100 kB: a
# queue that dropped parts of it would only bring the next keyframe request)
QUEUE_MAX_S = 1.0
QUEUE_MIN_BYTES = 120_000
UDP_IP_OVERHEAD = 28
# where a packet's transport-wide number sits (sfu/rtp/header.py TWCC_HEADER: the fixed header, the extension
# block's head, the element's id byte)
TWCC_SEQ_AT = 17
_TWCC_SEQ = struct.Struct("!H")
# pacing applies while the classroom's estimate is below this multiple of the top layer's rate (above it the
# link has room for any burst the lesson makes, and the per-packet cost is saved; docs/benchmarks.md)
PACE_BELOW_TOP = 2.0


class Pacer:
    """One classroom's pacer. `active` False: every packet goes straight out (a fast link)."""

    __slots__ = ("rate_bps", "estimate_bps", "media_bps", "active", "prober", "pad", "queued_bytes", "dropped", "queued", "max_queued_bytes",
                 "_clock", "_schedule", "_twcc", "_budget", "_refilled_at", "_queue", "_timer")

    def __init__(self, clock: Callable[[], float], schedule: Callable[[float, Callable[[], None]], Any] | None = None,
                 twcc: TransportSeq | None = None, rate_bps: float = 1_000_000, prober: Prober | None = None) -> None:
        self.rate_bps = float(rate_bps)
        # the classroom's send-side estimate (the subscriber sets it with the rate): retransmissions' budget
        self.estimate_bps: float | None = None
        self.media_bps = 0.0  # what the classroom's streams send now (retransmissions get what is left)
        self.active = True
        self.prober = prober
        # sends `n` bytes of probe padding now (the subscriber's video consumer); returns the bytes on the wire
        self.pad: Callable[[int], int] | None = None
        self.queued_bytes = 0
        self.max_queued_bytes = 0
        self.queued = 0  # packets that waited
        self.dropped = 0  # video dropped from a full queue
        self._clock = clock
        self._schedule = schedule
        self._twcc = twcc
        self._budget = 0.0
        self._refilled_at = clock()
        # (send, protect, the packet unprotected, its transport-wide number or -1)
        self._queue: deque[tuple[Callable[[bytes], Any], Callable[[bytes], bytes], bytes, int]] = deque()
        self._timer: Any = None

    # -- the budget ----------------------------------------------------------------------------------------

    def _refill(self, now: float) -> float:
        rate = self.rate_bps / 8
        budget = min(self._budget + (now - self._refilled_at) * rate, BURST_S * rate)
        self._refilled_at = now
        self._budget = budget
        return budget

    def set_rate(self, rate_bps: float) -> None:
        self.rate_bps = max(8_000.0, float(rate_bps))

    # -- sending -------------------------------------------------------------------------------------------

    def send_audio(self, send: Callable[[bytes], Any], datagram: bytes) -> None:
        """Audio: at once, always; it spends budget, so the video behind it waits instead."""
        send(datagram)
        size = len(datagram) + UDP_IP_OVERHEAD
        if self.active:
            self._budget -= size
        prober = self.prober
        if prober is not None and prober.state == "probing":
            prober.on_sent(size, self._clock())

    def send_video(self, send: Callable[[bytes], Any], protect: Callable[[bytes], bytes], packet: bytes) -> None:
        """Video or a retransmission (an RTP packet not yet protected): protected and sent at once while nothing
        waits and budget is left, else queued as it is."""
        if not self.active:
            send(protect(packet))
            return
        now = self._clock()
        size = len(packet) + WIRE_OVERHEAD
        if not self._queue and self._refill(now) > 0:
            send(protect(packet))
            self._budget -= size
            prober = self.prober
            if prober is not None and prober.state == "probing":
                prober.on_sent(size, now)
            return
        twcc = self._twcc
        # (the packet's own number, read from it: not assumed to be the last one taken)
        self._queue.append((send, protect, packet, _TWCC_SEQ.unpack_from(packet, TWCC_SEQ_AT)[0]
                            if twcc is not None and len(packet) >= TWCC_SEQ_AT + 2 else -1))
        self.queued += 1
        self.queued_bytes += size
        limit = max(QUEUE_MIN_BYTES, QUEUE_MAX_S * self.rate_bps / 8)
        while self.queued_bytes > limit and len(self._queue) > 1:
            _, _, old, old_seq = self._queue.popleft()
            self.queued_bytes -= len(old) + WIRE_OVERHEAD
            self.dropped += 1
            if old_seq >= 0 and twcc is not None:
                twcc.forget(old_seq)
        self.max_queued_bytes = max(self.max_queued_bytes, self.queued_bytes)
        self._arm()

    def _arm(self) -> None:
        if self._timer is None and self._schedule is not None:
            self._timer = self._schedule(TICK_S, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.tick()
        if self._queue or (self.prober is not None and self.prober.state == "probing"):
            self._arm()

    def start_probe(self, target_bps: float) -> None:
        """Begin a probe at `target_bps` (the prober's); padding goes out on the ticks."""
        if self.prober is None:
            self.prober = Prober()
        self.prober.start(target_bps, self._clock())
        self._arm()

    def tick(self) -> None:
        """Send what the budget allows of the queue, then probe padding (only when no video waits)."""
        now = self._clock()
        budget = self._refill(now) if self.active else float("inf")
        queue, twcc, prober = self._queue, self._twcc, self.prober
        probing = prober is not None and prober.state == "probing"
        while queue and budget > 0:
            send, protect, packet, seq = queue.popleft()
            size = len(packet) + WIRE_OVERHEAD
            self.queued_bytes -= size
            if seq >= 0 and twcc is not None:
                # numbered again as it leaves: the audio sent meanwhile took later numbers, and a receiver reports
                # a number that arrives after later ones as lost before it comes (the old number counts nothing)
                twcc.forget(seq)
                packet = bytearray(packet)
                _TWCC_SEQ.pack_into(packet, TWCC_SEQ_AT, twcc.take(len(packet)))
            send(protect(bytes(packet)))
            budget -= size
            if probing:
                prober.on_sent(size, now)  # type: ignore[union-attr]
        if probing and not queue and self.pad is not None:
            due = prober.padding_due(now)  # type: ignore[union-attr]
            if self.active:
                due = min(due, max(0, int(budget)))
            if due > 0:
                sent = self.pad(due)
                budget -= sent
                prober.on_sent(sent, now)  # type: ignore[union-attr]
        self._budget = budget if self.active else 0.0

    def close(self) -> None:
        if self._timer is not None:
            cancel = getattr(self._timer, "cancel", None)
            if cancel is not None:
                cancel()
            self._timer = None
        self._queue.clear()
        self.queued_bytes = 0

    def stats(self) -> dict:
        return {"active": self.active, "rate_bps": int(self.rate_bps), "queued_bytes": self.queued_bytes,
                "max_queued_bytes": self.max_queued_bytes, "queued": self.queued, "dropped": self.dropped,
                **({"probe": self.prober.stats()} if self.prober is not None else {})}

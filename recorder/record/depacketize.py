"""Turn one producer's RTP packets back into codec frames, in order, without decoding them.

A TrackDepacketizer rides the producer like a classroom's Consumer does (a Sink of sfu/sink.py: the producer
calls `forward` for every new packet, including late retransmissions the teacher sent after the server's NACK),
restores sequence order with a short hold, and emits whole frames: a VP8 frame is the payloads of one
timestamp with their payload descriptors removed, ending at the marker bit; an Opus packet is one frame. A hole
that is not filled within HOLD_S is a loss beyond repair: video then waits for the next keyframe (and asks for one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sfu.producer import Producer
from sfu.rtp.packet import Packet
from sfu.rtp.seqmap import TsUnwrapper
from sfu.rtp.vp8 import vp8_descriptor_len, vp8_is_keyframe_start

log = logging.getLogger("ketang.recorder")

# how long a hole in the sequence may wait for the teacher's retransmission before it counts as lost
HOLD_S = 0.4
# a backlog this long behind a hole is not waited for either (bounded memory on a stalled stream)
HOLD_MAX_PACKETS = 600


@dataclass
class Frame:
    ts: int  # RTP timestamp, unwrapped (extended) so it only grows
    data: bytes
    keyframe: bool


class TrackDepacketizer:
    """Reorders one producer's packets and emits complete frames through `on_frame`."""

    def __init__(self, producer: Producer, on_frame: Callable[[Frame], None],
                 clock: Callable[[], float] | None = None) -> None:
        self.producer = producer
        self.kind = producer.kind
        self.on_frame = on_frame
        self.closed = False
        self.frames = 0
        self.lost_packets = 0
        self.keyframe_requests = 0
        self._clock = clock or producer.clock.monotonic
        self._next: int | None = None  # next extended sequence number expected
        self._held: dict[int, Packet | None] = {}  # out-of-order packets (None: padding skipped upstream)
        self._hole_since: float | None = None
        self._need_keyframe = self.kind == "video"
        self._frame_ts: int | None = None
        self._parts: list[bytes] = []
        self._frame_key = False
        self._ts = TsUnwrapper()
        if self._need_keyframe:
            self._ask_keyframe()
        producer.attach(self)

    # -- the Consumer-shaped interface the producer calls --------------------------------------------------

    def forward(self, packet: Packet, ast: bytes) -> None:
        self._arrive(packet.ext_seq, packet)

    def skip(self, ext_seq: int) -> None:
        self._arrive(ext_seq, None)

    def on_error(self) -> None:
        log.exception("recording a %s track failed", self.kind)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.producer.detach(self)

    # -- ordering ------------------------------------------------------------------------------------------

    def _arrive(self, ext_seq: int, packet: Packet | None) -> None:
        if self._next is None:
            # video starts at a keyframe's first packet (whatever came before it could not be decoded anyway)
            if packet is None or (self.kind == "video" and not packet.keyframe):
                return
            self._next = ext_seq
            # packets after it that arrived earlier (reordered) are already in the producer's cache
            for cached in self.producer.cache.since(ext_seq):
                self._held[cached.ext_seq] = cached  # type: ignore[attr-defined]
        if ext_seq < self._next:
            return  # too late: already given up on
        self._held[ext_seq] = packet
        self._drain()
        if self._held:
            now = self._clock()
            if self._hole_since is None:
                self._hole_since = now
            elif now - self._hole_since > HOLD_S or len(self._held) > HOLD_MAX_PACKETS:
                self._give_up_hole()

    def _drain(self) -> None:
        assert self._next is not None
        while self._next in self._held:
            packet = self._held.pop(self._next)
            self._next += 1
            if packet is not None:
                self._take(packet)
        if not self._held:
            self._hole_since = None

    def _give_up_hole(self) -> None:
        """The missing packets are not coming: skip them; the frame in progress is broken."""
        first = min(self._held)
        assert self._next is not None
        self.lost_packets += first - self._next
        self._next = first
        self._parts, self._frame_ts = [], None
        if self.kind == "video":
            self._need_keyframe = True
            self._ask_keyframe()
        self._hole_since = None
        self._drain()

    def _ask_keyframe(self) -> None:
        if self.producer.request_keyframe():
            self.keyframe_requests += 1

    # -- frames --------------------------------------------------------------------------------------------

    def _take(self, packet: Packet) -> None:
        ts = self._ts.unwrap(packet.ts)
        if self.kind == "audio":
            self._emit(Frame(ts, packet.payload, True))
            return
        payload = packet.payload
        try:
            start = vp8_descriptor_len(payload)
        except ValueError:
            self._broken()
            return
        if self._frame_ts != ts:
            # a new frame must begin with the first partition's first packet (S=1, PID=0)
            if self._parts:
                self._broken()
            if not (payload[0] & 0x10 and payload[0] & 0x07 == 0):
                self._broken()
                return
            self._frame_ts, self._parts = ts, []
            self._frame_key = vp8_is_keyframe_start(payload)
        self._parts.append(payload[start:])
        if packet.marker:
            data = b"".join(self._parts)
            keyframe = self._frame_key
            self._parts, self._frame_ts = [], None
            if self._need_keyframe and not keyframe:
                return
            self._need_keyframe = False
            self._emit(Frame(ts, data, keyframe))

    def _broken(self) -> None:
        self._parts, self._frame_ts = [], None
        if not self._need_keyframe:
            self._need_keyframe = True
            self._ask_keyframe()

    def _emit(self, frame: Frame) -> None:
        self.frames += 1
        self.on_frame(frame)


def vp8_dimensions(keyframe: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (RFC 6386 9.1), or None."""
    if len(keyframe) < 10 or keyframe[0] & 0x01 or keyframe[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(keyframe[6:8], "little") & 0x3FFF
    height = int.from_bytes(keyframe[8:10], "little") & 0x3FFF
    return width, height

"""A Producer is one track the teacher publishes: it caches its packets and fans them out to its Sinks
(classrooms' Consumers, the recorder's taps: sfu/sink.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sfu.rtp.clock import Clock, as_clock
from sfu.rtp.feedback import LayerFeedback
from sfu.rtp.header import abs_send_time_bytes
from sfu.rtp.keyframe import KeyframeThrottle
from sfu.rtp.packet import Packet
from sfu.rtp.packetcache import PacketCache
from sfu.rtp.receive_log import NEW, ReceiveLog
from sfu.rtp.seqmap import SeqUnwrapper
from sfu.rtp.vp8 import vp8_is_keyframe_start
from sfu.sink import Sink

__all__ = ["CONSUMER_MAX_ERRORS", "KEYFRAME_REPLAY_MAX_PACKETS", "LAYER_STOPPED_S", "Packet", "Producer"]

log = logging.getLogger("ketang.sfu.rtp")

# a late joiner is started from the cached keyframe when it is at most this many packets back (Galène uses
# 40 packets at lower resolutions; a 720p VP8 keyframe is 30-90 packets); otherwise a fresh keyframe is asked for
KEYFRAME_REPLAY_MAX_PACKETS = 120
# a stream with no packet for this long is not arriving (its measured rate is 0: not a layer to choose)
LAYER_STOPPED_S = 1.0
# failures in a row after which a consumer's sends are considered broken and it is detached
CONSUMER_MAX_ERRORS = 50


class Producer:
    """One published track (audio or video): the teacher's, or a classroom's small camera and microphone."""

    def __init__(self, track_id: str, kind: str, codec_name: str, clock_rate: int,
                 send_pli: Callable[[int], None], source: str = "camera", owner: str = "",
                 clock: Clock | Callable[[], float] | None = None) -> None:
        self.id = track_id
        self.owner = owner  # participant id of whoever publishes it (the teacher, or a classroom)
        self.owner_role = "teacher"  # "classroom": forwarded only to the teacher and observers, or on stage
        # hard mute (the teacher's, enforced here): packets still arrive and are counted, nobody receives them
        self.muted = False
        # simulcast: the track's layers, smallest first (this producer is layer 0 and the one the router, the
        # hub and the classrooms know by id; the others are fed by the ingress and read by SimulcastConsumers)
        self.layers: list[Producer] | None = None
        self.rate_bps = 0.0  # measured by the router's tick (smoothed): what this stream needs
        # our own receiver reports and NACKs to the teacher for this stream (simulcast layers that aiortc's
        # stock receiver does not see); None: the stock receiver does it
        self.feedback: LayerFeedback | None = None
        self.last_sr: tuple[int, float] | None = None  # (NTP of the teacher's latest SR, when it came)
        self._rate_mark: tuple[int, float] | None = None
        # packets a second (smoothed like rate_bps): with a per-packet overhead, what the stream takes on the wire
        self.packet_rate = 0.0
        self._packets_mark = 0
        self.kind = kind
        self.codec_name = codec_name.lower()
        self.clock_rate = clock_rate
        self.source = source
        self.ssrc: int | None = None
        self.cache = PacketCache()
        self.consumers: tuple[Sink, ...] = ()  # snapshot iterated by the hot loop, rebuilt on attach/detach
        self.keyframes = KeyframeThrottle()
        self.last_keyframe_seq: int | None = None
        self.closed = False
        self._send_pli = send_pli
        self.clock = as_clock(clock)  # the system's by default; a bare callable is its monotonic time
        self._clock = self.clock.monotonic
        self._wall = self.clock.wall
        self._unwrap = SeqUnwrapper()
        self._is_vp8 = self.codec_name == "vp8"
        # timing reference for sender reports: (unix seconds, rtp timestamp) from the teacher's SR, else a packet
        self._ref_unix: float | None = None
        self._ref_ts = 0
        self._ref_from_sr = False
        self._on_close: list[Callable[[Producer], None]] = []
        self.packets_in = 0
        self.bytes_in = 0
        self.duplicates = 0
        # the teacher's uplink, for its REMB: holes in the sequence as they appear (a retransmission repairs the
        # picture, but the loss still says the link is congested); counts only, no holes kept
        self.log = ReceiveLog(window=0)
        self._uplink_mark = (0, 0)  # (sequence advance, holes) at the last take_uplink_loss

    # -- ingress -------------------------------------------------------------------------------------------

    def on_packet(self, seq16: int, ts: int, marker: int, payload: bytes, audio_level: int) -> None:
        """A media packet (or an unwrapped retransmission) from the teacher: cache it and forward it."""
        packet = self.receive(seq16, ts, marker, payload, audio_level)
        if packet is not None:
            self.fan_out(packet, self.consumers)

    def receive(self, seq16: int, ts: int, marker: int, payload: bytes, audio_level: int) -> Packet | None:
        """Cache a new media packet; None when there is nothing to forward (a duplicate, padding)."""
        now = self._clock()
        ext_seq = self._unwrap.unwrap(seq16)
        if self.cache.get(ext_seq) is not None:
            # a retransmission we already have, or a probe of old packets: nothing new for subscribers
            self.duplicates += 1
            return None
        self.packets_in += 1
        self.bytes_in += len(payload)
        log = self.log
        started, next_seq = log.base is not None, log.highest + 1
        arrived = log.add(ext_seq)
        feedback = self.feedback
        if feedback is not None:
            if arrived == NEW:
                if started and ext_seq > next_seq:
                    feedback.missing(next_seq, ext_seq, now)
                feedback.received_new(ext_seq)
            else:
                feedback.repaired(ext_seq)
        if not payload:
            # padding-only packets are bandwidth probes between teacher and server, not media
            for consumer in self.consumers:
                consumer.skip(ext_seq)
            return None
        keyframe = self._is_vp8 and vp8_is_keyframe_start(payload)
        packet = Packet(ext_seq, ts, marker, payload, now, keyframe, audio_level)
        self.cache.add(ext_seq, packet, now)
        if keyframe:
            self.last_keyframe_seq = ext_seq
            self.keyframes.keyframe_seen(now)
        if not self._ref_from_sr:
            self._ref_unix, self._ref_ts = self._wall(), ts
        return packet

    def fan_out(self, packet: Packet, consumers: tuple[Sink, ...]) -> None:
        """Hot loop: hand the packet to each consumer, every one isolated from the others."""
        ast = abs_send_time_bytes(self._wall())
        for consumer in consumers:
            # one subscriber's failure must never reach the teacher's DTLS loop or the other subscribers
            try:
                consumer.forward(packet, ast)
            except Exception:  # noqa: BLE001 - isolation boundary
                consumer.on_error()

    def measure_rate(self, now: float) -> float:
        """Update and return the smoothed bit rate (called a few times a second; a keyframe is a burst)."""
        mark = self._rate_mark
        self._rate_mark = (self.bytes_in, now)
        packets, self._packets_mark = self._packets_mark, self.packets_in
        if mark is not None and now > mark[1]:
            rate = max(0, self.bytes_in - mark[0]) * 8 / (now - mark[1])
            self.rate_bps = rate if self.rate_bps == 0 else 0.8 * self.rate_bps + 0.2 * rate
            pps = max(0, self.packets_in - packets) / (now - mark[1])
            self.packet_rate = pps if self.packet_rate == 0 else 0.8 * self.packet_rate + 0.2 * pps
        if mark is not None and self.packets_in and now - self.arrived_at > LAYER_STOPPED_S:
            self.rate_bps = 0.0  # not arriving (a layer the teacher's browser paused)
        return self.rate_bps

    @property
    def arrived_at(self) -> float:
        newest = self.cache.newest_seq
        packet = self.cache.get(newest) if newest is not None else None
        return packet.arrival if packet is not None else 0.0

    def take_uplink_loss(self) -> tuple[int, int]:
        """(packets expected, lost on first transmission) since the last call: what the teacher's uplink loses."""
        log = self.log
        advance, holes = (log.highest - log.base if log.base is not None else 0), log.skipped
        counts = (advance - self._uplink_mark[0], holes - self._uplink_mark[1])
        self._uplink_mark = (advance, holes)
        return counts

    def on_sender_report(self, ntp: int, rtp_ts: int) -> None:
        """The teacher's RTCP SR maps its RTP clock to wall-clock time; consumers' SRs derive from it."""
        self.last_sr = (ntp, self._clock())
        self._ref_unix = (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32 - 2208988800
        self._ref_ts = rtp_ts
        self._ref_from_sr = True

    def rtp_time_at(self, unix_s: float) -> int | None:
        """The teacher's RTP timestamp for a wall-clock time (extrapolated from the latest reference)."""
        if self._ref_unix is None:
            return None
        return (self._ref_ts + round((unix_s - self._ref_unix) * self.clock_rate)) & 0xFFFFFFFF

    # -- keyframes -----------------------------------------------------------------------------------------

    def request_keyframe(self) -> bool:
        """Ask the teacher for a keyframe, at most once per KEYFRAME_REQUEST_INTERVAL_S whoever asks."""
        if self.kind != "video" or self.ssrc is None or self.closed:
            return False
        if not self.keyframes.should_request(self._clock()):
            return False
        self._send_pli(self.ssrc)
        return True

    def replayable_keyframe(self) -> list[Packet] | None:
        """Cached packets from the latest keyframe on, when close enough to replay to a late joiner."""
        kf = self.last_keyframe_seq
        newest = self.cache.newest_seq
        if kf is None or newest is None or newest - kf > KEYFRAME_REPLAY_MAX_PACKETS:
            return None
        if self.cache.get(kf) is None:
            return None
        return self.cache.since(kf)  # type: ignore[return-value]

    # -- consumers -----------------------------------------------------------------------------------------

    def attach(self, consumer: Sink) -> None:
        if consumer not in self.consumers:
            self.consumers = self.consumers + (consumer,)

    def detach(self, consumer: Sink) -> None:
        self.consumers = tuple(c for c in self.consumers if c is not consumer)

    def on_close(self, callback: Callable[[Producer], None]) -> None:
        self._on_close.append(callback)

    def close(self) -> None:
        """Idempotent; closes the consumers fed by this producer (and its other layers), then tells listeners."""
        if self.closed:
            return
        self.closed = True
        for layer in self.layers or ():
            if layer is not self:
                layer.close()
        for consumer in self.consumers:
            consumer.close()
        self.consumers = ()
        for callback in self._on_close:
            try:
                callback(self)
            except Exception:  # noqa: BLE001
                log.exception("producer close listener failed")

    def stats(self) -> dict:
        return {"id": self.id, "kind": self.kind, "codec": self.codec_name, "ssrc": self.ssrc,
                "participant": self.owner, "source": self.source, "muted": self.muted,
                "packets_in": self.packets_in, "bytes_in": self.bytes_in, "duplicates": self.duplicates,
                "consumers": len(self.consumers), "cached": len(self.cache),
                "keyframe_requests": self.keyframes.requested, "keyframe_requests_suppressed":
                self.keyframes.suppressed}

"""The plain Consumer: one Producer's packets to one subscriber, rewritten into the subscriber's stream.

Per packet it maps the sequence number (SeqMap: padding skipped without a hole) and the timestamp (TsMap, rebased
when another producer takes over the subscriber's slot) and writes the header and the shared extension block and
payload (built once per layout per fan-out). What it shares with the simulcast consumer is in base.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from aiortc.rtcrtpsender import RTCRtpSender

from sfu.consumer.base import (
    OUTPUT_SEQ_START_MAX,
    RESUME_SEQ_JUMP,
    BaseConsumer,
    ResumePoint,
)
from sfu.producer import Packet, Producer
from sfu.rtp.clock import Clock
from sfu.rtp.header import (
    RTP_HEADER,
    ExtensionLayout,
    abs_send_time_bytes,
    ntp_from_unix,
)
from sfu.rtp.red import RedEncoder
from sfu.rtp.seqmap import SeqMap, TsMap
from sfu.rtp.twcc import TransportSeq
from sfu.seams import sender_set_report_counters


class Consumer(BaseConsumer):
    """One subscriber's copy of one producer's stream (a Sink of that producer: sfu/sink.py)."""

    def __init__(self, producer: Producer, sender: RTCRtpSender, payload_type: int, rtx_payload_type: int | None,
                 extensions: ExtensionLayout, resume: ResumePoint | None = None,
                 clock: Clock | Callable[[], float] | None = None, twcc: TransportSeq | None = None) -> None:
        if resume is None:
            self._seq = SeqMap(random.randrange(1, OUTPUT_SEQ_START_MAX))
            self._ts = TsMap(random.getrandbits(32))
        else:
            self._seq = SeqMap(resume.next_seq)
            self._ts = TsMap(0)
        super().__init__(producer, sender, payload_type, rtx_payload_type, extensions, resume, clock, twcc)
        # RED (audio, when the classroom's answer kept it: the subscriber sets `red` and `red_pt`); `red_on` while
        # its link loses packets
        self.red: RedEncoder | None = None
        self.red_pt = 0
        self.red_on = False
        self.red_packets = 0
        self._last_ts = 0  # input timestamp of the newest packet sent (retransmissions never move it)
        self._last_seq = -1  # its extended input sequence number
        producer.attach(self)

    # -- media ---------------------------------------------------------------------------------------------

    def forward(self, packet: Packet, ast: bytes) -> None:
        """Hot path: called by the producer for every new packet (`ast`: this instant's abs-send-time)."""
        if self.paused:
            return
        if self._send is None and not self._start(packet):
            return
        if self._waiting_keyframe:
            if not packet.keyframe:
                self.producer.request_keyframe()
                return
            self._waiting_keyframe = False
        if self._resume is not None:
            self._continue_from(self._resume, packet)
        out = self._seq.forward(packet.ext_seq)
        if out is not None:
            self._write(packet, out, ast)
            if packet.ext_seq > self._last_seq:
                self._last_seq, self._last_ts = packet.ext_seq, packet.ts

    def _continue_from(self, resume: ResumePoint, packet: Packet) -> None:
        """First packet after a producer change: its timestamp follows the last one sent by the wall clock."""
        elapsed = max(1, round((self._clock() - resume.at) * self.producer.clock_rate))
        self._ts.rebase(packet.ts, (resume.last_ts + elapsed) & 0xFFFFFFFF)
        self._resume = None

    def resume_point(self) -> ResumePoint | None:
        newest = self._seq.newest_out
        if newest is None:
            return self._resume
        return ResumePoint(newest + 1, self._ts.map(self._last_ts), self._clock(), self._rtx_seq,
                           self.packets_out, self.octets_out)

    def skip(self, ext_seq: int) -> None:
        """The producer got a packet that is not forwarded (padding): keep this subscriber's sequence gapless."""
        if self._started:
            self._seq.drop(ext_seq)

    def _write(self, packet: Packet, out_seq: int, ast: bytes) -> None:
        layout = self._ext
        red = self.red
        if red is not None and self.red_on:
            self._write_red(red, packet, out_seq, ast)
            return
        if packet.tail_layout is layout and packet.tail_ast is ast:
            tail = packet.tail  # built by an earlier subscriber in this fan-out
        else:
            tail = packet.tail = layout.tail(ast, packet.audio_level, packet.payload)
            packet.tail_layout, packet.tail_ast = layout, ast
        if self._twcc is None:
            header = RTP_HEADER.pack(self._first_byte, (packet.marker << 7) | self.payload_type, out_seq & 0xFFFF,
                                     (packet.ts + self._ts.offset) & 0xFFFFFFFF, self.ssrc)
        else:
            header = self._twcc_header((packet.marker << 7) | self.payload_type, out_seq & 0xFFFF,
                                       (packet.ts + self._ts.offset) & 0xFFFFFFFF, self.ssrc, len(tail))
        self._send(self._protect(header + tail))
        self.packets_out += 1
        self.octets_out += len(packet.payload)
        self.errors = 0

    def _write_red(self, red: RedEncoder, packet: Packet, out_seq: int, ast: bytes) -> None:
        """Audio as RED (RFC 2198): this packet's payload with the previous one's (sfu/rtp/red.py)."""
        out_ts = (packet.ts + self._ts.offset) & 0xFFFFFFFF
        tail = self._ext.tail(ast, packet.audio_level, red.encode(out_ts, packet.payload))
        b1 = (packet.marker << 7) | self.red_pt
        if self._twcc is None:
            header = RTP_HEADER.pack(self._first_byte, b1, out_seq & 0xFFFF, out_ts, self.ssrc)
        else:
            header = self._twcc_header(b1, out_seq & 0xFFFF, out_ts, self.ssrc, len(tail))
        self._send(self._protect(header + tail))
        self.packets_out += 1
        self.octets_out += len(packet.payload)
        self.red_packets += 1
        self.errors = 0

    def set_red(self, on: bool) -> None:
        """Send RED (when the classroom accepted it) or plain Opus from the next packet on."""
        on = on and self.red is not None
        if on and not self.red_on and self.red is not None:
            self.red.reset()
        self.red_on = on

    def _begin_at_keyframe(self, current: Packet | None) -> None:
        """Video starts at a keyframe: the cached one when it is recent (replayed now), else a requested one."""
        replay = self.producer.replayable_keyframe()
        if not replay:
            self._waiting_keyframe = True
            self.producer.request_keyframe()
            return
        self._waiting_keyframe = False
        ast = abs_send_time_bytes(self.clock.wall())
        if self._resume is not None:
            self._continue_from(self._resume, replay[0])
        for packet in replay:
            if packet is current:
                continue  # forward() sends it, in its place, right after
            out = self._seq.forward(packet.ext_seq)
            if out is not None:
                self._write(packet, out, ast)
                if packet.ext_seq > self._last_seq:
                    self._last_seq, self._last_ts = packet.ext_seq, packet.ts

    def close_gap(self) -> None:
        """Packets were held back on purpose (paused, hard-muted): audio goes on right after the last packet
        sent, so the receiver counts no loss; video jumps RESUME_SEQ_JUMP (it restarts at a keyframe)."""
        newest = self._seq.newest_out
        if newest is not None:
            self._seq = SeqMap(newest + 1 + (RESUME_SEQ_JUMP if self.kind == "video" else 0))

    def _resend_of(self, seq16: int) -> tuple[int, int, bytes, int] | None:
        """(output timestamp, marker, payload, audio level) of the packet sent as `seq16`, from the cache."""
        ext_in = self._seq.reverse(seq16)
        packet: Packet | None = (self.producer.cache.get(ext_in)  # type: ignore[assignment]
                                 if ext_in is not None else None)
        if packet is None:
            return None
        return (packet.ts + self._ts.offset) & 0xFFFFFFFF, packet.marker, packet.payload, packet.audio_level

    def ask_keyframe(self) -> None:
        """The subscriber asked for a keyframe (PLI/FIR): ask the teacher, throttled per stream."""
        self.producer.request_keyframe()

    def update_report(self, now_unix: float) -> None:
        """Give the stock sender an NTP/RTP pair in this subscriber's timestamp space (keeps lip-sync)."""
        in_ts = self.producer.rtp_time_at(now_unix)
        if in_ts is None or not self._started or self._resume is not None:
            return  # after a producer change, keep the old figures until the new offset is known
        sender_set_report_counters(self.sender, ntp_from_unix(now_unix), self._ts.map(in_ts),
                                   self.packets_out & 0xFFFFFFFF, self.octets_out & 0xFFFFFFFF)

    def _detach(self) -> None:
        self.producer.detach(self)

"""A Consumer sends one Producer's packets to one subscriber, rewritten into the subscriber's stream.

Per packet it rewrites SSRC, sequence number, timestamp, payload type and the header-extension block, then
SRTP-protects and sends on the subscriber's ICE socket. It answers the subscriber's NACKs from the
producer's cache (as RTX when negotiated), turns its PLI/FIR into throttled keyframe requests to the teacher,
records its REMB, and keeps the figures the stock sender puts in its sender reports.
"""

from __future__ import annotations

import logging
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)

from sfu import seams
from sfu.producer import CONSUMER_MAX_ERRORS, Packet, Producer
from sfu.rtp.header import (
    RTP_HEADER,
    ExtensionLayout,
    abs_send_time_bytes,
    ntp_from_unix,
)
from sfu.rtp.seqmap import SeqMap, TsMap
from sfu.seams import datagram_sender, sender_set_report_counters

log = logging.getLogger("ketang.sfu.rtp")

FIRST_BYTE_WITH_EXT = 0x90  # V=2, no padding, extension present, no CSRC
FIRST_BYTE_NO_EXT = 0x80
OUTPUT_SEQ_START_MAX = 32768  # start low so the 16-bit counter cannot roll over early (SRTP index safety)
# a subscriber may ask for at most this many retransmissions a second: a broken or hostile client asking
# for everything again and again must not turn the server into an amplifier at the others' expense
NACK_RETRANSMIT_PER_S = 400
# retransmissions in a second add at most this share of the classroom's own estimate (REMB) to its link, and
# never less than the floor (a keyframe's worth of repairs); without a recent REMB only the count applies
RETRANSMIT_REMB_SHARE = 0.25
RETRANSMIT_MIN_BYTES_PER_S = 6000
RETRANSMIT_REMB_STALE_S = 3.0
# a retransmission of the same packet is not repeated sooner than this (the first may still be in flight)
NACK_REPEAT_MIN_S = 0.03
# video resumed after a pause skips this many sequence numbers: packets lost just before the pause are gone from
# the cache by now, and a jump this wide tells receivers to drop their NACK lists and jitter buffers and start at
# the keyframe (libwebrtc clears its NACK list above 1000 missing packets; aiortc's video buffer holds 512)
RESUME_SEQ_JUMP = 1024
_U16 = struct.Struct("!H")


@dataclass(frozen=True)
class ResumePoint:
    """Where a subscriber's stream got to, so the next producer in the same slot continues it seamlessly
    (a sequence or timestamp jump makes receivers stall or discard)."""

    next_seq: int
    last_ts: int
    at: float
    rtx_seq: int
    packets: int = 0  # sender-report counters keep counting on the same SSRC
    octets: int = 0


class Consumer:
    """One subscriber's copy of one producer's stream."""

    def __init__(self, producer: Producer, sender: RTCRtpSender, payload_type: int, rtx_payload_type: int | None,
                 extensions: ExtensionLayout, resume: ResumePoint | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.producer = producer
        self.sender = sender
        self.kind = producer.kind
        self.ssrc, self.rtx_ssrc = seams.sender_ssrcs(sender)
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type
        self.closed = False
        self.paused = False
        self.remb_bps: int | None = None
        self.remb_at: float | None = None
        self.fraction_lost = 0
        self.report_at: float | None = None  # when the latest receiver report for this stream came
        self.packets_out = resume.packets if resume else 0
        self.octets_out = resume.octets if resume else 0
        self.retransmits = 0
        self.nack_unanswered = 0
        self.keyframe_requests = 0
        self.errors = 0
        self._clock = clock
        self._resume = resume
        if resume is None:
            self._seq = SeqMap(random.randrange(1, OUTPUT_SEQ_START_MAX))
            self._ts = TsMap(random.getrandbits(32))
            self._rtx_seq = random.randrange(1, OUTPUT_SEQ_START_MAX)
        else:
            self._seq = SeqMap(resume.next_seq)
            self._ts = TsMap(0)
            self._rtx_seq = resume.rtx_seq
        self._last_ts = 0  # input timestamp of the newest packet sent (retransmissions never move it)
        self._last_seq = -1  # its extended input sequence number
        self._ext = extensions
        self._first_byte = FIRST_BYTE_WITH_EXT if extensions.block else FIRST_BYTE_NO_EXT
        self._protect: Any = None
        self._send: Any = None
        self._waiting_keyframe = self.kind == "video"
        self._started = False
        self._nack_window_start = 0.0
        self._nack_budget = NACK_RETRANSMIT_PER_S
        self._nack_bytes = float("inf")
        self._last_retransmit: dict[int, float] = {}
        # feedback from the subscriber for this sender is routed here
        self._original_rtcp = seams.hook_sender_rtcp(sender, self.handle_rtcp)
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
        if packet.tail_layout is layout and packet.tail_ast is ast:
            tail = packet.tail  # built by an earlier subscriber in this fan-out
        else:
            tail = packet.tail = layout.tail(ast, packet.audio_level, packet.payload)
            packet.tail_layout, packet.tail_ast = layout, ast
        self._send(self._protect(RTP_HEADER.pack(self._first_byte, (packet.marker << 7) | self.payload_type,
                                                 out_seq & 0xFFFF, (packet.ts + self._ts.offset) & 0xFFFFFFFF,
                                                 self.ssrc) + tail))
        self.packets_out += 1
        self.octets_out += len(packet.payload)
        self.errors = 0

    def _start(self, current: Packet) -> bool:
        """Begin once ICE and DTLS are up: a late joiner gets the cached keyframe, or one is requested."""
        if self.closed:
            return False
        lean = datagram_sender(self.sender.transport)
        if lean is None:
            return False
        self._protect, self._send = lean
        self._started = True
        if self.kind == "video":
            self._begin_at_keyframe(current)
        return True

    def _begin_at_keyframe(self, current: Packet | None) -> None:
        """Video starts at a keyframe: the cached one when it is recent (replayed now), else a requested one."""
        replay = self.producer.replayable_keyframe()
        if not replay:
            self._waiting_keyframe = True
            self.producer.request_keyframe()
            return
        self._waiting_keyframe = False
        ast = abs_send_time_bytes()
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

    def pause(self) -> None:
        """Stop sending this track to the subscriber (it chose audio only, or its link cannot carry video)."""
        self.paused = True

    def unpause(self) -> None:
        """Send again: audio continues its sequence right after the last packet sent (a paused stretch is not a
        loss to NACK); video restarts at a keyframe after a jump of RESUME_SEQ_JUMP."""
        if not self.paused:
            return
        self.paused = False
        self.close_gap()
        if self.kind == "video" and self._started:
            self._begin_at_keyframe(None)

    def close_gap(self) -> None:
        """Packets were held back on purpose (paused, hard-muted): audio goes on right after the last packet
        sent, so the receiver counts no loss; video jumps RESUME_SEQ_JUMP (it restarts at a keyframe)."""
        newest = self._seq.newest_out
        if newest is not None:
            self._seq = SeqMap(newest + 1 + (RESUME_SEQ_JUMP if self.kind == "video" else 0))

    # -- feedback from the subscriber ----------------------------------------------------------------------

    async def handle_rtcp(self, packet: Any) -> None:
        try:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                self.on_nack(packet.lost)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.keyframe_requests += 1
                self.ask_keyframe()
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
                if self.ssrc in ssrcs:
                    self.remb_bps, self.remb_at = bitrate, self._clock()
            elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
                for report in packet.reports:
                    if report.ssrc == self.ssrc:
                        self.fraction_lost, self.report_at = report.fraction_lost, self._clock()
                await self._original_rtcp(packet)  # round-trip time and remote-inbound stats
        except Exception:  # noqa: BLE001 - a malformed report from one classroom must not escape into DTLS
            log.debug("bad RTCP from subscriber ignored", exc_info=True)

    def on_nack(self, lost: list[int]) -> int:
        """Retransmit what the subscriber lost from the producer's cache; returns how many were sent."""
        if self._send is None or self.paused:
            return 0  # paused video: its link was short of bandwidth; old video must not crowd out the audio
        now = self._clock()
        if now - self._nack_window_start >= 1.0:
            self._nack_window_start, self._nack_budget = now, NACK_RETRANSMIT_PER_S
            self._nack_bytes = self._retransmit_bytes_per_s(now)
            self._last_retransmit = {s: t for s, t in self._last_retransmit.items() if now - t < 1.0}
        sent = 0
        ast = abs_send_time_bytes()
        for seq16 in lost:
            again = self._resend_of(seq16)
            if again is None:
                # never forwarded to this subscriber, or too old: nothing honest to resend
                self.nack_unanswered += 1
                continue
            if self._nack_budget <= 0 or self._nack_bytes <= 0 \
                    or now - self._last_retransmit.get(seq16, -1.0) < NACK_REPEAT_MIN_S:
                continue
            self._nack_budget -= 1
            self._nack_bytes -= len(again[2])
            self._last_retransmit[seq16] = now
            self._send_again(seq16, *again, ast)
            sent += 1
        self.retransmits += sent
        return sent

    def _retransmit_bytes_per_s(self, now: float) -> float:
        """What retransmissions may add in the next second: a share of the classroom's own estimate when it
        sends one (repairs must not flood the congested link they repair), else no limit but the count."""
        if self.remb_bps is None or self.remb_at is None or now - self.remb_at > RETRANSMIT_REMB_STALE_S:
            return float("inf")
        return max(RETRANSMIT_MIN_BYTES_PER_S, RETRANSMIT_REMB_SHARE * self.remb_bps / 8)

    def _resend_of(self, seq16: int) -> tuple[int, int, bytes, int] | None:
        """(output timestamp, marker, payload, audio level) of the packet sent as `seq16`, from the cache."""
        ext_in = self._seq.reverse(seq16)
        packet: Packet | None = self.producer.cache.get(ext_in) if ext_in is not None else None  # type: ignore[assignment]
        if packet is None:
            return None
        return (packet.ts + self._ts.offset) & 0xFFFFFFFF, packet.marker, packet.payload, packet.audio_level

    def ask_keyframe(self) -> None:
        """The subscriber asked for a keyframe (PLI/FIR): ask the teacher, throttled per stream."""
        self.producer.request_keyframe()

    def _send_again(self, seq16: int, out_ts: int, marker: int, payload: bytes, audio_level: int, ast: bytes) -> None:
        """A retransmission: RFC 4588 RTX (its own SSRC and sequence; the payload starts with the original
        sequence number) when negotiated, else the packet again under its own number."""
        if self.rtx_payload_type is None:
            header = RTP_HEADER.pack(self._first_byte, (marker << 7) | self.payload_type, seq16 & 0xFFFF, out_ts,
                                     self.ssrc)
            self._send(self._protect(header + self._ext.tail(ast, audio_level, payload)))
            return
        header = RTP_HEADER.pack(self._first_byte, (marker << 7) | self.rtx_payload_type,
                                 self._rtx_seq & 0xFFFF, out_ts, self.rtx_ssrc)
        self._rtx_seq += 1
        self._send(self._protect(header + self._ext.tail(ast, audio_level, _U16.pack(seq16 & 0xFFFF) + payload)))

    # -- reports, errors, lifecycle ------------------------------------------------------------------------

    def update_report(self, now_unix: float) -> None:
        """Give the stock sender an NTP/RTP pair in this subscriber's timestamp space (keeps lip-sync)."""
        in_ts = self.producer.rtp_time_at(now_unix)
        if in_ts is None or not self._started or self._resume is not None:
            return  # after a producer change, keep the old figures until the new offset is known
        sender_set_report_counters(self.sender, ntp_from_unix(now_unix), self._ts.map(in_ts),
                                   self.packets_out & 0xFFFFFFFF, self.octets_out & 0xFFFFFFFF)

    def on_error(self) -> None:
        """A send raised: count it; after many in a row, stop feeding this subscriber (the others go on)."""
        self.errors += 1
        if self.errors == 1 or self.errors % 100 == 0:
            log.warning("send to subscriber failed (%d in a row)", self.errors, exc_info=True)
        if self.errors >= CONSUMER_MAX_ERRORS:
            self.close()

    def close(self) -> None:
        """Idempotent: detach from the producer and give the sender its own RTCP handling back."""
        if self.closed:
            return
        self.closed = True
        self.producer.detach(self)
        seams.unhook_sender_rtcp(self.sender, self._original_rtcp)
        self._send = None

    def stats(self) -> dict:
        return {"producer": self.producer.id, "kind": self.kind, "ssrc": self.ssrc,
                "packets_out": self.packets_out, "octets_out": self.octets_out, "retransmits": self.retransmits,
                "nack_unanswered": self.nack_unanswered, "keyframe_requests": self.keyframe_requests,
                "remb_bps": self.remb_bps, "fraction_lost": self.fraction_lost, "rtt_ms": self.rtt_ms(),
                "paused": self.paused}

    def rtt_ms(self) -> float | None:
        """Round-trip time to the subscriber, as the stock sender estimates it from receiver reports."""
        rtt = seams.sender_rtt(self.sender)
        return round(rtt * 1000, 1) if rtt is not None else None

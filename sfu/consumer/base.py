"""What both kinds of Consumer share: one subscriber's stream of one lesson track, on one send-only sender.

`Consumer` (sfu/consumer/simple.py) forwards one Producer; `SimulcastConsumer` (sfu/consumer/simulcast.py)
forwards one layer at a time of a simulcast track. Both rewrite SSRC, sequence number, timestamp, payload type and
the header-extension block, SRTP-protect and send on the subscriber's ICE socket; what they share is here: the
sender's RTCP (NACKs answered from the producer's cache, as RTX when negotiated; PLI/FIR turned into throttled
keyframe requests to the teacher; REMB and receiver reports recorded), the retransmission budget, pause, errors
and closing. Each kind decides how a packet is numbered (`_resend_of`, `_begin_at_keyframe`, `close_gap`, ...).
"""

from __future__ import annotations

import functools
import logging
import random
import struct
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
from sfu.rtp.clock import Clock, as_clock
from sfu.rtp.header import (
    EXT_PROFILE_ONE_BYTE,
    RTP_HEADER,
    TWCC_HEADER,
    ExtensionLayout,
    abs_send_time_bytes,
)
from sfu.rtp.twcc import WIRE_OVERHEAD, TransportSeq
from sfu.seams import datagram_sender

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
RETRANSMIT_SEND_SIDE_MIN_BYTES_PER_S = 2000  # with the send-side estimate, which knows what the media takes
UDP_IP_OVERHEAD = WIRE_OVERHEAD - 10  # what a datagram costs the link beyond its bytes (the SRTP tag is in them)
RETRANSMIT_REMB_STALE_S = 3.0
# a retransmission of the same packet is not repeated sooner than this (the first may still be in flight)
NACK_REPEAT_MIN_S = 0.03
# video resumed after a pause skips this many sequence numbers: packets lost just before the pause are gone from
# the cache by now, and a jump this wide tells receivers to drop their NACK lists and jitter buffers and start at
# the keyframe (libwebrtc clears its NACK list above 1000 missing packets; aiortc's video buffer holds 512)
RESUME_SEQ_JUMP = 1024
# probe padding (sfu/adapt/probe.py): padding-only packets on the RTX stream, as libwebrtc sends them; at most 255
# bytes of padding each (RFC 3550's one-byte count)
PADDING_MAX = 255
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


class BaseConsumer:
    """One subscriber's copy of one track: the sender, its RTCP, retransmissions, pause and lifecycle. Not a Sink
    itself: a subclass attaches what the producer(s) feed (itself, or one tap per layer) and detaches it in
    `_detach`."""

    def __init__(self, producer: Producer, sender: RTCRtpSender, payload_type: int, rtx_payload_type: int | None,
                 extensions: ExtensionLayout, resume: ResumePoint | None = None,
                 clock: Clock | Callable[[], float] | None = None, twcc: TransportSeq | None = None) -> None:
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
        self.nacks_received = 0  # sequence numbers NACKed (read by /metrics)
        self.retransmit_capped = 0  # NACKed packets not resent: the retransmission budget was spent
        self.keyframe_requests = 0
        self.errors = 0
        self.clock = as_clock(clock)
        self._clock = self.clock.monotonic
        self._resume = resume
        self._rtx_seq = resume.rtx_seq if resume is not None else random.randrange(1, OUTPUT_SEQ_START_MAX)
        self._ext = extensions
        # the classroom transport's transport-wide sequence numbers (shared by its consumers), when its layout
        # carries them
        self._twcc = twcc if extensions.twcc_id else None
        self._first_byte = FIRST_BYTE_WITH_EXT if extensions.block else FIRST_BYTE_NO_EXT
        self._protect: Any = None
        self._srtp: Any = None  # SRTP protect itself (`_protect` is `bytes` when the pacer protects)
        self._send: Any = None
        self._waiting_keyframe = self.kind == "video"
        self._started = False
        self._nack_window_start = 0.0
        self._nack_budget = NACK_RETRANSMIT_PER_S
        self._nack_bytes = float("inf")
        self._last_retransmit: dict[int, float] = {}
        # the classroom's output pacer (sfu/pacer.py), set by the subscriber before the first packet: audio goes
        # straight through it, video and retransmissions may wait
        self.pacer: Any = None
        self._raw_send: Any = None
        self.padding_bytes = 0
        # feedback from the subscriber for this sender is routed here
        self._original_rtcp = seams.hook_sender_rtcp(sender, self.handle_rtcp)

    # -- what each kind of consumer defines --------------------------------------------------------------------

    def _begin_at_keyframe(self, current: Packet | None) -> None:
        """Video (re)starts at a keyframe: the cached one replayed when recent, else one is asked for."""
        raise NotImplementedError

    def _resend_of(self, seq16: int) -> tuple[int, int, bytes, int] | None:
        """(output timestamp, marker, payload, audio level) of the packet sent as `seq16`, from the cache."""
        raise NotImplementedError

    def close_gap(self) -> None:
        """Packets were held back on purpose (paused, hard-muted): continue without a hole the receiver NACKs."""
        raise NotImplementedError

    def resume_point(self) -> ResumePoint | None:
        """Where this stream got to, for the next producer in the same slot."""
        raise NotImplementedError

    def update_report(self, now_unix: float) -> None:
        """Give the stock sender an NTP/RTP pair in this subscriber's timestamp space (keeps lip-sync)."""
        raise NotImplementedError

    def ask_keyframe(self) -> None:
        """The subscriber asked for a keyframe (PLI/FIR): ask the teacher, throttled per stream."""
        raise NotImplementedError

    def _detach(self) -> None:
        """Stop being fed by the producer(s)."""
        raise NotImplementedError

    # -- sending -----------------------------------------------------------------------------------------------

    def _start(self, current: Packet) -> bool:
        """Begin once ICE and DTLS are up: a late joiner gets the cached keyframe, or one is requested."""
        if self.closed:
            return False
        lean = datagram_sender(self.sender.transport)
        if lean is None:
            return False
        self._srtp, self._raw_send = lean
        pacer = self.pacer
        if pacer is None or self.kind == "audio":
            self._protect = self._srtp
            self._send = self._raw_send if pacer is None else functools.partial(pacer.send_audio, self._raw_send)
        else:
            # paced video: the pacer protects (a packet that waits is numbered again when it leaves, so that the
            # transport-wide numbers go out in order); `bytes` of bytes is the same object, at C speed
            self._protect = bytes
            self._send = functools.partial(pacer.send_video, self._raw_send, self._srtp)
        self._started = True
        if self.kind == "video":
            self._begin_at_keyframe(current)
        return True

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
        self.nacks_received += len(lost)
        if self._send is None or self.paused:
            return 0  # paused video: its link was short of bandwidth; old video must not crowd out the audio
        now = self._clock()
        if now - self._nack_window_start >= 1.0:
            self._nack_window_start, self._nack_budget = now, NACK_RETRANSMIT_PER_S
            self._nack_bytes = self._retransmit_bytes_per_s(now)
            self._last_retransmit = {s: t for s, t in self._last_retransmit.items() if now - t < 1.0}
        sent = 0
        ast = abs_send_time_bytes(self.clock.wall())
        for seq16 in lost:
            again = self._resend_of(seq16)
            if again is None:
                # never forwarded to this subscriber, or too old: nothing honest to resend
                self.nack_unanswered += 1
                continue
            if self._nack_budget <= 0 or self._nack_bytes <= 0:
                self.retransmit_capped += 1
                continue
            if now - self._last_retransmit.get(seq16, -1.0) < NACK_REPEAT_MIN_S:
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
        pacer = self.pacer
        if pacer is not None and pacer.estimate_bps:
            # the send-side estimate (Chromium then sends no REMB): a share of it, and no more than what the media
            # leaves of it (repairs must not overflow the queue that lost the packets), never below a small floor
            share = min(RETRANSMIT_REMB_SHARE * pacer.estimate_bps, pacer.estimate_bps - pacer.media_bps)
            return max(RETRANSMIT_SEND_SIDE_MIN_BYTES_PER_S, share / 8)
        if self.remb_bps is None or self.remb_at is None or now - self.remb_at > RETRANSMIT_REMB_STALE_S:
            return float("inf")
        return max(RETRANSMIT_MIN_BYTES_PER_S, RETRANSMIT_REMB_SHARE * self.remb_bps / 8)

    def _twcc_header(self, b1: int, seq16: int, ts: int, ssrc: int, tail_len: int) -> bytes:
        """The fixed header, the extension block's head and this packet's transport-wide sequence number (the
        rest of the block begins the tail)."""
        ext = self._ext
        return TWCC_HEADER.pack(self._first_byte, b1, seq16, ts, ssrc, EXT_PROFILE_ONE_BYTE, ext.twcc_words,
                                ext.twcc_byte, self._twcc.take(TWCC_HEADER.size + tail_len))  # type: ignore[union-attr]

    def _send_again(self, seq16: int, out_ts: int, marker: int, payload: bytes, audio_level: int, ast: bytes) -> None:
        """A retransmission: RFC 4588 RTX (its own SSRC and sequence; the payload starts with the original
        sequence number) when negotiated, else the packet again under its own number."""
        if self.rtx_payload_type is None:
            b1, seq, ssrc = (marker << 7) | self.payload_type, seq16 & 0xFFFF, self.ssrc
            tail = self._ext.tail(ast, audio_level, payload)
        else:
            b1, seq, ssrc = (marker << 7) | self.rtx_payload_type, self._rtx_seq & 0xFFFF, self.rtx_ssrc
            self._rtx_seq += 1
            tail = self._ext.tail(ast, audio_level, _U16.pack(seq16 & 0xFFFF) + payload)
        if self._twcc is None:
            header = RTP_HEADER.pack(self._first_byte, b1, seq, out_ts, ssrc)
        else:
            header = self._twcc_header(b1, seq, out_ts, ssrc, len(tail))
        self._send(self._protect(header + tail))

    def send_padding(self, nbytes: int) -> int:
        """Probe padding: padding-only RTX packets (no payload; the RTX receiver drops them after the transport
        feedback counted them) of about `nbytes` in all, each with its transport-wide number, straight out (the
        pacer decided). Returns the bytes sent on the wire (0: this stream cannot pad)."""
        twcc, send = self._twcc, self._raw_send
        if twcc is None or send is None or self._srtp is None or self.rtx_payload_type is None or self.closed:
            return 0
        ext = self._ext
        block = ext.tail(abs_send_time_bytes(self.clock.wall()), 0, b"")
        sent = 0
        while sent < nbytes:
            pad = PADDING_MAX
            header = TWCC_HEADER.pack(self._first_byte | 0x20, self.rtx_payload_type, self._rtx_seq & 0xFFFF, 0,
                                      self.rtx_ssrc, EXT_PROFILE_ONE_BYTE, ext.twcc_words, ext.twcc_byte,
                                      twcc.take(TWCC_HEADER.size + len(block) + pad))
            self._rtx_seq += 1
            datagram = self._srtp(header + block + bytes(pad - 1) + bytes((pad,)))
            send(datagram)
            sent += len(datagram) + UDP_IP_OVERHEAD
        self.padding_bytes += sent
        return sent

    # -- errors, lifecycle -------------------------------------------------------------------------------------

    def on_error(self) -> None:
        """A send raised: count it; after many in a row, stop feeding this subscriber (the others go on)."""
        self.errors += 1
        if self.errors == 1 or self.errors % 100 == 0:
            log.warning("send to subscriber failed (%d in a row)", self.errors, exc_info=True)
        if self.errors >= CONSUMER_MAX_ERRORS:
            self.close()

    def close(self) -> None:
        """Idempotent: stop being fed and give the sender its own RTCP handling back."""
        if self.closed:
            return
        self.closed = True
        self._detach()
        seams.unhook_sender_rtcp(self.sender, self._original_rtcp)
        self._send = None

    def stats(self) -> dict:
        return {"producer": self.producer.id, "kind": self.kind, "ssrc": self.ssrc,
                "packets_out": self.packets_out, "octets_out": self.octets_out, "retransmits": self.retransmits,
                "nacks_received": self.nacks_received, "retransmit_capped": self.retransmit_capped,
                "nack_unanswered": self.nack_unanswered, "keyframe_requests": self.keyframe_requests,
                "remb_bps": self.remb_bps, "fraction_lost": self.fraction_lost, "rtt_ms": self.rtt_ms(),
                "paused": self.paused, "padding_bytes": self.padding_bytes}

    def rtt_ms(self) -> float | None:
        """Round-trip time to the subscriber, as the stock sender estimates it from receiver reports."""
        rtt = seams.sender_rtt(self.sender)
        return round(rtt * 1000, 1) if rtt is not None else None

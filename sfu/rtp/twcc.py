"""Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01) on the send side.

Every packet the server sends to a classroom carries a transport-wide sequence number in a header extension (one
counter per classroom transport, shared by audio, every video layer and RTX); the classroom's browser answers
with RTCP feedback (PT 205, FMT 15) saying which of them arrived and when. `TransportSeq` stamps and remembers
(send time, size) per number in a bounded ring; `parse_feedback` reads one feedback packet; `TransportSeq.
on_feedback` turns it into per-packet results for the send-side estimator (sfu/adapt/gcc.py).

Feedback is hostile input: every length, count and delta is checked against the bytes that are really there, a
packet that does not add up is refused whole (None, counted), and nothing it says can grow memory beyond the
ring or make one packet count twice.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

URI_TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

RTCP_RTPFB = 205
FMT_TWCC = 15
# sequence numbers remembered per transport (a power of two, divides 65536): ~8 s of a classroom at 1000 pps.
# Feedback comes every ~100 ms; a packet older than the ring is no longer asked about
RING = 8192
_MASK = RING - 1
# a feedback packet may speak of at most this many packets (libwebrtc's cover a 100 ms interval, a few hundred);
# more is refused: a run-length chunk names 8191 packets in 2 bytes
MAX_STATUSES = RING
# each packet's size counts its SRTP tag (10 bytes for AES_CM_128_HMAC_SHA1_80) and IPv4 + UDP (28): the
# estimate is of what the link carries
WIRE_OVERHEAD = 38
# what a feedback packet says of a packet: its arrival delta in 250 us units, or None (not received)
DELTA_UNIT_S = 0.00025
REFERENCE_UNIT_S = 0.064
_REFERENCE_WRAP = 1 << 24
_HEADER = struct.Struct("!BBHIIHHI")  # b0, pt, length, sender ssrc, media ssrc, base seq, count, ref time|fb count
_HEADER_LEN = _HEADER.size  # 20
_SMALL, _LARGE = 1, 2
_REPORTED_LOST = 0x10000


@dataclass(frozen=True)
class Feedback:
    """One transport-cc feedback packet, read: `received` (seq16, arrival delta from the previous received packet
    in 250 us units; the first from the reference time) and `lost` (seq16) in sequence order."""

    base_seq: int
    count: int
    reference: int  # 24-bit, in 64 ms units
    fb_count: int
    received: tuple[tuple[int, int], ...]
    lost: tuple[int, ...]


class FeedbackError(ValueError):
    """A transport-cc feedback packet that does not add up (the message says where)."""


def parse_feedback(data: bytes) -> Feedback:
    """Read one RTCP transport-cc feedback packet (the whole RTCP packet, header included, padding allowed);
    raises FeedbackError, never anything else, on input that does not add up."""
    n = len(data)
    if n < _HEADER_LEN:
        raise FeedbackError(f"transport-cc feedback of {n} bytes: 20 at least")
    b0, pt, words, _sender, _media, base, count, ref_fb = _HEADER.unpack_from(data, 0)
    if b0 >> 6 != 2 or pt != RTCP_RTPFB or b0 & 0x1F != FMT_TWCC:
        raise FeedbackError("not a transport-cc feedback packet (V=2, PT=205, FMT=15)")
    end = 4 * (words + 1)
    if end > n:
        raise FeedbackError(f"length field says {end} bytes, {n} there")
    if b0 & 0x20:  # padding: the last byte says how much
        pad = data[end - 1]
        if pad == 0 or end - pad < _HEADER_LEN:
            raise FeedbackError("bad padding")
        end -= pad
    if count == 0:
        raise FeedbackError("packet status count 0")
    if count > MAX_STATUSES:
        raise FeedbackError(f"packet status count {count}: {MAX_STATUSES} at most")
    # the status chunks: 2 bytes each, until `count` statuses are known
    symbols = bytearray()
    pos = _HEADER_LEN
    while len(symbols) < count:
        if pos + 2 > end:
            raise FeedbackError(f"status chunks end after {len(symbols)} of {count} packets")
        chunk = (data[pos] << 8) | data[pos + 1]
        pos += 2
        left = count - len(symbols)
        if not chunk & 0x8000:  # run length: a symbol, 13 bits of length
            symbol, run = (chunk >> 13) & 0x3, chunk & 0x1FFF
            if run == 0:
                raise FeedbackError("run-length chunk of length 0")
            symbols += bytes((symbol,)) * min(run, left)
        elif chunk & 0x4000:  # status vector, seven 2-bit symbols
            symbols += bytes((chunk >> s) & 0x3 for s in range(12, -1, -2))[:left]
        else:  # status vector, fourteen 1-bit symbols (received with a small delta, or not)
            symbols += bytes((chunk >> s) & 0x1 for s in range(13, -1, -1))[:left]
    # the receive deltas: one byte per "small", two (signed) per "large"
    received: list[tuple[int, int]] = []
    lost: list[int] = []
    for i, symbol in enumerate(symbols):
        seq = (base + i) & 0xFFFF
        if symbol == _SMALL:
            if pos + 1 > end:
                raise FeedbackError("receive deltas end early")
            received.append((seq, data[pos]))
            pos += 1
        elif symbol == _LARGE:
            if pos + 2 > end:
                raise FeedbackError("receive deltas end early")
            delta = (data[pos] << 8) | data[pos + 1]
            received.append((seq, delta - 0x10000 if delta & 0x8000 else delta))
            pos += 2
        elif symbol == 0:
            lost.append(seq)
        else:
            raise FeedbackError("reserved packet status symbol 3")
    return Feedback(base, count, ref_fb >> 8, ref_fb & 0xFF, tuple(received), tuple(lost))


def split_compound(data: bytes) -> tuple[list[bytes], bytes]:
    """(the transport-cc feedback packets, every other RTCP packet as they came) of a compound RTCP datagram.
    A datagram whose length fields do not add up is handed back whole as "other" (the stock parser refuses it)."""
    feedback: list[bytes] = []
    rest: list[bytes] = []
    pos, n = 0, len(data)
    while pos + 4 <= n:
        length = 4 * (((data[pos + 2] << 8) | data[pos + 3]) + 1)
        if pos + length > n:
            return [], data
        packet = data[pos:pos + length]
        if data[pos + 1] == RTCP_RTPFB and data[pos] & 0x1F == FMT_TWCC:
            feedback.append(packet)
        else:
            rest.append(packet)
        pos += length
    if pos != n:
        return [], data
    return feedback, b"".join(rest) if feedback else data


@dataclass(frozen=True)
class PacketResult:
    """One packet the feedback spoke of: when it was sent (the server's clock), when it arrived (the receiver's
    clock, seconds; None: lost) and its size on the wire."""

    seq: int
    sent_at: float
    arrived_at: float | None
    size: int


class TransportSeq:
    """One classroom transport's transport-wide sequence numbers: stamped on every packet (`take`), remembered
    with their send time and size in a ring of RING, matched with the classroom's feedback (`on_feedback`)."""

    __slots__ = ("ext_id", "seq", "_clock", "_sent_at", "_size", "_seq", "_reference", "feedback_packets",
                 "feedback_refused", "packets_sent", "packets_acked", "packets_lost", "packets_late")

    def __init__(self, ext_id: int, clock: Callable[[], float], start: int = 0) -> None:
        self.ext_id = ext_id
        self.seq = start & 0xFFFF
        self._clock = clock
        self._sent_at = [0.0] * RING
        self._size = [0] * RING
        self._seq = [-1] * RING  # which 16-bit number the slot holds now; -1: none, or already reported
        self._reference: int | None = None  # the newest reference time seen, unwrapped (64 ms units)
        self.feedback_packets = 0
        self.feedback_refused = 0
        self.packets_sent = 0
        self.packets_acked = 0
        self.packets_lost = 0
        self.packets_late = 0  # reported lost, then received after all (reordered): not lost in the end

    def take(self, size: int) -> int:
        """Hot path: the number for a packet of `size` bytes (RTP header and payload) sent now."""
        seq = self.seq
        self.seq = (seq + 1) & 0xFFFF
        i = seq & _MASK
        self._sent_at[i] = self._clock()
        self._size[i] = size + WIRE_OVERHEAD
        self._seq[i] = seq
        self.packets_sent += 1
        return seq

    def forget(self, seq: int) -> None:
        """The packet numbered `seq` was never sent (the pacer dropped it): its feedback counts nothing (a drop
        in the server is not the link's loss)."""
        i = seq & _MASK
        if self._seq[i] == seq:
            self._seq[i] = -1
            self.packets_sent -= 1

    def _unwrap_reference(self, reference: int) -> int:
        last = self._reference
        if last is None:
            unwrapped = reference
        else:
            delta = (reference - last) % _REFERENCE_WRAP
            if delta >= _REFERENCE_WRAP // 2:
                delta -= _REFERENCE_WRAP  # an older one (reordered feedback)
            unwrapped = last + delta
        if last is None or unwrapped > last:
            self._reference = unwrapped
        return unwrapped

    def on_feedback(self, data: bytes) -> list[PacketResult] | None:
        """The results of one feedback packet, in sequence order (None: refused, counted in
        `feedback_refused`). A number not sent lately, or reported before, is skipped: a lying receiver can
        neither invent packets nor count one twice."""
        try:
            fb = parse_feedback(data)
        except FeedbackError:
            self.feedback_refused += 1
            return None
        self.feedback_packets += 1
        arrival = self._unwrap_reference(fb.reference) * REFERENCE_UNIT_S
        out: list[PacketResult] = []
        slots, sent_at, size = self._seq, self._sent_at, self._size
        for seq, delta in fb.received:
            arrival += delta * DELTA_UNIT_S
            i = seq & _MASK
            if slots[i] == seq or slots[i] == seq | _REPORTED_LOST:
                if slots[i] != seq:  # a loss reported before: it came late, it was not lost
                    self.packets_late += 1
                    self.packets_lost -= 1
                slots[i] = -1
                out.append(PacketResult(seq, sent_at[i], arrival, size[i]))
        self.packets_acked += len(out)
        lost = 0
        for seq in fb.lost:
            i = seq & _MASK
            if slots[i] == seq:
                # reported lost: may still be reported received later (a late packet), so the slot keeps it,
                # marked, and a second loss report of it counts nothing
                slots[i] = seq | _REPORTED_LOST
                out.append(PacketResult(seq, sent_at[i], None, size[i]))
                lost += 1
        self.packets_lost += lost
        out.sort(key=lambda r: (r.seq - fb.base_seq) & 0xFFFF)
        return out

    def stats(self) -> dict:
        return {"ext_id": self.ext_id, "packets_sent": self.packets_sent, "packets_acked": self.packets_acked,
                "packets_lost": self.packets_lost, "packets_late": self.packets_late,
                "feedback_packets": self.feedback_packets,
                "feedback_refused": self.feedback_refused}

"""RTP on the hot path: header parsing with `struct` (20x cheaper than aiortc's RtpPacket.parse) and the
header-extension block the SFU writes for each subscriber.

Only what forwarding needs is parsed: payload type, marker, sequence number, timestamp, SSRC, where the
payload starts and ends, and the value of a few one-byte/two-byte header extensions.
"""

from __future__ import annotations

import functools
import struct

RTP_VERSION = 2
RTP_HEADER = struct.Struct("!BBHII")
RTP_HEADER_LEN = 12
# with transport-cc: the fixed header, the extension block's 4-byte head and the transport-wide sequence number
# element (one-byte form, 2 bytes of value) packed at once; the rest of the block is shared by the subscribers
TWCC_HEADER = struct.Struct("!BBHIIHHBH")
TWCC_HEAD_EXT_LEN = 7
EXT_PROFILE_ONE_BYTE = 0xBEDE
EXT_PROFILE_TWO_BYTE_MASK = 0xFFF0
EXT_PROFILE_TWO_BYTE = 0x1000

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

NTP_EPOCH_OFFSET_S = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (UNIX)

# an audio level of 127 (-127 dBov) means silence; used when the teacher's packet carried none
AUDIO_LEVEL_SILENT = 0x7F


class RtpHeader:
    """The parts of an incoming RTP packet that forwarding uses; offsets index into the original datagram."""

    __slots__ = ("payload_type", "marker", "seq", "ts", "ssrc", "ext_start", "ext_end", "ext_two_byte",
                 "payload_start", "payload_end")

    def __init__(self, payload_type: int, marker: int, seq: int, ts: int, ssrc: int, ext_start: int,
                 ext_end: int, ext_two_byte: bool, payload_start: int, payload_end: int) -> None:
        self.payload_type = payload_type
        self.marker = marker
        self.seq = seq
        self.ts = ts
        self.ssrc = ssrc
        self.ext_start = ext_start
        self.ext_end = ext_end
        self.ext_two_byte = ext_two_byte
        self.payload_start = payload_start
        self.payload_end = payload_end


def parse_header(data: bytes) -> RtpHeader | None:
    """Parse an RTP header; None for anything that is not a well-formed RTP packet (never raises)."""
    n = len(data)
    if n < RTP_HEADER_LEN:
        return None
    b0, b1, seq, ts, ssrc = RTP_HEADER.unpack_from(data, 0)
    if b0 >> 6 != RTP_VERSION:
        return None
    pos = RTP_HEADER_LEN + 4 * (b0 & 0x0F)
    ext_start = ext_end = pos
    two_byte = False
    if b0 & 0x10:
        if n < pos + 4:
            return None
        profile = (data[pos] << 8) | data[pos + 1]
        words = (data[pos + 2] << 8) | data[pos + 3]
        ext_start = pos + 4
        ext_end = pos = ext_start + 4 * words
        two_byte = (profile & EXT_PROFILE_TWO_BYTE_MASK) == EXT_PROFILE_TWO_BYTE
        if profile != EXT_PROFILE_ONE_BYTE and not two_byte:
            ext_start = ext_end  # an extension profile we do not read: skip it whole
    end = n
    if b0 & 0x20:
        pad = data[n - 1]
        end = n - pad
        if pad == 0:
            return None
    if end < pos:
        return None
    return RtpHeader(b1 & 0x7F, b1 >> 7, seq, ts, ssrc, ext_start, ext_end, two_byte, pos, end)


def find_extension(data: bytes, hdr: RtpHeader, ext_id: int) -> bytes | None:
    """Value of header extension `ext_id` (RFC 8285 one-byte or two-byte form), or None."""
    pos, end = hdr.ext_start, hdr.ext_end
    if ext_id <= 0 or pos >= end:
        return None
    if hdr.ext_two_byte:
        while pos + 2 <= end:
            eid = data[pos]
            if eid == 0:  # padding
                pos += 1
                continue
            length = data[pos + 1]
            if eid == ext_id:
                return data[pos + 2:pos + 2 + length]
            pos += 2 + length
        return None
    while pos < end:
        b = data[pos]
        if b == 0:  # padding
            pos += 1
            continue
        eid, length = b >> 4, (b & 0x0F) + 1
        if eid == 15:  # reserved: stop parsing (RFC 8285 section 4.2)
            return None
        if eid == ext_id:
            return data[pos + 1:pos + 1 + length]
        pos += 1 + length
    return None


def abs_send_time_bytes(now_s: float) -> bytes:
    """abs-send-time of a wall-clock (UNIX) time: 6.18 fixed-point seconds, 24 bits (restamped on egress so
    subscribers can send REMB); the caller passes its clock's `wall()`."""
    return (int((now_s + NTP_EPOCH_OFFSET_S) * (1 << 18)) & 0xFFFFFF).to_bytes(3, "big")


def ntp_from_unix(t: float) -> int:
    """64-bit NTP timestamp for a UNIX time in seconds."""
    return int((t + NTP_EPOCH_OFFSET_S) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


@functools.lru_cache(maxsize=256)
def extension_layout(mid: str | None, mid_id: int, abs_send_time_id: int, audio_level_id: int,
                     twcc_id: int = 0) -> ExtensionLayout:
    """One shared ExtensionLayout per distinct set of negotiated ids: subscribers that share a layout share the
    bytes after the fixed header too, which are then built once per packet instead of once per subscriber."""
    return ExtensionLayout(mid, mid_id, abs_send_time_id, audio_level_id, twcc_id)


class ExtensionLayout:
    """The header-extension block written on every packet to one subscriber (its negotiated ids).

    The block is built once; per packet only abs-send-time (3 bytes) and the audio level (1 byte) are patched
    at the fixed offsets (from the start of the block) this layout records.

    With transport-cc (`twcc_id`), the transport-wide sequence number is the block's first element, and it is
    the subscriber's own: the consumer packs it with the fixed header and the block's head (`TWCC_HEADER`,
    `twcc_words`, `twcc_byte`), and ``tail``/``stamped`` give the block from after it, which stays shared.
    """

    __slots__ = ("block", "abs_send_time_at", "audio_level_at", "_template", "_stamped", "_stamped_ast",
                 "_stamped_level", "twcc_id", "twcc_words", "twcc_byte", "_skip")

    def __init__(self, mid: str | None, mid_id: int, abs_send_time_id: int, audio_level_id: int,
                 twcc_id: int = 0) -> None:
        # the newest stamped block (see ``stamped``) and what it was stamped with
        self._stamped = b""
        self._stamped_ast: bytes | None = None
        self._stamped_level = -1
        body = bytearray()
        self.abs_send_time_at = -1
        self.audio_level_at = -1
        self.twcc_id = twcc_id if 0 < twcc_id < 15 else 0
        self.twcc_byte = (self.twcc_id << 4) | 1
        self._skip = TWCC_HEAD_EXT_LEN if self.twcc_id else 0
        if self.twcc_id:
            body += bytes((self.twcc_byte, 0, 0))
        if mid and 0 < mid_id < 15:
            value = mid.encode()[:16]
            body.append((mid_id << 4) | (len(value) - 1))
            body += value
        if 0 < abs_send_time_id < 15:
            body.append((abs_send_time_id << 4) | 2)
            self.abs_send_time_at = len(body)
            body += b"\x00\x00\x00"
        if 0 < audio_level_id < 15:
            body.append(audio_level_id << 4)
            self.audio_level_at = len(body)
            body.append(AUDIO_LEVEL_SILENT)
        self.twcc_words = 0
        if not body:
            self.block = b""
            return
        while len(body) % 4:
            body.append(0)
        self.twcc_words = len(body) // 4
        head = struct.pack("!HH", EXT_PROFILE_ONE_BYTE, len(body) // 4)
        self.block = head + bytes(body)
        self._template = bytearray(self.block)
        if self.abs_send_time_at >= 0:
            self.abs_send_time_at += 4
        if self.audio_level_at >= 0:
            self.audio_level_at += 4

    def _stamp(self, abs_send_time: bytes, audio_level: int) -> bytearray:
        """The extension block with this packet's abs-send-time and audio level written in (a shared buffer)."""
        t = self._template
        if self.abs_send_time_at >= 0:
            at = self.abs_send_time_at
            t[at:at + 3] = abs_send_time
        if self.audio_level_at >= 0:
            t[self.audio_level_at] = audio_level
        return t

    def tail(self, abs_send_time: bytes, audio_level: int, payload: bytes) -> bytes:
        """Everything after the 12-byte fixed header (with transport-cc: after `TWCC_HEADER`): this layout's extension
        block, stamped, then the payload."""
        t = self._stamp(abs_send_time, audio_level)
        return (bytes(t[self._skip:]) if self._skip else bytes(t)) + payload

    def stamped(self, abs_send_time: bytes, audio_level: int) -> bytes:
        """This layout's extension block stamped as ``tail`` stamps it (the bytes ``tail`` puts before the payload),
        for a sender that joins the packet from pieces. The newest one is kept: the subscribers with this layout in
        one fan-out (same ``abs_send_time`` object) share it."""
        if abs_send_time is self._stamped_ast and audio_level == self._stamped_level:
            return self._stamped
        if not self.block:
            return b""
        t = self._stamp(abs_send_time, audio_level)
        block = self._stamped = bytes(t[self._skip:]) if self._skip else bytes(t)
        self._stamped_ast, self._stamped_level = abs_send_time, audio_level
        return block

"""RED (RFC 2198) audio redundancy on the send side: each Opus packet to a classroom whose link loses packets
also carries the previous one, so one lost packet is rebuilt from the next without waiting (audio has no NACK).

`RedEncoder` keeps the previous payload of one stream and builds the RED payload: one redundant block header
(F=1, the Opus payload type, the timestamp offset in 14 bits, the block length in 10 bits), the primary block header
(F=0, the Opus payload type), the redundant data, the primary data. A previous payload that cannot be described
(longer than 1023 bytes, or its timestamp 16384 or more behind) is left out: the packet carries the primary alone.
"""

from __future__ import annotations

import struct

__all__ = ["MAX_BLOCK", "MAX_TS_OFFSET", "RedEncoder", "red_blocks"]

MAX_BLOCK = 1023
MAX_TS_OFFSET = 1 << 14
_REDUNDANT = struct.Struct("!I")  # F=1 and the payload type (8 bits), timestamp offset (14), block length (10)


class RedEncoder:
    """One audio stream's RED payloads (`encode`, in sending order)."""

    __slots__ = ("primary_pt", "_prev_ts", "_prev")

    def __init__(self, primary_pt: int) -> None:
        self.primary_pt = primary_pt & 0x7F
        self._prev_ts: int | None = None
        self._prev = b""

    def encode(self, ts: int, payload: bytes) -> bytes:
        """The RED payload for the primary `payload` at RTP timestamp `ts` (32-bit)."""
        prev, prev_ts = self._prev, self._prev_ts
        self._prev, self._prev_ts = payload, ts
        if prev_ts is not None and prev:
            offset = (ts - prev_ts) & 0xFFFFFFFF
            if 0 < offset < MAX_TS_OFFSET and len(prev) <= MAX_BLOCK:
                return b"".join((_REDUNDANT.pack(((0x80 | self.primary_pt) << 24) | (offset << 10) | len(prev)),
                                 bytes((self.primary_pt,)), prev, payload))
        return bytes((self.primary_pt,)) + payload

    def reset(self) -> None:
        """A gap (pause, a new producer in the slot): the next packet carries no redundancy."""
        self._prev, self._prev_ts = b"", None


def red_blocks(payload: bytes) -> list[tuple[int, int, bytes]]:
    """Read a RED payload: [(payload type, timestamp offset, data)], redundant blocks first, the primary last (offset
    0). Raises ValueError on a payload that does not add up (for tests and checks; the server only writes RED)."""
    headers: list[tuple[int, int, int]] = []
    pos = 0
    while True:
        if pos >= len(payload):
            raise ValueError("RED headers run past the payload")
        b = payload[pos]
        if not b & 0x80:
            headers.append((b & 0x7F, 0, -1))
            pos += 1
            break
        if pos + 4 > len(payload):
            raise ValueError("truncated RED block header")
        word = int.from_bytes(payload[pos + 1:pos + 4], "big")
        headers.append((b & 0x7F, word >> 10, word & 0x3FF))
        pos += 4
    out = []
    for pt, offset, length in headers:
        if length < 0:
            out.append((pt, offset, payload[pos:]))
        else:
            if pos + length > len(payload):
                raise ValueError("RED block runs past the payload")
            out.append((pt, offset, payload[pos:pos + length]))
            pos += length
    return out

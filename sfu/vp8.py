"""VP8 RTP payload descriptor parsing (RFC 7741 section 4.2), just enough to forward without decoding.

      0 1 2 3 4 5 6 7
     +-+-+-+-+-+-+-+-+
     |X|R|N|S|R| PID | (required)
     +-+-+-+-+-+-+-+-+
  X: |I|L|T|K| RSV   | (present iff X)
     +-+-+-+-+-+-+-+-+
  I: |M| PictureID   | (present iff I; a second octet iff M)
     +-+-+-+-+-+-+-+-+
  L: |   TL0PICIDX   | (present iff L)
     +-+-+-+-+-+-+-+-+
T/K: |TID|Y| KEYIDX  | (present iff T or K)
     +-+-+-+-+-+-+-+-+

The VP8 payload header (RFC 7741 section 4.3) follows; its first octet's low bit P is the inverse key-frame flag.
"""

from __future__ import annotations

_X = 0x80  # first octet: extended control bits present
_S = 0x10  # first octet: start of a VP8 partition
_PID = 0x07  # first octet: partition index (3 bits; 0x08 is reserved)
_I = 0x80  # X octet: PictureID present
_L = 0x40  # X octet: TL0PICIDX present
_T = 0x20  # X octet: TID/Y present
_K = 0x10  # X octet: KEYIDX present
_M = 0x80  # PictureID octet: 15-bit PictureID
_P = 0x01  # payload header: inverse key frame flag (0 = key frame)


def vp8_descriptor_len(payload: bytes) -> int:
    """Length in bytes of the VP8 payload descriptor at the start of ``payload``; ValueError if it is truncated."""
    n = len(payload)
    if n < 1:
        raise ValueError("VP8 payload descriptor: empty payload")
    if not payload[0] & _X:
        return 1
    if n < 2:
        raise ValueError("VP8 payload descriptor: truncated extension octet")
    ext = payload[1]
    pos = 2
    if ext & _I:
        if n < pos + 1:
            raise ValueError("VP8 payload descriptor: truncated PictureID")
        pos += 2 if payload[pos] & _M else 1
    if ext & _L:
        pos += 1
    if ext & (_T | _K):
        pos += 1
    if n < pos:
        raise ValueError("VP8 payload descriptor: truncated")
    return pos


def vp8_is_keyframe_start(payload: bytes) -> bool:
    """True iff this packet starts a key frame: S=1, PID=0 and the payload header's P bit is 0.

    Never raises: garbage or truncated input is simply not a keyframe start.
    """
    if not payload or (payload[0] & (_S | _PID)) != _S:
        return False
    try:
        pos = vp8_descriptor_len(payload)
    except ValueError:
        return False
    return pos < len(payload) and not payload[pos] & _P


def vp8_picture_id(payload: bytes) -> int | None:
    """The 7- or 15-bit PictureID if present; None if absent or cut short. Never raises.

    Only the bytes up to the PictureID are looked at: a descriptor truncated after it still yields it
    (vp8_descriptor_len is the validity check).
    """
    n = len(payload)
    if n < 3 or not payload[0] & _X or not payload[1] & _I:
        return None
    b = payload[2]
    if not b & _M:
        return b
    if n < 4:
        return None
    return ((b & 0x7F) << 8) | payload[3]

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

import struct

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


# -- the whole descriptor, and keeping picture ids continuous across simulcast layers -------------------------

PICTURE_ID_MOD = 1 << 15  # the 15-bit PictureID space (a 7-bit one is the same counter's low 7 bits)
PICTURE_ID_MASK = PICTURE_ID_MOD - 1
TL0PICIDX_MOD = 256
# per subscriber, offsets are remembered for this many sources (layers), so retransmissions of a layer
# switched away from still get the numbers they had
REWRITER_MAX_SOURCES = 8


class Vp8Descriptor:
    """A parsed VP8 payload descriptor. Offsets index into the payload; -1 when the field is absent."""

    __slots__ = ("size", "start", "partition", "non_reference", "picture_id", "picture_id_long", "picture_id_at",
                 "tl0picidx", "tl0picidx_at", "tid", "layer_sync", "keyidx", "keyframe")

    def __init__(self) -> None:
        self.size = 1  # descriptor length: the VP8 payload header starts here
        self.start = False  # S: first packet of a partition
        self.partition = 0  # PID
        self.non_reference = False  # N: no other frame references this one (droppable)
        self.picture_id: int | None = None
        self.picture_id_long = False  # True: 15-bit field (M=1), two octets
        self.picture_id_at = -1
        self.tl0picidx: int | None = None
        self.tl0picidx_at = -1
        self.tid: int | None = None  # temporal layer index (present iff T)
        self.layer_sync = False  # Y
        self.keyidx: int | None = None  # present iff K
        self.keyframe = False  # this packet starts a key frame (S=1, PID=0, payload header P=0)


def vp8_parse_descriptor(payload: bytes) -> Vp8Descriptor | None:
    """The payload descriptor of a VP8 RTP payload; None if empty or cut short. Never raises."""
    n = len(payload)
    if n < 1:
        return None
    b0 = payload[0]
    d = Vp8Descriptor()
    d.start = bool(b0 & _S)
    d.partition = b0 & _PID
    d.non_reference = bool(b0 & 0x20)
    pos = 1
    if b0 & _X:
        if n < 2:
            return None
        ext = payload[1]
        pos = 2
        if ext & _I:
            if n < 3:
                return None
            d.picture_id_at = 2
            if payload[2] & _M:
                if n < 4:
                    return None
                d.picture_id = ((payload[2] & 0x7F) << 8) | payload[3]
                d.picture_id_long = True
                pos = 4
            else:
                d.picture_id = payload[2]
                pos = 3
        if ext & _L:
            if n <= pos:
                return None
            d.tl0picidx = payload[pos]
            d.tl0picidx_at = pos
            pos += 1
        if ext & (_T | _K):
            if n <= pos:
                return None
            b = payload[pos]
            if ext & _T:
                d.tid = b >> 6
                d.layer_sync = bool(b & 0x20)
            if ext & _K:
                d.keyidx = b & 0x1F
            pos += 1
    d.size = pos
    d.keyframe = d.start and d.partition == 0 and pos < n and not payload[pos] & _P
    return d


def _numbering(payload: bytes) -> tuple[int, int, int, int, int] | None:
    """(picture id or -1, its offset or -1, 1 if 15-bit, TL0PICIDX offset or -1, TID or -1): the fields a
    Vp8Rewriter changes, found without building a Vp8Descriptor (it runs per packet and per subscriber).
    None when there is nothing to renumber or the descriptor is cut short."""
    n = len(payload)
    if n < 3 or not payload[0] & _X:
        return None
    ext = payload[1]
    if not ext & (_I | _L):
        return None
    pos = 2
    pid = pid_at = -1
    long = 0
    if ext & _I:
        b = payload[2]
        pid_at = 2
        if b & _M:
            if n < 4:
                return None
            pid, long, pos = ((b & 0x7F) << 8) | payload[3], 1, 4
        else:
            pid, pos = b, 3
    tl0_at = -1
    if ext & _L:
        if n <= pos:
            return None
        tl0_at = pos
        pos += 1
    tid = -1
    if ext & _T:
        if n <= pos:
            return None
        tid = payload[pos] >> 6
    return pid, pid_at, long, tl0_at, tid


Vp8Numbering = tuple[int, int, int, int, bytes, memoryview, int]


def vp8_numbering(payload: bytes) -> Vp8Numbering | None:
    """The numbering fields of one input packet, parsed once and shared by every subscriber that forwards it
    (``sfu.producer.Packet.vp8``): (picture id or -1, 1 if 15-bit, TL0PICIDX or -1, TID or -1, the descriptor
    bytes before the picture id (always the first two), the payload after the numbering fields (a view, not a
    copy), how many bytes the output grows by (1 when a 7-bit picture id is widened)). None when there is
    nothing to renumber or the descriptor is cut short (as for ``Vp8Rewriter.rewrite``). Never raises."""
    fields = _numbering(payload)
    if fields is None:
        return None
    pid, _, long, tl0_at, tid = fields
    end = 2
    if pid >= 0:
        end = 4 if long else 3
    tl0 = -1
    if tl0_at >= 0:
        tl0 = payload[tl0_at]
        end = tl0_at + 1
    return pid, long, tl0, tid, bytes(payload[:2]), memoryview(payload)[end:], int(pid >= 0 and not long)


_PID_TL0 = struct.Struct("!HB")
_PID16 = struct.Struct("!H")


class _Source:
    """One source's numbering as seen by a Vp8Rewriter: its picture ids unwrapped, and its offsets."""

    __slots__ = ("pid_ext", "pid_offset", "tl0_offset")

    def __init__(self) -> None:
        self.pid_ext: int | None = None  # newest input picture id, unwrapped
        self.pid_offset = 0  # output = (unwrapped input + offset) mod 2**15
        self.tl0_offset = 0  # output = (input + offset) mod 256

    def unwrap(self, pid: int, long: bool, advance: bool) -> int:
        mod = PICTURE_ID_MOD if long else 128
        last = self.pid_ext
        if last is None:
            if advance:
                self.pid_ext = pid
            return pid
        diff = (pid - last) % mod
        if diff >= mod // 2:
            diff -= mod  # an older picture (reordered or retransmitted)
        ext = last + diff
        if diff > 0 and advance:
            self.pid_ext = ext
        return ext


class Vp8Rewriter:
    """Keeps one subscriber's VP8 PictureID and TL0PICIDX continuous while its source changes.

    Each simulcast layer numbers its pictures on its own. When the forwarded source changes (at a key frame
    of the new layer), the new source's numbers are shifted so its first picture follows the last picture
    sent (PictureID + 1; TL0PICIDX + 1, since a key frame is a base-layer picture) — a backwards PictureID
    jump froze Chromium for 3 s (DESIGN.md). Within a source, numbers keep their spacing, so real gaps (lost
    pictures) stay visible to the receiver.

    The output PictureID is always the 15-bit form: a 15-bit input is rewritten in place (same length); a
    7-bit input (M=0) is widened to 15 bits, so that payload grows by one byte (its 7-bit counter is
    unwrapped first, so the output keeps counting past 127). Payloads without a PictureID pass through with
    only their TL0PICIDX (if any) rewritten; without either they are returned unchanged. Never raises.
    """

    __slots__ = ("_sources", "_current", "_current_src", "_last_pid", "_last_tl0", "rebases")

    def __init__(self) -> None:
        self._sources: dict[object, _Source] = {}
        self._current: object = None
        self._current_src: _Source | None = None  # _sources[_current]
        self._last_pid: int | None = None  # newest output PictureID (15 bits)
        self._last_tl0: int | None = None  # newest output TL0PICIDX
        self.rebases = 0

    @property
    def last_picture_id(self) -> int | None:
        return self._last_pid

    @property
    def last_tl0picidx(self) -> int | None:
        return self._last_tl0

    def rewrite(self, payload: bytes, source: object) -> bytes:
        """The payload of the live stream, renumbered; a new ``source`` continues from the last picture sent."""
        fields = _numbering(payload)
        if fields is None:
            return payload
        src = self._sources.get(source) if source == self._current else None
        if src is None:
            src = self._rebase(source, fields, payload)
        return self._write(payload, fields, src, True)

    def remap(self, payload: bytes, source: object) -> bytes | None:
        """A retransmission: renumbered as that source's packets were last renumbered, without touching the
        live state. None when this rewriter never forwarded that source (or has forgotten it)."""
        src = self._sources.get(source)
        if src is None:
            return None
        fields = _numbering(payload)
        if fields is None:
            return payload
        return self._write(payload, fields, src, False)

    def _rebase(self, source: object, fields: tuple[int, int, int, int, int], payload: bytes) -> _Source:
        pid, _, long, tl0_at, tid = fields
        src = _Source()
        if pid >= 0:
            first = src.unwrap(pid, bool(long), True)
            if self._last_pid is not None:
                src.pid_offset = self._last_pid + 1 - first
        if tl0_at >= 0 and self._last_tl0 is not None:
            # a base-layer picture (a key frame always is) starts a new TL0 index; a higher-layer one shares its
            # base picture's, which is the last one sent
            step = 1 if tid <= 0 else 0
            src.tl0_offset = self._last_tl0 + step - payload[tl0_at]
        if self._current is not None or self._last_pid is not None or self._last_tl0 is not None:
            self.rebases += 1
        self._sources.pop(source, None)
        self._sources[source] = src
        while len(self._sources) > REWRITER_MAX_SOURCES:
            del self._sources[next(iter(self._sources))]
        self._current = source
        self._current_src = src
        return src

    @property
    def current_source(self) -> object:
        """The source the live stream is numbered from (what ``renumber`` applies to)."""
        return self._current

    def renumber(self, numbering: Vp8Numbering) -> bytes | None:
        """``rewrite`` for the current source (``current_source``), from the packet's parsed numbering
        (``vp8_numbering``, computed once per input packet): the same state changes, and the output's
        numbering bytes — what replaces ``payload[2:numbering end]``, the 15-bit PictureID and/or TL0PICIDX —
        or None when the payload goes out unchanged (shared, no copy). The caller checks ``current_source``."""
        pid_in, long, tl0_in, _, _, _, _ = numbering
        src = self._current_src
        pid = tl0 = -1
        if pid_in >= 0:
            if long:
                # Source.unwrap(pid_in, True, True): the output only depends on pid_in mod 2**15
                last = src.pid_ext  # type: ignore[union-attr]
                if last is None:
                    src.pid_ext = pid_in  # type: ignore[union-attr]
                else:
                    diff = (pid_in - last) & PICTURE_ID_MASK
                    if 0 < diff < PICTURE_ID_MOD // 2:
                        src.pid_ext = last + diff  # type: ignore[union-attr]
                pid = (pid_in + src.pid_offset) & PICTURE_ID_MASK  # type: ignore[union-attr]
            else:
                pid = (src.unwrap(pid_in, False, True) + src.pid_offset) & PICTURE_ID_MASK  # type: ignore[union-attr]
            last_pid = self._last_pid
            if last_pid is None or 0 < (pid - last_pid) & PICTURE_ID_MASK < PICTURE_ID_MOD // 2:
                self._last_pid = pid
        if tl0_in >= 0:
            tl0 = (tl0_in + src.tl0_offset) & 0xFF  # type: ignore[union-attr]
            last_tl0 = self._last_tl0
            if last_tl0 is None or 0 < (tl0 - last_tl0) & 0xFF < TL0PICIDX_MOD // 2:
                self._last_tl0 = tl0
            if pid >= 0:
                if long and pid == pid_in and tl0 == tl0_in:
                    return None
                return _PID_TL0.pack(pid | 0x8000, tl0)
            if tl0 == tl0_in:
                return None
            return bytes((tl0,))
        if long and pid == pid_in:
            return None
        return _PID16.pack(pid | 0x8000)

    def _write(self, payload: bytes, fields: tuple[int, int, int, int, int], src: _Source, live: bool) -> bytes:
        pid_in, pid_at, long, tl0_at, _ = fields
        pid = tl0 = -1
        if pid_in >= 0:
            pid = (src.unwrap(pid_in, bool(long), live) + src.pid_offset) & PICTURE_ID_MASK
        if tl0_at >= 0:
            tl0 = (payload[tl0_at] + src.tl0_offset) & 0xFF
        if live:
            if pid >= 0 and (self._last_pid is None
                             or 0 < (pid - self._last_pid) & PICTURE_ID_MASK < PICTURE_ID_MOD // 2):
                self._last_pid = pid
            if tl0 >= 0 and (self._last_tl0 is None or 0 < (tl0 - self._last_tl0) & 0xFF < TL0PICIDX_MOD // 2):
                self._last_tl0 = tl0
        if (pid_in < 0 or (long and pid == pid_in)) and (tl0_at < 0 or tl0 == payload[tl0_at]):
            return payload  # nothing changes (a subscriber that never switched): no copy
        out = bytearray(payload)
        if pid >= 0:
            two = bytes(((pid >> 8) | _M, pid & 0xFF))
            if long:
                out[pid_at:pid_at + 2] = two
            else:
                out[pid_at:pid_at + 1] = two  # widened: everything after it moves one byte on
                if tl0_at >= 0:
                    tl0_at += 1
        if tl0 >= 0:
            out[tl0_at] = tl0
        return bytes(out)

"""Sequence-number and timestamp bookkeeping for forwarded RTP.

Sequence numbers are unwrapped once at ingress into plain Python ints ("extended" sequence numbers) and wrapped
(``& 0xFFFF``) only at egress, so everything in between compares and subtracts ordinary integers.

Everything here is pure and runs per packet: no clocks, no I/O, no logging.
"""

from __future__ import annotations

from bisect import bisect_right

SEQ_MOD = 1 << 16  # RTP sequence numbers are 16 bits (RFC 3550)
SEQ_MASK = SEQ_MOD - 1
SEQ_HALF = SEQ_MOD >> 1  # the serial-number horizon: a distance at or beyond this is ambiguous

TS_MOD = 1 << 32  # RTP timestamps are 32 bits
TS_MASK = TS_MOD - 1
TS_HALF = TS_MOD >> 1

# How far behind the newest input (in packets) a SeqMap still maps late packets and NACKs. Kept below SEQ_HALF so
# a 16-bit output number in the window is never ambiguous for the subscriber; older offset ranges are forgotten.
SEQ_HISTORY_PACKETS = 30000

# Forgetting old offset ranges and holes is batched: done at most once per this many packets of input progress.
SEQ_PRUNE_EVERY_PACKETS = 4096


def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit sequence number ``a`` is newer than ``b`` (RFC 1982 serial-number arithmetic).

    RFC 1982 leaves a distance of exactly 2**15 undefined; like libwebrtc we break that tie by the larger value, so
    the relation stays antisymmetric.
    """
    diff = (a - b) & SEQ_MASK
    if diff == SEQ_HALF:
        return (a & SEQ_MASK) > (b & SEQ_MASK)
    return 0 < diff < SEQ_HALF


class SeqUnwrapper:
    """Turns a stream's 16-bit sequence numbers into extended (unbounded) ints.

    The first value maps to itself + 65536, so packets reordered from slightly before it stay positive.
    """

    __slots__ = ("_highest",)

    def __init__(self) -> None:
        self._highest: int | None = None  # extended value of the newest packet seen

    def unwrap(self, seq16: int) -> int:
        highest = self._highest
        if highest is None:
            self._highest = ext = seq16 + SEQ_MOD
            return ext
        diff = (seq16 - highest) & SEQ_MASK  # forward distance from the newest, 0..65535
        if diff < SEQ_HALF or (diff == SEQ_HALF and seq16 > (highest & SEQ_MASK)):
            ext = highest + diff  # newer (possibly across 65535 -> 0): advance
            self._highest = ext
            return ext
        return highest + diff - SEQ_MOD  # older (reordered), possibly from before the last wrap: do not advance


class TsUnwrapper:
    """Turns a stream's 32-bit RTP timestamps into extended ints; the first value maps to itself + 2**32."""

    __slots__ = ("_highest",)

    def __init__(self) -> None:
        self._highest: int | None = None

    def unwrap(self, ts32: int) -> int:
        highest = self._highest
        if highest is None:
            self._highest = ext = ts32 + TS_MOD
            return ext
        diff = (ts32 - highest) & TS_MASK
        if diff < TS_HALF or (diff == TS_HALF and ts32 > (highest & TS_MASK)):
            ext = highest + diff
            self._highest = ext
            return ext
        return highest + diff - TS_MOD


class SeqMap:
    """Maps a publisher track's extended input sequence numbers to one subscriber's output sequence numbers.

    The mapping is a list of ranges: inputs from ``_in_starts[i]`` up to the next range map to ``input + _deltas[i]``.
    A new range starts only when the newest packet is dropped (the delta shrinks by one so the output stays
    contiguous), and a drop just after such a boundary widens it in place instead of adding a range. Hence the
    inputs deliberately dropped as "newest" are exactly the last ``_deltas[i] - _deltas[i + 1]`` inputs before
    ``_in_starts[i + 1]``, and each range's outputs form one contiguous block starting at ``_out_starts[i]``.
    Late drops cannot shift anything (later outputs are already out), so they are kept as holes.
    """

    __slots__ = (
        "_first_out",
        "_start_in",
        "_newest_in",
        "_delta",
        "_in_starts",
        "_out_starts",
        "_deltas",
        "_holes",
        "_prune_at",
    )

    def __init__(self, first_out: int) -> None:
        # Starting low leaves >= 32768 packets before the 16-bit output first wraps, which keeps the subscriber's SRTP
        # rollover-counter guess safe even if the first packets arrive reordered.
        # A fresh stream starts below SEQ_HALF; a stream resumed after a publisher change continues from wherever
        # the subscriber's sequence has got to, so any non-negative extended value is accepted.
        if first_out < 0:
            raise ValueError(f"first_out must be >= 0, got {first_out}")
        self._first_out = first_out
        self._start_in: int | None = None  # first forwarded input: the origin
        self._newest_in = 0  # newest input seen (forwarded or dropped); valid once started
        self._delta = 0  # current (last range's) delta, cached for the in-order fast path
        self._in_starts: list[int] = []
        self._out_starts: list[int] = []
        self._deltas: list[int] = []
        self._holes: set[int] = set()  # inputs dropped late: their outputs are never assigned
        self._prune_at = 0

    @property
    def newest_out(self) -> int | None:
        """Highest extended output sequence number assigned so far (None before the first forwarded packet).

        That is the newest forwarded packet's, or a packet's lost upstream just before a dropped newest one.
        """
        if self._start_in is None:
            return None
        return self._newest_in + self._delta

    def forward(self, ext_in: int) -> int | None:
        """Extended output sequence number for a packet being forwarded, or None if it must not be forwarded.

        None for packets older than the first forwarded one, older than the history window, or deliberately dropped
        before (a later copy of a dropped packet must not take the output number its successor now owns).
        """
        if ext_in > self._newest_in and self._start_in is not None:
            # In-order fast path: the current delta applies.
            out = ext_in + self._delta
            self._newest_in = ext_in
            if ext_in >= self._prune_at:
                self._prune()
            return out
        if self._start_in is None:
            self._start(ext_in)
            return self._first_out
        return self._lookup(ext_in)

    def drop(self, ext_in: int) -> None:
        """Record a packet deliberately not forwarded to this subscriber (padding-only probe, filtered layer).

        Newest: later packets shift down by one so the subscriber sees no hole (it would NACK a hole forever).
        Late (not newer than the newest seen): the hole cannot be closed; remember it so reverse() says None.
        Before the first forwarded packet: nothing to do, those are never forwarded anyway.
        Gaps from upstream loss are not touched: they are real losses the subscriber should NACK.
        """
        start = self._start_in
        if start is None or ext_in < start:
            return
        if ext_in > self._newest_in:
            self._newest_in = ext_in
            self._delta -= 1
            if self._in_starts[-1] == ext_in:
                # The previous drop was ext_in - 1 and nothing was seen since: widen that boundary in place.
                self._in_starts[-1] = ext_in + 1
                self._deltas[-1] = self._delta
                # _out_starts[-1] is unchanged: ext_in + 1 + (delta - 1) == ext_in + delta.
            else:
                self._in_starts.append(ext_in + 1)
                self._deltas.append(self._delta)
                self._out_starts.append(ext_in + 1 + self._delta)
            if ext_in >= self._prune_at:
                self._prune()
            return
        if ext_in >= self._newest_in - SEQ_HISTORY_PACKETS:
            self._holes.add(ext_in)

    def reverse(self, out_seq16: int) -> int | None:
        """Extended input sequence number behind a subscriber's NACKed 16-bit output sequence number.

        None when that output number was never assigned: before the start, beyond the newest, older than the
        history window, or a hole left by a late drop.
        """
        if self._start_in is None:
            return None
        newest_out = self._newest_in + self._delta
        back = (newest_out - out_seq16) & SEQ_MASK  # how far behind the newest output, 0..65535
        if back >= SEQ_HALF:
            return None  # ahead of the newest (never assigned yet) or too far back to be unambiguous
        ext_out = newest_out - back
        i = bisect_right(self._out_starts, ext_out) - 1
        if i < 0:
            return None  # before the start (or in a forgotten range)
        ext_in = ext_out - self._deltas[i]
        if ext_in < self._newest_in - SEQ_HISTORY_PACKETS or ext_in in self._holes:
            return None
        return ext_in

    # -- internals (off the in-order fast path) --

    def _start(self, ext_in: int) -> None:
        delta = self._first_out - ext_in
        self._start_in = ext_in
        self._newest_in = ext_in
        self._delta = delta
        self._in_starts = [ext_in]
        self._out_starts = [self._first_out]
        self._deltas = [delta]
        self._prune_at = ext_in + SEQ_PRUNE_EVERY_PACKETS

    def _lookup(self, ext_in: int) -> int | None:
        """Output for a late, reordered or duplicate packet (not newer than the newest seen)."""
        start = self._start_in
        if start is None or ext_in < start or ext_in < self._newest_in - SEQ_HISTORY_PACKETS:
            return None
        starts = self._in_starts
        i = bisect_right(starts, ext_in) - 1
        if i < 0:
            return None  # in a forgotten range (cannot happen inside the window; defensive)
        delta = self._deltas[i]
        if i + 1 < len(starts) and ext_in >= starts[i + 1] - (delta - self._deltas[i + 1]):
            return None  # it was dropped as the newest: its output number now belongs to a later packet
        if ext_in in self._holes:
            return None
        return ext_in + delta

    def _prune(self) -> None:
        """Forget ranges and holes entirely older than the history window (amortised: once per prune interval)."""
        horizon = self._newest_in - SEQ_HISTORY_PACKETS
        starts = self._in_starts
        # Keep the range covering the horizon: drop range 0 while range 1 already starts at or before it.
        k = bisect_right(starts, horizon) - 1
        if k > 0:
            del starts[:k]
            del self._out_starts[:k]
            del self._deltas[:k]
        if self._holes:
            self._holes = {h for h in self._holes if h >= horizon}
        self._prune_at = self._newest_in + SEQ_PRUNE_EVERY_PACKETS


class TsMap:
    """Maps a publisher stream's 32-bit RTP timestamps to one subscriber's: out = (in + offset) mod 2**32."""

    __slots__ = ("_offset",)

    def __init__(self, offset: int) -> None:
        self._offset = offset & TS_MASK

    @property
    def offset(self) -> int:
        return self._offset

    def map(self, ts32: int) -> int:
        return (ts32 + self._offset) & TS_MASK

    def rebase(self, in_ts32: int, out_ts32: int) -> None:
        """From now on ``in_ts32`` maps to ``out_ts32``.

        Used when a subscriber is switched to another publisher stream and must keep seeing continuous timestamps.
        """
        self._offset = (out_ts32 - in_ts32) & TS_MASK

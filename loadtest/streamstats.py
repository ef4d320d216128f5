"""Receive-side figures of one RTP stream, from headers only: loss from sequence gaps (after retransmission),
duplicates, retransmissions. Pure: no clock, no I/O (jitter comes from aiortc's own RFC 3550 StreamStatistics,
which the classroom also feeds for its receiver reports)."""

from __future__ import annotations

MAX_TRACKED_MISSING = 4096  # gaps older than this many packets are counted lost for good


def seq_delta(a: int, b: int) -> int:
    """a - b for 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 32768) & 0xFFFF) - 32768


class SeqCounter:
    """Unwraps 16-bit sequence numbers and counts received, missing, recovered and duplicate packets."""

    __slots__ = ("base", "duplicates", "given_up", "highest", "missing", "received", "recovered")

    def __init__(self) -> None:
        self.base: int | None = None  # extended sequence number of the first packet
        self.highest = -1  # highest extended sequence number seen
        self.received = 0  # distinct packets (originals and repairs)
        self.duplicates = 0
        self.recovered = 0  # holes filled later (retransmission or reordering)
        self.missing: set[int] = set()
        self.given_up = 0  # holes dropped from `missing` when it grew past MAX_TRACKED_MISSING

    def add(self, seq16: int) -> list[int]:
        """Count one packet; returns the 16-bit sequence numbers of a new gap it revealed (to NACK)."""
        if self.base is None:
            self.base = self.highest = seq16
            self.received = 1
            return []
        ext = self.highest + seq_delta(seq16, self.highest & 0xFFFF)
        if ext > self.highest:
            gap = list(range(self.highest + 1, ext)) if ext > self.highest + 1 else []
            self.highest = ext
            self.received += 1
            if gap:
                self.missing.update(gap)
                if len(self.missing) > MAX_TRACKED_MISSING:
                    oldest = sorted(self.missing)[:len(self.missing) - MAX_TRACKED_MISSING]
                    self.missing.difference_update(oldest)
                    self.given_up += len(oldest)
                return [s & 0xFFFF for s in gap[-64:]]
            return gap
        self._fill(ext)
        return []

    def repair(self, seq16: int) -> None:
        """A retransmission (RTX) of `seq16`: fills a hole, or is a duplicate."""
        if self.base is None:
            return
        self._fill(self.highest + seq_delta(seq16, self.highest & 0xFFFF))

    def _fill(self, ext: int) -> None:
        """A packet at or below the highest: a hole filled late, or a duplicate."""
        if ext in self.missing:
            self.missing.discard(ext)
            self.recovered += 1
            self.received += 1
        else:
            self.duplicates += 1

    @property
    def expected(self) -> int:
        return 0 if self.base is None else self.highest - self.base + 1

    @property
    def lost(self) -> int:
        return len(self.missing) + self.given_up

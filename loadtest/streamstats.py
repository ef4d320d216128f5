"""Receive-side figures of one RTP stream, from headers only: loss from sequence gaps (after retransmission),
duplicates, retransmissions. Pure: no clock, no I/O (jitter comes from aiortc's own RFC 3550 StreamStatistics,
which the classroom also feeds for its receiver reports). The bookkeeping is the SFU's receive log
(sfu/rtp/receive_log.py); this adds the 16-bit unwrapping, the duplicates and the gap to NACK."""

from __future__ import annotations

from sfu.rtp.receive_log import FILLED, NEW, ReceiveLog

MAX_TRACKED_MISSING = 4096  # gaps older than this many packets are counted lost for good
NACK_GAP_MAX = 64  # of a new gap, at most the newest this many are returned to NACK


def seq_delta(a: int, b: int) -> int:
    """a - b for 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 32768) & 0xFFFF) - 32768


class SeqCounter:
    """Unwraps 16-bit sequence numbers and counts received, missing, recovered and duplicate packets."""

    __slots__ = ("duplicates", "log")

    def __init__(self) -> None:
        self.log = ReceiveLog(window=MAX_TRACKED_MISSING)
        self.duplicates = 0

    def _extend(self, seq16: int) -> int:
        highest = self.log.highest
        return highest + seq_delta(seq16, highest & 0xFFFF)

    def add(self, seq16: int) -> list[int]:
        """Count one packet; returns the 16-bit sequence numbers of a new gap it revealed (to NACK)."""
        log = self.log
        if log.base is None:
            log.add(seq16)
            return []
        before = log.highest
        ext = self._extend(seq16)
        arrived = log.add(ext)
        if arrived == NEW:
            return [s & 0xFFFF for s in range(max(before + 1, ext - NACK_GAP_MAX), ext)]
        if arrived != FILLED:
            self.duplicates += 1  # seen before, or from before the first packet
        return []

    def repair(self, seq16: int) -> None:
        """A retransmission (RTX) of `seq16`: fills a hole, or is a duplicate."""
        if self.log.base is None:
            return
        if not self.log.fill(self._extend(seq16)):
            self.duplicates += 1

    @property
    def base(self) -> int | None:
        return self.log.base

    @property
    def highest(self) -> int:
        return self.log.highest

    @property
    def received(self) -> int:
        return self.log.received

    @property
    def recovered(self) -> int:
        return self.log.recovered

    @property
    def missing(self) -> set[int]:
        return self.log.missing

    @property
    def given_up(self) -> int:
        return self.log.given_up

    @property
    def expected(self) -> int:
        return self.log.expected

    @property
    def lost(self) -> int:
        return self.log.lost

"""The receive log of one RTP stream, pure: which extended sequence numbers arrived, what was expected, received
and lost (RFC 3550 A.3), and the holes still missing (to NACK, or for a retransmission to fill).

One implementation for every place that receives a stream: the Producer (the teacher's uplink loss, for its
REMB), the receiver feedback the SFU sends for the streams aiortc does not see (sfu/rtp/feedback.py), the
simulcast demux's per-layer figures (sfu/simulcast/demux.py) and the load tester's classrooms
(loadtest/streamstats.py). Callers unwrap 16-bit numbers first (sfu.rtp.seqmap.SeqUnwrapper or their own).
No clock, no I/O; `add` returns what the packet was, as a value.
"""

from __future__ import annotations

# what `add` made of a packet
NEW = 0  # newer than everything before (the first packet too); any numbers skipped became holes
FILLED = 1  # a hole filled late (reordered, or a retransmission)
DUPLICATE = 2  # at or below the newest and not missing: seen before (or forgotten as a hole)
OLD = 3  # from before the first packet logged: not part of what is counted
RESTART = 4  # a jump wider than `restart_gap`: the counting starts again from this packet (a stream reset)


class ReceiveLog:
    """Expected, received and lost packets of one stream, and its missing sequence numbers.

    `window`: holes further than this behind the newest packet are forgotten (counted in `given_up`; they stay
    lost); 0 keeps no holes at all (only the counts). `restart_gap`: a forward jump wider than this is a reset,
    not a loss (None: never).
    """

    __slots__ = ("_prior_expected", "_prior_received", "_restart_gap", "_window", "base", "given_up", "highest",
                 "lost_before", "missing", "received", "recovered", "skipped")

    def __init__(self, window: int = 4096, restart_gap: int | None = None) -> None:
        self._window = window
        self._restart_gap = restart_gap
        self.base: int | None = None  # the first packet logged (since the last restart)
        self.highest = -1  # the newest
        self.received = 0  # distinct packets since `base`: in order, and holes filled late
        self.recovered = 0  # holes filled late
        self.skipped = 0  # holes as they appeared (whatever filled them later): a link's first-transmission loss
        self.given_up = 0  # holes forgotten beyond `window`
        self.lost_before = 0  # loss counted before the last restart (or reset)
        self.missing: set[int] = set()
        self._prior_expected = 0
        self._prior_received = 0

    def add(self, ext: int) -> int:
        """Log one packet; returns NEW, FILLED, DUPLICATE, OLD or RESTART."""
        highest = self.highest
        if ext > highest or self.base is None:
            if self.base is None:
                self.base = self.highest = ext
                self.received = 1
                return NEW
            gap = ext - highest - 1
            if gap:
                if self._restart_gap is not None and gap > self._restart_gap:
                    self.lost_before = self.lost
                    self.base = self.highest = ext
                    self.received = 1
                    self.missing.clear()
                    return RESTART
                self.skipped += gap
                self._hole(highest + 1, ext)
            self.highest = ext
            self.received += 1
            return NEW
        if ext < self.base:
            return OLD
        return FILLED if self.fill(ext) else DUPLICATE

    def fill(self, ext: int) -> bool:
        """A packet that can only repair (a retransmission): True when it filled a hole."""
        missing = self.missing
        if ext in missing:
            missing.discard(ext)
            self.received += 1
            self.recovered += 1
            return True
        return False

    def _hole(self, first: int, end: int) -> None:
        window = self._window
        floor = end - window
        if first < floor:
            self.given_up += min(end, floor) - first
            first = floor
        if first >= end:
            return
        missing = self.missing
        missing.update(range(first, end))
        if len(missing) > window:
            kept = {s for s in missing if s >= floor}
            self.given_up += len(missing) - len(kept)
            self.missing = kept

    def reset(self) -> None:
        """A new stream in the same place (a new SSRC): its loss so far is kept in `lost_before`."""
        self.lost_before = self.lost
        self.base = None
        self.highest = -1
        self.received = 0
        self.missing.clear()
        self._prior_expected = self._prior_received = 0

    @property
    def expected(self) -> int:
        """Packets the sender sent since `base`, as the sequence numbers say."""
        return 0 if self.base is None else self.highest - self.base + 1

    @property
    def lost(self) -> int:
        """Packets that never arrived (a late or retransmitted one is not lost), restarts included."""
        return self.lost_before + max(0, self.expected - self.received)

    def loss_fraction(self) -> float:
        """The share lost since `base` (0.0 before any packet)."""
        expected = self.expected
        return 0.0 if expected <= 0 else max(0, expected - self.received) / expected

    def interval(self) -> tuple[int, int]:
        """(expected, lost) since the previous call: a receiver report's fraction lost (RFC 3550 A.3)."""
        expected = self.expected
        interval_expected = expected - self._prior_expected
        interval_received = self.received - self._prior_received
        self._prior_expected, self._prior_received = expected, self.received
        return interval_expected, max(0, interval_expected - interval_received)

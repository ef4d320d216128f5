"""Receiver feedback to the teacher for the simulcast layers aiortc's stock receiver does not see.

aiortc's receiver keeps one jitter buffer and one NACK list for whatever SSRCs reach it, so only the lowest
layer is given to it (sfu/ingress.py); for the others the server itself tells the teacher's browser what it
lost (NACK, so the browser retransmits) and how the stream arrives (receiver reports: loss, highest sequence,
LSR/DLSR for the browser's round-trip time). Pure bookkeeping here; the Publisher sends the packets.
"""

from __future__ import annotations

from sfu.rtp.receive_log import ReceiveLog

# a missing packet is asked for again this often, this many times, and forgotten after this long (the
# classrooms' own NACKs for it come later and are answered from the cache once it arrives)
NACK_EVERY_S = 0.1
NACK_TRIES = 3
MISSING_FORGET_S = 1.0
MISSING_MAX = 256  # a burst beyond this is a reset, not a loss to repair packet by packet
# a packet this far behind the newest is no longer told apart from a duplicate (it is counted lost)
RECEIVE_LOG_WINDOW = 4096


class LayerFeedback:
    """Missing packets to NACK and the reception figures of one stream, as an RTP receiver keeps them (RFC 3550
    A.3): the figures in a ReceiveLog, the NACK schedule (when each hole was asked for, how often) here."""

    __slots__ = ("_missing", "log")

    def __init__(self) -> None:
        self._missing: dict[int, list[float]] = {}  # ext seq -> [first missed at, last asked at, tries]
        self.log = ReceiveLog(window=RECEIVE_LOG_WINDOW)

    # -- fed by Producer.receive ---------------------------------------------------------------------------

    def received_new(self, ext_seq: int) -> None:
        self.log.add(ext_seq)

    def missing(self, first: int, end: int, now: float) -> None:
        """Packets first .. end-1 did not arrive (a gap before `end`)."""
        if end - first > MISSING_MAX:
            first = end - MISSING_MAX
        for seq in range(first, end):
            self._missing[seq] = [now, float("-inf"), 0]  # first missed, last asked (never), tries
        if len(self._missing) > MISSING_MAX:
            for seq in sorted(self._missing)[:len(self._missing) - MISSING_MAX]:
                del self._missing[seq]

    def repaired(self, ext_seq: int) -> None:
        """A late or retransmitted packet arrived."""
        self._missing.pop(ext_seq, None)
        self.log.add(ext_seq)

    # -- read by the Publisher -----------------------------------------------------------------------------

    def nacks(self, now: float) -> list[int]:
        """The 16-bit sequence numbers to ask for now."""
        out = []
        for seq, entry in list(self._missing.items()):
            if now - entry[0] > MISSING_FORGET_S or entry[2] >= NACK_TRIES:
                del self._missing[seq]
            elif now - entry[1] >= NACK_EVERY_S:
                entry[1], entry[2] = now, entry[2] + 1
                out.append(seq & 0xFFFF)
        return out

    def report(self) -> tuple[int, int, int] | None:
        """(fraction lost since the last report in 1/256, cumulative lost, extended highest seq), or None
        before the first packet."""
        log = self.log
        if log.base is None:
            return None
        interval_expected, interval_lost = log.interval()
        fraction = (interval_lost << 8) // interval_expected if interval_expected > 0 and interval_lost > 0 else 0
        return min(fraction, 255), min(log.lost, 0x7FFFFF), log.highest & 0xFFFFFFFF

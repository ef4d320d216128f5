"""A short-lived cache of one publisher track's recent packets, keyed by extended sequence number.

It answers subscribers' NACKs and replays the latest keyframe to a late joiner. The clock is always passed in.
"""

from __future__ import annotations

from collections import deque

# seconds a packet is kept after its arrival. Receivers ask again for a packet whose retransmission was lost too:
# Chromium every round trip, up to 10 times (over 3 s at a rural 316 ms), aiortc only at its next new loss (often
# more than 2 s later at 1-3 % loss); an answer that comes too late for the picture still unblocks a receiver whose
# jitter buffer waits behind the hole
PACKET_CACHE_S = 4.0
PACKET_CACHE_MAX = 4096  # packets kept at most, whatever their age: bounds memory on a high-rate stream


class PacketCache:
    """Recent packets of one publisher track, by extended sequence number, kept for a time.

    Each entry is one ``(arrival, seq, item)`` tuple held both by the dict (lookup by seq) and by the deque (arrival
    order, for eviction). A re-added seq gets a new tuple, so the old tuple still in the deque is recognised as stale
    by identity and can never evict the newer copy.
    """

    __slots__ = ("_max_age_s", "_max_packets", "_entries", "_arrivals", "_newest")

    def __init__(self, max_age_s: float = PACKET_CACHE_S, max_packets: int = PACKET_CACHE_MAX) -> None:
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        if max_packets < 1:
            raise ValueError(f"max_packets must be at least 1, got {max_packets}")
        self._max_age_s = max_age_s
        self._max_packets = max_packets
        self._entries: dict[int, tuple[float, int, object]] = {}
        self._arrivals: deque[tuple[float, int, object]] = deque()
        # Upper bound on the newest seq present; exact whenever it is itself present (checked lazily).
        self._newest: int | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, ext_seq: int, item: object, now: float) -> None:
        """Store ``item`` under ``ext_seq`` (a duplicate replaces the older copy), then evict what is too old or too many."""
        entry = (now, ext_seq, item)
        self._entries[ext_seq] = entry
        self._arrivals.append(entry)
        newest = self._newest
        if newest is None or ext_seq > newest:
            self._newest = ext_seq
        self.expire(now)

    def expire(self, now: float) -> None:
        """Evict entries that arrived before ``now - max_age_s``, then the oldest arrivals beyond ``max_packets``."""
        cutoff = now - self._max_age_s
        entries = self._entries
        arrivals = self._arrivals
        max_packets = self._max_packets
        while arrivals:
            head = arrivals[0]
            seq = head[1]
            if entries.get(seq) is not head:
                arrivals.popleft()  # stale: this seq was re-added later (or already evicted)
            elif head[0] < cutoff or len(entries) > max_packets:
                arrivals.popleft()
                del entries[seq]
            else:
                break

    def get(self, ext_seq: int) -> object | None:
        entry = self._entries.get(ext_seq)
        return None if entry is None else entry[2]

    def since(self, ext_seq: int) -> list[object]:
        """Items with seq >= ``ext_seq`` in seq order, skipping absent ones (for keyframe replay)."""
        entries = self._entries
        newest = self.newest_seq
        if newest is None or ext_seq > newest:
            return []
        if newest - ext_seq < 2 * len(entries):
            # Dense span (the usual case: ext_seq is a recent keyframe start): walk it in order.
            out = []
            for seq in range(ext_seq, newest + 1):
                entry = entries.get(seq)
                if entry is not None:
                    out.append(entry[2])
            return out
        # Sparse span (ext_seq far back, or a sequence jump): sort the few keys instead of walking the gap.
        return [entries[seq][2] for seq in sorted(s for s in entries if s >= ext_seq)]

    @property
    def newest_seq(self) -> int | None:
        newest = self._newest
        if newest is not None and newest not in self._entries:
            # The highest seq was evicted (rare: it arrived before lower ones); recompute.
            newest = self._newest = max(self._entries) if self._entries else None
        return newest

    @property
    def oldest_seq(self) -> int | None:
        """Lowest seq present. O(n): for stats and tests, not the per-packet path."""
        return min(self._entries) if self._entries else None

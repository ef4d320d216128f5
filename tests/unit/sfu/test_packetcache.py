"""Table-driven tests for sfu/rtp/packetcache.py. The clock is injected: every add() says what time it is."""

from __future__ import annotations

import pytest

from sfu.rtp.packetcache import PACKET_CACHE_MAX, PACKET_CACHE_S, PacketCache

# Each step is (operation, argument, expected):
#   "add"    (seq, item, now)  -> expected is None
#   "get"    seq               -> item or None
#   "since"  seq               -> list of items
#   "len" / "newest" / "oldest" -> value
Step = tuple[str, object, object]

SCENARIOS = [
    pytest.param(
        {},
        [("len", None, 0), ("newest", None, None), ("oldest", None, None), ("get", 1, None), ("since", 0, [])],
        id="an empty cache has nothing",
    ),
    pytest.param(
        {},
        [("add", (100, "a", 0.0), None), ("add", (101, "b", 0.02), None), ("get", 100, "a"), ("get", 101, "b"),
         ("get", 102, None), ("len", None, 2), ("newest", None, 101), ("oldest", None, 100)],
        id="stored packets are returned by extended sequence number",
    ),
    pytest.param(
        {"max_age_s": 2.0},
        [("add", (1, "a", 0.0), None), ("add", (2, "b", 1.0), None), ("add", (3, "c", 2.0), None),
         ("get", 1, "a"), ("add", (4, "d", 2.01), None), ("get", 1, None), ("get", 2, "b"), ("len", None, 3),
         ("oldest", None, 2)],
        id="packets are evicted once older than max_age_s, and a packet exactly max_age_s old is kept",
    ),
    pytest.param(
        {"max_age_s": 2.0},
        [("add", (1, "a", 0.0), None), ("add", (2, "b", 0.5), None), ("add", (3, "c", 10.0), None),
         ("get", 1, None), ("get", 2, None), ("len", None, 1), ("newest", None, 3), ("oldest", None, 3)],
        id="after a long pause every old packet is evicted at the next add",
    ),
    pytest.param(
        {"max_packets": 3},
        [("add", (1, "a", 0.0), None), ("add", (2, "b", 0.0), None), ("add", (3, "c", 0.0), None),
         ("add", (4, "d", 0.0), None), ("add", (5, "e", 0.0), None), ("len", None, 3), ("get", 1, None),
         ("get", 2, None), ("get", 3, "c"), ("oldest", None, 3), ("newest", None, 5)],
        id="beyond max_packets the oldest arrivals are evicted",
    ),
    pytest.param(
        {"max_packets": 3},
        [("add", (10, "x", 0.0), None), ("add", (5, "late", 0.1), None), ("add", (11, "y", 0.2), None),
         ("add", (12, "z", 0.3), None), ("get", 10, None), ("get", 5, "late"), ("oldest", None, 5)],
        id="max_packets evicts by arrival order, not by sequence number",
    ),
    pytest.param(
        {"max_packets": 2},
        [("add", (10, "x", 0.0), None), ("add", (5, "late", 0.1), None), ("add", (6, "y", 0.2), None),
         ("get", 10, None), ("newest", None, 6), ("oldest", None, 5)],
        id="the newest sequence number is recomputed when it is the one evicted",
    ),
    pytest.param(
        {"max_age_s": 2.0},
        [("add", (1, "old", 0.0), None), ("add", (2, "b", 0.5), None), ("add", (1, "new", 1.5), None),
         ("get", 1, "new"), ("len", None, 2), ("add", (3, "c", 2.2), None), ("get", 1, "new"), ("get", 2, "b"),
         ("add", (4, "d", 2.6), None), ("get", 2, None), ("get", 1, "new"), ("add", (5, "e", 3.6), None),
         ("get", 1, None)],
        id="a duplicate replaces the item and keeps the newer arrival, so the stale entry never evicts it",
    ),
    pytest.param(
        {"max_packets": 2},
        [("add", (1, "old", 0.0), None), ("add", (2, "b", 0.1), None), ("add", (1, "new", 0.2), None),
         ("len", None, 2), ("get", 1, "new"), ("get", 2, "b"), ("add", (3, "c", 0.3), None), ("get", 2, None),
         ("get", 1, "new"), ("get", 3, "c")],
        id="a re-added packet counts as a recent arrival for max_packets",
    ),
    pytest.param(
        {"max_packets": 2},
        [("add", (1, "a", 0.0), None), ("add", (1, "b", 0.0), None), ("add", (1, "c", 0.0), None),
         ("add", (1, "d", 0.0), None), ("len", None, 1), ("get", 1, "d"), ("add", (2, "e", 0.0), None),
         ("len", None, 2), ("get", 1, "d")],
        id="many duplicates at one instant leave exactly one live entry",
    ),
    pytest.param(
        {},
        [("add", (10, "a", 0.0), None), ("add", (11, "b", 0.0), None), ("add", (13, "d", 0.0), None),
         ("add", (12, "c", 0.0), None), ("since", 11, ["b", "c", "d"]), ("since", 0, ["a", "b", "c", "d"]),
         ("since", 13, ["d"]), ("since", 14, [])],
        id="since returns items from a sequence number on in sequence order even when added out of order",
    ),
    pytest.param(
        {},
        [("add", (10, "a", 0.0), None), ("add", (12, "c", 0.0), None), ("add", (15, "f", 0.0), None),
         ("since", 11, ["c", "f"])],
        id="since skips sequence numbers that are missing",
    ),
    pytest.param(
        {},
        [("add", (10, "a", 0.0), None), ("add", (1_000_000, "z", 0.0), None), ("add", (11, "b", 0.0), None),
         ("since", 5, ["a", "b", "z"]), ("since", 12, ["z"])],
        id="since across a huge sequence jump returns the present items in order",
    ),
    pytest.param(
        {"max_age_s": 1.0},
        [("add", (10, "a", 0.0), None), ("add", (11, "b", 0.5), None), ("add", (12, "c", 1.2), None),
         ("since", 10, ["b", "c"])],
        id="since does not return evicted items",
    ),
]


def _run(kwargs: dict, steps: list[Step]) -> None:
    cache = PacketCache(**kwargs)
    for i, (op, arg, expected) in enumerate(steps):
        if op == "add":
            seq, item, now = arg  # type: ignore[misc]
            got = cache.add(seq, item, now)  # type: ignore[func-returns-value]
        elif op == "get":
            got = cache.get(arg)  # type: ignore[arg-type]
        elif op == "since":
            got = cache.since(arg)  # type: ignore[arg-type]
        elif op == "len":
            got = len(cache)
        elif op == "newest":
            got = cache.newest_seq
        elif op == "oldest":
            got = cache.oldest_seq
        else:
            raise AssertionError(f"unknown op {op}")
        assert got == expected, f"step {i}: {op}({arg}) returned {got!r}, expected {expected!r}"


@pytest.mark.parametrize("kwargs, steps", SCENARIOS)
def test_packet_cache(kwargs: dict, steps: list[Step]) -> None:
    _run(kwargs, steps)


def test_defaults_are_the_named_constants() -> None:
    assert (PACKET_CACHE_S, PACKET_CACHE_MAX) == (4.0, 4096)
    cache = PacketCache()
    for seq in range(PACKET_CACHE_MAX + 10):
        cache.add(seq, seq, now=seq * 0.0001)  # 10 kpps: the count limit bites before the age limit
    assert len(cache) == PACKET_CACHE_MAX
    assert cache.oldest_seq == 10
    cache.add(PACKET_CACHE_MAX + 10, "late", now=PACKET_CACHE_S + 1.0)
    assert len(cache) == 1  # everything else arrived more than PACKET_CACHE_S ago


def test_a_steady_stream_with_duplicates_keeps_memory_bounded() -> None:
    cache = PacketCache(max_age_s=1.0, max_packets=100)
    for i in range(10_000):
        now = i * 0.001
        cache.add(i, i, now)
        cache.add(i, i, now)  # every packet retransmitted once
        assert len(cache) <= 100
    assert len(cache._arrivals) <= 2 * 100 + 2  # stale duplicate entries do not pile up


@pytest.mark.parametrize(
    "kwargs",
    [pytest.param({"max_age_s": 0.0}, id="a zero max age is refused"),
     pytest.param({"max_packets": 0}, id="a zero max_packets is refused")],
)
def test_bad_limits_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PacketCache(**kwargs)

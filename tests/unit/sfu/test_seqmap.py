"""Table-driven tests for sfu/rtp/seqmap.py: serial-number comparison, unwrapping, and the per-subscriber seq/ts maps."""

from __future__ import annotations

import random

import pytest

from sfu.rtp.seqmap import (
    SEQ_HISTORY_PACKETS,
    SeqMap,
    SeqUnwrapper,
    TsMap,
    TsUnwrapper,
    seq_newer,
)

# --- seq_newer -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, newer",
    [
        pytest.param(1, 0, True, id="one is newer than zero"),
        pytest.param(0, 1, False, id="zero is not newer than one"),
        pytest.param(5, 5, False, id="a number is not newer than itself"),
        pytest.param(0, 65535, True, id="zero is newer than 65535 across the wrap"),
        pytest.param(65535, 0, False, id="65535 is older than zero across the wrap"),
        pytest.param(32767, 0, True, id="a distance just under half the space is newer"),
        pytest.param(32769, 0, False, id="a distance just over half the space is older"),
        pytest.param(32768, 0, True, id="exactly half the space breaks the tie by the larger value"),
        pytest.param(0, 32768, False, id="exactly half the space the other way round is older"),
        pytest.param(100, 65500, True, id="a small forward step across the wrap is newer"),
    ],
)
def test_seq_newer(a: int, b: int, newer: bool) -> None:
    assert seq_newer(a, b) is newer


# --- SeqUnwrapper / TsUnwrapper -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs, expected",
    [
        pytest.param([0], [65536], id="the first value maps to itself plus 65536"),
        pytest.param([65535], [131071], id="a first value of 65535 maps to 131071"),
        pytest.param([10, 11, 12], [65546, 65547, 65548], id="in-order values count up"),
        pytest.param(
            [65534, 65535, 0, 1], [131070, 131071, 131072, 131073], id="the forward wrap from 65535 to 0 keeps counting"
        ),
        pytest.param(
            [65535, 1, 0, 65534],
            [131071, 131073, 131072, 131070],
            id="packets reordered across the wrap land before the newest",
        ),
        pytest.param([10, 5], [65546, 65541], id="a packet older than the first stays positive"),
        pytest.param([0, 65535], [65536, 65535], id="a packet just before a first value of zero unwraps backwards"),
        pytest.param([0, 32767], [65536, 98303], id="a jump just under half the space is forward"),
        pytest.param([0, 32769], [65536, 32769], id="a jump just over half the space is a late packet"),
        pytest.param([0, 32768], [65536, 98304], id="a jump of exactly half the space to a larger value is forward"),
        pytest.param([32768, 0], [98304, 65536], id="a jump of exactly half the space to a smaller value is late"),
        pytest.param(
            [0, 30000, 60000, 24464, 54464],
            [65536, 95536, 125536, 155536, 185536],
            id="steady steps keep counting through several wraps",
        ),
        pytest.param([5, 3, 4, 6], [65541, 65539, 65540, 65542], id="late packets do not move the reference"),
    ],
)
def test_seq_unwrapper(inputs: list[int], expected: list[int]) -> None:
    u = SeqUnwrapper()
    assert [u.unwrap(s) for s in inputs] == expected


T32 = 1 << 32


@pytest.mark.parametrize(
    "inputs, expected",
    [
        pytest.param([0], [T32], id="the first timestamp maps to itself plus 2 to the 32"),
        pytest.param(
            [T32 - 3000, T32 - 1, 2999, 5999],
            [2 * T32 - 3000, 2 * T32 - 1, 2 * T32 + 2999, 2 * T32 + 5999],
            id="timestamps keep counting across the 32-bit wrap",
        ),
        pytest.param(
            [T32 - 3000, 2999, T32 - 1],
            [2 * T32 - 3000, 2 * T32 + 2999, 2 * T32 - 1],
            id="a timestamp reordered across the 32-bit wrap lands before the newest",
        ),
        pytest.param([90000, 87000], [T32 + 90000, T32 + 87000], id="an older timestamp is not a wrap"),
    ],
)
def test_ts_unwrapper(inputs: list[int], expected: list[int]) -> None:
    u = TsUnwrapper()
    assert [u.unwrap(t) for t in inputs] == expected


# --- SeqMap: scenario tables ------------------------------------------------------------------------------------------
# Each step is (operation, argument, expected):
#   "fwd"   forward(extended input)            -> expected extended output or None
#   "drop"  drop(extended input)               -> expected is always None
#   "fwd16" unwrap a 16-bit input, forward it   -> expected extended output or None
#   "run"   forward (start, count) consecutive inputs -> expected output of the last
#   "rev"   reverse(16-bit output)             -> expected extended input or None
#   "newest" newest_out                         -> expected

Step = tuple[str, object, object]

SEQMAP_SCENARIOS = [
    pytest.param(
        100,
        [("newest", None, None), ("rev", 100, None), ("fwd", 50000, 100), ("fwd", 50001, 101), ("fwd", 50002, 102),
         ("rev", 101, 50001), ("newest", None, 102)],
        id="starting in the middle of a stream maps the first packet to first_out",
    ),
    pytest.param(
        7,
        [("fwd16", 65533, 7), ("fwd16", 65534, 8), ("fwd16", 65535, 9), ("fwd16", 0, 10), ("fwd16", 1, 11),
         ("rev", 10, 131072)],
        id="a 16-bit input wrap is contiguous once unwrapped",
    ),
    pytest.param(
        0,
        [("fwd16", 65534, 0), ("fwd16", 1, 3), ("fwd16", 65535, 1), ("fwd16", 0, 2), ("rev", 1, 131071)],
        id="packets reordered across the 16-bit input wrap fill their own slots",
    ),
    pytest.param(
        32767,
        [("fwd", 1000, 32767), ("run", (1001, 32768), 65535), ("fwd", 33769, 65536), ("fwd", 33770, 65537),
         ("rev", 0, 33769), ("rev", 65535, 33768), ("rev", 1, 33770), ("rev", 2, None)],
        id="the output keeps counting past 65535 and reverse takes 16-bit numbers across that wrap",
    ),
    pytest.param(
        0,
        [("fwd", 10, 0), ("fwd", 11, 1), ("fwd", 14, 4), ("rev", 2, 12), ("rev", 3, 13), ("fwd", 12, 2),
         ("newest", None, 4)],
        id="gaps from upstream loss are kept so the subscriber can nack them",
    ),
    pytest.param(
        0,
        [("fwd", 10, 0), ("drop", 11, None), ("fwd", 12, 1), ("drop", 13, None), ("drop", 14, None),
         ("fwd", 15, 2), ("rev", 1, 12), ("rev", 2, 15), ("rev", 3, None), ("newest", None, 2)],
        id="dropping the newest packet closes the gap",
    ),
    pytest.param(
        0,
        [("fwd", 10, 0), ("drop", 11, None), ("drop", 12, None), ("fwd", 13, 1),
         ("fwd", 11, None), ("fwd", 12, None), ("fwd", 13, 1), ("fwd", 10, 0)],
        id="a late copy of a packet dropped as newest is not forwarded onto its successor's number",
    ),
    pytest.param(
        0,
        [("fwd", 10, 0), ("drop", 13, None), ("newest", None, 2), ("rev", 2, 12), ("rev", 3, None),
         ("fwd", 14, 3), ("rev", 1, 11), ("rev", 2, 12), ("rev", 3, 14),
         ("fwd", 11, 1), ("fwd", 13, None)],
        id="dropping the newest after an upstream loss closes only the dropped slot",
    ),
    pytest.param(
        0,
        [("fwd", 10, 0), ("fwd", 12, 2), ("drop", 11, None), ("fwd", 13, 3), ("rev", 1, None), ("rev", 2, 12),
         ("fwd", 11, None)],
        id="dropping a late packet leaves a hole that reverse reports as never assigned",
    ),
    pytest.param(
        0,
        [("fwd", 10, 0), ("fwd", 11, 1), ("drop", 11, None), ("rev", 1, None), ("fwd", 12, 2)],
        id="dropping the newest after it was forwarded cannot take it back and leaves a hole",
    ),
    pytest.param(
        0,
        [("fwd", 10, 0), ("fwd", 13, 3), ("fwd", 11, 1), ("fwd", 12, 2), ("fwd", 14, 4), ("newest", None, 4)],
        id="reordered packets map to their own slots",
    ),
    pytest.param(
        0,
        [("fwd", 20, 0), ("fwd", 22, 2), ("drop", 23, None), ("fwd", 24, 3), ("fwd", 21, 1), ("drop", 25, None),
         ("fwd", 26, 4), ("rev", 1, 21), ("rev", 3, 24), ("rev", 4, 26)],
        id="a late packet maps through the offset in force at its position",
    ),
    pytest.param(
        1000,
        [("fwd", 5000, 1000), ("fwd", 5001, 1001), ("rev", 999, None), ("rev", 1002, None), ("rev", 1001, 5001),
         ("rev", 0, None), ("rev", 1000 + 32768, None)],
        id="reverse of outputs before the start or beyond the newest is none",
    ),
    pytest.param(
        1000,
        [("drop", 4998, None), ("fwd", 5000, 1000), ("fwd", 4999, None), ("drop", 4997, None),
         ("fwd", 5001, 1001), ("rev", 999, None)],
        id="packets older than the first forwarded one are never forwarded",
    ),
    pytest.param(
        0,
        [("fwd", 10, 0), ("fwd", 11, 1), ("fwd", 11, 1), ("fwd", 10, 0), ("fwd", 12, 2), ("fwd", 11, 1),
         ("newest", None, 2)],
        id="retransmitted duplicates map to the same output again",
    ),
    pytest.param(
        0,
        [("fwd", 10, 0), ("fwd", 11, 1), ("fwd", 12 + SEQ_HISTORY_PACKETS, 2 + SEQ_HISTORY_PACKETS),
         ("fwd", 11, None), ("fwd", 12, 2), ("rev", 1, None), ("rev", 2, 12)],
        id="packets older than the history window are refused",
    ),
]


def _run_seqmap(first_out: int, steps: list[Step]) -> None:
    m = SeqMap(first_out)
    unwrapper = SeqUnwrapper()
    for i, (op, arg, expected) in enumerate(steps):
        if op == "fwd":
            got = m.forward(arg)  # type: ignore[arg-type]
        elif op == "drop":
            got = m.drop(arg)  # type: ignore[arg-type,func-returns-value]
        elif op == "fwd16":
            got = m.forward(unwrapper.unwrap(arg))  # type: ignore[arg-type]
        elif op == "run":
            start, count = arg  # type: ignore[misc]
            got = None
            for ext_in in range(start, start + count):
                got = m.forward(ext_in)
        elif op == "rev":
            got = m.reverse(arg)  # type: ignore[arg-type]
        elif op == "newest":
            got = m.newest_out
        else:
            raise AssertionError(f"unknown op {op}")
        assert got == expected, f"step {i}: {op}({arg}) returned {got}, expected {expected}"


@pytest.mark.parametrize("first_out, steps", SEQMAP_SCENARIOS)
def test_seqmap(first_out: int, steps: list[Step]) -> None:
    _run_seqmap(first_out, steps)


def test_seqmap_refuses_a_negative_first_out() -> None:
    with pytest.raises(ValueError):
        SeqMap(-1)


def test_seqmap_resumed_at_a_high_extended_output_continues_from_it() -> None:
    # a subscriber switched to a new publisher stream keeps its own output sequence going
    m = SeqMap(70000)
    assert [m.forward(s) for s in (500, 501, 503)] == [70000, 70001, 70003]
    assert m.reverse(70001 & 0xFFFF) == 501


def test_seqmap_egress_numbers_are_contiguous_mod_65536_across_the_output_wrap() -> None:
    m = SeqMap(32000)
    out16 = [m.forward(ext_in) & 0xFFFF for ext_in in range(70000, 70000 + 40000)]  # type: ignore[operator]
    assert out16[0] == 32000
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(out16, out16[1:]))
    assert 65535 in out16 and 0 in out16


# --- SeqMap against a brute-force model ---------------------------------------------------------------------------


class _ModelSeqMap:
    """Obviously-correct reference: remembers every slot explicitly (unbounded memory, fine for a test)."""

    def __init__(self, first_out: int) -> None:
        self.first_out = first_out
        self.start: int | None = None
        self.newest_in = 0
        self.cur = 0  # output of the newest input, or where it would have been had it not been dropped
        self.slot: dict[int, int] = {}  # input -> output, for forwarded and lost-upstream inputs
        self.dropped: set[int] = set()

    def _advance(self, x: int) -> None:
        for y in range(self.newest_in + 1, x):
            self.slot[y] = self.cur + (y - self.newest_in)
        self.cur += x - self.newest_in
        self.newest_in = x

    def forward(self, x: int) -> int | None:
        if self.start is None:
            self.start = self.newest_in = x
            self.cur = self.slot[x] = self.first_out
            return self.first_out
        if x > self.newest_in:
            self._advance(x)
            self.slot[x] = self.cur
            return self.cur
        if x < self.start or x in self.dropped:
            return None
        return self.slot.get(x)

    def drop(self, x: int) -> None:
        if self.start is None or x < self.start:
            return
        if x > self.newest_in:
            self._advance(x)
            self.cur -= 1
        self.dropped.add(x)

    def reverse(self, out16: int) -> int | None:
        for x, o in self.slot.items():
            if o & 0xFFFF == out16 and x not in self.dropped and o <= self.cur:
                return x
        return None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_seqmap_matches_a_brute_force_model_under_loss_reordering_and_drops(seed: int) -> None:
    rng = random.Random(seed)
    first_out = rng.randrange(0, 32768)
    m, ref = SeqMap(first_out), _ModelSeqMap(first_out)
    unwrapper = SeqUnwrapper()
    seq16 = rng.randrange(0, 65536)
    recent: list[int] = []
    for _ in range(60000):  # long enough to wrap both input and output and to prune the history several times
        r = rng.random()
        if r < 0.03 and recent:
            ext_in = rng.choice(recent)  # late / reordered / duplicate
        else:
            seq16 = (seq16 + (1 if rng.random() < 0.95 else rng.randrange(2, 6))) & 0xFFFF  # upstream loss
            ext_in = unwrapper.unwrap(seq16)
            recent = (recent + [ext_in])[-40:]
        if rng.random() < 0.15:
            m.drop(ext_in)
            ref.drop(ext_in)
        else:
            assert m.forward(ext_in) == ref.forward(ext_in), f"forward({ext_in})"
    assert m.newest_out == ref.cur
    # NACKs for the last few hundred outputs (and a few beyond the newest) agree with the model.
    newest16 = ref.cur & 0xFFFF
    ref_by_out = {o & 0xFFFF: x for x, o in ref.slot.items() if x not in ref.dropped and o > ref.cur - 400}
    for back in range(-5, 300):
        out16 = (newest16 - back) & 0xFFFF
        assert m.reverse(out16) == (ref_by_out.get(out16) if back >= 0 else None), f"reverse({out16})"


# --- TsMap ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offset, rebase, ts_in, expected",
    [
        pytest.param(1000, None, 5, 1005, id="the offset is added"),
        pytest.param(1000, None, T32 - 1, 999, id="the output wraps at 2 to the 32"),
        pytest.param(-10, None, 5, T32 - 5, id="a negative offset wraps below zero"),
        pytest.param(T32 + 7, None, 1, 8, id="an offset beyond 32 bits is reduced"),
        pytest.param(0, (3000, 90000), 6000, 93000, id="after a rebase the given input maps to the given output"),
        pytest.param(
            0, (T32 - 1000, 500), 2000, 3500, id="a rebase across the 32-bit wrap keeps later timestamps continuous"
        ),
        pytest.param(0, (500, T32 - 1000), 3500, 2000, id="a rebase onto an output near the wrap wraps forward"),
    ],
)
def test_tsmap(offset: int, rebase: tuple[int, int] | None, ts_in: int, expected: int) -> None:
    m = TsMap(offset)
    if rebase is not None:
        m.rebase(*rebase)
        assert m.map(rebase[0]) == rebase[1]
    assert m.map(ts_in) == expected

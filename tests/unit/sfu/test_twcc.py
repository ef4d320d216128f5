"""transport-cc on the send side: the feedback parser (hand-built packets of each chunk kind, wrap-around, truncated
and lying input), the transport-wide numbering and its ring, and the extension block the consumers write."""

from __future__ import annotations

import random
import struct

import pytest

from sfu.rtp.header import (
    RTP_HEADER,
    TWCC_HEADER,
    ExtensionLayout,
    find_extension,
    parse_header,
)
from sfu.rtp.twcc import (
    MAX_STATUSES,
    RING,
    WIRE_OVERHEAD,
    FeedbackError,
    TransportSeq,
    parse_feedback,
    split_compound,
)


def rtcp(fmt: int, pt: int, body: bytes, padding: int = 0) -> bytes:
    if padding:
        body += bytes(padding - 1) + bytes((padding,))
    assert len(body) % 4 == 0
    return struct.pack("!BBH", 0x80 | (0x20 if padding else 0) | fmt, pt, len(body) // 4) + body


def feedback(base: int, count: int, chunks: list[int], deltas: bytes, reference: int = 0, fb_count: int = 0,
             padding: int = 0) -> bytes:
    body = struct.pack("!IIHHI", 1, 2, base, count, (reference << 8) | fb_count)
    body += b"".join(struct.pack("!H", c) for c in chunks) + deltas
    while len(body) % 4:
        body += b"\x00"
    return rtcp(15, 205, body, padding)


def run_length(symbol: int, run: int) -> int:
    return (symbol << 13) | run


def vector1(bits: list[int]) -> int:
    assert len(bits) == 14
    return 0x8000 | sum(b << (13 - i) for i, b in enumerate(bits))


def vector2(symbols: list[int]) -> int:
    assert len(symbols) == 7
    return 0xC000 | sum(s << (12 - 2 * i) for i, s in enumerate(symbols))


# -- parsing ----------------------------------------------------------------------------------------------------


def test_run_length_chunk_of_small_deltas() -> None:
    fb = parse_feedback(feedback(100, 3, [run_length(1, 3)], bytes([4, 8, 255]), reference=7, fb_count=9))
    assert fb.base_seq == 100 and fb.count == 3 and fb.reference == 7 and fb.fb_count == 9
    assert fb.received == ((100, 4), (101, 8), (102, 255)) and fb.lost == ()


def test_run_length_of_lost_packets_needs_no_deltas() -> None:
    fb = parse_feedback(feedback(10, 5, [run_length(0, 5)], b""))
    assert fb.received == () and fb.lost == (10, 11, 12, 13, 14)


def test_one_bit_vector() -> None:
    bits = [1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    fb = parse_feedback(feedback(0, 14, [vector1(bits)], bytes([1, 2, 3, 4])))
    assert [s for s, _ in fb.received] == [0, 2, 3, 13]
    assert [d for _, d in fb.received] == [1, 2, 3, 4]
    assert len(fb.lost) == 10


def test_two_bit_vector_with_large_and_negative_deltas() -> None:
    # received small, large (+1000 units), lost, large negative (-8 units), small; two beyond the count ignored
    chunk = vector2([1, 2, 0, 2, 1, 1, 1])
    deltas = bytes([5]) + struct.pack("!h", 1000) + struct.pack("!h", -8) + bytes([6])
    fb = parse_feedback(feedback(65534, 5, [chunk], deltas))
    assert fb.received == ((65534, 5), (65535, 1000), (1, -8), (2, 6))  # the sequence wraps at 16 bits
    assert fb.lost == (0,)


def test_mixed_chunks_and_padding() -> None:
    chunks = [run_length(1, 2), vector1([0] * 13 + [1]), run_length(2, 1)]
    deltas = bytes([1, 1, 9]) + struct.pack("!h", 300)
    fb = parse_feedback(feedback(500, 17, chunks, deltas, padding=4))
    assert [s for s, _ in fb.received] == [500, 501, 515, 516]
    assert fb.received[-1] == (516, 300)


@pytest.mark.parametrize("mutate", [
    lambda d: d[:19],  # shorter than the fixed part
    lambda d: d[:-4],  # length field says more than there is
    lambda d: d[:1] + b"\xce" + d[2:],  # another payload type (206)
    lambda d: bytes([0x8E]) + d[1:],  # another feedback type
    lambda d: d[:14] + b"\x00\x00" + d[16:],  # status count 0
])
def test_malformed_packets_are_refused(mutate) -> None:
    good = feedback(1, 3, [run_length(1, 3)], bytes([1, 2, 3]))
    parse_feedback(good)
    with pytest.raises(FeedbackError):
        parse_feedback(mutate(good))


def test_lying_counts_are_refused() -> None:
    # more statuses than chunks; more received than deltas; a run of 0; the reserved symbol; a huge count
    with pytest.raises(FeedbackError, match="status chunks end"):
        parse_feedback(feedback(0, 20, [run_length(1, 3), run_length(1, 3)], b""))
    with pytest.raises(FeedbackError, match="deltas end"):
        parse_feedback(feedback(0, 8, [run_length(1, 8)], bytes([1, 2])))
    with pytest.raises(FeedbackError, match="length 0"):
        parse_feedback(feedback(0, 1, [run_length(1, 0)], bytes([1])))
    with pytest.raises(FeedbackError, match="reserved"):
        parse_feedback(feedback(0, 1, [run_length(3, 1)], b""))
    with pytest.raises(FeedbackError, match="at most"):
        parse_feedback(feedback(0, MAX_STATUSES + 1, [run_length(0, 8191)] * 2, b""))


def test_garbage_never_raises_anything_else() -> None:
    rng = random.Random(5)
    good = feedback(1000, 30, [run_length(1, 10), vector2([1, 2, 0, 1, 1, 0, 2]), vector1([1] * 14)],
                    bytes(10) + struct.pack("!h", 5) + bytes(3) + struct.pack("!h", -5) + bytes(14))
    parse_feedback(good)
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = bytes(data[:rng.randrange(len(data) + 1)]) if rng.random() < 0.3 else bytes(data)
        try:
            fb = parse_feedback(cut)
        except FeedbackError:
            continue
        assert len(fb.received) + len(fb.lost) == fb.count <= MAX_STATUSES


def test_split_compound_takes_feedback_out() -> None:
    rr = rtcp(0, 201, struct.pack("!I", 7))
    nack = rtcp(1, 205, struct.pack("!IIHH", 1, 2, 3, 0))
    fb = feedback(1, 1, [run_length(1, 1)], bytes([1]))
    found, rest = split_compound(rr + fb + nack)
    assert found == [fb] and rest == rr + nack
    assert split_compound(rr + nack) == ([], rr + nack)
    broken = rr + fb[:-4]
    assert split_compound(broken) == ([], broken)  # handed on whole: the stock parser refuses it


# -- numbering and matching --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_numbers_wrap_and_feedback_matches_send_times() -> None:
    clock = FakeClock()
    tcc = TransportSeq(5, clock, start=65534)
    seqs = []
    for i in range(4):
        clock.t = 100.0 + i * 0.01
        seqs.append(tcc.take(1000 + i))
    assert seqs == [65534, 65535, 0, 1] and tcc.seq == 2
    # 65534 at ref 10 (640 ms) + 4 units, 65535 lost, 0 at +1000 units, 1 at -8 units
    data = feedback(65534, 4, [vector2([1, 0, 2, 2, 0, 0, 0])], bytes([4]) + struct.pack("!hh", 1000, -8),
                    reference=10)
    results = tcc.on_feedback(data)
    assert results is not None
    assert [r.seq for r in results] == [65534, 65535, 0, 1]
    assert [r.sent_at for r in results] == [100.0, 100.01, 100.02, 100.03]
    assert [r.size for r in results] == [1000 + WIRE_OVERHEAD, 1001 + WIRE_OVERHEAD, 1002 + WIRE_OVERHEAD,
                                         1003 + WIRE_OVERHEAD]
    arrivals = [r.arrived_at for r in results]
    assert arrivals[1] is None
    assert arrivals[0] == pytest.approx(0.640 + 0.001)
    assert arrivals[2] == pytest.approx(0.641 + 0.25)
    assert arrivals[3] == pytest.approx(0.891 - 0.002)
    assert (tcc.packets_acked, tcc.packets_lost) == (3, 1)


def test_a_packet_counts_once_and_unknown_numbers_are_ignored() -> None:
    tcc = TransportSeq(5, FakeClock())
    for _ in range(3):
        tcc.take(100)
    lost_all = feedback(0, 3, [run_length(0, 3)], b"")
    assert len(tcc.on_feedback(lost_all) or []) == 3
    assert tcc.on_feedback(lost_all) == []  # the same loss report again counts nothing
    late = feedback(1, 1, [run_length(1, 1)], bytes([1]))
    assert [r.seq for r in tcc.on_feedback(late) or []] == [1]  # reported lost, then arrived late: counted
    assert tcc.on_feedback(late) == []  # and only once
    never_sent = feedback(1000, 5, [run_length(1, 5)], bytes(5))
    assert tcc.on_feedback(never_sent) == []
    assert tcc.on_feedback(b"\x80\xcd\x00") is None and tcc.feedback_refused == 1


def test_the_ring_forgets_old_numbers() -> None:
    tcc = TransportSeq(5, FakeClock())
    for _ in range(RING + 10):
        tcc.take(100)
    stale = feedback(0, 10, [run_length(1, 10)], bytes(10))
    assert tcc.on_feedback(stale) == []  # their slots hold newer numbers now
    fresh = feedback(RING, 10, [run_length(1, 10)], bytes(10))
    assert len(tcc.on_feedback(fresh) or []) == 10


def test_reference_time_wraps() -> None:
    tcc = TransportSeq(5, FakeClock())
    for _ in range(2):
        tcc.take(100)
    first = tcc.on_feedback(feedback(0, 1, [run_length(1, 1)], bytes(1), reference=(1 << 24) - 1))
    second = tcc.on_feedback(feedback(1, 1, [run_length(1, 1)], bytes(1), reference=0))
    assert first and second
    assert second[0].arrived_at - first[0].arrived_at == pytest.approx(0.064)


# -- what goes on the wire -----------------------------------------------------------------------------------------


def test_the_extension_block_with_a_transport_wide_number() -> None:
    layout = ExtensionLayout("0", 1, 3, 0, twcc_id=5)
    ast = b"\x01\x02\x03"
    tail = layout.tail(ast, 127, b"payload")
    head = TWCC_HEADER.pack(0x90, 96, 7, 1234, 99, 0xBEDE, layout.twcc_words, layout.twcc_byte, 0xABCD)
    packet = head + tail
    hdr = parse_header(packet)
    assert hdr is not None and hdr.seq == 7 and packet[hdr.payload_start:] == b"payload"
    assert find_extension(packet, hdr, 5) == b"\xab\xcd"
    assert find_extension(packet, hdr, 1) == b"0"
    assert find_extension(packet, hdr, 3) == ast
    assert layout.stamped(ast, 127) + b"payload" == tail
    # without transport-cc: the same block, one element less, after the plain header
    plain = ExtensionLayout("0", 1, 3, 0)
    packet = RTP_HEADER.pack(0x90, 96, 7, 1234, 99) + plain.tail(ast, 127, b"payload")
    hdr = parse_header(packet)
    assert hdr is not None and find_extension(packet, hdr, 5) is None and find_extension(packet, hdr, 3) == ast



def test_a_number_reported_lost_then_received_is_late_not_lost() -> None:
    """Chromium reports a number that arrives after its feedback went out again in a later one, as received: it was
    reordered, not lost — the loss count goes back down and the late count up."""
    seqs = TransportSeq(5, FakeClock())
    for _ in range(3):
        seqs.take(1000)
    # 0 and 2 received, 1 not (a 1-bit vector: 1 0 1, the rest past the count)
    seqs.on_feedback(feedback(0, 3, [vector1([1, 0, 1] + [0] * 11)], bytes([4, 8])))
    assert (seqs.packets_acked, seqs.packets_lost, seqs.packets_late) == (2, 1, 0)
    seqs.on_feedback(feedback(1, 1, [run_length(1, 1)], bytes([4]), reference=1, fb_count=1))
    assert (seqs.packets_acked, seqs.packets_lost, seqs.packets_late) == (3, 0, 1)

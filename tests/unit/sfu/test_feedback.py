"""Receiver feedback for the simulcast layers the stock receiver does not see: which packets to NACK, and the
figures of a receiver report (RFC 3550), clock injected."""

from __future__ import annotations

from sfu.producer import Producer
from sfu.rtp.feedback import (
    MISSING_FORGET_S,
    MISSING_MAX,
    NACK_EVERY_S,
    NACK_TRIES,
    LayerFeedback,
)


def test_a_gap_is_nacked_again_until_repaired_and_never_more_than_the_tries():
    fb = LayerFeedback()
    for seq in (100, 101, 104):
        if seq == 104:
            fb.missing(102, 104, now=0.0)
        fb.received_new(seq)
    assert fb.nacks(0.0) == [102, 103]
    assert fb.nacks(NACK_EVERY_S / 2) == []  # not again so soon
    fb.repaired(103)
    assert fb.nacks(NACK_EVERY_S) == [102]
    asked = 2 + sum(len(fb.nacks(NACK_EVERY_S * k)) for k in range(2, 10))
    assert asked == NACK_TRIES  # 102 asked NACK_TRIES times in all, then given up


def test_old_holes_are_forgotten_and_a_huge_burst_is_bounded():
    fb = LayerFeedback()
    fb.received_new(1)
    fb.missing(2, 10, now=0.0)
    assert fb.nacks(MISSING_FORGET_S + 0.1) == []
    fb.missing(10, 10 + 5 * MISSING_MAX, now=2.0)
    assert len(fb.nacks(2.0)) == MISSING_MAX


def test_the_report_counts_loss_per_interval_and_in_total_with_wrapping_sequence_numbers():
    fb = LayerFeedback()
    assert fb.report() is None
    seq = 65_530
    for _ in range(100):  # 100 in a row, across the 16-bit wrap
        fb.received_new(seq)
        seq += 1
    assert fb.report() == (0, 0, seq - 1)
    fb.missing(seq, seq + 25, now=0.0)  # 25 lost of the next 100
    seq += 25
    for _ in range(75):
        fb.received_new(seq)
        seq += 1
    fraction, lost, highest = fb.report()
    assert (fraction, lost, highest) == ((25 << 8) // 100, 25, seq - 1)
    fb.repaired(seq - 80)  # a retransmission arrives: the total shrinks
    assert fb.report()[1] == 24


def test_a_producer_with_feedback_records_its_holes_and_repairs():
    now = [0.0]
    producer = Producer("layer", "video", "vp8", 90000, send_pli=lambda ssrc: None, clock=lambda: now[0])
    producer.feedback = LayerFeedback()
    for seq in (1, 2, 5, 6):
        producer.on_packet(seq, seq * 3000, 1, b"\x10\x00\x00" + bytes(20), 127)
    assert producer.feedback.nacks(0.0) == [3, 4]
    producer.on_packet(3, 9000, 1, b"\x10\x00\x00" + bytes(20), 127)  # the teacher retransmits one
    assert producer.feedback.nacks(NACK_EVERY_S) == [4]

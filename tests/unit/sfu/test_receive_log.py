"""The receive log (sfu/rtp/receive_log.py) as tables: what each packet was, and the figures after a sequence."""

from __future__ import annotations

import pytest

from sfu.rtp.receive_log import DUPLICATE, FILLED, NEW, OLD, RESTART, ReceiveLog


@pytest.mark.parametrize("seqs, kinds, expected, received, lost, missing", [
    ([10, 11, 12], [NEW, NEW, NEW], 3, 3, 0, set()),
    ([10, 13], [NEW, NEW], 4, 2, 2, {11, 12}),
    ([10, 13, 12, 11], [NEW, NEW, FILLED, FILLED], 4, 4, 0, set()),
    ([10, 11, 11, 10], [NEW, NEW, DUPLICATE, DUPLICATE], 2, 2, 0, set()),
    ([10, 9, 11], [NEW, OLD, NEW], 2, 2, 0, set()),  # before the first: not counted
    ([10, 13, 12, 12], [NEW, NEW, FILLED, DUPLICATE], 4, 3, 1, {11}),
    ([], [], 0, 0, 0, set()),
])
def test_what_each_packet_was_and_the_figures(seqs, kinds, expected, received, lost, missing):
    log = ReceiveLog()
    assert [log.add(s) for s in seqs] == kinds
    assert (log.expected, log.received, log.lost, log.missing) == (expected, received, lost, missing)


@pytest.mark.parametrize("window, gap_end, missing, given_up, lost", [
    (4096, 20, set(range(11, 20)), 0, 9),
    (4, 20, {16, 17, 18, 19}, 5, 9),  # holes beyond the window are forgotten, and stay lost
    (0, 20, set(), 9, 9),  # counts only
])
def test_holes_beyond_the_window_are_given_up_but_still_lost(window, gap_end, missing, given_up, lost):
    log = ReceiveLog(window=window)
    log.add(10)
    log.add(gap_end)
    assert (log.missing, log.given_up, log.lost, log.skipped) == (missing, given_up, lost, gap_end - 11)
    assert log.add(11) == (FILLED if 11 in missing else DUPLICATE)


def test_a_window_trims_old_holes_as_new_ones_come():
    log = ReceiveLog(window=8)
    log.add(0)
    for seq in range(2, 40, 2):  # every other packet lost
        log.add(seq)
    assert log.missing == {31, 33, 35, 37}  # within the window of the newest (38)
    assert (log.given_up, log.lost, log.skipped) == (15, 19, 19)


@pytest.mark.parametrize("jump, kind, expected, lost", [
    (5, NEW, 7, 4),  # 1, 2 then 7: a gap of 4
    (1001, NEW, 1003, 1000),  # up to restart_gap missing: a loss
    (1002, RESTART, 1, 0),  # wider: a reset; the count starts again (no loss before it either)
])
def test_a_jump_wider_than_restart_gap_restarts_the_count(jump, kind, expected, lost):
    log = ReceiveLog(window=512, restart_gap=1000)
    log.add(1)
    log.add(2)
    assert log.add(2 + jump) == kind
    assert (log.expected, log.lost) == (expected, lost)


def test_a_restart_keeps_the_loss_counted_before_it():
    log = ReceiveLog(restart_gap=10)
    for seq in (1, 2, 5):  # 2 lost
        log.add(seq)
    assert log.add(100) == RESTART
    log.add(102)  # 1 more lost
    assert (log.lost_before, log.lost, log.expected, log.received) == (2, 3, 3, 2)


def test_reset_starts_a_new_stream_and_keeps_the_old_loss():
    log = ReceiveLog()
    for seq in (1, 4):
        log.add(seq)
    log.reset()
    assert (log.base, log.lost, log.expected) == (None, 2, 0)
    log.add(500)
    log.add(501)
    assert (log.lost, log.expected, log.received) == (2, 2, 2)


@pytest.mark.parametrize("ext, filled, recovered", [
    (12, True, 1),  # a hole: repaired
    (13, False, 0),  # received already
    (99, False, 0),  # never a hole
])
def test_fill_repairs_only_a_hole(ext, filled, recovered):
    log = ReceiveLog()
    log.add(10)
    log.add(13)
    assert log.fill(ext) is filled
    assert log.recovered == recovered and log.received == 2 + recovered


def test_interval_gives_expected_and_lost_since_the_previous_call():
    log = ReceiveLog()
    for seq in range(100):
        log.add(seq)
    assert log.interval() == (100, 0)
    for seq in range(125, 200):  # 25 of the next 100 lost
        log.add(seq)
    assert log.interval() == (100, 25)
    log.add(110)  # a late one: fewer lost in total, none negative in the interval
    assert log.interval() == (0, 0) and log.lost == 24
    assert log.loss_fraction() == pytest.approx(24 / 200)

"""The load tester's delivery delay leaves out the frames the SFU replays from its cache when a classroom's video
(re)starts (a late join; video back after a pause: the server's sequence numbers jump by RESUME_SEQ_JUMP), and keeps
a backlog of late live frames (numbers in order) — the overload runs of docs/benchmarks.md read it."""

from __future__ import annotations

from loadtest.receiver import RESTART_JUMP, CountingReceiver
from sfu.consumer.base import RESUME_SEQ_JUMP

SSRC = 1234


def bare() -> CountingReceiver:
    rx = object.__new__(CountingReceiver)  # (only what the two methods use)
    rx._video_seq, rx._video_live_from, rx.replayed_frames, rx.delays_ms = {}, {}, 0, []
    return rx


def test_frames_sent_before_a_restart_are_replays_and_live_ones_are_delays() -> None:
    rx = bare()
    rx._note_video_seq(SSRC, 100, now=10.0)  # the first packet: a start
    rx._delay(sent=8.0, now=10.0, ssrc=SSRC)  # the cached keyframe, sent 2 s ago
    rx._delay(sent=10.05, now=10.1, ssrc=SSRC)  # live: 50 ms
    for seq in range(101, 140):
        rx._note_video_seq(SSRC, seq, now=11.0)
    rx._note_video_seq(SSRC, 139 + RESUME_SEQ_JUMP, now=20.0)  # paused, then back: the server's jump
    rx._delay(sent=18.5, now=20.0, ssrc=SSRC)  # replayed again
    rx._delay(sent=20.0, now=20.08, ssrc=SSRC)
    assert rx.replayed_frames == 2
    assert [round(d) for d in rx.delays_ms] == [50, 80]


def test_a_backlog_of_late_live_packets_in_order_is_measured() -> None:
    rx = bare()
    rx._note_video_seq(SSRC, 65530, now=1.0)
    for i, seq in enumerate([65531, 65535, 0, 3, 3 + RESTART_JUMP - 1]):  # wraps; gaps below the jump
        rx._note_video_seq(SSRC, seq, now=5.0 + i)
    rx._delay(sent=2.0, now=5.0, ssrc=SSRC)  # a server that stalled 3 s: a real delay, not a replay
    assert rx.replayed_frames == 0 and [round(d) for d in rx.delays_ms] == [3000]
    rx._note_video_seq(SSRC, 10, now=6.0)  # (an old number arriving late: not a restart)
    rx._delay(sent=5.5, now=6.0, ssrc=SSRC)
    assert rx.replayed_frames == 0 and len(rx.delays_ms) == 2

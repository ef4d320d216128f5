"""The load test's audio continuity per classroom (loadtest/report.py), from the classrooms' own figures."""

from loadtest.report import AUDIO_GAP_LIMIT_MS, audio_continuity


def room(packets: int, gap_ms: float) -> dict:
    return {"audio_window_packets": packets, "audio_gap_max_ms": gap_ms}


def test_a_classroom_is_continuous_with_nearly_every_packet_and_no_long_gap() -> None:
    rooms = [room(1000, 40.0),              # 20 s of 50 packets a second, every 20 ms
             room(1000, AUDIO_GAP_LIMIT_MS + 1),  # every packet, but a long silence (a burst after a stall)
             room(900, 60.0),               # 10 % missing
             room(960, AUDIO_GAP_LIMIT_MS)]  # 96 %, gap at the limit
    out = audio_continuity(rooms, window_s=20.0)
    assert out["classrooms"] == 4 and out["classrooms_continuous"] == 2
    assert out["share_min"] == 0.9 and out["gap_max_ms"]["max"] == AUDIO_GAP_LIMIT_MS + 1


def test_a_classroom_let_in_during_the_window_is_judged_over_its_own_part() -> None:
    late = {**room(500, 40.0), "audio_window_span_s": 10.0}  # in for the last 10 s of 20, every packet
    short = {**room(300, 40.0), "audio_window_span_s": 10.0}  # in for 10 s, 60 % of them
    out = audio_continuity([late, short], window_s=20.0)
    assert out["classrooms_continuous"] == 1 and out["share_min"] == 0.599


def test_no_classrooms_no_figures() -> None:
    out = audio_continuity([{"index": 0}], window_s=20.0)  # a result without audio figures (the relay baseline)
    assert out["classrooms"] == 0 and out["classrooms_continuous"] == 0 and out["share_min"] is None

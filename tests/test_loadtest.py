"""The load-test tool end to end: a small run against its own `ketang serve`, and a tiny one against the aiortc
MediaRelay reference server. Functional checks of the report's consistency, not timing assertions."""

from __future__ import annotations

import json

import pytest

from loadtest.cli import main as loadtest_main
from loadtest.report import TARGET_LOSS
from loadtest.runner import LoadTestConfig, run_loadtest
from loadtest.streamstats import SeqCounter, seq_delta

REQUIRED_FIELDS = ["classrooms_requested", "classrooms_connected", "join_ms", "first_frame_ms", "loss_ratio",
                   "jitter_ms_p95", "delivery_ms", "packets_forwarded", "server_cpu_percent",
                   "server_cpu_us_per_packet", "server_rss_mb", "classrooms_per_core", "loadgen_cpu_percent"]


@pytest.mark.parametrize("seqs, expected, lost, recovered, duplicates", [
    ([1, 2, 3, 4], 4, 0, 0, 0),
    ([65534, 65535, 0, 1], 4, 0, 0, 0),  # wrap-around is not a gap
    ([1, 2, 5, 6], 6, 2, 0, 0),  # a gap stays lost
    ([1, 2, 5, 3, 4, 6], 6, 0, 2, 0),  # late packets fill the gap
    ([1, 2, 2, 3], 3, 0, 0, 1),  # a duplicate is counted as such
    ([65535, 2], 4, 2, 0, 0),  # a gap across the wrap
])
def test_sequence_counter_counts_gaps_repairs_and_duplicates(seqs, expected, lost, recovered, duplicates):
    c = SeqCounter()
    for s in seqs:
        c.add(s)
    assert (c.expected, c.lost, c.recovered, c.duplicates) == (expected, lost, recovered, duplicates)


def test_a_retransmission_fills_a_hole_once_and_the_gap_is_returned_for_a_nack():
    c = SeqCounter()
    c.add(10)
    assert c.add(13) == [11, 12]
    c.repair(11)
    c.repair(11)
    assert (c.lost, c.recovered, c.duplicates) == (1, 1, 1)
    assert seq_delta(0, 65535) == 1 and seq_delta(65535, 0) == -1


def _check_common(report: dict, n: int) -> None:
    for field in REQUIRED_FIELDS:
        assert field in report, field
    assert report["classrooms_requested"] == n
    assert report["classrooms_connected"] == n, report["errors"]
    assert report["classrooms_without_keyframe"] == 0
    assert report["join_ms"]["p50"] > 0 and report["first_frame_ms"]["p50"] is not None
    assert report["server_cpu_percent"] > 0
    assert report["server_cpu_us_per_packet"] > 0
    assert report["server_rss_mb"] > 0
    assert report["classrooms_per_core"] > 0
    assert report["packets_received"] > 0
    # what the server says it forwarded is what the classrooms counted (the teacher stops before both are read)
    forwarded, received = report["packets_forwarded"], report["packets_received"]
    assert abs(forwarded - received) <= max(5 * n, 0.01 * forwarded), (forwarded, received)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_twenty_classrooms_all_connect_receive_without_loss_and_the_report_adds_up(tmp_path):
    report = run_loadtest(LoadTestConfig(classrooms=20, duration_s=10, ramp_per_s=20, quiet=True))
    print(json.dumps({k: v for k, v in report.items() if k != "config"}))
    _check_common(report, 20)
    assert report["loss_ratio"] < 0.01
    assert report["delivery_ms"]["samples"] > 0 and report["delivery_ms"]["p50"] > 0
    # the window's forwarded packets match the teacher's rate times the classrooms (~100 packets/s each)
    assert report["window_packets_per_s"] > 20 * 50


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_classrooms_nack_emulated_downlink_loss_and_the_servers_retransmissions_repair_it():
    report = run_loadtest(LoadTestConfig(classrooms=10, duration_s=8, classroom_loss=0.02, quiet=True))
    assert report["classrooms_connected"] == 10
    assert report["packets_dropped_emulated"] > 0
    assert report["loss_ratio_before_repair"] > 0.01
    assert report["loss_ratio"] < TARGET_LOSS, report["loss_ratio"]
    assert report["packets_retransmitted_received"] > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_relay_baseline_serves_three_classrooms_with_a_report_of_the_same_fields(tmp_path):
    out = tmp_path / "relay.json"
    rc = loadtest_main(["--classrooms", "3", "--duration", "8", "--baseline", "relay", "--json", str(out), "-q"])
    report = json.loads(out.read_text())
    assert rc == 0
    assert report["server"] == "relay"
    _check_common(report, 3)
    assert report["loss_ratio"] < 0.05


def test_the_sweep_replaces_its_own_section_and_leaves_the_others_alone(tmp_path):
    from loadtest.sweep import SECTION_TITLE, write_section

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Forwarding path vs its floor\n\nkeep me\n")
    write_section(str(doc), SECTION_TITLE + "\n\nfirst")
    write_section(str(doc), SECTION_TITLE + "\n\nsecond")
    text = doc.read_text()
    assert "keep me" in text and "second" in text and "first" not in text
    assert text.count(SECTION_TITLE) == 1
    doc.write_text(text + "\n## Later section\n\nalso kept\n")
    write_section(str(doc), SECTION_TITLE + "\n\nthird")
    text = doc.read_text()
    assert "third" in text and "second" not in text and "also kept" in text and "keep me" in text


def test_a_report_from_two_classrooms_adds_up_loss_over_streams_and_extrapolates_per_core():
    from loadtest.report import Window, build_report

    def room(i: int, lost: int) -> dict:
        stream = {"packets": 1000, "rtx_packets": 0, "bytes": 1, "expected": 1000, "received": 1000 - lost,
                  "lost": lost, "recovered": 0, "duplicates": 0, "jitter_ms": [1.0, 2.0]}
        return {"index": i, "connected": True, "error": None, "join_ms": 50.0, "first_frame_ms": 80.0,
                "delays_ms": [3.0, 4.0], "audio": stream, "video": dict(stream)}

    window = Window(wall_s=10, server_cpu_s=2.0, server_rss_bytes=100 * 2**20, packets_out=4000, loadgen_cpu_s=1.0,
                    loadgen_processes=2, loadgen_max_process_cpu_s=0.6)
    report = build_report("ketang", 2, [room(0, 0), room(1, 10)], window, 4000, {})
    assert report["loss_ratio"] == 20 / 4000
    assert report["classrooms_per_core"] == 10.0  # 2 classrooms on 0.2 cores
    assert report["server_cpu_us_per_packet"] == 500.0
    assert report["server_rss_mb"] == 100.0
    assert report["classrooms_over_target_loss"] == 1 and not report["meets_target"]


def test_add_parser_registers_loadtest_on_a_parent_cli_and_a_url_without_secret_is_refused(monkeypatch, capsys):
    import argparse

    from loadtest.cli import add_parser

    parser = argparse.ArgumentParser(prog="ketang")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["loadtest", "--classrooms", "400", "--duration", "20", "--ramp", "10",
                              "--bitrate", "800", "--json", "r.json", "--baseline", "relay"])
    assert (args.classrooms, args.duration, args.ramp, args.bitrate, args.baseline) == (400, 20, 10, 800, "relay")
    monkeypatch.delenv("KETANG_SECRET", raising=False)
    assert loadtest_main(["--url", "http://127.0.0.1:9", "--classrooms", "1"]) == 2
    assert "secret" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_classroom_uplinks_reach_the_teachers_wall_for_the_visible_tiles_only():
    n, wall = 6, 4
    report = run_loadtest(LoadTestConfig(classrooms=n, duration_s=10, classroom_uplink_kbps=150, wall=wall,
                                         quiet=True))
    print(json.dumps({k: v for k, v in report.items() if k != "config"}))
    _check_common(report, n)  # the teacher's packets still reach every classroom as before
    assert report["loss_ratio"] < 0.01
    up = report["uplink"]
    assert up["classrooms_publishing"] == n
    # every classroom's camera and microphone reach the server; the visible tiles' (and only theirs) go on
    assert (up["classroom_tracks"], up["classroom_tracks_forwarded"]) == (2 * n, 2 * wall)
    w = up["wall"]
    visible = [f"loadtest-classroom-{i}" for i in range(wall)]
    assert w["visible"] == visible and w["tiles"] == wall
    assert w["tiles_receiving"] == wall and sorted(w["per_tile"]) == visible
    assert all(t["audio"] > 0 and t["video"] > 0 for t in w["per_tile"].values())
    assert w["others"] == [] and w["others_packets"] == 0 and w["unrouted_packets"] == 0
    assert w["loss_ratio"] < 0.01
    # what the server says it sent the wall is what the wall counted (everyone stops before both are read)
    assert abs(w["packets_forwarded"] - w["packets_received"]) <= max(5 * wall, 0.01 * w["packets_forwarded"])
    # in the same window, the wall gets about wall/n of the classrooms' packets (all tiles send alike)
    assert 0.5 < up["wall_packets_forwarded_per_s"] / up["classroom_packets_in_per_s"] < 0.85
    for key in ("classroom_packets_in_per_s", "teacher_packets_in_per_s", "server_cpu_us_per_forwarded_packet",
                "server_cpu_us_per_received_packet", "classroom_uplink_kbps"):
        assert up[key] > 0, key
    assert up["all_tiles_estimate"]["tiles"] == n


def test_server_counts_split_the_teachers_packets_from_the_classrooms_and_the_wall():
    from loadtest.report import ServerCounts

    def stats(scale: int) -> dict:
        return {"producers": [{"participant": "T", "packets_in": 100 * scale, "consumers": 2},
                              {"participant": "c1", "packets_in": 10 * scale, "consumers": 1},
                              {"participant": "c2", "packets_in": 20 * scale, "consumers": 0}],
                "subscribers": {"c1": [{"packets_out": 100 * scale}], "c2": [{"packets_out": 100 * scale}],
                                "T": [{"packets_out": 10 * scale}]}}

    a, b = ServerCounts.from_stats(stats(1), "T"), ServerCounts.from_stats(stats(3), "T")
    assert (a.teacher_in, a.classrooms_in, a.to_classrooms, a.to_wall) == (100, 30, 200, 10)
    d = b - a
    assert (d.teacher_in, d.classrooms_in, d.packets_in, d.to_classrooms, d.to_wall, d.packets_out) == \
        (200, 60, 260, 400, 20, 420)
    assert (d.classroom_tracks, d.classroom_tracks_forwarded) == (2, 1)  # levels, not differences
    # without a known teacher (the relay baseline) everything is the teacher's and nothing is a wall
    r = ServerCounts.from_stats(stats(1), None)
    assert (r.teacher_in, r.classrooms_in, r.to_wall, r.packets_out) == (130, 0, 0, 210)


def test_the_uplink_report_states_the_cost_per_forwarded_and_per_received_packet():
    from loadtest.report import ServerCounts, Window, uplink_report

    counts = ServerCounts(to_classrooms=10_000, to_wall=2_000, teacher_in=1_000, classrooms_in=7_000)
    window = Window(wall_s=10, server_cpu_s=2.4, server_rss_bytes=0, packets_out=counts.packets_out,
                    loadgen_cpu_s=1.0, loadgen_processes=1, loadgen_max_process_cpu_s=1.0, counts=counts)
    stream = {"packets": 500, "rtx_packets": 2, "bytes": 1, "expected": 500, "received": 499, "lost": 1,
              "recovered": 2, "duplicates": 0, "jitter_ms": [1.0]}
    results = [{"connected": True, "uplink": {"publish_ms": 40.0, "packets_sent": 700, "bytes_sent": 25_000,
                                              "sending_s": 1.0}} for _ in range(10)]
    wall = {"visible": ["a", "b"], "ready_ms": 50.0, "others": [], "others_packets": 0, "unrouted_packets": 0,
            "srtp_errors": 0, "tiles": {"a": {"audio": stream, "video": stream}, "b": {"audio": stream, "video": None}}}
    up = uplink_report(150, results, window, counts, wall)
    assert up["server_cpu_us_per_forwarded_packet"] == 200.0  # 2.4 s over 12,000 forwarded packets
    assert up["server_cpu_us_per_received_packet"] == 300.0  # ... over 8,000 received
    assert up["classroom_packets_in_per_s"] == 700.0 and up["wall_packets_forwarded_per_s"] == 200.0
    assert up["classroom_packets_in_per_classroom_per_s"] == 70.0 and up["classroom_uplink_kbps"] == 200.0
    assert up["wall"]["tiles_receiving"] == 1  # "b" sent no video
    assert up["wall"]["loss_ratio"] == 3 / 1500 and up["wall"]["packets_retransmitted_received"] == 6
    assert up["all_tiles_estimate"] == {"tiles": 10, "teacher_packets_per_s": 700, "teacher_mbps": 2.0,
                                        "visible_packets_per_s": 140, "visible_mbps": 0.4,
                                        "extra_forwarded_packets_per_s": 560}

"""The load-test tool end to end: a small run against its own `ketang serve`, and a tiny one against the aiortc
MediaRelay reference server. Functional checks of the report's consistency, not timing assertions."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
    # a server short of CPU (a crowded test machine) drops late media on purpose (docs/metrics.md, Overload):
    # each teacher packet it dropped is lost at every classroom; any loss beyond that fails
    late = sum((report["server_overload"]["late_dropped_in_window"] or {}).values())
    dropped_on_purpose = late * 20 / max(1, report["packets_expected"])
    assert report["loss_ratio"] < 0.01 + dropped_on_purpose, (report["loss_ratio"], report["server_overload"])
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
    # the classrooms not on the wall are told nobody receives them and send nothing (as the page does): what the
    # server takes in from classrooms is what goes to the wall
    paused = up["camera_paused_s"]
    assert all(paused[i] < 3 for i in range(wall)), paused  # until the teacher's wall is up
    assert all(paused[i] > 8 for i in range(wall, n)), paused
    assert 0.9 < up["wall_packets_forwarded_per_s"] / up["classroom_packets_in_per_s"] < 1.1
    assert 0.2 < up["camera_paused_share"] < 0.5  # 2 of 6 classrooms, most of the time
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


# -- the simulcast teacher (`--simulcast`) ---------------------------------------------------------------------


def test_the_simulcast_teachers_offer_has_chromiums_shape_and_the_server_reads_three_layers_from_it():
    from aiortc import RTCPeerConnection

    from loadtest.simulcast import RID_EXT_ID, RRID_EXT_ID, chromium_simulcast_offer
    from sfu.simulcast.sdp import layers_low_to_high, parse_simulcast_offer

    async def offer() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="sendonly")
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    import asyncio

    plain = asyncio.run(offer())
    sdp = chromium_simulcast_offer(plain, ["q", "h", "f"])
    video, audio = sdp.split("\r\nm=")[1], sdp.split("\r\nm=")[2]
    assert "a=ssrc" not in video  # as Chromium: the layers are named by RID only
    assert video.index("a=rid:q send") < video.index("a=rid:h send") < video.index("a=rid:f send")
    assert "a=simulcast:send q;h;f" in video
    assert audio == plain.split("\r\nm=")[2]  # the microphone's section untouched
    offers = parse_simulcast_offer(sdp)
    assert len(offers) == 1
    (offer_,) = offers.values()
    assert (offer_.rids, offer_.rid_ext_id, offer_.rrid_ext_id) == (("q", "h", "f"), RID_EXT_ID, RRID_EXT_ID)
    assert layers_low_to_high(offer_) == ("q", "h", "f")


def test_the_simulcast_sender_names_each_layer_by_rid_until_acknowledged_and_repairs_on_its_rtx_stream():
    import asyncio
    from types import SimpleNamespace

    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from aiortc.rtp import (
        RTCP_RTPFB_NACK,
        RtcpReceiverInfo,
        RtcpRrPacket,
        RtcpRtpfbPacket,
    )

    from loadtest.media import Clip, SimulcastLayer
    from loadtest.simulcast import RID_EXT_ID, RRID_EXT_ID, SimulcastSender
    from sfu.rtp.header import find_extension, parse_header
    from sfu.simulcast.demux import LayerDemux

    def layer(rid: str, fps: int) -> SimulcastLayer:
        frames = [(bytes([0x10 if i % 4 == 0 else 0x11]) + bytes([i, rid.encode()[0]]) * 700, i % 4 == 0)
                  for i in range(8)]
        return SimulcastLayer(rid, 64, 36, fps, 100_000, Clip("video", frames, 1 / fps, 90000))

    sent: list[bytes] = []

    async def send_rtp(data: bytes) -> None:
        sent.append(data)

    router = SimpleNamespace(senders={}, register_sender=lambda s, ssrc: router.senders.__setitem__(ssrc, s))
    dtls = SimpleNamespace(state="connected", _rtp_router=router, _send_rtp=send_rtp)
    transceiver = SimpleNamespace(mid="0", sender=SimpleNamespace(transport=dtls), _codecs=[
        RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97),
        RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=98, parameters={"apt": 97})])
    answer = "\r\n".join(["v=0", "m=video 9 UDP/TLS/RTP/SAVPF 97 98", "a=mid:0",
                          "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
                          "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
                          f"a=extmap:{RID_EXT_ID} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
                          f"a=extmap:{RRID_EXT_ID} urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
                          "a=rid:q recv", "a=rid:h recv", "a=rid:f recv", "a=simulcast:recv q;h;f"]) + "\r\n"
    stamps = [0.0] * 64
    sender = SimulcastSender([layer("q", 15), layer("h", 30), layer("f", 30)], stamps)

    async def run() -> None:
        sender.start(transceiver, answer, "cname")
        await asyncio.sleep(0.25)
        q, _h, f = sender.layers
        # a receiver report for f's SSRC: its packets stop carrying MID and RID, as Chromium's do
        await router.senders[f.ssrc]._handle_rtcp_packet(RtcpRrPacket(ssrc=1, reports=[RtcpReceiverInfo(
            ssrc=f.ssrc, fraction_lost=0, packets_lost=0, highest_sequence=0, jitter=0, lsr=0, dlsr=0)]))
        marker = len(sent)
        await asyncio.sleep(0.15)
        first_q = next(parse_header(d).seq for d in sent if parse_header(d).ssrc == q.ssrc)
        await router.senders[q.ssrc]._handle_rtcp_packet(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1,
                                                                         media_ssrc=q.ssrc, lost=[first_q]))
        await sender.close()
        return marker

    marker = asyncio.run(run())
    q, h, f = sender.layers
    demux = LayerDemux(["q", "h", "f"], RID_EXT_ID, RRID_EXT_ID)
    for data in sent[:marker]:
        arrival = demux.receive(data, 0.0)
        assert arrival is not None and not arrival.rtx
        assert parse_header(data).ssrc == sender.layers[arrival.layer].ssrc
    assert [x.ssrc for x in demux.layers] == [q.ssrc, h.ssrc, f.ssrc]
    assert q.sent_frames < h.sent_frames  # 15 fps against 30
    after = [d for d in sent[marker:] if parse_header(d).ssrc == f.ssrc]
    assert after and all(find_extension(d, parse_header(d), RID_EXT_ID) is None for d in after)
    rtx = [d for d in sent if parse_header(d).ssrc == q.rtx_ssrc]
    assert len(rtx) == 1 and q.retransmitted == 1
    hdr = parse_header(rtx[0])
    assert hdr.payload_type == 98 and find_extension(rtx[0], hdr, RRID_EXT_ID) == b"q"
    assert demux.receive(rtx[0], 0.0).rtx
    assert sum(1 for s in stamps if s > 0) >= 3  # send times stamped per (layer, frame)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_simulcast_teacher_reaches_the_server_as_three_layers_and_every_classroom_gets_one():
    n = 6
    # even classrooms report a weak downlink by REMB (100 kbit/s: under 0.8 x the 158 kbit/s h layer, above the
    # 54 kbit/s q layer), odd ones a good one: the server's layer choice follows, as for browsers
    report = run_loadtest(LoadTestConfig(classrooms=n, duration_s=10, simulcast=True, quiet=True,
                                         classroom_downlink_kbps=(100, 5000)))
    print(json.dumps({k: v for k, v in report.items() if k != "config"}))
    _check_common(report, n)
    assert report["loss_ratio"] < 0.01
    sc = report["simulcast"]
    assert sc["rids"] == ["q", "h", "f"]
    for layer in sc["layers"]:
        # the server learned each layer's SSRC (from the RID extension) and counts its packets
        assert layer["server_ssrc"] == layer["ssrc"], layer
        assert layer["server_packets_in_per_s"] > 10, layer
    assert sc["server_keeps_up"] is True
    # the server's count of the teacher's packets includes the upper layers
    assert report["window_packets_in_per_s"] > sum(x["server_packets_in_per_s"] for x in sc["layers"])
    # every classroom has a layer, by the server's account and by the frames it received
    assert sum(sc["layer_mix"].values()) == n and sc["layer_mix"]["none"] == 0
    assert sum(sc["received_layer_mix"].values()) == n and sc["received_layer_mix"]["none"] == 0
    assert sc["server_and_classroom_agree"] >= n - 1
    assert [c["index"] for c in sc["per_classroom"]] == list(range(n))
    weak = [c["layer"] for c in sc["per_classroom"] if c["index"] % 2 == 0]
    good = [c["layer"] for c in sc["per_classroom"] if c["index"] % 2 == 1]
    assert weak == ["q"] * (n // 2), sc["per_classroom"]
    assert all(layer in ("h", "f") for layer in good), sc["per_classroom"]
    assert sum(sc["frames_received_by_layer"].values()) > 0 and sc["frames_unrecognised"] == 0
    # delivery delay measured per (layer, frame) although the server rewrites picture ids on a switch
    assert report["delivery_ms"]["samples"] > 0 and 0 < report["delivery_ms"]["p50"] < 100


def test_the_server_install_leaves_the_load_testers_packages_out():
    """`pip install .` (no extras) installs no matplotlib and no psutil: they are the `loadtest` extra's."""
    from importlib.metadata import requires

    base = [r.split(";")[0].strip() for r in requires("ketang") or [] if "extra ==" not in r]
    names = {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in base}
    assert "aiortc" in names  # the scan read the base requirements
    assert not names & {"matplotlib", "psutil"}, base
    loadtest = [r for r in requires("ketang") or [] if 'extra == "loadtest"' in r]
    assert any(r.startswith("matplotlib") for r in loadtest) and any(r.startswith("psutil") for r in loadtest)


def test_the_server_install_holds_no_load_test_or_benchmark_code():
    """The packages `pip install .` puts in the wheel, found by setuptools from pyproject's own rule: the server's,
    never loadtest/ (nor its benchmarks, loadtest/bench/) nor the tests."""
    import tomllib

    from setuptools import find_packages

    root = Path(__file__).resolve().parents[2]
    rule = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(root), include=rule["include"], exclude=rule.get("exclude", ()))
    assert {"ketang", "sfu", "sfu.rtp", "signaling", "recorder", "recorder.library", "client_web"} <= set(packages)
    assert not [p for p in packages if p.split(".")[0] in ("loadtest", "tests", "bench")], packages

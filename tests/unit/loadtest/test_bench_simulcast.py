"""The simulcast forwarding benchmark (loadtest/bench/simulcast.py, ``python -m loadtest.bench.forward --simulcast``) measures a
correct path: every consumer's stream is checked, and the check catches a broken one.

Correctness only: no timing assertions (machines are noisy). Tiny sizes keep it around a second.
"""

from __future__ import annotations

import itertools
import json
import math

from loadtest.bench.forward import main
from loadtest.bench.simulcast import (
    OutputCheck,
    SimulcastBench,
    SimulcastStream,
    arrival_order,
)
from sfu.rtp.header import RTP_HEADER

SUBSCRIBERS = 6
PACKETS = 260
REPEAT = 2


def test_arrival_order_interleaves_layers() -> None:
    order = arrival_order((1, 3, 9))
    assert len(order) == 13 and [order.count(i) for i in range(3)] == [1, 3, 9]
    assert order[:3] == [2, 1, 2]  # the big layer's packets are spread through the period, not bunched


def test_stream_layers_and_pli() -> None:
    stream = SimulcastStream((100, 200, 300), (1, 3, 9), seed=3)
    packets = stream.take(13 * 4)
    by_layer = {i: [p for p in packets if p[0] == i] for i in range(3)}
    for layer, size, per_frame in ((0, 100, 1), (1, 200, 3), (2, 300, 9)):
        got = by_layer[layer]
        assert len(got) == 4 * per_frame and all(len(p[4]) == size for p in got)
        assert all((b[1] - a[1]) & 0xFFFF == 1 for a, b in itertools.pairwise(got))  # own sequence numbers
        assert sum(p[3] for p in got) == 4  # one marker per frame
    assert stream.layers[2].keyframes == 1
    stream.request_keyframe(stream.layers[2].ssrc)
    stream.take(13)
    assert stream.layers[2].keyframes == 2 and stream.layers[0].keyframes == 1


def _packet(seq: int, ts: int, marker: int, pid: int, tl0: int, tid: int, key: bool = False) -> bytes:
    desc = bytes((0x90, 0xE0, 0x80 | (pid >> 8), pid & 0xFF, tl0, tid << 6))
    return RTP_HEADER.pack(0x80, (marker << 7) | 96, seq, ts, 1) + desc + (b"\x10" if key else b"\x11") + bytes(20)


def test_output_check_catches_breaks() -> None:
    good = OutputCheck()
    for p in (_packet(1, 0, 0, 5, 9, 0, key=True), _packet(2, 0, 1, 5, 9, 0), _packet(3, 3000, 1, 6, 9, 2)):
        good.add(p)
    assert good.errors() == 0 and good.frames == 2
    bad = OutputCheck()
    bad.add(_packet(1, 0, 0, 5, 9, 0))  # not a key frame first
    bad.add(_packet(3, 3000, 1, 7, 9, 0))  # seq gap, frame cut before its marker, PictureID +2, TL0 not +1
    assert (bad.not_keyframe_first, bad.seq_gaps, bad.cut_frames, bad.picture_id_breaks, bad.tl0_breaks) == \
        (1, 1, 1, 1, 1)


def test_simulcast_bench_figures_and_checked_streams() -> None:
    bench = SimulcastBench(SUBSCRIBERS, PACKETS, seed=1234)
    try:
        r = bench.run(repeat=REPEAT)
    finally:
        bench.close()
    for name in ("simulcast_us", "plain_us", "floor_us", "other_layer_us_per_input_per_subscriber"):
        assert r[name] > 0 and math.isfinite(r[name]), name
    assert r["subscribers_per_layer"] == [2, 2, 2]
    assert r["switched_consumers"] == 4  # the start layer's third never switches
    assert r["same_outputs_every_phase"]
    expected = r["outputs_per_round"] * REPEAT
    assert r["simulcast_datagrams_sent"] == r["plain_datagrams_sent"] == r["floor_datagrams_sent"] == expected
    assert r["simulcast_datagrams_received"] == expected
    assert r["consumer_errors"] == 0 and r["consumers_closed"] == 0
    assert r["pli_during_measured_rounds"] == 0
    assert r["input_seq_wrapped"][-1], "the largest layer's sequence numbers must wrap during the run"
    c = r["check"]
    assert c["ok"], c
    assert c["switches"] == 4 and c["wire_datagrams_checked"] > 0
    # every output of the warm-up and the check round was checked
    assert c["packets"] > expected / REPEAT


def test_simulcast_check_catches_a_broken_rewrite() -> None:
    """With the switchers' VP8 renumbering turned off, the switched consumers' picture ids jump: the check fails."""
    bench = SimulcastBench(3, 130, seed=7)
    try:
        for c in bench.consumers:
            c.switcher.vp8 = False
        r = bench.run(repeat=1)
    finally:
        bench.close()
    assert not r["check"]["ok"]
    assert r["check"]["picture_id_breaks"] >= 2  # the two switched consumers, at their switch


def test_simulcast_cli_json(capsys) -> None:
    assert main(["--simulcast", "--subscribers", "3", "--packets", "130", "--repeat", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mode"] == "simulcast" and r["subscribers"] == 3 and r["check"]["ok"]

"""The forwarding micro-benchmark (loadtest/bench/forward.py) runs and really sends what it measures.

Correctness only: no timing assertions (machines are noisy). Tiny sizes keep it well under a second.
"""

from __future__ import annotations

import json
import math

import pytest
from pylibsrtp import Policy, Session

from loadtest.bench.forward import ForwardBench, main
from loadtest.bench.wire import ABS_SEND_TIME_ID, MID, MID_ID, SRTP_PROFILES, VP8_PT
from sfu.rtp.header import find_extension, parse_header

SUBSCRIBERS = 3
PACKETS = 200
REPEAT = 2


def _inbound(key: bytes, srtp: str) -> Session:
    return Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=SRTP_PROFILES[srtp][0]))


@pytest.mark.parametrize(("sink", "srtp"), [("process", "aes128-cm-sha1-80"), ("thread", "aead-aes-256-gcm")])
def test_forward_bench_figures_and_real_srtp_datagrams(sink: str, srtp: str) -> None:
    bench = ForwardBench(SUBSCRIBERS, PACKETS, size=1100, capture=PACKETS * REPEAT, seed=1234, sink=sink, srtp=srtp)
    try:
        r = bench.run(repeat=REPEAT)
        captured = list(bench.sink.captured)
        inputs = list(bench.captured_inputs)
        key = bench.keys[0]
        consumer = bench.consumers[0]
    finally:
        bench.close()

    # sane figures
    for name in ("forward_us", "floor_us", "objects_us", "producer_only_us_per_incoming"):
        assert r[name] > 0, name
    assert math.isfinite(r["ratio"]) and r["ratio"] > 0
    assert len(r["ratio_per_round"]) == REPEAT
    assert r["classrooms_per_core"] > 0

    # every output packet of the measured forward rounds was really sent and reached the sink
    expected = PACKETS * SUBSCRIBERS * REPEAT
    assert r["forward_datagrams_expected"] == expected
    assert r["forward_datagrams_sent"] == expected
    assert r["forward_datagrams_received"] == expected
    assert r["floor_datagrams_received"] == expected
    assert r["consumer_errors"] == 0 and r["consumers_closed"] == 0
    assert r["input_seq_wrapped"], "the input sequence numbers must cross 65535 -> 0 during the run"

    # consumer 0's datagrams decrypt with its key and carry its stream, gapless, with the teacher's payloads
    assert len(captured) == len(inputs) == PACKETS * REPEAT
    rx = _inbound(key, srtp)
    prev_seq = prev_ts = prev_ts_in = None
    for datagram, (_, ts_in, marker, payload, _) in zip(captured, inputs):
        plain = rx.unprotect(datagram)
        hdr = parse_header(plain)
        assert hdr is not None
        assert hdr.ssrc == consumer.sender._ssrc == consumer.ssrc
        assert hdr.payload_type == VP8_PT
        assert hdr.marker == marker
        assert plain[hdr.payload_start:hdr.payload_end] == payload
        assert find_extension(plain, hdr, MID_ID) == MID.encode()
        assert find_extension(plain, hdr, ABS_SEND_TIME_ID) is not None
        if prev_seq is not None:
            assert hdr.seq == (prev_seq + 1) & 0xFFFF
            # timestamps are offset per subscriber, spacing preserved
            assert (hdr.ts - prev_ts) & 0xFFFFFFFF == (ts_in - prev_ts_in) & 0xFFFFFFFF
        prev_seq, prev_ts, prev_ts_in = hdr.seq, hdr.ts, ts_in


def test_forward_bench_cli_json(capsys) -> None:
    assert main(["--subscribers", "2", "--packets", "50", "--repeat", "1", "--size", "400", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["subscribers"] == 2 and r["packets"] == 50 and r["size"] == 400
    assert r["forward_us"] > 0 and r["floor_us"] > 0 and math.isfinite(r["ratio"])
    assert r["forward_datagrams_received"] == 2 * 50

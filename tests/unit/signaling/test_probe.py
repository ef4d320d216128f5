"""The server side of the pre-class network check (signaling/probe.py): the quality thresholds, the checks of what a
page sends (schema, answer, report), the per-token rate limit and the node's cap, and one whole probe run by a real
aiortc peer against a real `ketang serve`: what the server sends stays within its steps, and what it reports."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from signaling import probe
from signaling.messages import ProtocolError, parse_message
from signaling.probe import (
    AUDIO_BPS,
    LAYER_BPS,
    LOSS_MAX,
    NEED_BPS,
    PROBE_BURST,
    PROBE_EVERY_S,
    PROBE_MAX_BPS,
    PROBES_AT_ONCE,
    STEPS,
    Measurement,
    ProbeRefused,
    Probes,
    StepCount,
    check_answer,
    classify,
)
from tests.support import Server, token

CLIENT_WEB = Path(__file__).resolve().parents[3] / "client_web"

# -- the thresholds ---------------------------------------------------------------------------------------------


def test_layer_rates_are_the_ones_the_teacher_page_sends():
    """The classifier's layers are the teacher's simulcast encodings (client_web/protocol.js): one changed without
    the other would promise a class the link cannot carry."""
    js = (CLIENT_WEB / "protocol.js").read_text(encoding="utf-8")
    sent = sorted(int(v.replace("_", "")) for v in re.findall(r'rid: "[qhf]".*?maxBitrate: ([\d_]+)', js))
    assert tuple(sent) == LAYER_BPS


def test_each_quality_needs_its_layer_and_the_sound():
    assert NEED_BPS == {"hd": 1_500_000 + AUDIO_BPS, "sd": 500_000 + AUDIO_BPS, "ld": 150_000 + AUDIO_BPS, "audio": 0}
    # the probe's top step reaches what 高清 needs, or 高清 could never be measured
    assert PROBE_MAX_BPS > NEED_BPS["hd"]


@pytest.mark.parametrize(("downlink", "loss", "expected"), [
    (10_000_000, 0.0, "hd"),
    (NEED_BPS["hd"], 0.0, "hd"),
    (NEED_BPS["hd"] - 1, 0.0, "sd"),
    (NEED_BPS["sd"], 0.0, "sd"),
    (NEED_BPS["sd"] - 1, 0.0, "ld"),
    (300_000, 0.0, "ld"),  # a 300 kbit/s school link: 180p and sound
    (NEED_BPS["ld"], 0.0, "ld"),
    (NEED_BPS["ld"] - 1, 0.0, "audio"),
    (0, 0.0, "audio"),
    (10_000_000, LOSS_MAX, "hd"),  # at the SFU's congestion threshold: still fine
    (10_000_000, LOSS_MAX + 0.01, "sd"),  # above it: one class lower
    (300_000, 0.3, "audio"),
    (0, 1.0, "audio"),  # nothing arrived: never below 仅声音
])
def test_classify(downlink: float, loss: float, expected: str):
    assert classify(downlink, loss) == expected


def test_measurement_never_counts_more_than_was_sent_and_reads_loss_where_the_link_is_not_full():
    m = Measurement([StepCount(rate, seconds) for rate, seconds in STEPS])
    for s in m.steps:
        s.sent, s.sent_bytes = 10, 10_000
    # a page that claims more than was sent, and a span of 0 ms (all at once): clamped, never a division by zero
    m.apply_report([[20, 10**7, 0], [5, 5_000, 700], [0, 0, 0], [10, 10_000, 60_000]])
    assert m.steps[0].received == 10 and m.steps[0].received_bytes == 10_000
    assert m.loss == 0.0  # the first step's: the steps above fill the link on purpose
    assert m.steps[0].arrived_bps == 10_000 * 8 / (probe.REPORT_SPAN_MIN * STEPS[0][1])
    assert m.downlink_bps == m.steps[0].arrived_bps
    result = m.result()
    assert result["quality"] == classify(m.downlink_bps, 0.0) and result["rtt_ms"] is None
    json.dumps(result)  # goes out as it is
    empty = Measurement([StepCount(rate, seconds) for rate, seconds in STEPS])
    assert empty.loss == 1.0 and empty.result()["quality"] == "audio"


# -- what a page may send ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [
    [[1, 2, 3]] * (len(STEPS) + 1),  # more steps than the probe has
    [[1, 2]], [[1, 2, 3, 4]], [1], [["1", 2, 3]], [[1.5, 2, 3]], [[True, 2, 3]], [[-1, 2, 3]],
    [[probe.REPORT_MAX[0] + 1, 0, 0]], [[0, 0, probe.REPORT_MAX[2] + 1]], [None],
])
def test_a_bad_report_is_refused_by_the_schema(steps: object):
    with pytest.raises(ProtocolError) as err:
        parse_message(json.dumps({"type": "probe_report", "steps": steps, "id": 7}))
    assert err.value.code == "bad_message" and err.value.ref == 7 and "steps" in err.value.message


def test_good_probe_messages_parse():
    assert parse_message(json.dumps({"type": "probe_report", "steps": [[1, 1000, 5], [0, 0, 0]]})).fields == {
        "steps": [[1, 1000, 5], [0, 0, 0]]}
    assert parse_message(json.dumps({"type": "probe", "token": "x.y.z"})).fields == {"token": "x.y.z"}
    with pytest.raises(ProtocolError):
        parse_message(json.dumps({"type": "probe", "token": ""}))
    with pytest.raises(ProtocolError):
        parse_message(json.dumps({"type": "probe_answer", "sdp": "hello"}))


AUDIO_ANSWER = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
                "a=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\na=fingerprint:sha-256 "
                + ":".join(["AB"] * 32) + "\r\na=setup:active\r\na=rtpmap:111 opus/48000/2\r\n")


@pytest.mark.parametrize("sdp", ["x", "v=0\r\n" + "a" * 70_000, "v=0\r\nm=garbage", AUDIO_ANSWER,
                                 AUDIO_ANSWER.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111",
                                                      "m=application 9 UDP/DTLS/SCTP webrtc-datachannel")
                                 .replace("a=fingerprint", "a=x-fingerprint")])
def test_an_answer_that_is_not_one_data_channel_is_refused(sdp: str):
    with pytest.raises(ProbeRefused) as err:
        check_answer(sdp)
    assert err.value.code == "bad_sdp"


class Owner:
    """Stands in for a connection (the probes are kept by a weak reference to theirs)."""


# -- limits -----------------------------------------------------------------------------------------------------


def test_each_token_gets_a_burst_then_one_probe_per_interval():
    now = [100.0]
    probes = Probes(clock=lambda: now[0])
    assert all(probes.allow("room-1") for _ in range(PROBE_BURST))
    assert not probes.allow("room-1")
    assert probes.allow("room-2")  # another token is not held back by the first
    now[0] += PROBE_EVERY_S
    assert probes.allow("room-1") and not probes.allow("room-1")


async def test_one_probe_per_connection_and_a_cap_per_node():
    probes = Probes()
    sent: list[dict] = []
    owners = [Owner() for _ in range(PROBES_AT_ONCE + 1)]
    try:
        for i, owner in enumerate(owners[:PROBES_AT_ONCE]):
            offer = await probes.start(owner, f"room-{i}", sent.append, lambda: False)
            assert "m=application" in offer and "webrtc-datachannel" in offer
        with pytest.raises(ProbeRefused) as err:
            await probes.start(owners[0], "room-0", sent.append, lambda: False)
        assert err.value.code == "probe_running"
        with pytest.raises(ProbeRefused) as err:
            await probes.start(owners[-1], "room-x", sent.append, lambda: False)
        assert err.value.code == "probe_busy"
        with pytest.raises(ProbeRefused) as err:
            probes.of(owners[-1])
        assert err.value.code == "no_probe"
        with pytest.raises(ProbeRefused) as err:  # no report before probe_done
            probes.of(owners[0]).report([[1, 1, 1]])
        assert err.value.code == "unexpected_report"
    finally:
        await probes.close()
    assert all(p.pc.connectionState == "closed" for p in probes.running.values())


async def test_a_probe_nobody_answers_ends_by_itself(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(probe, "PROBE_MAX_S", 0.3)
    probes = Probes()
    sent: list[dict] = []
    owner = Owner()
    await probes.start(owner, "room", sent.append, lambda: False)
    started = time.monotonic()
    while not probes.of(owner).done and time.monotonic() - started < 5:
        await asyncio.sleep(0.05)
    assert probes.of(owner).done and probes.of(owner).pc.connectionState == "closed"
    assert sent == [{"type": "error", "code": "probe_timeout",
                     "message": "the network check did not finish within 0.3 s"}]


async def test_a_probe_ends_soon_after_its_websocket_closes():
    probes = Probes()
    closed = [False]
    owner = Owner()
    await probes.start(owner, "room", lambda _msg: None, lambda: closed[0])
    await asyncio.sleep(0.3)
    assert not probes.of(owner).done
    closed[0] = True
    await asyncio.sleep(probe.CLOSED_POLL_S + 0.3)
    assert probes.of(owner).done and probes.of(owner).pc.connectionState == "closed"


# -- a whole probe, a real peer against a real server --------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_server(tmp_path_factory: pytest.TempPathFactory):
    srv = Server(tmp_path_factory.mktemp("probe"))
    srv.wait_ready()
    yield srv
    srv.stop()


async def _run_probe(ws_url: str, participant_token: str, report: bool = True) -> tuple[list[dict], dict[int, list]]:
    """Probe as a page does; the messages the server sent, and what arrived per step."""
    got: list[dict] = []
    counts: dict[int, list] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        await ws.send_json({"type": "probe", "token": participant_token, "id": 1})
        offer = await ws.receive_json(timeout=10)
        got.append(offer)
        if offer["type"] != "probe_offer":
            return got, counts
        pc = RTCPeerConnection()

        @pc.on("datachannel")
        def on_channel(channel) -> None:  # type: ignore[no-untyped-def]
            @channel.on("message")
            def on_message(data: bytes) -> None:
                if data[0] == probe.PING:
                    channel.send(data)
                    return
                c = counts.setdefault(data[0], [0, 0, time.monotonic(), 0.0])
                c[0], c[1], c[3] = c[0] + 1, c[1] + len(data), time.monotonic()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await ws.send_json({"type": "probe_answer", "sdp": pc.localDescription.sdp})
            while True:
                msg = await ws.receive_json(timeout=15)
                got.append(msg)
                if msg["type"] == "probe_done" and report:
                    await ws.send_json({"type": "probe_report", "steps": [
                        [c[0], c[1], round((c[3] - c[2]) * 1000)] for _, c in sorted(counts.items())]})
                if msg["type"] in ("probe_result", "error"):
                    break
        finally:
            await pc.close()
    return got, counts


async def test_a_whole_probe_stays_within_its_steps_and_reports_the_top_class_on_loopback(probe_server):
    started = time.monotonic()
    got, counts = await _run_probe(probe_server.ws_url, token("classroom", "probe-1", "第一小学"))
    took = time.monotonic() - started
    result = got[-1]
    print(f"\nprobe on loopback in {took:.1f} s: {result}")
    assert [m["type"] for m in got] == ["probe_offer", "probe_done", "probe_result"], got
    assert result["quality"] == "hd" and result["loss"] == 0.0 and result["rtt_ms"] is not None
    assert took < probe.PROBE_MAX_S
    # never more than each step's rate over its length (one message of slack), whatever the link carries
    for index, (rate, seconds) in enumerate(STEPS):
        assert counts[index][1] <= rate * seconds / 8 + probe.MESSAGE_BYTES, (index, counts[index])
        assert result["steps"][index]["received"] == counts[index][0]


async def test_refusals_over_the_websocket(probe_server):
    # a bad token, a library token: refused before anything is made
    got, _ = await _run_probe(probe_server.ws_url, "not-a-token")
    assert got[0]["type"] == "error" and got[0]["code"] == "token_invalid" and got[0]["ref"] == 1
    got, _ = await _run_probe(probe_server.ws_url, token("reviewer", "library"))
    assert got[0]["code"] == "forbidden"
    # answer and report without a probe
    async with aiohttp.ClientSession() as http, http.ws_connect(probe_server.ws_url) as ws:
        await ws.send_json({"type": "probe_report", "steps": [], "id": 2})
        assert (await ws.receive_json(timeout=5))["code"] == "no_probe"
        await ws.send_json({"type": "probe_answer", "sdp": AUDIO_ANSWER, "id": 3})
        assert (await ws.receive_json(timeout=5))["code"] == "no_probe"
        # a probe whose answer is not its data channel: refused, and the probe is still there to answer properly
        await ws.send_json({"type": "probe", "token": token("classroom", "probe-2", "第二小学"), "id": 4})
        assert (await ws.receive_json(timeout=5))["type"] == "probe_offer"
        await ws.send_json({"type": "probe_answer", "sdp": AUDIO_ANSWER, "id": 5})
        reply = await ws.receive_json(timeout=5)
        assert reply["code"] == "bad_sdp" and reply["ref"] == 5
    # the same token, again and again: the burst, then rate_limited (another token is not held back)
    same = token("classroom", "probe-3", "第三小学")
    codes = []
    for _ in range(PROBE_BURST + 1):
        async with aiohttp.ClientSession() as http, http.ws_connect(probe_server.ws_url) as ws:
            await ws.send_json({"type": "probe", "token": same, "id": 1})
            codes.append((await ws.receive_json(timeout=5)).get("code"))
        await asyncio.sleep(0.5)  # (a probe whose websocket closed ends within probe.CLOSED_POLL_S)
    assert codes == [None] * PROBE_BURST + ["rate_limited"], codes

"""The teacher's uplink budget: asked for at once, lowered on real loss, climbing back when clean."""

from __future__ import annotations

import asyncio
import random
import time

import aiortc.rtcrtpsender
import pytest

from sfu.adapt.uplink import BACK_OFF_FACTOR, CLIMB_FACTOR, UPLINK_MIN_BPS, UplinkBudget
from sfu.producer import Producer
from tests.support import Server, Teacher, WsClient, hang_up, token

BUDGET = 1_200_000


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        pytest.param([(100, 0)] * 5, [BUDGET] * 5, id="a clean link is asked for the whole budget at once"),
        pytest.param([(100, 1)] * 3, [BUDGET] * 3, id="1 % loss is no reason to ask for less"),
        pytest.param([(100, 10), (100, 10)], [int(BUDGET * BACK_OFF_FACTOR),
                                              int(int(BUDGET * BACK_OFF_FACTOR) * BACK_OFF_FACTOR)],
                     id="10 % loss backs off each interval"),
        pytest.param([(100, 10), (100, 0)], [int(BUDGET * BACK_OFF_FACTOR),
                                             min(BUDGET, int(int(BUDGET * BACK_OFF_FACTOR) * CLIMB_FACTOR))],
                     id="then a clean interval climbs back"),
        pytest.param([(0, 0)], [BUDGET], id="no packets (a paused camera) changes nothing"),
    ],
)
def test_the_uplink_budget_follows_the_teachers_loss(trace, expected):
    budget = UplinkBudget(BUDGET)
    assert [budget.update(e, lost) for e, lost in trace] == expected


def test_the_uplink_budget_never_asks_for_less_than_the_minimum():
    budget = UplinkBudget(BUDGET)
    for _ in range(100):
        budget.update(100, 50)
    assert budget.bps == UPLINK_MIN_BPS and budget.reason


def test_the_producer_counts_holes_as_uplink_loss_even_when_a_retransmission_fills_them():
    producer = Producer("cam", "video", "vp8", 90000, lambda s: None)
    for seq in [1, 2, 3, 6, 7, 8, 10]:  # 4, 5 and 9 missing
        producer.on_packet(seq, seq * 3000, 1, b"\x10\x00\x00\x9d\x01\x2a", 0)
    producer.on_packet(4, 4 * 3000, 1, b"\x10\x01", 0)  # the retransmission of 4 arrives: still a loss
    assert producer.take_uplink_loss() == (9, 3)
    assert producer.take_uplink_loss() == (0, 0)


@pytest.mark.slow
async def test_the_teacher_is_asked_for_its_budget_at_once_and_for_less_when_its_uplink_loses(tmp_path,
                                                                                            monkeypatch):
    encoders = []
    real = aiortc.rtcrtpsender.get_encoder

    def get_encoder(codec):
        encoder = real(codec)
        if codec.name.lower() == "vp8":
            encoders.append(encoder)
        return encoder

    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", get_encoder)
    server = Server(tmp_path, env={"KETANG_TEACHER_UPLINK_KBPS": str(BUDGET // 1000)})
    server.wait_ready()
    ws = await WsClient().connect(server.ws_url)
    teacher = Teacher(ws)
    try:
        assert (await ws.request({"type": "join", "token": token("teacher", "uplink", "Ms Li")}))["type"] == "joined"
        published = time.monotonic()
        assert (await teacher.publish())["type"] == "answer"
        while not encoders or encoders[0].target_bitrate != BUDGET:
            assert time.monotonic() - published < 5, "the teacher was not asked for its budget"
            await asyncio.sleep(0.1)
        print(f"teacher asked for {BUDGET} bit/s {time.monotonic() - published:.1f} s after publishing")

        # the teacher's uplink starts losing 20 % of its packets (user space, on the teacher's socket)
        rng = random.Random(5)
        ice = teacher.pc.getTransceivers()[0].sender.transport.transport
        send = ice._send

        async def lossy_send(data: bytes) -> None:
            is_rtp = len(data) > 1 and 127 < data[0] < 192 and not (192 <= data[1] <= 223)
            if not (is_rtp and rng.random() < 0.2):
                await send(data)

        ice._send = lossy_send
        lossy_from = time.monotonic()
        while encoders[0].target_bitrate >= BUDGET:
            assert time.monotonic() - lossy_from < 6, "the teacher was not asked for less on a lossy uplink"
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        lowered = encoders[0].target_bitrate
        assert lowered < BUDGET * BACK_OFF_FACTOR

        ice._send = send  # the link heals
        await asyncio.sleep(4)
        assert encoders[0].target_bitrate > lowered
    finally:
        await hang_up(teacher)
        server.stop()

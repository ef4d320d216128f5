"""Simulcast from a real Chromium teacher (fake camera at 1280×720): three VP8 layers reach the server, each
classroom is forwarded one of them, and a classroom on a good link is moved up to the largest by a timed try.

The layers' sizes are the browser's (÷4, ÷2, full); which one a classroom decodes is read from its own
RTCPeerConnection, and what the server chose (and why) from /api/lessons/{lesson}/stats.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chromium import inbound, lesson, wait_decoding

pytestmark = pytest.mark.slow

TEACHER_720P = "?video=1280x720"
LAYER_SIZES = [(320, 180), (640, 360), (1280, 720)]
# the teacher's video layers with a remote-inbound-rtp entry (built from the server's receiver reports)
REPORTED_LAYERS_JS = """async () => {
  const stats = await window.ketang.session.sendPc.getStats();
  let n = 0;
  stats.forEach((s) => { if (s.type === "remote-inbound-rtp" && s.kind === "video" && s.roundTripTime !== undefined) n++; });
  return n;
}"""


async def _camera_size(page) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    video = [s for s in await inbound(page) if s["kind"] == "video" and s["frameWidth"] > 0]
    return (video[0]["frameWidth"], video[0]["frameHeight"]) if video else (0, 0)


async def test_a_720p_teacher_sends_three_layers_and_a_classroom_on_a_good_link_climbs_to_the_largest(server, browser):
    async with lesson(server, browser, query=TEACHER_720P) as (teacher, [room]):
        await wait_decoding(room, timeout_s=15)
        stats = await room.ketang_stats()
        [(track, layers)] = stats["layers"].items()
        await asyncio.sleep(1.0)
        stats = await room.ketang_stats()
        layers = stats["layers"][track]
        assert len(layers) == 3, layers
        assert all(layer["packets_in"] > 0 for layer in layers), layers  # the browser sends all three
        assert len({layer["ssrc"] for layer in layers}) == 3, layers
        first = await _camera_size(room)
        assert first in LAYER_SIZES, first
        # each layer gets receiver reports from the server (aiortc's receiver sees the smallest only; the
        # server reports the others itself): the teacher's browser knows every layer's round trip and loss
        deadline = time.monotonic() + 8
        while (reported := await teacher.evaluate(REPORTED_LAYERS_JS)) < 3:
            assert time.monotonic() < deadline, f"receiver reports for {reported} video layers"
            await asyncio.sleep(0.25)

        # REMB never shows room to go up: the selector tries the next layer after a while, and a good link
        # keeps it; the classroom ends up decoding the 1280×720 layer
        deadline = time.monotonic() + 45
        sizes = [first]
        while time.monotonic() < deadline:
            size = await _camera_size(room)
            if size != sizes[-1]:
                sizes.append(size)
            if size == LAYER_SIZES[-1]:
                break
            await asyncio.sleep(0.5)
        server_view = (await room.ketang_stats())["video"]
        print("layers decoded in turn:", sizes, "server:", server_view)
        assert sizes[-1] == LAYER_SIZES[-1], (sizes, server_view)
        classroom = server_view[await room.evaluate("window.ketang.session.me.id")]
        assert classroom["simulcast"][track]["layer"] == 2, classroom
        await wait_decoding(room, timeout_s=5)  # and it plays on after the switches
        # the teacher's page shows the classroom's layer (高清: the largest), with why on hover
        await teacher.wait_for_function(
            "[...document.querySelectorAll('#classrooms tbody td:nth-child(6)')].some(td => td.textContent.includes('高清'))",
            timeout=8000)


async def test_a_classroom_that_pins_the_low_layer_gets_only_the_smallest(server, browser):
    async with lesson(server, browser, query=TEACHER_720P) as (_teacher, [room]):
        await wait_decoding(room, timeout_s=15)
        await room.click("#low-video")  # 流畅画面
        await room.wait_for_function("document.getElementById('low-video').classList.contains('active')",
                                     timeout=5000)
        deadline = time.monotonic() + 10
        while (size := await _camera_size(room)) != LAYER_SIZES[0]:
            assert time.monotonic() < deadline, f"still {size} after pinning the low layer"
            await asyncio.sleep(0.25)
        me = await room.evaluate("window.ketang.session.me.id")
        [state] = (await room.ketang_stats())["video"][me]["simulcast"].values()
        assert state["target"] == 0 and "low layer" in state["reason"], state
        await asyncio.sleep(8)  # longer than the selector's first try upwards: the pin holds
        assert await _camera_size(room) == LAYER_SIZES[0]
        await wait_decoding(room, timeout_s=5)
        await room.click("#low-video")  # automatic again
        await room.wait_for_function("!document.getElementById('low-video').classList.contains('active')",
                                     timeout=5000)
        [state] = (await room.ketang_stats())["video"][me]["simulcast"].values()
        assert "low layer" not in state["reason"], state

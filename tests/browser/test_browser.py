"""The browser pages in real headless Chromium against a real `ketang serve`: a teacher page publishes its
fake camera and microphone, classroom pages decode them, the courseware comes and goes, a classroom whose
connection is cut rebuilds it by itself, and ending the lesson reaches the classrooms.

What a person would see is read from each page's own RTCPeerConnection (`window.ketang.pc.getStats()`),
and screenshots of the pages during the lesson are written to docs/screenshots/.

Screen share: headless Chromium with --use-fake-ui-for-media-stream answers getDisplayMedia with a fake
1280×720 screen, so the courseware test shares through the real getDisplayMedia path (a second video
transceiver, a new offer, `sources: {mid: "screen"}`). The screenshot test opens the teacher page with
`?fakescreen=1`, which publishes a drawn slide (canvas.captureStream) the same way, so the picture shows
courseware a person recognises.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chromium import (
    CAMERA_LAYERS,
    RECOVERY_S,
    SCREENSHOTS,
    TEACHER_QUERY,
    inbound,
    lesson,
    wait_decoding,
)

pytestmark = pytest.mark.slow

async def test_teacher_publishes_and_two_classrooms_decode_video_and_audio(server, browser):
    # the courseware here is the page's drawn slide (?fakescreen=1), for a screenshot a person can read;
    # the next test shares through getDisplayMedia, which headless Chromium serves with a fake screen
    async with lesson(server, browser, classrooms=2, query=TEACHER_QUERY + "&fakescreen=1") as (teacher, rooms):
        for room in rooms:
            stats = await wait_decoding(room)
            audio = [s for s in stats if s["kind"] == "audio"][0]
            await asyncio.sleep(1)
            later = [s for s in await inbound(room) if s["kind"] == "audio" and s["mid"] == audio["mid"]][0]
            assert later["packetsReceived"] > audio["packetsReceived"], "audio stopped"
            assert later["totalSamplesReceived"] > audio["totalSamplesReceived"]
            assert await room.evaluate("window.ketang.layout") == "camera"
        # the teacher sees both classrooms with their reception figures (stats polled every 2 s)
        await teacher.wait_for_function(
            "document.querySelectorAll('#classrooms tbody tr').length === 2 && "
            "[...document.querySelectorAll('#classrooms tbody td:nth-child(5)')].every(td => td.textContent.includes('kbit/s'))",
            timeout=8000)
        names = await teacher.eval_on_selector_all("#classrooms tbody td:first-child", "tds => tds.map(td => td.textContent)")
        assert sorted(names) == ["第1小学", "第2小学"]
        assert await teacher.eval_on_selector_all("#links input", "els => els.length") == 2
        await rooms[0].wait_for_function("document.getElementById('quality').classList.contains('good')", timeout=5000)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await teacher.screenshot(path=str(SCREENSHOTS / "teacher.png"))
        await rooms[0].screenshot(path=str(SCREENSHOTS / "classroom.png"))

        await teacher.click("#share")
        for room in rooms:
            await room.wait_for_function("window.ketang.layout === 'screen'", timeout=10000)
        await wait_decoding(rooms[0], videos=2)
        await asyncio.sleep(1)  # a few more frames of the slide, for a sharp picture
        await rooms[0].screenshot(path=str(SCREENSHOTS / "classroom-courseware.png"))
        await teacher.screenshot(path=str(SCREENSHOTS / "teacher-sharing.png"))


async def test_courseware_reaches_the_classroom_when_shared_and_goes_away_when_stopped(server, browser):
    async with lesson(server, browser) as (teacher, [room]):
        await wait_decoding(room)
        await teacher.click("#share")
        await room.wait_for_function("window.ketang.layout === 'screen'", timeout=10000)
        stats = await wait_decoding(room, videos=2)
        sizes = sorted((s["frameWidth"], s["frameHeight"]) for s in stats if s["kind"] == "video")
        # the 1280×720 slide, and the 640×360 camera at one of its simulcast layers (÷4, ÷2, full)
        assert len(sizes) == 2 and (1280, 720) in sizes and set(sizes) - {(1280, 720)} <= CAMERA_LAYERS, sizes
        assert await room.is_visible("#pip-video"), "the teacher should be shown small next to the courseware"

        await room.evaluate("""() => { window.removedTracks = [];
            window.ketang.session.sig.addEventListener('event:track-removed', e => window.removedTracks.push(e.detail.track)); }""")
        await teacher.click("#share")  # stop sharing
        await room.wait_for_function("window.ketang.layout === 'camera'", timeout=10000)
        await room.wait_for_function("window.removedTracks.some(t => t.source === 'screen')", timeout=5000)
        assert not await room.is_visible("#pip-video")
        await wait_decoding(room, videos=1)  # the camera plays on

        # sharing again: the classroom's freed slot carries the new courseware track
        await teacher.click("#share")
        await room.wait_for_function("window.ketang.layout === 'screen'", timeout=10000)
        stats = await wait_decoding(room, videos=2)
        assert len([s for s in stats if s["kind"] == "video"]) == 2, "the freed slot should have been reused"


async def test_a_classroom_whose_connection_is_cut_recovers_by_itself_within_5_s(server, browser):
    async with lesson(server, browser) as (teacher, [room]):
        await wait_decoding(room)
        cut_at = time.monotonic()
        # cut both: the websocket (signalling) and the peer connection (media), as a dropped school link would
        await room.evaluate("() => { const s = window.ketang.session; s.sig.ws.close(); s.pc.close(); }")
        await room.wait_for_function(
            "document.getElementById('banner').textContent.includes('重新连接')", timeout=3000)
        await wait_decoding(room, timeout_s=RECOVERY_S)
        recovered = time.monotonic() - cut_at
        print(f"classroom decoding again {recovered:.1f} s after the cut")
        assert recovered <= RECOVERY_S
        assert await room.evaluate("window.ketang.session.reconnects") == 1
        await room.wait_for_function("document.getElementById('banner').textContent.includes('已重新连接')", timeout=3000)

        # only the peer connection dies (the websocket stays): the watchdog notices and rebuilds too
        await room.evaluate("() => window.ketang.session.pc.close()")
        await wait_decoding(room, timeout_s=RECOVERY_S)
        assert await room.evaluate("window.ketang.session.reconnects") == 2


async def test_a_teacher_whose_connection_is_cut_publishes_again_and_the_classroom_plays_on(server, browser):
    async with lesson(server, browser) as (teacher, [room]):
        await wait_decoding(room)
        await teacher.evaluate("() => { const s = window.ketang.session; s.sig.ws.close(); s.pc.close(); }")
        await teacher.wait_for_function("window.ketang.session.reconnects === 1 && "
                                        "document.getElementById('status').classList.contains('live')", timeout=5000)
        await asyncio.sleep(0.5)
        await wait_decoding(room, timeout_s=RECOVERY_S)
        assert await room.evaluate("window.ketang.session.reconnects") == 0, "the classroom should not need to rebuild"


async def test_ending_the_lesson_tells_the_classrooms(server, browser):
    async with lesson(server, browser) as (teacher, [room]):
        await wait_decoding(room, audio=False)
        await asyncio.sleep(3)  # a lesson of a few seconds at least: its recording is in the library
        await teacher.click("#end")
        await teacher.click("#end")  # the second press confirms
        await room.wait_for_function("document.getElementById('message').textContent === '课程已结束'", timeout=5000)
        assert await room.is_visible("#message")
        await teacher.wait_for_function("document.getElementById('status').textContent === '课程已结束'", timeout=5000)
        await asyncio.sleep(1.5)
        assert await room.evaluate("window.ketang.session.reconnects") == 0, "an ended lesson must not reconnect"
        # the teacher page says the recording is in the library and links the lesson's item, which opens with the
        # teacher's own token (the item is not published yet: nobody else sees it)
        await teacher.wait_for_selector("#library-link a", timeout=10000)
        assert "本节课录像已存入资源库" in await teacher.text_content("#library-link")
        href = await teacher.get_attribute("#library-link a", "href")
        assert href and href.startswith("/library/play/") and "#token=" in href
        item = await teacher.context.new_page()
        await item.goto(server.url + href)
        await item.wait_for_function("document.querySelectorAll('#sources li').length >= 1", timeout=10000)
        assert await item.is_hidden("#error")
        assert await item.text_content("#fields") and "待审核" in await item.text_content("#fields")
        await item.close()


async def test_a_classroom_on_a_weak_link_switches_to_audio_only_and_back(server, browser):
    async with lesson(server, browser) as (teacher, [room]):
        await wait_decoding(room)
        await room.click("#audio-only")
        await room.wait_for_function("document.getElementById('banner').textContent.includes('只听声音')",
                                     timeout=3000)
        await asyncio.sleep(1)  # frames in flight
        before = await inbound(room)
        await asyncio.sleep(2)
        after = await inbound(room)

        def total(stats: list[dict], kind: str, key: str) -> int:
            return sum(s[key] for s in stats if s["kind"] == kind)

        assert total(after, "video", "framesDecoded") == total(before, "video", "framesDecoded")
        # the teacher sees it in the classroom list (from the server's stats, polled every 2 s)
        await teacher.wait_for_function(
            "document.querySelector('#classrooms tbody').textContent.includes('仅声音（教室选择）')", timeout=5000)
        assert total(after, "audio", "packetsReceived") > total(before, "audio", "packetsReceived") + 50
        await room.click("#audio-only")  # video again
        await wait_decoding(room, timeout_s=5)
        assert await room.evaluate("window.ketang.session.video") is True

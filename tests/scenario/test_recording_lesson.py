"""A real lesson recorded by a real server: an aiortc teacher publishes, the server writes the library file."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiortc.rtcrtpsender
import av
import pytest

from recorder.library.catalog import Library, Viewer
from sfu.rtp.vp8 import vp8_descriptor_len
from tests.support import Server, Teacher, WsClient, hang_up, read_recording, token

pytestmark = pytest.mark.slow

LESSON_S = 10.0


@pytest.fixture
def teacher_frames(monkeypatch):
    """Every VP8 frame the aiortc teacher's encoder produces, as bytes (payload descriptors removed)."""
    frames: list[bytes] = []
    real = aiortc.rtcrtpsender.get_encoder

    def get_encoder(codec):
        encoder = real(codec)
        if codec.name.lower() != "vp8":
            return encoder
        encode = encoder.encode

        def recording_encode(frame, force_keyframe=False):
            payloads, ts = encode(frame, force_keyframe)
            frames.append(b"".join(p[vp8_descriptor_len(p):] for p in payloads))
            return payloads, ts

        encoder.encode = recording_encode
        return encoder

    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", get_encoder)
    return frames


async def _teach(server: Server, lesson: str, **publish: object) -> Teacher:
    ws = await WsClient().connect(server.ws_url)
    assert (await ws.request({"type": "join", "token": token("teacher", lesson, "李老师")}))["type"] == "joined"
    teacher = Teacher(ws)
    assert (await teacher.publish(**publish))["type"] == "answer"
    return teacher


async def _wait_for_recording(library: Library, lesson: str, states: tuple[str, ...], timeout_s: float = 15):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await _by_lesson(library, lesson)
        done = [r for r in found if r is not None and r.state in states]
        if done:
            return done[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no recording of {lesson} in states {states}")


async def _by_lesson(library: Library, lesson: str):
    found, _ = await library.search("", {"lesson_id": lesson}, per_page=100, viewer=Viewer.operator())
    return found[::-1]  # (oldest first)


async def test_a_lesson_is_recorded_without_transcoding_in_sync_and_lands_in_the_library(tmp_path, teacher_frames):
    server = Server(tmp_path)
    server.wait_ready()
    lesson = "rec-full"
    try:
        teacher = await _teach(server, lesson)
        started = time.monotonic()
        await asyncio.sleep(LESSON_S)
        await teacher.ws.send({"type": "end_lesson"})
        lesson_s = time.monotonic() - started
        await teacher.ws.wait_for(lambda m: m.get("event") == "lesson-ended")
        await hang_up(teacher)
        library = Library(tmp_path)
        rec = await _wait_for_recording(library, lesson, ("awaiting_review",))
    finally:
        server.stop()
    kinds, packets, decoded = read_recording(library.path_of(rec.file))
    assert kinds == ["audio", "video"]
    assert decoded == len(packets["video"]) > 0.8 * LESSON_S * 30
    # the file's frames are the teacher's encoder output, bit for bit: a contiguous run of it
    video = [data for _, data in packets["video"]]
    start = teacher_frames.index(video[0])
    assert video == teacher_frames[start:start + len(video)]
    duration = max(packets["video"][-1][0], packets["audio"][-1][0])
    assert abs(duration - lesson_s) <= 0.5 + (start / 30), (duration, lesson_s)
    assert abs(packets["video"][0][0] - packets["audio"][0][0]) <= 0.1
    assert rec.duration_s == pytest.approx(duration, abs=0.1)


async def test_a_server_killed_mid_lesson_repairs_the_recording_at_the_next_start(tmp_path):
    server = Server(tmp_path)
    server.wait_ready()
    lesson = "rec-crash"
    teacher = await _teach(server, lesson)
    try:
        await asyncio.sleep(8)
        os.kill(server.proc.pid, signal.SIGKILL)
        killed_after = 8.0
        server.proc.wait(10)
    finally:
        await hang_up(teacher)
        server.stop()
    library = Library(tmp_path)
    assert [r.state for r in await _by_lesson(library, lesson)] == ["recording"]

    again = Server(tmp_path)  # the same data dir: it finds and repairs the unfinished recording
    try:
        again.wait_ready()
        rec = await _wait_for_recording(Library(tmp_path), lesson, ("awaiting_review",))
    finally:
        again.stop()
    kinds, packets, decoded = read_recording(library.path_of(rec.file))
    assert kinds == ["audio", "video"]
    last = packets["video"][-1][0]
    assert last >= killed_after - 2.0 - 1.5, last  # ~1.5 s of set-up before the first frame is written
    assert decoded == len(packets["video"])


async def test_a_lesson_whose_teacher_switched_recording_off_is_not_recorded(tmp_path):
    server = Server(tmp_path)
    server.wait_ready()
    try:
        quiet = await _teach(server, "rec-off", record=False)
        recorded = await _teach(server, "rec-on")
        await asyncio.sleep(3)
        for teacher in (quiet, recorded):
            await teacher.ws.send({"type": "end_lesson"})
            await teacher.ws.wait_for(lambda m: m.get("event") == "lesson-ended")
            await hang_up(teacher)
        library = Library(tmp_path)
        await _wait_for_recording(library, "rec-on", ("awaiting_review",))
        assert await _by_lesson(library, "rec-off") == []
    finally:
        server.stop()


async def test_a_courseware_share_is_recorded_as_its_own_file_a_source_of_the_lessons_one_item(tmp_path):
    server = Server(tmp_path)
    server.wait_ready()
    try:
        teacher = await _teach(server, "rec-screen")
        await asyncio.sleep(1)
        teacher.add_screen()
        assert (await teacher.publish())["type"] == "answer"
        await asyncio.sleep(4)
        await teacher.ws.send({"type": "end_lesson"})
        await teacher.ws.wait_for(lambda m: m.get("event") == "lesson-ended")
        await hang_up(teacher)
        library = Library(tmp_path)
        await _wait_for_recording(library, "rec-screen", ("awaiting_review",))
        items = await _by_lesson(library, "rec-screen")
        assert len(items) == 1, items  # the library lists lessons: the share is one of the lesson's sources
        sources = {r.id: r for r in [items[0], *await library.sources(items[0])]}.values()
    finally:
        server.stop()
    assert sorted((r.role, r.state) for r in sources) == [("courseware", "awaiting_review"),
                                                          ("teacher", "awaiting_review")]
    screen = next(r for r in sources if r.role == "courseware" and "课件" in r.title)
    kinds, packets, decoded = read_recording(library.path_of(screen.file))
    assert kinds == ["video"] and decoded == len(packets["video"]) > 10
    with av.open(str(library.path_of(screen.file))) as c:
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (640, 360)

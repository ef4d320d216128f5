"""A real lesson, recorded by a real server and composed into its 课例 by the server's job queue: an aiortc teacher
(a green camera, a 440 Hz voice) teaches, puts a classroom (a red camera, a 1 kHz voice) on stage for a while,
then shares courseware (blue). PyAV reads the composite and finds each picture where and when it belongs, both
voices while the classroom is on stage, the chapters, and the index before the media (faststart). The library shows
the lesson as ONE item with its 3 sources (camera, courseware, stage), the composite's progress while it is made,
then the composite as the item's video."""

from __future__ import annotations

import asyncio
import fractions
import json
import time

import aiohttp
import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import AudioStreamTrack

from tests.support import VIDEO_CLOCK, Classroom, Server, Teacher, WsClient, hang_up, token

pytestmark = pytest.mark.slow

GREEN, RED, BLUE = (40, 170, 40), (210, 50, 40), (40, 40, 210)


class ColourTrack(MediaStreamTrack):
    """A camera of one colour (a white bar moving along the bottom edge keeps the encoder busy)."""

    kind = "video"

    def __init__(self, colour: tuple[int, int, int], width: int, height: int, fps: int = 15) -> None:
        super().__init__()
        self.fps, self.n, self._start = fps, 0, None
        self._image = np.empty((height, width, 3), np.uint8)
        self._image[:] = colour

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.time()
        delay = self._start + self.n / self.fps - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        img = self._image.copy()
        h, w = img.shape[:2]
        x = (self.n * 6) % (w - w // 8)
        img[h - h // 16:, x:x + w // 8] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = self.n * VIDEO_CLOCK // self.fps, fractions.Fraction(1, VIDEO_CLOCK)
        self.n += 1
        return frame


class ToneTrack(AudioStreamTrack):
    """A microphone that hears one tone."""

    def __init__(self, hz: float) -> None:
        super().__init__()
        self.hz = hz

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        t = (frame.pts + np.arange(frame.samples)) / frame.sample_rate
        frame.planes[0].update((np.sin(2 * np.pi * self.hz * t) * 9000).astype(np.int16).tobytes())
        return frame


def _dress(peer: Teacher, colour: tuple[int, int, int], size: tuple[int, int], hz: float) -> None:
    video, audio = peer.pc.getTransceivers()[:2]
    video.sender.replaceTrack(ColourTrack(colour, *size))
    audio.sender.replaceTrack(ToneTrack(hz))


def _near(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 45) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - colour) <= tol))


async def test_a_lesson_is_composed_as_classrooms_saw_it(tmp_path):
    server = Server(tmp_path)
    server.wait_ready()
    lesson = "compose-full"
    marks: dict[str, float] = {}
    peers: list = []
    try:
        ws = await WsClient().connect(server.ws_url)
        assert (await ws.request({"type": "join", "token": token("teacher", lesson, "李老师")}))["type"] == "joined"
        teacher = Teacher(ws)
        peers.append(teacher)
        _dress(teacher, GREEN, (320, 240), 440)
        assert (await teacher.publish())["type"] == "answer"

        cws = await WsClient().connect(server.ws_url)
        joined = await cws.request({"type": "join", "token": token("classroom", lesson, "A")})
        rx, tx = Classroom(cws), Teacher(cws, size=(192, 112))
        peers += [rx, tx]
        _dress(tx, RED, (192, 112), 1000)
        assert (await tx.publish())["type"] == "answer"

        await asyncio.sleep(5)
        marks["stage_on"] = time.time()
        await ws.request({"type": "stage", "participant": joined["participant"]["id"], "on": True})
        await asyncio.sleep(6)
        marks["stage_off"] = time.time()
        await ws.request({"type": "stage", "participant": joined["participant"]["id"], "on": False})
        await asyncio.sleep(1)
        marks["share"] = time.time()
        teacher.add_screen()
        teacher.screen_transceiver.sender.replaceTrack(ColourTrack(BLUE, 640, 360, fps=10))
        assert (await teacher.publish())["type"] == "answer"
        await asyncio.sleep(7)
        marks["end"] = time.time()
        await ws.send({"type": "end_lesson"})
        await ws.wait_for(lambda m: m.get("event") == "lesson-ended")
        await hang_up(*peers)

        # the library, as the teacher page finds the lesson's item at its end (the teacher's own token)
        auth = {"Authorization": f"Bearer {token('teacher', lesson, '李老师')}"}
        seen_states: list[str] = []
        item: dict = {}
        async with aiohttp.ClientSession(server.url) as http:
            async with http.get(f"/api/library/lessons/{lesson}", headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                item = await resp.json()
            async with http.get("/api/library", headers=auth) as resp:
                listed = await resp.json()
            assert listed["total"] == 1 and [i["id"] for i in listed["items"]] == [item["id"]]  # lessons, not files
            assert sorted(s["role"] for s in item["sources"]) == ["courseware", "stage", "teacher"]
            assert {s["label"] for s in item["sources"]} >= {"课件 1", "A"}
            assert set(item["lesson_files"]) == {"attendance.csv", "chat.csv", "record.json"}

            jobs_file, job = tmp_path / "compose-jobs.json", None
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                async with http.get(f"/api/library/{item['id']}", headers=auth) as resp:
                    item = await resp.json()
                seen_states.append(f"{item['compose']['state']}:{item['compose']['progress']}")
                if item["compose"]["state"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.3)
            if jobs_file.exists():
                job = next((j for j in json.loads(jobs_file.read_text())["jobs"] if j["lesson_id"] == lesson), None)
            # the item now plays the composite (Range works on it) and offers it for download
            assert item["urls"]["composite"], item["urls"]
            async with http.get(item["urls"]["composite"], headers={"Range": "bytes=0-99"}) as resp:
                assert resp.status == 206 and resp.headers["Content-Type"] == "video/mp4"
                assert len(await resp.read()) == 100
    finally:
        server.stop()
    assert any(s.startswith(("queued", "running")) for s in seen_states), seen_states  # progress shown meanwhile
    assert seen_states[-1] == "done:100", seen_states
    assert job is not None and job["state"] == "done", job
    record = json.loads((tmp_path / "lessons" / lesson / "record.json").read_text())
    files = record["recording"]["files"]
    assert sorted(f["role"] for f in files) == ["courseware", "stage", "teacher"]
    origin = next(f["start"] for f in files if f["role"] == "teacher")
    composite = tmp_path / "lessons" / lesson / "composite.mp4"
    assert job["output"] == str(composite)
    data = composite.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # faststart: the index first

    def at(mark: str, after_s: float) -> float:
        return marks[mark] - origin + after_s

    checks = {  # composite time: what must be where
        at("stage_on", -1.5): [((360, 640), GREEN), ((360, 80), (0, 0, 0))],  # teacher full (4:3, letterboxed)
        at("stage_on", 3.0): [((360, 320), GREEN), ((360, 960), RED)],  # teacher left, class right
        at("share", 4.0): [((300, 640), BLUE), ((614, 1144), GREEN)],  # courseware, teacher in the corner
    }
    found: dict[float, np.ndarray] = {}
    with av.open(str(composite)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (1280, 720)
        titles = [ch["metadata"]["title"] for ch in c.chapters()]
        for frame in c.decode(video=0):
            for t in checks:
                if t not in found and frame.time >= t:
                    found[t] = frame.to_ndarray(format="rgb24")
    for t, expected in checks.items():
        for (y, x), colour in expected:
            assert _near(found[t][y, x], colour), (t, (y, x), found[t][y, x], colour)
    assert titles[:2] == ["讲授", "上台 A"] and titles[-1] == "课件", titles

    with av.open(str(composite)) as c:
        audio = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])

    def level(t: float, hz: float) -> float:
        seg = audio[int(t * 48000):int(t * 48000) + 4800]
        return float(np.abs(np.fft.rfft(seg))[round(hz * len(seg) / 48000)] / len(seg))

    before, during = at("stage_on", -2.0), at("stage_on", 3.0)
    assert level(before, 440) > 0.02 and level(before, 1000) < level(before, 440) / 20
    assert level(during, 440) > 0.02 and level(during, 1000) > 0.02, (level(during, 440), level(during, 1000))

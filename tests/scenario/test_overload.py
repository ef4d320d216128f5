"""A server short of CPU: its process is stopped for most of every 0.3 s (SIGSTOP/SIGCONT from the test, what a
CPU hog or a crowded machine does to it), with a real aiortc teacher and real aiortc classrooms decoding.

It must shed the classrooms' video and keep their audio flowing, answer /readyz 503 "overloaded", show it in
/metrics, refuse a new classroom with `overloaded`, and come back (video, readiness, joins) once the stall ends."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import aiohttp
import pytest

from loadtest.wsclient import WsClient
from sfu.adapt.overload import MAX_LEVEL
from tests.scenario.test_metrics import scrape, total
from signaling.tokens import issue_token
from tests.support import TEST_SECRET, Classroom, Server, hang_up, join_lesson, publishing_teacher, token

pytestmark = pytest.mark.slow

STOPPED_S, RUNNING_S = 0.2, 0.1  # the server gets a third of the time


class Stall:
    """Stops and continues the server process in a thread (the test's own event loop keeps running)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.done.is_set():
                os.kill(self.pid, signal.SIGSTOP)
                time.sleep(STOPPED_S)
                os.kill(self.pid, signal.SIGCONT)
                time.sleep(RUNNING_S)
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def __enter__(self) -> Stall:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)


async def readyz(server: Server) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, \
            http.get(server.url + "/readyz", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.json()


async def until(check, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.3)


async def overload_level(server: Server, lesson: str) -> int:
    return (await server.stats(lesson))["overload"]["level"]


async def test_short_of_cpu_sheds_video_keeps_audio_refuses_joins_and_recovers(server: Server) -> None:
    lesson = "overload-stall"
    teacher = await publishing_teacher(server, lesson)
    rooms = [Classroom(await join_lesson(server, "classroom", lesson, f"第{i}小学")) for i in range(2)]
    # a classroom that was in the lesson and dropped out before the stall (its page will come back)
    back = issue_token(TEST_SECRET, "classroom", lesson, name="第九小学", sub="returning-classroom")
    ws = await join_lesson(server, "classroom", lesson, "第九小学", participant_token=back)
    await ws.close()
    try:
        for room in rooms:
            await room.wait_frames(10, timeout_s=30)
        status, body = await readyz(server)
        assert status == 200, body
        assert await overload_level(server, lesson) == 0

        with Stall(server.proc.pid):
            async def overloaded() -> dict | None:
                status, body = await readyz(server)
                return body if status == 503 else None

            body = await until(overloaded, 30, "/readyz never said overloaded")
            assert body["reasons"] == ["overloaded"]
            # every classroom shed to audio only (a quarter more every 0.5 s of lateness)
            await until(lambda: _at_level(server, lesson, MAX_LEVEL), 40, "never shed down to audio only")
            # saturated: a new classroom is refused, with the code the page retries on; one of the lesson's own
            # classrooms coming back (a reconnect) is not
            ws = await WsClient().connect(server.ws_url)
            reply = await ws.request({"type": "join", "token": token("classroom", lesson, "新来的学校"),
                                      "lesson": lesson}, timeout_s=20)
            assert reply["type"] == "error" and reply["code"] == "overloaded", reply
            await ws.close()
            ws = await join_lesson(server, "classroom", lesson, "第九小学", participant_token=back)  # `joined`
            await ws.close()
            samples = await scrape(server)
            assert total(samples, "ketang_overloaded") == 1
            assert total(samples, "ketang_overload_shed_level") == MAX_LEVEL
            # and now: video stopped, audio goes on, for every classroom
            await asyncio.sleep(1.0)
            video0 = [len(r.frames) for r in rooms]
            audio0 = [r.audio_frames for r in rooms]
            await asyncio.sleep(4.0)
            video = [len(r.frames) - v for r, v in zip(rooms, video0)]
            audio = [r.audio_frames - a for r, a in zip(rooms, audio0)]
            assert all(v <= 2 for v in video), video  # (a frame in flight at most)
            assert all(a >= 50 for a in audio), audio  # ≥ a quarter of 4 s of 20 ms frames, in a third of the time

        # the stall is over: the level comes down, video comes back, the node is ready and takes joins again
        async def ready() -> bool:
            status, _ = await readyz(server)
            return status == 200

        await until(ready, 40, "/readyz never ready again")
        for room in rooms:
            await room.wait_frames(len(room.frames) + 10, timeout_s=30)
        samples = await scrape(server)
        assert total(samples, "ketang_overloaded") == 0
        assert total(samples, "ketang_overload_shed_level") == 0
        late = await join_lesson(server, "classroom", lesson, "新来的学校")  # asserts `joined`
        await late.close()
    finally:
        await hang_up(teacher, *rooms)


async def _at_level(server: Server, lesson: str, level: int) -> bool:
    return await overload_level(server, lesson) >= level

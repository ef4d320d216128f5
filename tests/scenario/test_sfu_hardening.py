"""Hostile signalling against a live lesson's media (issue 11): the same classroom link joined 50 times at once,
a second teacher link sending bad offers, malformed and oversized offers over the wire. A `ketang serve`
subprocess with its media on 127.0.0.1; real aiortc teacher and classrooms."""

from __future__ import annotations

import asyncio
import re
import time

import psutil
import pytest

from tests.support import (
    Classroom,
    Server,
    WsClient,
    hang_up,
    join_lesson,
    publishing_teacher,
    token,
)
from tests.unit.sfu.test_sdp_check import CASES

pytestmark = pytest.mark.slow


def _udp_sockets(server: Server) -> int:
    return len(psutil.Process(server.proc.pid).net_connections(kind="udp"))


async def _settle(server: Server, expected: int, timeout_s: float = 15.0) -> int:
    """The server's UDP socket count once it reaches `expected` (or the last one seen after the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        n = _udp_sockets(server)
        if n == expected or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.2)


async def test_50_concurrent_joins_with_one_classroom_link_leave_one_subscriber_and_no_extra_socket(loopback_server):
    server = loopback_server
    lesson = "join-race"
    teacher = await publishing_teacher(server, lesson)
    link = token("classroom", lesson, "第三小学")
    first = await join_lesson(server, "classroom", lesson, "", link)
    sockets: list[WsClient] = [first]
    try:
        await first.wait_for(lambda m: m.get("type") == "offer")
        one = _udp_sockets(server)  # the teacher's and one classroom's media

        async def join_again() -> WsClient:
            ws = await WsClient().connect(server.ws_url)
            await ws.send({"type": "join", "token": link, "lesson": lesson})
            return ws

        sockets += await asyncio.gather(*(join_again() for _ in range(50)))
        await asyncio.sleep(3)
        after = await _settle(server, one)
        stats = await server.stats(lesson)
        print(f"UDP sockets with one classroom {one}; after 50 concurrent joins with its link {after}; "
              f"subscribers {list(stats['subscribers'])}")
        assert after == one, f"{after - one} sockets leaked"
        assert len(stats["subscribers"]) == 1
        # one connection is left, the others closed as replaced (4001), and the one left has its media offered
        open_ones = [ws for ws in sockets if not ws.ws.closed]
        assert len(open_ones) == 1 and {ws.close_code for ws in sockets if ws.ws.closed} == {4001}
        assert any(m.get("type") == "offer" for m in open_ones[0].messages)
        for ws in sockets:
            await ws.close()
        teacher_only = await _settle(server, one - 1)
        assert teacher_only < one
        assert (await server.stats(lesson))["subscribers"] == {}
    finally:
        for ws in sockets:
            await ws.close()
        await hang_up(teacher)


async def test_a_second_teacher_link_with_bad_offers_leaves_the_live_teacher_on_air(loopback_server):
    server = loopback_server
    lesson = "second-teacher"
    room = Classroom(await join_lesson(server, "classroom", lesson, "school"))
    teacher = await publishing_teacher(server, lesson)
    intruder = await join_lesson(server, "teacher", lesson, "someone else")
    try:
        await room.wait_frames(5)
        tracks = {p["id"] for p in (await server.stats(lesson))["producers"]}
        no_fingerprint = re.sub(r"^a=fingerprint:.*\r\n", "", teacher.pc.localDescription.sdp, flags=re.M)
        codes = []
        for sdp in ("v=0\r\nnonsense", no_fingerprint, *(c[1] for c in CASES)):
            reply = await intruder.request({"type": "publish", "sdp": sdp})
            codes.append(reply.get("code"))
            await asyncio.sleep(0.12)  # under the per-connection rate limit
        assert "internal" not in codes, codes
        assert set(codes) <= {"bad_sdp", "too_many_tracks", "nothing_to_publish", "bad_message"}, codes
        frames = len(room.frames)
        await asyncio.sleep(2)
        assert len(room.frames) - frames >= 0.8 * 2 * teacher.video.fps, "the classroom stopped decoding"
        assert {p["id"] for p in (await server.stats(lesson))["producers"]} == tracks
        assert teacher.pc.connectionState == "connected"
    finally:
        await intruder.close()
        await hang_up(room, teacher)


async def test_oversized_offers_are_refused_and_classrooms_can_still_negotiate(loopback_server):
    server = loopback_server
    lesson = "many-mlines"
    room = Classroom(await join_lesson(server, "classroom", lesson, "school"))
    teacher = await publishing_teacher(server, lesson)
    try:
        await room.wait_frames(5)
        head, *sections = re.split(r"(?=^m=)", teacher.pc.localDescription.sdp, flags=re.M)
        video = next(s for s in sections if s.startswith("m=video"))
        many = head + "".join(sections) + "".join(re.sub(r"a=mid:\S+", f"a=mid:x{i}", video) for i in range(20))
        reply = await teacher.ws.request({"type": "publish", "sdp": many})
        assert reply["type"] == "error" and reply["code"] == "too_many_tracks", reply
        # the live lesson is untouched, and a new classroom negotiates and decodes
        late = Classroom(await join_lesson(server, "classroom", lesson, "late school"))
        await late.wait_frames(5)
        frames = len(room.frames)
        await asyncio.sleep(1)
        assert len(room.frames) > frames
        await hang_up(late)
    finally:
        await hang_up(room, teacher)

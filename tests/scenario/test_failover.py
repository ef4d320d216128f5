"""Node failover (issue 11, item 11): two `ketang serve` processes on one Redis, the one carrying a lesson is
killed (kill -9), and its teacher and classroom reconnect as the pages do. Measured: from the kill to the first
video frame the classroom decodes through the other node (target ≤ 5 s; docs/config.md has the figure).

The participants' TTL is left at its 30 s: what frees the lesson is the dead node's own liveness (3 s)."""

from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path

import pytest

from signaling.tokens import issue_token
from tests.support import (
    TEST_SECRET,
    Classroom,
    Server,
    Teacher,
    WsClient,
    hang_up,
    node_dir,
)

PROTOCOL_JS = Path(__file__).resolve().parents[2] / "client_web" / "protocol.js"


def _page_schedule() -> tuple[list[float], float]:
    """The pages' reconnect schedule, read from client_web/protocol.js (RECONNECT_DELAYS_MS, RECONNECT_JITTER)."""
    text = PROTOCOL_JS.read_text()
    delays = re.search(r"const RECONNECT_DELAYS_MS = \[([^\]]*)\]", text)
    jitter = re.search(r"const RECONNECT_JITTER = ([0-9.]+)", text)
    assert delays and jitter, "protocol.js: RECONNECT_DELAYS_MS / RECONNECT_JITTER not found"
    return [int(x) / 1000 for x in delays.group(1).split(",")], float(jitter.group(1))


RECONNECT_DELAYS_S, RECONNECT_JITTER = _page_schedule()


def test_the_pages_try_again_often_while_a_dead_nodes_lessons_are_freed() -> None:
    # a dead node's liveness expires within 3 s (KETANG_NODE_TTL_S): the pages must try several times in the
    # first seconds, not wait 8 s (they did: 0.3, 1.3, 3.3, 7.3 s)
    tries, at = [], 0.0
    for delay in RECONNECT_DELAYS_S:
        at += delay * (1 + RECONNECT_JITTER)  # the latest each try may come
        tries.append(at)
    assert sum(1 for t in tries if t <= 4.5) >= 5, tries
    assert RECONNECT_DELAYS_S[0] <= 0.5 and 0 < RECONNECT_JITTER < 1


async def _join(url: str, role: str, lesson: str, name: str) -> tuple[WsClient, dict]:
    ws = await WsClient().connect(url)
    return ws, await ws.request({"type": "join", "token": issue_token(TEST_SECRET, role, lesson, name=name,
                                                                     sub=name)})


async def _rejoin(home: Server, role: str, lesson: str, name: str, log: list[str]) -> tuple[WsClient, dict]:
    """What a page does after its websocket dropped: wait a little, join at its own server, follow
    `lesson_elsewhere` (to the dead node: that fails), and try again on the schedule."""
    rng = random.Random(name)
    for attempt in range(60):
        delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
        await asyncio.sleep(delay * (1 + RECONNECT_JITTER * (2 * rng.random() - 1)))
        ws, reply = await _join(home.ws_url, role, lesson, name)
        if reply["type"] == "joined":
            return ws, reply
        await ws.close()
        log.append(f"{name}: {reply.get('code')}")
        if reply.get("code") == "lesson_elsewhere":
            try:
                ws, reply = await _join(reply["url"].replace("http", "ws", 1) + "/ws", role, lesson, name)
            except OSError:
                log.append(f"{name}: {reply['url']} unreachable")
                continue
            if reply["type"] == "joined":
                return ws, reply
            await ws.close()
    raise AssertionError(f"{name} never joined again: {log}")


@pytest.mark.slow
async def test_a_killed_nodes_lesson_plays_on_another_node_within_seconds(tmp_path, redis_url, redis_prefix):
    a = Server(node_dir(tmp_path, "a"), redis_url, redis_prefix)
    b = Server(node_dir(tmp_path, "b"), redis_url, redis_prefix)
    peers: list[Teacher | Classroom] = []
    try:
        a.wait_ready()
        b.wait_ready()
        # the lesson starts on node a; the pages were served by node b (their home), which sent them to a
        ws, reply = await _join(b.ws_url, "teacher", "failover", "Ms Li")
        assert reply.get("code") == "lesson_elsewhere" or reply["type"] == "joined", reply
        await ws.close()
        ws, reply = await _join(a.ws_url, "teacher", "failover", "Ms Li")
        assert reply["type"] == "joined", reply
        teacher = Teacher(ws)
        peers.append(teacher)
        assert (await teacher.publish())["type"] == "answer"
        ws, reply = await _join(a.ws_url, "classroom", "failover", "north")
        assert reply["type"] == "joined", reply
        room = Classroom(ws)
        peers.append(room)
        await room.wait_frames(10, timeout_s=30)

        killed = time.monotonic()
        a.kill()
        log: list[str] = []

        async def teacher_back() -> Teacher:
            ws, _ = await _rejoin(b, "teacher", "failover", "Ms Li", log)
            back = Teacher(ws)
            peers.append(back)
            assert (await back.publish())["type"] == "answer"
            return back

        async def classroom_back() -> tuple[Classroom, float]:
            ws, _ = await _rejoin(b, "classroom", "failover", "north", log)
            joined = time.monotonic()
            back = Classroom(ws)
            peers.append(back)
            return back, joined

        _, (room_b, joined_at) = await asyncio.gather(teacher_back(), classroom_back())
        await room_b.wait_frames(1, timeout_s=60)
        took = room_b.frames[0] - killed
        print(f"failover: joined the other node {joined_at - killed:.2f} s and decoded video there {took:.2f} s "
              f"after kill -9 of the node carrying the lesson (node TTL 3 s, participant TTL 30 s); tries: {log}")
        await room_b.wait_frames(30, timeout_s=30)  # and it plays on
        # on a loaded 2-core machine the bound is generous; the target (and the usual figure) is ≤ 5 s
        assert took < 12.0, f"media on the other node {took:.1f} s after the crash"
        health = await b.health()
        assert health["participants"] == 2, health  # the dead node's participants are gone from the room state
    finally:
        await hang_up(*peers)
        a.stop()
        b.stop()

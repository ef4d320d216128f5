"""Several `ketang serve` processes sharing room state in a real Redis."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.support import Server, WsClient, node_dir, token

pytestmark = pytest.mark.slow

TTL_S = 2.0


async def _wait_participants(server: Server, n: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        health = await server.health()
        if health["participants"] == n:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"{server.url} counts {health['participants']} participants, expected {n}")
        await asyncio.sleep(0.1)


async def _join(server: Server, role: str, lesson: str, name: str) -> tuple[WsClient, dict]:
    ws = await WsClient().connect(server.ws_url)
    return ws, await ws.request({"type": "join", "token": token(role, lesson, name)})


async def test_two_nodes_share_room_state_place_each_lesson_on_one_and_a_crashed_nodes_lessons_move(
        tmp_path, redis_url, redis_prefix):
    env = {"KETANG_PARTICIPANT_TTL_S": str(TTL_S), "KETANG_HEARTBEAT_S": "0.5"}
    a = Server(node_dir(tmp_path, "a"), redis_url, redis_prefix, env)
    b = Server(node_dir(tmp_path, "b"), redis_url, redis_prefix, env)
    clients: list[WsClient] = []
    try:
        a.wait_ready()
        b.wait_ready()
        # the first node to see a lesson carries it: its teacher and classrooms must meet in one SFU
        for server, role, name in ((a, "classroom", "north"), (a, "teacher", "Ms Li")):
            ws, reply = await _join(server, role, "shared-lesson", name)
            clients.append(ws)
            assert reply["type"] == "joined", reply
        # a classroom arriving at the other node is sent to it, and joins there
        ws, refused = await _join(b, "classroom", "shared-lesson", "south")
        clients.append(ws)
        assert refused["type"] == "error" and refused["code"] == "lesson_elsewhere", refused
        assert refused["url"] == a.url
        ws, reply = await _join(a, "classroom", "shared-lesson", "south")  # (a page follows `url` by itself)
        clients.append(ws)
        assert reply["type"] == "joined", reply
        assert [p["name"] for p in reply["participants"]] == ["Ms Li", "south"]  # (classrooms see the teacher)
        # another lesson starting at node b lives there; room state is shared: both nodes count everyone
        ws, other = await _join(b, "classroom", "other-lesson", "east")
        clients.append(ws)
        assert other["type"] == "joined", other
        assert (await b.health())["participants"] == 4 and (await a.health())["participants"] == 4
        await asyncio.sleep(TTL_S * 1.5)  # heartbeats keep live participants and placements beyond their TTL
        assert (await b.health())["participants"] == 4
        ws, refused = await _join(b, "observer", "shared-lesson", "inspector")
        clients.append(ws)
        assert refused.get("code") == "lesson_elsewhere", refused

        killed_at = time.monotonic()
        a.kill()
        gone_at = await _wait_participants(b, 1, timeout_s=TTL_S * 4)
        print(f"crashed node's participants expired {gone_at - killed_at:.1f} s after the crash (TTL {TTL_S} s)")
        assert (await b.health())["lessons"] == 2
        # the crashed node's lesson is taken up by the next node its pages reconnect to, once its placement expired
        deadline = time.monotonic() + TTL_S * 4
        while True:
            ws, reply = await _join(b, "teacher", "shared-lesson", "Ms Li")
            clients.append(ws)
            if reply["type"] == "joined":
                break
            assert reply.get("code") == "lesson_elsewhere" and reply["url"] == a.url, reply
            assert time.monotonic() < deadline, "the crashed node's lesson never moved"
            await asyncio.sleep(0.2)
        print(f"its lesson moved {time.monotonic() - killed_at:.1f} s after the crash")
        ws, reply = await _join(b, "classroom", "shared-lesson", "north")
        clients.append(ws)
        assert reply["type"] == "joined", reply
    finally:
        for ws in clients:
            await ws.close()
        a.stop()
        b.stop()


async def test_a_lesson_whose_last_participant_left_may_start_on_any_node(tmp_path, redis_url, redis_prefix):
    a = Server(node_dir(tmp_path, "a"), redis_url, redis_prefix)
    b = Server(node_dir(tmp_path, "b"), redis_url, redis_prefix)
    try:
        a.wait_ready()
        b.wait_ready()
        ws, reply = await _join(a, "teacher", "morning", "Ms Li")
        assert reply["type"] == "joined", reply
        await ws.request({"type": "leave"})
        await ws.close()
        ws, reply = await _join(b, "teacher", "morning", "Ms Li")  # the afternoon: node b is free to carry it
        assert reply["type"] == "joined", reply
        await ws.close()
        # the lesson API answers pages that followed their lesson from another node (another origin)
        async with aiohttp.ClientSession() as http:
            async with http.options(f"{b.url}/api/lessons/morning/stats",
                                    headers={"Origin": a.url, "Access-Control-Request-Method": "GET",
                                             "Access-Control-Request-Headers": "authorization"}) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            async with http.get(f"{b.url}/api/lessons/morning/stats") as resp:
                assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        a.stop()
        b.stop()


async def _join_as(server: Server, role: str, lesson: str, name: str) -> tuple[WsClient, dict]:
    """Join with a token whose participant id is the name: the same classroom link opened again."""
    from signaling.tokens import issue_token
    from tests.support import TEST_SECRET

    ws = await WsClient().connect(server.ws_url)
    return ws, await ws.request({"type": "join", "token": issue_token(TEST_SECRET, role, lesson, name=name,
                                                                     sub=name)})


async def test_a_removed_classroom_stays_out_and_a_locked_lesson_stays_locked_on_the_next_node(
        tmp_path, redis_url, redis_prefix):
    a = Server(node_dir(tmp_path, "a"), redis_url, redis_prefix)
    clients: list[WsClient] = []
    b = None
    try:
        a.wait_ready()
        teacher, reply = await _join_as(a, "teacher", "kept", "Ms Li")
        clients.append(teacher)
        assert reply["type"] == "joined", reply
        for name in ("north", "east"):
            ws, reply = await _join_as(a, "classroom", "kept", name)
            clients.append(ws)
            assert reply["type"] == "joined", reply
        assert (await teacher.request({"type": "remove", "participant": "east"}))["type"] == "removed"
        assert (await teacher.request({"type": "lock", "locked": True}))["settings"]["locked"] is True
        a.stop()  # the node restarts (or another takes the lesson): its memory is gone
        b = Server(node_dir(tmp_path, "b"), redis_url, redis_prefix)
        b.wait_ready()
        deadline = time.monotonic() + 15
        while True:  # (lesson_elsewhere until node a's placement is released, or its liveness expired)
            ws, reply = await _join_as(b, "teacher", "kept", "Ms Li")
            clients.append(ws)
            if reply["type"] == "joined" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert reply["type"] == "joined", reply
        assert reply["settings"]["locked"] is True  # the teacher's page shows it locked
        ws, refused = await _join_as(b, "classroom", "kept", "east")
        clients.append(ws)
        assert refused.get("code") == "removed", refused
        ws, refused = await _join_as(b, "classroom", "kept", "west")  # new to the locked lesson
        clients.append(ws)
        assert refused.get("code") == "lesson_locked", refused
        ws, reply = await _join_as(b, "classroom", "kept", "north")  # it was in the lesson: let in
        clients.append(ws)
        assert reply["type"] == "joined", reply
    finally:
        for ws in clients:
            await ws.close()
        a.stop()
        if b is not None:
            b.stop()

"""Several `ketang serve` processes sharing room state in a real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support import Server, WsClient, token

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


async def test_two_nodes_share_room_state_and_a_crashed_nodes_participants_expire(tmp_path, redis_url,
                                                                                 redis_prefix):
    env = {"KETANG_PARTICIPANT_TTL_S": str(TTL_S), "KETANG_HEARTBEAT_S": "0.5"}
    a = Server(tmp_path, redis_url, redis_prefix, env)
    b = Server(tmp_path, redis_url, redis_prefix, env)
    clients: list[WsClient] = []
    try:
        a.wait_ready()
        b.wait_ready()
        for server, role, name in ((a, "classroom", "north"), (b, "classroom", "south"), (a, "teacher", "Ms Li")):
            ws = await WsClient().connect(server.ws_url)
            clients.append(ws)
            reply = await ws.request({"type": "join", "token": token(role, "shared-lesson", name)})
            assert reply["type"] == "joined", reply
        # the teacher, joining last on node a, is told of the classrooms on both nodes
        assert [p["name"] for p in reply["participants"]] == ["north", "south", "Ms Li"]
        assert (await b.health())["participants"] == 3
        await asyncio.sleep(TTL_S * 1.5)  # heartbeats keep live participants beyond their TTL
        assert (await b.health())["participants"] == 3

        killed_at = time.monotonic()
        a.kill()
        gone_at = await _wait_participants(b, 1, timeout_s=TTL_S * 4)
        print(f"crashed node's participants expired {gone_at - killed_at:.1f} s after the crash (TTL {TTL_S} s)")
        assert (await b.health())["lessons"] == 1
    finally:
        for ws in clients:
            await ws.close()
        a.stop()
        b.stop()

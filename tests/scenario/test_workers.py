"""`ketang serve --workers 2`: one public port, two worker processes, real aiortc peers.

Lessons land on both workers through the one port; a classroom whose websocket first reaches the wrong worker is
handed to the right one and plays; a worker killed with SIGKILL is started again and its lesson comes back when
its participants reconnect, while the other worker's lesson plays on."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest
from aioice import ice as aioice_ice

from tests.support import Classroom, Server, WsClient, hang_up, join_lesson, publishing_teacher, token

pytestmark = pytest.mark.slow


async def _workers(server: Server) -> list[dict]:
    return (await server.health())["workers"]


async def _wait(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_lessons_spread_over_two_workers_behind_one_port_and_a_killed_worker_comes_back(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else [])
    server = Server(tmp_path, env={"KETANG_WORKERS": "2", "KETANG_MEDIA_ADDRESSES": "127.0.0.1",
                                   "KETANG_MEDIA_PORTS": "42000-42199"})
    peers: list = []
    try:
        server.wait_ready(timeout_s=60)
        workers = await _workers(server)
        assert [w["worker"] for w in workers] == [0, 1] and all(w["status"] == "ok" for w in workers), workers

        # two lessons, each on its own worker (placement by load), both through the one port
        teacher_a = await publishing_teacher(server, "lesson-a")
        teacher_b = await publishing_teacher(server, "lesson-b")
        room_a = Classroom(await join_lesson(server, "classroom", "lesson-a", "north"))
        room_b = Classroom(await join_lesson(server, "classroom", "lesson-b", "south"))
        peers += [teacher_a, teacher_b, room_a, room_b]
        await room_a.wait_frames(10, timeout_s=30)
        await room_b.wait_frames(10, timeout_s=30)
        workers = await _workers(server)
        assert sorted(w["here"]["lessons"] for w in workers) == [1, 1], workers
        owner_a = next(w for w in workers if w["here"]["participants"] == 2 and w["websockets"] == 2)
        room_a2 = Classroom(await join_lesson(server, "classroom", "lesson-a", "west"))  # (lesson-a's worker: busier)
        peers.append(room_a2)

        # a classroom of lesson-a whose websocket first reaches the other worker: its first message is no join, so
        # it goes to the least loaded worker (the other one); its join is then handed to lesson-a's worker
        ws = await WsClient().connect(server.ws_url)
        assert (await ws.request({"type": "ping"}))["type"] == "pong"
        workers = await _workers(server)
        assert [w["websockets"] for w in workers if w["worker"] != owner_a["worker"]] == [3], workers  # the wrong one
        reply = await ws.request({"type": "join", "token": token("classroom", "lesson-a", "east")})
        assert reply["type"] == "joined", reply
        assert not [m for m in ws.messages if m.get("code") == "lesson_elsewhere"], ws.messages
        room_wrong = Classroom(ws)
        peers.append(room_wrong)
        await room_wrong.wait_frames(10, timeout_s=30)
        stats = await server.stats("lesson-a")  # (the lesson API is proxied to the worker carrying the lesson)
        assert len(stats["subscribers"]) == 3, stats
        assert (await _workers(server))[owner_a["worker"]]["here"]["participants"] == 4

        # SIGKILL the worker carrying lesson-a: it is started again; lesson-b plays on meanwhile
        killed_at = time.monotonic()
        os.kill(owner_a["pid"], signal.SIGKILL)
        frames_b = len(room_b.frames)

        async def closed():  # type: ignore[no-untyped-def]
            return room_a.ws.close_code is not None

        await _wait(closed, 10, "lesson-a's websockets to close")
        assert room_a.ws.close_code == 1012, room_a.ws.close_code  # "service restart": the page reconnects

        async def restarted():  # type: ignore[no-untyped-def]
            ws_ = await _workers(server)
            w = ws_[owner_a["worker"]]
            return w if w["restarts"] == 1 and w["pid"] != owner_a["pid"] and w["status"] == "ok" else None

        again = await _wait(restarted, 30, "the killed worker to be started again")
        print(f"worker {owner_a['worker']} answered again {time.monotonic() - killed_at:.1f} s after SIGKILL "
              f"(pid {owner_a['pid']} -> {again['pid']})")
        await room_b.wait_frames(frames_b + 30, timeout_s=10)  # the other lesson was not touched

        # lesson-a's participants reconnect (as the pages do): the lesson is placed again and decodes again
        await hang_up(teacher_a, room_a, room_a2, room_wrong)
        peers = [teacher_b, room_b]
        teacher_a = await publishing_teacher(server, "lesson-a")
        room_a = Classroom(await join_lesson(server, "classroom", "lesson-a", "north"))
        peers += [teacher_a, room_a]
        await room_a.wait_frames(10, timeout_s=30)
        print(f"lesson-a decoded again {time.monotonic() - killed_at:.1f} s after its worker was killed")
        assert sum(w["here"]["lessons"] for w in await _workers(server)) == 2

        async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as resp:
            text = await resp.text()
        assert 'ketang_lessons_live{worker="0"}' in text and 'ketang_lessons_live{worker="1"}' in text
        assert f'ketang_worker_restarts_total{{worker="{owner_a["worker"]}"}} 1.0' in text
    finally:
        await hang_up(*peers)
        server.stop()


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_when_they_are_done(tmp_path) -> None:
    server = Server(tmp_path, env={"KETANG_WORKERS": "2", "KETANG_DRAIN_TIMEOUT_S": "1"})
    try:
        server.wait_ready(timeout_s=60)
        ws = await join_lesson(server, "teacher", "late", "Ms Li")
        pids = [w["pid"] for w in await _workers(server)]
        server.proc.send_signal(signal.SIGTERM)
        async with aiohttp.ClientSession() as http:
            async def draining():  # type: ignore[no-untyped-def]
                async with http.get(server.url + "/readyz") as resp:
                    return resp.status == 503 and "draining" in (await resp.json()).get("reasons", [])
            await _wait(draining, 5, "/readyz to say draining")
        rejoin = await ws.wait_for(lambda m: m.get("type") == "rejoin", timeout_s=15)
        assert rejoin["reason"] == "draining"
        await asyncio.to_thread(server.proc.wait, 30)
        assert server.proc.returncode == 0
        for pid in pids:  # every worker exited too
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    finally:
        server.stop()

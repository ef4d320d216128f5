"""Drain and rolling restart (issue 14, items 5 and 7): SIGTERM or `ketang drain` stops new lessons from being
placed on a node (/readyz 503), lets its live lessons go on until the drain timeout, then tells their participants
to rejoin, and they land on the other node; the server stops when empty. Real `ketang serve` processes, a real
Redis, aiortc teachers and classrooms that decode. Measured: the longest gap between two decoded video frames a
classroom sees while its lesson moves (docs/deploy.md, "Rolling restart")."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest

from loadtest.wsclient import CLOSE_REJOIN
from recorder.library.catalog import Library, Viewer
from signaling.tokens import issue_token
from tests.support import (
    TEST_SECRET,
    Classroom,
    Server,
    Teacher,
    WsClient,
    free_port,
    hang_up,
    node_dir,
    read_recording,
)

DRAIN_S = 2.0  # the drain timeout of these tests' servers: the lesson is still live when it passes
GAP_BOUND_S = 6.0  # on a loaded 2-core machine; the usual figure is printed (docs/deploy.md)


async def _join(url: str, role: str, lesson: str, name: str) -> tuple[WsClient, dict]:
    ws = await WsClient().connect(url)
    return ws, await ws.request({"type": "join", "token": issue_token(TEST_SECRET, role, lesson, name=name,
                                                                     sub=name)})


async def _get(url: str) -> tuple[int, dict | str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        body = await resp.text()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body


async def _until(check, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _follow(ws: WsClient, home: Server) -> str:
    """What a page does when told to rejoin: the websocket URL to join at once (`rejoin`'s url, else home)."""
    await ws.wait_for(lambda m: m.get("type") == "rejoin", timeout_s=DRAIN_S + 20)
    return ws.rejoin_url or home.ws_url


async def _move(draining: Server, home: Server, teacher: Teacher, room: Classroom, lesson: str,
                new_lesson: str) -> tuple[Teacher, Classroom, float]:
    """Drain `draining` (SIGTERM) while it carries the lesson; check readiness and placement during the drain;
    follow `rejoin` as the pages do. Returns the new teacher and classroom and the classroom's longest gap."""
    status, ready = await _get(draining.url + "/readyz")
    assert status == 200 and ready["ready"] is True, ready
    draining.proc.send_signal(signal.SIGTERM)
    await _until(lambda: _not_ready(draining), 5, "/readyz 503 once draining")
    status, ready = await _get(draining.url + "/readyz")
    assert status == 503 and ready["reasons"] == ["draining"], ready
    status, scraped = await _get(draining.url + "/metrics")
    assert "ketang_draining 1.0" in str(scraped)
    # a new lesson during the drain is placed on the other node; the live one goes on here meanwhile
    ws, refused = await _join(draining.ws_url, "teacher", new_lesson, "Mr Wang")
    await ws.close()
    assert refused.get("code") == "lesson_elsewhere" and refused["url"] == home.url, refused
    ws, joined = await _join(home.ws_url, "teacher", new_lesson, "Mr Wang")
    assert joined["type"] == "joined", joined
    await ws.request({"type": "leave"})
    await ws.close()
    frames_before = len(room.frames)
    await asyncio.sleep(0.5)
    assert len(room.frames) > frames_before, "the live lesson stopped during the drain"

    teacher_url, room_url = await asyncio.gather(_follow(teacher.ws, home), _follow(room.ws, home))
    told_at = time.monotonic()
    await teacher.close()  # as a page does on `rejoin`: its peer connections go at once (the picture stops)
    await room.close()
    assert teacher_url == room_url == home.ws_url, (teacher_url, room_url, home.ws_url)
    assert teacher.ws.rejoin is not None and teacher.ws.rejoin["reason"] == "draining"

    async def teacher_back() -> Teacher:
        ws, reply = await _join(teacher_url, "teacher", lesson, "Ms Li")
        assert reply["type"] == "joined", reply
        back = Teacher(ws)
        assert (await back.publish())["type"] == "answer"
        return back

    async def room_back() -> Classroom:
        ws, reply = await _join(room_url, "classroom", lesson, "north")
        assert reply["type"] == "joined", reply
        return Classroom(ws)

    teacher_b, room_b = await asyncio.gather(teacher_back(), room_back())
    await room_b.wait_frames(30, timeout_s=30)
    await _until(lambda: _closed(room.ws), 15, "the old socket closed")
    assert room.ws.close_code == CLOSE_REJOIN, room.ws.close_code
    gap = room_b.frames[0] - max(t for t in room.frames if t <= told_at)
    steady = max(b - a for a, b in zip(room_b.frames[:30], room_b.frames[1:30]))
    await teacher.ws.close()
    await room.ws.close()
    assert await asyncio.to_thread(draining.proc.wait, 30) == 0  # it stops by itself once empty
    return teacher_b, room_b, max(gap, steady)


async def _not_ready(server: Server) -> bool:
    return (await _get(server.url + "/readyz"))[0] == 503


async def _closed(ws: WsClient) -> bool:
    return ws.ws is not None and ws.ws.closed


@pytest.mark.slow
async def test_a_rolling_restart_of_two_nodes_moves_a_live_lesson_and_back_and_the_classroom_decodes_again(
        tmp_path, redis_url, redis_prefix, postgres_database):
    # the city deployment: room state in Redis, the library on one PostgreSQL, the recordings on a shared directory
    media = tmp_path / "media"
    env = {"KETANG_DRAIN_TIMEOUT_S": str(DRAIN_S), "KETANG_DATABASE_URL": postgres_database,
           "KETANG_MEDIA_DIR": str(media)}
    a = Server(node_dir(tmp_path, "a"), redis_url, redis_prefix, env)
    b = Server(node_dir(tmp_path, "b"), redis_url, redis_prefix, env)
    a2 = None
    peers: list[Teacher | Classroom] = []
    try:
        a.wait_ready()
        b.wait_ready()
        ws, reply = await _join(a.ws_url, "teacher", "rolling", "Ms Li")
        assert reply["type"] == "joined", reply
        teacher = Teacher(ws)
        peers.append(teacher)
        assert (await teacher.publish())["type"] == "answer"
        ws, reply = await _join(a.ws_url, "classroom", "rolling", "north")
        assert reply["type"] == "joined", reply
        room = Classroom(ws)
        peers.append(room)
        await room.wait_frames(30, timeout_s=30)
        started = time.monotonic()

        # node a is upgraded: drained, its lesson goes on at b
        teacher, room, gap_ab = await _move(a, b, teacher, room, "rolling", "new-during-drain-a")
        peers += [teacher, room]
        # node a is back (the new version), then b is upgraded: the lesson comes back to a
        a2 = Server(node_dir(tmp_path, "a"), redis_url, redis_prefix, env)
        a2.wait_ready()
        teacher, room, gap_ba = await _move(b, a2, teacher, room, "rolling", "new-during-drain-b")
        peers += [teacher, room]
        await room.wait_frames(30, timeout_s=30)
        print(f"rolling restart: longest gap between decoded frames {gap_ab:.2f} s (a drained, lesson to b) and "
              f"{gap_ba:.2f} s (b drained, lesson back to a); drain timeout {DRAIN_S:g} s; lesson live "
              f"{time.monotonic() - started:.1f} s across both moves")
        assert gap_ab < GAP_BOUND_S and gap_ba < GAP_BOUND_S, (gap_ab, gap_ba)
        await hang_up(teacher, room)
        peers.clear()
        await asyncio.sleep(1.0)  # (the last leave finishes the recording)

        # no recording lost, and one lesson: each node's part is a finished, complete, decodable file, and all
        # three are sources of the lesson's one library item
        library = Library(tmp_path / "reader", database_url=postgres_database, media_dir=media)
        await library.open()
        try:
            items, total = await library.search("", {"lesson_id": "rolling"}, viewer=Viewer.operator())
            assert total == 1, [i.id for i in items]
            parts = list({p.id: p for p in [items[0], *await library.sources(items[0])]}.values())
            camera = [p for p in parts if p.role == "teacher"]
            assert len(camera) == 3, [(p.id, p.role, p.label) for p in parts]  # a, then b, then a again
            for part in camera:
                assert part.state != "recording" and not part.incomplete, part
                kinds, packets, decoded = read_recording(library.path_of(part.file))
                assert kinds == ["audio", "video"] and decoded > 10, (part.file, kinds, decoded)
            print(f"recorded (seconds per part of the one item): {[round(p.duration_s or 0, 1) for p in camera]}")
        finally:
            await library.close()
    finally:
        await hang_up(*peers)
        for server in (a, b, a2):
            if server is not None:
                server.stop()


def test_sigterm_on_an_idle_server_stops_at_once_and_removes_its_pid_file(tmp_path):
    server = Server(tmp_path)
    try:
        server.wait_ready()
        pid_path = tmp_path / "run" / f"serve-{server.port}.pid"
        assert int(pid_path.read_text()) == server.proc.pid
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
        assert time.monotonic() - started < 5
        assert not pid_path.exists()
    finally:
        server.stop()


async def test_ketang_drain_refuses_new_lessons_tells_the_live_one_to_rejoin_and_stops_the_server(tmp_path):
    """One node (in-process room state): nowhere to send anyone, so a new lesson is refused with `draining` (the
    page tries again) and the live one's participants are told to rejoin (here: once the server is back)."""
    server = Server(tmp_path, env={"KETANG_DRAIN_TIMEOUT_S": "1.5"})
    clients = []
    try:
        server.wait_ready()
        ws, reply = await _join(server.ws_url, "teacher", "live", "Ms Li")
        clients.append(ws)
        assert reply["type"] == "joined", reply
        drain = subprocess.Popen([sys.executable, "-m", "ketang.cli", "drain", "--data-dir", str(tmp_path)],
                                 env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        await _until(lambda: _not_ready(server), 10, "/readyz 503 after ketang drain")
        other, refused = await _join(server.ws_url, "classroom", "another", "east")
        clients.append(other)
        assert refused.get("code") == "draining" and "try again" in refused["message"], refused
        health = await server.health()  # alive all along: /healthz stays 200
        assert health["status"] == "ok", health
        msg = await ws.wait_for(lambda m: m.get("type") == "rejoin", timeout_s=10)
        assert msg == {"type": "rejoin", "reason": "draining"}  # (no other node to name)
        assert await asyncio.to_thread(server.proc.wait, 20) == 0
        out, _ = await asyncio.to_thread(drain.communicate, timeout=10)
        assert drain.returncode == 0, out
        assert b"draining ketang serve on port" in out and b"stopped after" in out, out
        assert ws.close_code == CLOSE_REJOIN
    finally:
        for c in clients:
            await c.close()
        server.stop()


def test_ketang_serve_config_file_sets_the_port_and_the_drain_timeout(tmp_path):
    port = free_port()
    config = tmp_path / "ketang.toml"
    config.write_text(f'port = {port}\nhost = "127.0.0.1"\ndata_dir = "{tmp_path / "data"}"\n'
                      'drain_timeout_s = 0\nno_record = true\nmedia_addresses = ["127.0.0.1"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETANG_")}
    env["KETANG_SECRET"] = TEST_SECRET
    proc = subprocess.Popen([sys.executable, "-m", "ketang.cli", "serve", "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                    assert json.loads(resp.read())["ready"] is True
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not listen on the file's port"
                time.sleep(0.1)
        assert (tmp_path / "data" / "run" / f"serve-{port}.pid").exists()  # the file's data_dir
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ketang_serve_refuses_a_config_file_with_an_unknown_key(tmp_path):
    config = tmp_path / "ketang.toml"
    config.write_text('prot = 8080\n')
    done = subprocess.run([sys.executable, "-m", "ketang.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"{config}: unknown key 'prot'" in done.stderr, done.stderr

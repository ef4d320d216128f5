"""Redis outages and restarts (issue 11, items 6, 7, 10): a redis-server of the test's own is stopped and started
again; the shared one is never touched.

- a leave during an outage still tells the others, closes the attendance, keeps the lesson's record and closes
  its router; the store learns of it when Redis is back;
- a join during an outage is answered `unavailable`, /healthz says what is down (503), a server started without
  Redis says so and serves once it is there, and SIGINT exits 0 without a traceback;
- after Redis restarts empty, the node writes again what it carries (lesson, participants, tracks, placement,
  lock and removals) within seconds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from signaling.config import Config
from signaling.hub import Hub
from signaling.state import RedisRoomStore
from signaling.tokens import issue_token
from tests.scenario.test_hub import _Catalog, _Conn
from tests.support import TEST_SECRET, Server, Teacher, WsClient, hang_up, node_dir
from tests.throwaway_redis import ThrowawayRedis

PREFIX = "ketang-outage:"


@pytest.fixture
def own_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = ThrowawayRedis(node_dir(tmp_path, "redis")).start()
    yield server
    server.stop()


async def _until(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.05) -> float:
    """Seconds until predicate() (sync or async) is true; AssertionError after timeout_s."""
    started = time.monotonic()
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(poll_s)


def _events(conn: _Conn, event: str) -> list[dict[str, Any]]:
    import json
    out = []
    for m in conn.sent:
        msg = json.loads(m["text"]) if "text" in m else m
        if msg.get("event") == event:
            out.append(msg)
    return out


async def test_a_leave_during_a_redis_outage_completes_here_and_reaches_redis_when_it_is_back(
        own_redis: ThrowawayRedis, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ketang")
    store = RedisRoomStore(own_redis.url, prefix=PREFIX)
    catalog = _Catalog(tmp_path)
    hub = Hub(Config(data_dir=tmp_path, node_ttl_s=3.0, node_heartbeat_s=0.25), store, catalog)  # type: ignore[arg-type]
    redis = own_redis.client()
    try:
        teacher = _Conn("outage", "teacher", "teacher")
        rooms = [_Conn("outage", f"school-{i}", "classroom") for i in range(3)]
        for conn in (teacher, *rooms):
            await hub.join(conn)  # type: ignore[arg-type]
        router = hub.lesson("outage").media()
        inter = hub.lesson("outage").interaction
        assert redis.exists(store.placement_key("outage"))

        own_redis.stop(keep_data=True)  # Redis goes away (it comes back with its data)
        # a track ending meanwhile (the router's task) is still announced, and raises nothing
        screen = SimpleNamespace(id="screen-1", owner="teacher", owner_role="teacher", kind="video", source="screen")
        await hub._on_track("outage", "removed", screen)  # type: ignore[arg-type]
        assert [e["track"]["id"] for e in _events(rooms[1], "track-removed")] == ["screen-1"]
        await hub.leave(rooms[0])  # type: ignore[arg-type]
        # the others are told, its attendance is closed
        assert [e["participant"]["id"] for e in _events(teacher, "participant-left")] == ["school-0"]
        assert not inter.attendance.is_present("school-0")
        # the whole lesson leaves: its record is kept, its router closed, nothing of it stays on the node
        await asyncio.gather(*(hub.leave(c) for c in (teacher, *rooms[1:])))  # type: ignore[arg-type]
        assert catalog.records == [("outage", 3)]
        assert router.closed and hub.lessons["outage"].router is None and not hub.lessons["outage"].connections
        health = await hub.health()
        assert health["status"] == "degraded" and health["redis"] == "down", health

        own_redis.start()  # with the data of before the outage: the leaves and the release were never written
        assert redis.zcard(f"{PREFIX}lesson:outage:participants") == 4
        took = await _until(lambda: not redis.exists(store.placement_key("outage"))
                            and redis.zcard(f"{PREFIX}lesson:outage:participants") == 0, 10.0,
                            "the leaves and the placement's release reach Redis")
        print(f"the leaves and the release reached Redis {took:.2f} s after it came back")
        assert (await hub.health())["status"] == "ok"
        # one warning for the outage, not a traceback per call
        down = [r for r in caplog.records if r.levelno >= logging.WARNING and "unavailable" in r.getMessage()]
        assert len(down) == 1, [r.getMessage() for r in down]
        assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    finally:
        redis.close()
        await hub.close()
        await store.close()


async def test_stale_pooled_connections_after_a_redis_restart_do_not_fail_the_first_calls(
        own_redis: ThrowawayRedis) -> None:
    store = RedisRoomStore(own_redis.url, prefix=PREFIX)
    try:
        # several pooled connections, all of them stale once Redis restarts
        await asyncio.gather(*(store.ensure_lesson(f"l{i}") for i in range(8)))
        own_redis.stop(keep_data=True)
        own_redis.start()
        results = await asyncio.gather(*(store.get_lesson(f"l{i}") for i in range(8)))
        assert [lesson.id for lesson in results if lesson is not None] == [f"l{i}" for i in range(8)]
    finally:
        await store.close()


# -- a server process ---------------------------------------------------------------------------------------

async def _health(server: Server) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as resp:
        return resp.status, await resp.json()


async def _answers(server: Server, timeout_s: float = 20.0) -> None:
    async def up() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}")
        try:
            await _health(server)
            return True
        except (aiohttp.ClientError, OSError):
            return False
    await _until(up, timeout_s, "the server answers /healthz", poll_s=0.1)


def _log(server: Server) -> str:
    server.log.flush()
    return Path(server.log.name).read_text(errors="replace")


async def _join(server: Server, role: str, lesson: str, name: str) -> tuple[WsClient, dict]:
    """Join with a token whose participant id is the name (the same classroom link, again)."""
    ws = await WsClient().connect(server.ws_url)
    return ws, await ws.request({"type": "join", "token": issue_token(TEST_SECRET, role, lesson, name=name,
                                                                     sub=name)})


@pytest.mark.slow
async def test_without_redis_the_server_starts_refuses_joins_unavailable_says_so_and_stops_cleanly(
        tmp_path: Path) -> None:
    own = ThrowawayRedis(node_dir(tmp_path, "redis"))  # not started yet: the server starts before Redis
    server = Server(node_dir(tmp_path, "node"), own.url, PREFIX)
    clients: list[WsClient] = []
    try:
        await _answers(server)
        status, health = await _health(server)
        assert status == 503 and health["status"] == "degraded" and health["redis"] == "down", health
        ws, reply = await _join(server, "teacher", "no-redis", "Ms Li")
        clients.append(ws)
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        assert "try again" in reply["message"]

        own.start()  # Redis arrives: the server takes it up by itself
        took = await _until(lambda: _health_ok(server), 15.0, "/healthz ok once Redis is there", poll_s=0.1)
        print(f"/healthz ok {took:.2f} s after Redis started")
        ws, reply = await _join(server, "teacher", "no-redis", "Ms Li")
        clients.append(ws)
        assert reply["type"] == "joined", reply

        own.stop()  # an outage during the lesson: another join is refused, the lesson's own stay
        ws, reply = await _join(server, "classroom", "no-redis", "north")
        clients.append(ws)
        assert reply.get("code") == "unavailable", reply
        assert (await _health(server))[0] == 503
        server.proc.send_signal(signal.SIGINT)  # a stop with Redis down (SIGTERM would drain the live lesson first)
        assert server.proc.wait(20) == 0
        log = _log(server)
        assert "not reachable" in log  # the start-up message
        for bad in ("Traceback", "Task exception was never retrieved", "internal"):
            assert bad not in log, log[-4000:]
    finally:
        for ws in clients:
            await ws.close()
        server.stop()
        own.stop()


async def _health_ok(server: Server) -> bool:
    status, health = await _health(server)
    return status == 200 and health["status"] == "ok"


@pytest.mark.slow
async def test_after_redis_restarts_empty_the_node_writes_back_what_it_carries(own_redis: ThrowawayRedis,
                                                                              tmp_path: Path) -> None:
    # the participants' heartbeat is left at its 10 s: the node's own 1 s liveness is what notices the loss
    server = Server(node_dir(tmp_path, "node"), own_redis.url, PREFIX)
    peers: list[Any] = []
    clients: list[WsClient] = []
    try:
        await _answers(server)
        ws, reply = await _join(server, "teacher", "restart", "Ms Li")
        assert reply["type"] == "joined", reply
        teacher = Teacher(ws)
        peers.append(teacher)
        assert (await teacher.publish())["type"] == "answer"
        rooms = []
        for name in ("north", "south", "east"):
            ws, reply = await _join(server, "classroom", "restart", name)
            assert reply["type"] == "joined", reply
            rooms.append(ws)
        clients.extend(rooms)
        east = reply["participant"]["id"]
        assert (await teacher.ws.request({"type": "remove", "participant": east}))["type"] == "removed"
        assert (await teacher.ws.request({"type": "lock", "locked": True}))["type"] == "settings"
        before = (await _health(server))[1]
        assert before["participants"] == 3, before  # (the teacher and two classrooms)
        ws, observed = await _join(server, "observer", "restart", "inspector")
        clients.append(ws)
        assert observed["lesson"]["state"] == "live" and len(observed["tracks"]) == 2, observed

        own_redis.stop()  # a restart that loses everything
        own_redis.start()

        async def rebuilt() -> bool:
            status, health = await _health(server)
            return status == 200 and health["participants"] == 4  # (and the observer)
        took = await _until(rebuilt, 20.0, "the room state is back")
        print(f"room state written back {took:.2f} s after Redis restarted empty")
        ws, observed = await _join(server, "observer", "restart", "inspector-2")
        clients.append(ws)
        assert observed["lesson"]["state"] == "live" and len(observed["tracks"]) == 2, observed
        assert sorted(p["name"] for p in observed["participants"]) == ["Ms Li", "north", "south"]
        ws, reloaded = await _join(server, "teacher", "restart", "Ms Li")  # a reloaded teacher page
        clients.append(ws)
        assert reloaded["type"] == "joined", reloaded
        assert reloaded["settings"]["locked"] is True
        ws, refused = await _join(server, "classroom", "restart", "east")
        clients.append(ws)
        assert refused.get("code") == "removed", refused
        ws, refused = await _join(server, "classroom", "restart", "west")
        clients.append(ws)
        assert refused.get("code") == "lesson_locked", refused
        assert took < 15.0, f"the room state came back {took:.1f} s after Redis (target: 5 s)"
    finally:
        for ws in clients:
            await ws.close()
        await hang_up(*peers)
        server.stop()


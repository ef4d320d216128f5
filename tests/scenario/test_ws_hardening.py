"""Websocket hardening (issue 11): a burst queued for a client that reads is delivered, a client that does not read
is closed once with one log line, and a socket that never joins is closed after the join timeout.

Real aiohttp servers and real sockets: the Connection tests run an aiohttp app in this process (so the log and
the server's side of the socket can be looked at); the join-timeout tests a `ketang serve` subprocess."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from signaling.connection import CLOSE_NOT_READING, Connection
from signaling.ratelimit import TokenBucket
from tests.support import Server, WsClient, free_port, token

NOT_READING_LOG = "does not read its messages"


class _App:
    """An aiohttp server whose /ws makes a Connection and hands it to `self.script(conn)`."""

    def __init__(self, **limits: object) -> None:
        self.limits = limits
        self.connections: list[Connection] = []
        self.script = None
        self.runner: web.AppRunner | None = None
        self.port = free_port()
        self.handler_done = asyncio.Event()

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Connection(ws, TokenBucket(20, 40, time.monotonic()), transport=request.transport, **self.limits)
        self.connections.append(conn)
        task = asyncio.ensure_future(self.script(conn))
        try:
            async for _ in ws:
                pass
        finally:
            task.cancel()
            await conn.close()
            self.handler_done.set()
        return ws

    async def __aenter__(self) -> _App:
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def _event(n: int, size: int = 200) -> str:
    return json.dumps({"type": "event", "event": "participant-joined", "n": n, "pad": "x" * size})


async def test_a_burst_of_thousands_of_messages_reaches_a_client_that_reads(caplog):
    """Today's main closed a reading client as soon as 257 messages were queued at once (a burst of events)."""
    burst = 3000

    async def script(conn: Connection) -> None:
        for n in range(burst):  # one synchronous burst: nothing is written before the last one is queued
            conn.send_text(_event(n))

    caplog.set_level(logging.WARNING, logger="ketang.signaling")
    async with _App() as app:
        app.script = script
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{app.port}/ws") as ws:
            got = []
            while len(got) < burst:
                frame = await asyncio.wait_for(ws.receive(), 10)
                assert frame.type == aiohttp.WSMsgType.TEXT, (frame, len(got))
                got.append(json.loads(frame.data)["n"])
            assert got == list(range(burst))  # every message, in order
            assert not ws.closed
            assert not app.connections[0].closed
    assert NOT_READING_LOG not in caplog.text


async def test_a_slow_client_that_keeps_reading_is_kept(caplog):
    """A weak link: the client reads 16 KiB at a time with pauses, far slower than the server produces; its queue
    holds thousands of messages at times, and it gets every one."""
    total = 4000
    peak = 0

    async def script(conn: Connection) -> None:
        nonlocal peak
        for n in range(total):
            conn.send_text(_event(n, 500))
            peak = max(peak, conn.queued_chars)
            if n % 1000 == 999:  # bursts of a thousand, while the client is still reading the last one
                await asyncio.sleep(0.2)

    caplog.set_level(logging.WARNING, logger="ketang.signaling")
    async with _App(stall_s=5.0) as app:
        app.script = script
        sock = await asyncio.to_thread(_raw_websocket, app.port, 16384)
        try:
            data = b""
            while data.count(b'"event": "participant-joined"') < total:
                await asyncio.sleep(0.02)
                chunk = await asyncio.to_thread(sock.recv, 16384)
                assert chunk, "the server closed a client that was reading"
                data += chunk
            assert peak > 500 * 500  # hundreds of messages waited for it at once (the old limit: 256)
        finally:
            sock.close()
    assert NOT_READING_LOG not in caplog.text


def _raw_websocket(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A websocket opened by hand on a plain socket (so that the test decides when, and whether, it reads)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "no handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_client_that_does_not_read_is_closed_once_with_one_log_line(caplog):
    """Messages keep coming for a client whose socket is full and which never reads: after stall_s it is closed
    (one warning, not one per message), its socket is dropped, and nothing more is queued for it."""
    sent = 0

    async def script(conn: Connection) -> None:
        nonlocal sent
        while True:
            conn.send_text(_event(sent, 4000))
            sent += 1
            await asyncio.sleep(0.002)

    caplog.set_level(logging.WARNING, logger="ketang.signaling")
    async with _App(stall_s=1.0) as app:
        app.script = script
        sock = await asyncio.to_thread(_raw_websocket, app.port, 4096)
        try:
            await asyncio.wait_for(app.handler_done.wait(), 20)
            conn = app.connections[0]
            assert conn.closed
            assert conn.queued_chars == 0
            await asyncio.sleep(0.5)
        finally:
            sock.close()
    lines = [r for r in caplog.records if NOT_READING_LOG in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert sent > 300  # it was sent far more than the old count limit, and logged once


async def test_a_client_far_too_far_behind_is_closed_once(caplog):
    """Over the queue's bound (in characters) the client is closed at once, with one log line, and gets the close
    code of a client that does not read."""

    async def script(conn: Connection) -> None:
        for n in range(2000):
            conn.send_text(_event(n, 1000))  # 2 MB in one go, over the 100 KB bound

    caplog.set_level(logging.WARNING, logger="ketang.signaling")
    async with _App(max_queued_chars=100_000) as app:
        app.script = script
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{app.port}/ws") as ws:
            while True:
                frame = await asyncio.wait_for(ws.receive(), 10)
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
            assert ws.close_code == CLOSE_NOT_READING
    lines = [r for r in caplog.records if NOT_READING_LOG in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]


# -- join timeout (a `ketang serve` subprocess) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory):
    srv = Server(tmp_path_factory.mktemp("quick"), env={"KETANG_JOIN_TIMEOUT_S": "1", "KETANG_HTTP_TIMEOUT_S": "2"})
    srv.wait_ready()
    yield srv
    srv.stop()


async def test_sockets_that_never_join_are_closed_after_the_join_timeout(quick_server):
    """Today's main kept 500 of 500 never-joining sockets open after 150 s."""
    idle = [await WsClient().connect(quick_server.ws_url) for _ in range(50)]
    joined = await WsClient().connect(quick_server.ws_url)
    try:
        reply = await joined.request({"type": "join", "token": token("classroom", "wsh-join"), "lesson": "wsh-join"})
        assert reply["type"] == "joined"
        started = time.monotonic()
        for client in idle:
            await client.wait_for(lambda m: m.get("code") == "join_timeout", timeout_s=5)
        await asyncio.wait([c._reader for c in idle], timeout=5)
        assert time.monotonic() - started < 5
        assert [c.close_code for c in idle] == [4008] * len(idle)
        # a socket that joined is not touched by the join timeout
        await asyncio.sleep(1.0)
        assert (await joined.request({"type": "ping"}))["type"] == "pong"
    finally:
        for client in [*idle, joined]:
            await client.close()
    assert (await quick_server.health())["status"] == "ok"

"""The one Python client of the signalling protocol (docs/protocol.md), used by the load tester and the tests.

Requests carry an id and wait for the reply that references it; a message the server sends by itself goes to the
callback registered for its type (`handlers`), and, when `keep` is on (the tests), into `messages`, where
`wait_for` finds it. The load tester keeps nothing: 400 classrooms for an hour would hold every message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

log = logging.getLogger("ketang.loadtest.ws")

Handler = Callable[[dict], Awaitable[None]]
CLOSE_REJOIN = 4006  # after a `rejoin` message: the server drains (docs/protocol.md)


def ws_url_of(base: str) -> str:
    """The websocket URL of the server whose base URL (http[s]://host:port) a `lesson_elsewhere` or `rejoin` names."""
    return base.rstrip("/").replace("http", "ws", 1) + "/ws"


RETRY_CODE = "overloaded"  # a join refused with this is tried again (docs/protocol.md)
# the page's schedule, roughly (client_web/protocol.js RECONNECT_DELAYS_MS): hundreds of refused participants must
# not come back all at once, every second
JOIN_RETRY_S = (0.5, 1.0, 2.0, 4.0, 8.0)
JOIN_RETRY_JITTER = 0.25


async def join_lesson(ws: WsClient, token: str, lesson: str, timeout_s: float) -> tuple[dict[str, Any], int]:
    """`join` (the socket connected), tried again on a fresh socket while the server refuses it as `overloaded`
    and time is left: the reply (`joined`, or the last error) and how many refusals came before it."""
    deadline = time.monotonic() + timeout_s
    retries = 0
    while True:
        reply = await ws.request({"type": "join", "token": token, "lesson": lesson}, timeout_s)
        if reply.get("type") != "error" or reply.get("code") != RETRY_CODE \
                or time.monotonic() + JOIN_RETRY_S[0] > deadline:
            return reply, retries
        retries += 1
        await ws.close()  # (a socket must join within the server's join timeout: a fresh one)
        delay = JOIN_RETRY_S[min(retries, len(JOIN_RETRY_S)) - 1]
        await asyncio.sleep(delay * random.uniform(1 - JOIN_RETRY_JITTER, 1 + JOIN_RETRY_JITTER))
        await ws.connect()


class ProtocolError(RuntimeError):
    """The server answered a request with an `error` message (raised by `request(..., check=True)`)."""


class WsClient:
    def __init__(self, session: aiohttp.ClientSession | None = None, url: str = "", *, keep: bool = True) -> None:
        self._session = session
        self._own_session = session is None  # made in connect(), closed in close()
        self.url = url
        self.keep = keep
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.handlers: dict[str, Handler] = {}
        self.messages: list[dict] = []  # every message received, when `keep`
        self.close_code: int | None = None
        # the server drains: `rejoin` received (join again at once, at `rejoin_url` when it names another node)
        self.rejoin: dict | None = None
        self._new = asyncio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[dict]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, url: str | None = None) -> WsClient:
        self.url = url or self.url
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.ws = await self._session.ws_connect(self.url, max_msg_size=0, heartbeat=None)
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            msg = json.loads(frame.data)
            if self.keep:
                self.messages.append(msg)
                self._new.set()
            if msg.get("type") == "rejoin":
                self.rejoin = msg
            fut = self._pending.pop(msg.get("ref"), None) if "ref" in msg else None
            if fut is not None:
                if not fut.done():
                    fut.set_result(msg)
                continue
            handler = self.handlers.get(msg.get("type", ""))
            if handler is not None:
                try:
                    await handler(msg)
                except Exception:
                    log.exception("handling %s failed", msg.get("type"))
        self.close_code = self.ws.close_code
        self._new.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("websocket closed"))

    @property
    def rejoin_url(self) -> str | None:
        """Where to join again after `rejoin`: the websocket URL it names, else None (the client's own server)."""
        url = (self.rejoin or {}).get("url")
        return ws_url_of(url) if isinstance(url, str) and url.startswith(("http://", "https://")) else None

    @property
    def told_to_rejoin(self) -> bool:
        return self.rejoin is not None or self.close_code == CLOSE_REJOIN

    async def send(self, message: dict | str | bytes) -> None:
        """A message as JSON, or raw text or bytes (the tests send malformed frames on purpose)."""
        assert self.ws is not None
        if isinstance(message, dict):
            await self.ws.send_str(json.dumps(message))
        elif isinstance(message, bytes):
            await self.ws.send_bytes(message)
        else:
            await self.ws.send_str(message)

    async def request(self, message: dict, timeout_s: float = 10.0, *, check: bool = False) -> dict:
        """Send `message` with an id (its own, if it has one) and return the reply that references it; an `error`
        reply is returned as such, or raised as ProtocolError with `check`."""
        ref = message.setdefault("id", next(self._ids))
        fut: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._pending[ref] = fut
        try:
            await self.send(message)
            reply = await asyncio.wait_for(fut, timeout_s)
        finally:
            self._pending.pop(ref, None)
        if check and reply.get("type") == "error":
            raise ProtocolError(f"{reply.get('code')}: {reply.get('message')}")
        return reply

    async def wait_for(self, predicate: Callable[[dict], Any], timeout_s: float = 10.0, start: int = 0) -> dict:
        """The first kept message (from index `start`) matching predicate(msg)."""
        assert self.keep, "wait_for reads the kept messages: make the client with keep=True"
        deadline = time.monotonic() + timeout_s
        seen = start
        while True:
            while seen < len(self.messages):
                msg = self.messages[seen]
                seen += 1
                if predicate(msg):
                    return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.ws is not None and self.ws.closed and seen >= len(self.messages)):
                raise TimeoutError(f"no matching message; got {self.messages[start:]!r:.2000}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=2)
        if self._own_session and self._session is not None:
            await self._session.close()

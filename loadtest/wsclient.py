"""A minimal websocket client for the signalling protocol (docs/protocol.md): requests with ids, and a
callback per server-initiated message type."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

log = logging.getLogger("ketang.loadtest.ws")

Handler = Callable[[dict], Awaitable[None]]


class ProtocolError(RuntimeError):
    """The server answered a request with an `error` message."""


class WsClient:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self.url = url
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.handlers: dict[str, Handler] = {}
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def connect(self) -> None:
        self.ws = await self._session.ws_connect(self.url, max_msg_size=0, heartbeat=None)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            msg = json.loads(frame.data)
            fut = self._pending.pop(msg.get("ref"), None) if "ref" in msg else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
                continue
            handler = self.handlers.get(msg.get("type", ""))
            if handler is not None:
                try:
                    await handler(msg)
                except Exception:
                    log.exception("handling %s failed", msg.get("type"))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("websocket closed"))

    async def send(self, message: dict) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def request(self, message: dict, timeout_s: float = 30.0) -> dict:
        ref = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[ref] = fut
        await self.send(dict(message, id=ref))
        reply = await asyncio.wait_for(fut, timeout_s)
        if reply.get("type") == "error":
            raise ProtocolError(f"{reply.get('code')}: {reply.get('message')}")
        return reply

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=2)

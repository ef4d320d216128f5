"""One websocket client: a bounded outgoing queue (a slow client never blocks the lesson) and its identity."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from .ratelimit import TokenBucket
from .tokens import Claims

log = logging.getLogger("ketang.signaling")


class Connection:
    def __init__(self, ws: web.WebSocketResponse, bucket: TokenBucket, queue_max: int) -> None:
        self.ws = ws
        self.bucket = bucket
        self.claims: Claims | None = None
        self.participant_id: str | None = None
        self.lesson_id: str | None = None
        self.closed = False
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=queue_max)
        self._writer = asyncio.ensure_future(self._write_loop())

    @property
    def role(self) -> str | None:
        return self.claims.role if self.claims else None

    def send(self, message: dict[str, Any]) -> None:
        self.send_text(json.dumps(message, ensure_ascii=False))

    def send_text(self, text: str) -> None:
        """Queue an encoded message; a client that lets SEND_QUEUE_MAX pile up is too slow to keep and is
        closed."""
        if self.closed:
            return
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("participant %s is not reading its messages: disconnecting", self.participant_id)
            asyncio.ensure_future(self.close(code=1008, reason="too slow"))

    async def _write_loop(self) -> None:
        try:
            while True:
                message = await self._queue.get()
                if message is None:
                    return
                await self.ws.send_str(message)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.cancel()
        if not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode())

    async def drain(self, timeout_s: float = 1.0) -> None:
        """Let queued messages go out (used before a deliberate close)."""
        try:
            self._queue.put_nowait(None)
            await asyncio.wait_for(asyncio.shield(self._writer), timeout_s)
        except (asyncio.QueueFull, asyncio.TimeoutError, asyncio.CancelledError):
            pass

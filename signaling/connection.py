"""One websocket client: a bounded outgoing queue (a slow client never blocks the lesson) and its identity.

What a client is sent waits in its own queue and is written by its own task, so the lesson never waits for one
socket. A burst (400 classrooms joining at once, events fanned out) may queue hundreds of messages for a client
that reads perfectly well: that is fine. A client is judged by whether its socket takes what it is given, not by
how many messages happen to be waiting (docs/protocol.md, "Slow clients"):

* a client that leaves one message waiting at its socket for SEND_STALL_S (the socket's buffers are full and the
  client does not read them) does not read;
* a client whose queue holds more than SEND_QUEUE_MAX_CHARS of text is so far behind that starting again (a
  reconnecting page gets the whole state in `joined`) costs it less than catching up.

Either way the client is closed once, with CLOSE_NOT_READING, and one log line; what else was queued is
dropped. Its socket is aborted when the close frame itself cannot be written.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any, Final

from aiohttp import web

from signaling.metrics import count_error
from signaling.ratelimit import TokenBucket
from signaling.tokens import Claims

log = logging.getLogger("ketang.signaling")

# Text waiting for one client, in characters (a message to many is one shared string: the memory is the
# longest queue's, not the sum). 400 classrooms joining are ~120,000 characters of events to the teacher; the
# hand queue of a full lesson re-sent on every change a few MB: 8 Mi characters is every realistic burst.
SEND_QUEUE_MAX_CHARS: Final[int] = 8 * 1024 * 1024
# One message that cannot be handed to the socket for this long: the kernel's and aiohttp's buffers (hundreds of
# KB) are full and nothing drains them. A school on a 64 kbit/s link takes ~8 s to drain a 64 KiB offer.
SEND_STALL_S: Final[float] = 30.0
# How long closing may take before the socket is simply dropped: a client judged not reading gets a moment for
# the close frame; any other one as long as aiohttp waits for the client's reply (10 s) and a little more.
DROP_CLOSE_TIMEOUT_S: Final[float] = 2.0
CLOSE_TIMEOUT_S: Final[float] = 12.0
# websocket close code for a client that does not read what it is sent (docs/protocol.md)
CLOSE_NOT_READING: Final[int] = 4009


class Connection:
    def __init__(self, ws: web.WebSocketResponse, bucket: TokenBucket, *,
                 max_queued_chars: int = SEND_QUEUE_MAX_CHARS, stall_s: float = SEND_STALL_S,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self.ws = ws
        self.bucket = bucket
        self.claims: Claims | None = None
        self.participant_id: str | None = None
        self.lesson_id: str | None = None
        self.closed = False
        self._transport = transport  # aborted when even the close frame cannot be written
        self._max_chars = max_queued_chars
        self._stall_s = stall_s
        self._queue: deque[str] = deque()
        self._queued_chars = 0
        self._wakeup = asyncio.Event()
        self._ending = False  # drain(): write what is queued, then stop
        self._dropped = False  # judged not reading: nothing more is queued, one close is on its way
        self._writer_done = False
        self._closing: asyncio.Task[None] | None = None
        self._writer = asyncio.ensure_future(self._write_loop())

    @property
    def role(self) -> str | None:
        return self.claims.role if self.claims else None

    @property
    def queued_chars(self) -> int:
        return self._queued_chars

    def send(self, message: dict[str, Any]) -> None:
        count_error(message)
        self.send_text(json.dumps(message, ensure_ascii=False))

    def send_text(self, text: str) -> None:
        """Queue an encoded message. A client too far behind (SEND_QUEUE_MAX_CHARS) is closed, once."""
        if self.closed or self._dropped or self._ending or self._writer_done:
            return
        if self._queued_chars + len(text) > self._max_chars:
            self._not_reading(f"{self._queued_chars + len(text)} characters waiting for it")
            return
        self._queue.append(text)
        self._queued_chars += len(text)
        self._wakeup.set()

    def _not_reading(self, why: str) -> None:
        if self._dropped or self.closed:
            return
        self._dropped = True
        self._queue.clear()
        self._queued_chars = 0
        log.warning("participant %s does not read its messages (%s): disconnecting", self.participant_id, why)
        self._closing = asyncio.ensure_future(self.close(code=CLOSE_NOT_READING, reason="not reading its messages"))

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._queue:
                    if self._ending or self._dropped:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                text = self._queue.popleft()
                self._queued_chars -= len(text)
                try:
                    async with asyncio.timeout(self._stall_s):
                        await self.ws.send_str(text)
                except TimeoutError:
                    self._not_reading(f"a message waited {self._stall_s:g} s at its socket")
                    return
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            return
        finally:
            self._writer_done = True
            self._queue.clear()
            self._queued_chars = 0

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        if self._writer is not asyncio.current_task():
            self._writer.cancel()
        if self.ws.closed:
            return
        try:
            async with asyncio.timeout(DROP_CLOSE_TIMEOUT_S if self._dropped else CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode())
        except asyncio.CancelledError:
            # aiohttp's drain waiter is cancelled along with a write that timed out, and raises it at the next
            # write: that is not this task being cancelled, unless it is
            self._abort()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except (TimeoutError, ConnectionError, RuntimeError):
            self._abort()

    def _abort(self) -> None:
        """The close frame could not even be written (a client that does not read): drop the socket, or its unsent
        bytes would keep it open for as long as the client keeps its window shut."""
        if self._transport is not None:
            self._transport.abort()

    async def drain(self, timeout_s: float = 1.0) -> None:
        """Let queued messages go out (used before a deliberate close)."""
        self._ending = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass

"""A weak school link for HTTP in user space: a TCP relay between a browser and a server whose downstream (server →
browser) shares one rate-limited bottleneck across every connection, with a fixed delay each way.

    browser ──► [delay rtt/2] ──► server
    browser ◄── [bottleneck rate_bps, shared] ◄── [delay rtt/2] ◄── server

The bottleneck is a virtual clock: each chunk read from the server (at most `chunk_bytes`) occupies the link for
its size at `rate_bps`; the relay reads the next chunk only when the link is free, so TCP's own flow control backs
the server up as a saturated school line does (no unbounded queue in the relay). Counters: `down_bytes`,
`connections`. (tests/linkshaper.py is the UDP one, for WebRTC media.)
"""

from __future__ import annotations

import asyncio
import time

TCP_IP_OVERHEAD = 40  # IPv4 + TCP headers per ~1460-byte segment: counted on the link as a real line would


class TcpShaper:
    def __init__(self, target: tuple[str, int], rate_bps: float, rtt_s: float, chunk_bytes: int = 1460) -> None:
        self.target = target
        self.rate_bps = rate_bps
        self.delay_s = rtt_s / 2
        self.chunk_bytes = chunk_bytes
        self.down_bytes = 0
        self.connections = 0
        self._free_at = 0.0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpShaper:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _client(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        await asyncio.sleep(self.delay_s * 2)  # the handshake's round trip
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        up = asyncio.ensure_future(self._pump(client_r, server_w, shaped=False))
        down = asyncio.ensure_future(self._pump(server_r, client_w, shaped=True))
        for task in (up, down):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(self.delay_s + 0.05)
        for task in (up, down):
            task.cancel()
        for w in (client_w, server_w):
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shaped: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(self.chunk_bytes):
                if shaped:
                    now = time.monotonic()
                    self._free_at = max(now, self._free_at) + (len(data) + TCP_IP_OVERHEAD) * 8 / self.rate_bps
                    await asyncio.sleep(self._free_at - now)
                    self.down_bytes += len(data)
                loop.call_later(self.delay_s, _write, writer, data)
        except (ConnectionError, OSError):
            pass
        await asyncio.sleep(self.delay_s)


    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()


def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)

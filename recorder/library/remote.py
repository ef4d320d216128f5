"""Files another node holds: a request at this node for a recording (or its poster, MP4, HLS renditions) written
by another node is forwarded there and the answer streamed back, Range and all.

The catalog is shared (one PostgreSQL for every node) and knows each recording's node (``Recording.node``: the
base URL of the node that wrote it, its ``--public-url``). The node that wrote a recording also makes and keeps
what is made from it (poster, MP4 export, HLS renditions); the recording itself may be on a directory every node
mounts (``--media-dir``), and is then served by whichever node is asked. Anything that is not here is fetched
from the recording's node with the same request (method, path, query, ``Authorization``, ``Range``,
``If-Range``, conditional headers): that node checks access again by the same rules, so forwarding never
widens who sees what. A forwarded request carries ``X-Ketang-Forwarded``; a node never forwards such a request
again (no loops, whatever a client sends). Why forward rather than redirect: schools reach the region through
one address; the nodes behind it need not be reachable from a school.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from recorder.library.catalog import LibraryError, Recording

log = logging.getLogger("ketang.recorder.remote")

FORWARDED_HEADER: Final[str] = "X-Ketang-Forwarded"
REQUEST_HEADERS: Final[tuple[str, ...]] = ("Authorization", "Range", "If-Range", "If-Modified-Since",
                                           "If-None-Match", "Content-Type", "Accept")
RESPONSE_HEADERS: Final[tuple[str, ...]] = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges",
                                            "Last-Modified", "ETag", "Cache-Control", "Content-Disposition")
CONNECT_TIMEOUT_S: Final[float] = 5.0
READ_TIMEOUT_S: Final[float] = 30.0  # between two reads: a whole lesson's file streams for minutes
MAX_BODY_BYTES: Final[int] = 16 * 1024  # what the library's JSON calls take (web.MAX_BODY_BYTES)
CHUNK_BYTES: Final[int] = 64 * 1024


class Remote:
    """Forwards requests for files of recordings written by other nodes. ``node_url``: this node's base URL."""

    def __init__(self, node_url: str | None) -> None:
        self.node_url = (node_url or "").rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def elsewhere(self, rec: Recording, request: web.Request) -> str | None:
        """The base URL of the node to forward ``request`` to, or None: the recording is this node's (or
        older than nodes in the catalog), or the request was forwarded here already."""
        node = (rec.node or "").rstrip("/")
        if not node or node == self.node_url or request.headers.get(FORWARDED_HEADER):
            return None
        if urlsplit(node).scheme not in ("http", "https"):
            return None
        return node

    async def forward(self, request: web.Request, node: str) -> web.StreamResponse:
        """The same request at ``node``; its answer streamed back. LibraryError("unavailable") when that node
        cannot be reached."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=None, connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S), auto_decompress=False)
        headers = {k: v for k in REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
        headers[FORWARDED_HEADER] = "1"
        body = None
        if request.method in ("POST", "PATCH", "PUT"):
            body = await request.content.read(MAX_BODY_BYTES + 1)  # (the node there refuses one too large)
        url = node + str(request.rel_url)
        try:
            upstream = await self._session.request(request.method, url, headers=headers, data=body,
                                                   allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("forwarding %s %s to %s failed: %s", request.method, request.path, node, exc)
            raise LibraryError("unavailable", "the node that holds this recording cannot be reached just now; "
                                              "try again in a minute") from None
        async with upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k in RESPONSE_HEADERS if (v := upstream.headers.get(k)) is not None})
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as exc:
                # the status is sent: all that is left is to cut the answer short (the client sees it truncated)
                log.warning("forwarding %s from %s broke off: %s", request.path, node, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

"""HTTP for the HLS renditions: the files (playlists, init and media segments), their job, and the item's
``hls`` entry the player reads.

``GET /library/hls/{id}/{key}/{file}``: ``key`` is ``p`` for a published lesson (plain, shareable, cached) or
``s{exp}.{sig}`` — the recording's file-URL signature (recorder/library/web.py) in the path, not the query,
because a player resolves the playlists' relative URIs against the path and drops the query. The same access
rules as the recording: a published lesson for everyone; otherwise its teacher and reviewers (a Bearer token,
or the signed key the API hands them); to anyone else it does not exist (404). ``file`` must be one of the names
the renditions have (renditions.FILE_RE: ``master.m3u8``, ``720p/index.m3u8``, ``180p/seg00003.m4s``…): nothing
else from a request ever reaches the filesystem. Files of a recording another node wrote are forwarded from
that node (recorder/library/remote.py).

``GET /api/library/{id}/hls`` → the job (``state``, ``progress`` 0..100, ``error``) and ``master`` (the URL,
once made); ``POST`` (its teacher or a reviewer) makes them (again: ``?force=1``).

Which source: the lesson's composite 课例 (``lessons/<lesson>/composite.mp4``) for the item of the teacher's
recording when the composite exists, else the item's own file. Where: ``lessons/<lesson>/hls/<item id>/``. When:
at publication, and at start-up and every ``SWEEP_S`` for published items of this node that have none yet.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from recorder.compose.jobs import COMPOSITE_NAME, DONE
from recorder.hls.jobs import LocalHlsQueue
from recorder.hls.renditions import (
    FILE_RE,
    INIT_NAME,
    MASTER_NAME,
    PLAYLIST_NAME,
    SEGMENT_PATTERN,
    START_DIR,
    START_NAME,
    segments,
)
from recorder.library.catalog import PUBLISHED, Library, LibraryError, Recording, Viewer
from recorder.library.web import (
    CONTENT_TYPES,
    FILE_URL_TTL_S,
    LIBRARY_WEB_DIR,
    MAX_DIGITS,
    LibraryRoutes,
    _errors,
    flag_param,
)

log = logging.getLogger("ketang.recorder.hls")

HLS_DIR_NAME: Final[str] = "hls"
SWEEP_S: Final[float] = 60.0
PUBLIC_KEY: Final[str] = "p"
TYPES: Final[dict[str, str]] = {".m3u8": "application/vnd.apple.mpegurl", ".m4s": "video/iso.segment",
                                ".mp4": CONTENT_TYPES[".mp4"]}
# segments never change once written (a new set replaces the folder): a day of caching; playlists a minute
SEGMENT_CACHE_S: Final[int] = 86400
PLAYLIST_CACHE_S: Final[int] = 60
VENDOR_DIR: Final[Path] = LIBRARY_WEB_DIR / "vendor"
VENDOR_FILES: Final[dict[str, str]] = {"hls.min.mjs": "text/javascript; charset=utf-8",
                                       "hls.js-LICENSE": "text/plain; charset=utf-8"}
VENDOR_CACHE_S: Final[int] = 86400
# how much of the start rendition a browser's own HLS player wants before its picture moves (Chromium 156: it
# says `playing` with half a second, and moves once it has a second): its first segments up to that are preloaded
START_PRELOAD_S: Final[float] = 1.0


class HlsRoutes:
    def __init__(self, routes: LibraryRoutes, queue: LocalHlsQueue) -> None:
        self.routes = routes
        self.library: Library = routes.library
        self.queue = queue
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    # --- where and from what ---------------------------------------------------------------------------

    def folder(self, rec: Recording) -> Path:
        _safe(rec.lesson_id)
        return self.library.lesson_record_dir(rec.lesson_id) / HLS_DIR_NAME / rec.id

    def source(self, rec: Recording) -> Path:
        """The lesson's composite for the item of the teacher's recording (record.json says which file that
        is) when the composite exists; else the item's own file."""
        own = self.library.path_of(rec.file)
        record = self.library.lesson_record_file(rec.lesson_id, "record.json")
        if record is not None and (record.parent / COMPOSITE_NAME).is_file():
            try:
                files = json.loads(record.read_text(encoding="utf-8")).get("recording", {}).get("files", [])
                teacher = {f.get("file") for f in files if isinstance(f, dict) and f.get("role") == "teacher"}
            except (OSError, ValueError, AttributeError):
                teacher = set()
            if own.name in teacher:
                return record.parent / COMPOSITE_NAME
        return own

    def make(self, rec: Recording, force: bool = False) -> dict[str, Any]:
        """Queue the renditions of ``rec`` here (its source must be on this node)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self.queue.enqueue(rec.id, self.source(rec), self.folder(rec), force=force)

    def on_publish(self, rec: Recording) -> None:
        if self.routes.remote.node_url and rec.node and rec.node.rstrip("/") != self.routes.remote.node_url:
            return  # the node that wrote it makes them (its sweep finds it)
        if self.library.path_of(rec.file).is_file():
            self.make(rec)

    def job_done(self, rec_id: str, dst: str) -> None:
        """From the queue's worker thread: the catalog learns where the renditions are."""
        if self._loop is None or self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self.library.set_hls(rec_id, Path(dst)), self._loop)
        future.add_done_callback(lambda f: f.exception() and log.error(
            "item %s: its renditions are made but the catalog could not say so: %s", rec_id, f.exception()))

    async def sweep(self) -> int:
        """Queue the renditions of published items of this node that have none; returns how many."""
        items = await self.library.published_without_hls(self.library.node_url)
        queued = 0
        for rec in items:
            if self.queue.status(rec.id)["state"] in ("queued", "running", "failed"):
                continue  # (a failed one waits for a POST: it would fail again)
            if self.library.path_of(rec.file).is_file():
                self.make(rec)
                queued += 1
        return queued

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - the store down: next time
                log.warning("HLS sweep failed: %s", " ".join(str(exc).split())[:300])
            await asyncio.sleep(SWEEP_S)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.queue.on_done = self.job_done
        self.queue.start()
        self._sweeper = self._loop.create_task(self._sweep_forever())

    async def close(self, app: web.Application | None = None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.to_thread(self.queue.close)

    # --- the item's entry, for the player ------------------------------------------------------------

    def key(self, rec: Recording) -> str:
        if rec.state == PUBLISHED:
            return PUBLIC_KEY
        exp = int(time.time()) + FILE_URL_TTL_S
        return f"s{exp}.{self.routes.sign(rec.id, exp)}"

    def _start_set(self, rec: Recording) -> bool:
        """Whether a published item's renditions have the start playlist (sets made before it had none; another
        node's set is taken to have it: a 404 would only make the page play them with hls.js)."""
        if not (rec.hls and rec.state == PUBLISHED):
            return False
        root = self.library.path_of(rec.hls)
        return not root.is_dir() or (root / START_NAME).is_file()

    def page_video_attributes(self, rec: Recording) -> dict[str, str]:
        """A published item's start and master playlists on its player page's <video>: the page's own first
        script starts the start playlist in the browser's own HLS player (client_web/library/play.html)."""
        if not self._start_set(rec):
            return {}
        master = self.master_url(rec)
        return {"data-start": master.rsplit("/", 1)[0] + "/" + START_NAME, "data-master": master}

    def page_preloads(self, rec: Recording) -> list[str]:
        """What the page's start playlist asks before its picture moves — the start rendition's playlist, init
        segment and first second of (short) segments, ≈ 30 KB — preloaded with the page: every round trip of that
        chain costs 300 ms on a rural link, and the player asks for one segment at a time."""
        if not self._start_set(rec):
            return []
        base = self.master_url(rec).rsplit("/", 1)[0]
        names = [START_NAME, f"{START_DIR}/{PLAYLIST_NAME}", f"{START_DIR}/{INIT_NAME}"]
        playlist = self.library.path_of(rec.hls) / START_DIR / PLAYLIST_NAME
        try:
            media = segments(playlist)
        except OSError:  # (another node's set: its first three segments are the first second)
            media = [(START_PRELOAD_S / 3, SEGMENT_PATTERN % i) for i in range(3)]
        held = 0.0
        for duration, uri in media:
            if held >= START_PRELOAD_S or not FILE_RE.match(f"{START_DIR}/{uri}"):
                break
            names.append(f"{START_DIR}/{uri}")
            held += duration
        return [f"{base}/{name}" for name in names]

    def master_url(self, rec: Recording) -> str:
        return f"/library/hls/{rec.id}/{self.key(rec)}/{MASTER_NAME}"

    def extend_view(self, rec: Recording, viewer: Viewer, data: dict[str, Any]) -> None:
        job = self.queue.status(rec.id)
        data["hls"] = {"master": self.master_url(rec) if rec.hls else None,
                       "state": DONE if rec.hls and job["state"] == "none" else job["state"],
                       "progress": 100 if rec.hls and job["state"] == "none" else job["progress"]}

    # --- HTTP --------------------------------------------------------------------------------------------

    async def file(self, request: web.Request) -> web.StreamResponse:
        rec_id, key, name = request.match_info["id"], request.match_info["key"], request.match_info["file"]
        if not FILE_RE.match(name):
            raise LibraryError("not_found", "no such file in the renditions")
        rec = await self._allowed(request, rec_id, key)
        if not rec.hls:
            raise LibraryError("not_found", "this recording has no HLS renditions (yet)")
        root = self.library.path_of(rec.hls)
        path = root / name  # (FILE_RE: a fixed set of names, no "..", no absolute path)
        if not path.is_file():
            if (node := self.routes.remote.elsewhere(rec, request)) is not None:
                return await self.routes.remote.forward(request, node)
            raise LibraryError("not_found", "the file is not there")
        public = rec.state == PUBLISHED and key == PUBLIC_KEY
        cache = SEGMENT_CACHE_S if path.suffix in (".m4s", ".mp4") else PLAYLIST_CACHE_S
        return web.FileResponse(path, headers={
            "Cache-Control": f"public, max-age={cache}" if public else "private, no-store",
            "Content-Type": TYPES.get(path.suffix, "application/octet-stream")})

    async def _allowed(self, request: web.Request, rec_id: str, key: str) -> Recording:
        if key != PUBLIC_KEY:
            exp_s, _, sig = key[1:].partition(".")
            if not (key.startswith("s") and exp_s.isascii() and exp_s.isdigit() and len(exp_s) <= MAX_DIGITS
                    and sig):
                raise LibraryError("not_found", "no such file in the renditions")
            if int(exp_s) >= time.time() and hmac.compare_digest(sig, self.routes.sign(rec_id, int(exp_s))):
                rec = await self.library.get(rec_id)
                if rec is not None:
                    return rec
            raise LibraryError("not_found", f"no recording {rec_id!r} visible to you")
        return await self.library.get_for(rec_id, self.routes.viewer(request))

    async def status(self, request: web.Request) -> web.Response:
        viewer = self.routes.viewer(request)
        rec = await self.library.get_for(request.match_info["id"], viewer)
        data: dict[str, Any] = {}
        self.extend_view(rec, viewer, data)
        return web.json_response(data["hls"])

    async def start_job(self, request: web.Request) -> web.Response:
        viewer = self.routes.viewer(request)
        rec = await self.library.get_for(request.match_info["id"], viewer)
        if not viewer.actors(rec):
            raise LibraryError("unauthorized" if viewer.role is None else "forbidden",
                               "only a reviewer or the lesson's teacher may make the renditions")
        force = flag_param(request.query, "force")
        if (node := self.routes.remote.elsewhere(rec, request)) is not None:
            return await self.routes.remote.forward(request, node)
        if not self.library.path_of(rec.file).is_file():
            raise LibraryError("not_found", "the recording's file is not on this node")
        self.make(rec, force=force)
        self.routes.record("library_hls", request, viewer, recording=rec.id, force=force)
        data: dict[str, Any] = {}
        self.extend_view(rec, viewer, data)
        return web.json_response(data["hls"], status=202)


async def vendor(request: web.Request) -> web.StreamResponse:
    """The vendored player library (hls.js from npm, as it ships; its .gz beside it for browsers that take gzip:
    on a 250 kbit/s link the 600 KB bundle is 180 KB). A day of caching: a school's browser fetches it once."""
    name = request.match_info["name"]
    if name not in VENDOR_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(VENDOR_DIR / name, headers={"Cache-Control": f"public, max-age={VENDOR_CACHE_S}",
                                                        "Content-Type": VENDOR_FILES[name]})


def _safe(lesson_id: str) -> str:
    safe = "".join(ch for ch in lesson_id if ch.isalnum() or ch in "-_")
    if not safe:
        raise LibraryError("bad_request", "no such lesson")
    return safe


def add_routes(app: web.Application, routes: LibraryRoutes, queue: LocalHlsQueue, *,
               start: bool = True) -> HlsRoutes:
    """Mount the renditions' files and job API next to the library's routes; hook publication and the item
    view. ``start``: run the queue and the sweep from the app's start-up (False: a test drives them)."""
    hls = HlsRoutes(routes, queue)
    routes.on_publish.append(hls.on_publish)
    routes.view_extensions.append(hls.extend_view)
    routes.page_video_attributes.append(hls.page_video_attributes)
    routes.page_preloads.append(hls.page_preloads)
    r = app.router
    r.add_get("/library/hls/{id}/{key}/{file:.+}", _errors(hls.file))
    r.add_get("/api/library/{id}/hls", _errors(hls.status))
    r.add_post("/api/library/{id}/hls", _errors(hls.start_job))
    r.add_get("/library/vendor/{name}", vendor)
    if start:
        async def on_startup(app: web.Application) -> None:
            hls.start()
        app.on_startup.append(on_startup)
    app.on_cleanup.append(hls.close)
    return hls

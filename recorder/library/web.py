"""HTTP for the resource library: the JSON API, the media files (with Range), MP4 export jobs, the pages.

Mounted on the server's app by ``add_routes(app, library, secret, authenticate)``. Auth is the ketang JWT in
``Authorization: Bearer …``, read by the ``authenticate`` the signalling layer passes in (any lesson: a library
token is not checked against one), so this layer never imports the token code above it; no header means
anonymous, who sees published lessons only. A ``<video>`` element cannot send that header, so the API hands
a viewer allowed to see an unpublished lesson short-lived signed file URLs (``?exp=…&sig=…``, HMAC under a
key derived from the server secret); a published lesson's file URLs are plain and shareable.

Every library call is a short async transaction on the store; MP4 exports run one at a
time in a worker thread, their progress kept in memory. Measured: a 640×360 export in that thread left
the event loop's wake-up lag at p99 2 ms, max 4 ms (FFmpeg does the work outside the GIL); the thread is
also niced (Linux: per thread) so a live lesson's forwarding wins the CPU.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from recorder.library import curriculum
from recorder.library.catalog import (
    AWAITING_REVIEW,
    FILTER_FIELDS,
    MAX_PER_PAGE,
    PUBLISHED,
    REJECTED,
    REVIEWER,
    TAKEN_DOWN,
    Library,
    LibraryError,
    Recording,
    Viewer,
)
from recorder.library.export import MediaError, export_mp4
from recorder.library.remote import Remote

log = logging.getLogger("ketang.recorder.web")

CLIENT_WEB_DIR: Final[Path] = Path(__file__).resolve().parents[2] / "client_web"
LIBRARY_WEB_DIR: Final[Path] = CLIENT_WEB_DIR / "library"
# modules the library's pages share with the lesson pages (one i18n, one element lookup), imported as "../x.js"
# from /library/static/: served at /library/x.js
SHARED_MODULES: Final[tuple[str, ...]] = ("i18n.js", "dom.js")
# what /library/static/ serves: the library pages' own scripts and style sheets (client_web/library/)
STATIC_NAME: Final[re.Pattern[str]] = re.compile(r"[a-z][a-z0-9_-]*\.(?:js|css)")
# the player page's <video>, and the attributes a hook may add to it (page_video_attributes)
VIDEO_TAG: Final[str] = '<video id="video"'
VIDEO_ATTRIBUTE: Final[re.Pattern[str]] = re.compile(r"data-[a-z]+")
MAX_BODY_BYTES: Final[int] = 16 * 1024  # metadata is a few KB at most (description ≤ 4000 chars)
# A signed file URL lasts a lesson's length and then some: a reviewer watches a whole lesson on one link.
FILE_URL_TTL_S: Final[int] = 6 * 3600
SIGNATURE_CHARS: Final[int] = 32  # 192 bits of the HMAC, base64url
CONTENT_TYPES: Final[dict[str, str]] = {".webm": "video/webm", ".mkv": "video/x-matroska", ".mp4": "video/mp4",
                                        ".jpg": "image/jpeg", ".png": "image/png",
                                        ".csv": "text/csv; charset=utf-8", ".json": "application/json"}
# HTTP status per LibraryError code.
STATUS: Final[dict[str, int]] = {"not_found": 404, "forbidden": 403, "invalid_transition": 409,
                                 "invalid_field": 400, "bad_request": 400, "unauthorized": 401,
                                 "request_timeout": 408, "export_failed": 500, "unavailable": 503}
# A request body (metadata, a review) that has not fully arrived by then is refused (408): a client sending it a
# byte at a time must not hold a handler and its socket for good.
BODY_TIMEOUT_S: Final[float] = 15.0
# Numeric query parameters: ASCII digits only, and within these bounds (SQLite's integers are 64-bit: a page of
# 10**20 once reached it and failed with a 500).
MAX_PAGE: Final[int] = 1_000_000
MAX_DIGITS: Final[int] = 12
EXPORT_WORKERS: Final[int] = 1  # an export takes a core; lessons keep the others
EXPORT_NICENESS: Final[int] = 10


@dataclass
class ExportJob:
    rec_id: str
    state: str = "queued"  # queued | running | done | failed | cancelled
    progress: float = 0.0
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    cancel: threading.Event = field(default_factory=threading.Event)

    def to_dict(self) -> dict[str, Any]:
        return {"rec_id": self.rec_id, "state": self.state, "progress": round(self.progress, 3),
                "error": self.error}


def int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    """A numeric query parameter: absent -> default; anything but ASCII digits within [low, high] -> 400."""
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_DIGITS) or not low <= int(raw) <= high:
        raise LibraryError("bad_request", f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def flag_param(query: Any, name: str) -> bool:
    """A yes/no query parameter: absent, 0 or 1; anything else -> 400."""
    raw = query.get(name, "0")
    if raw not in ("0", "1"):
        raise LibraryError("bad_request", f"{name} must be 0 or 1")
    return raw == "1"


# Where a layer above (signaling: accounts) puts the Viewer of a signed-in session for a request that carries no
# bearer token; the library reads it and never learns how sessions work.
SESSION_VIEWER: Final[web.RequestKey[Viewer]] = web.RequestKey("ketang.library.session_viewer", Viewer)
# a bearer token -> who holds it; raises LibraryError("unauthorized", ...) for a bad one (signaling.app makes it)
Authenticate = Callable[[str], Viewer]
# records an audited action: (action, viewer or None, client address, outcome, details); signaling.app makes it
LibraryAudit = Callable[..., None]
# a lesson id -> its composite job: {state: none|queued|running|done|failed, progress: 0..100, error, output}
# (recorder.compose.jobs.ComposeQueue.status; signaling.app passes the server's queue)
ComposeStatus = Callable[[str], dict[str, Any]]
COMPOSITE_NAME: Final[str] = "composite.mp4"  # <data_dir>/lessons/<lesson>/ (recorder.compose.jobs)
CHAPTERS_NAME: Final[str] = "composite.vtt"
LESSON_FILE_STEMS: Final[dict[str, str]] = {"attendance.csv": "考勤", "chat.csv": "聊天", "record.json": "课堂记录"}


def _error(exc: LibraryError) -> web.Response:
    return web.json_response({"type": "error", "code": exc.code, "message": exc.message},
                             status=STATUS.get(exc.code, 400))


class LibraryRoutes:
    def __init__(self, library: Library, secret: str, authenticate: Authenticate, *,
                 export_on_publish: bool = True, audit: LibraryAudit | None = None,
                 compose_status: ComposeStatus | None = None) -> None:
        self.library = library
        # files of recordings another node wrote are fetched from it (remote.py)
        self.remote = Remote(library.node_url)
        # called with each recording a reviewer publishes (the HLS renditions start there: recorder/hls/web.py)
        self.on_publish: list[Callable[[Recording], None]] = []
        # each adds to an item's JSON for a viewer: (recording, viewer, data) (recorder/hls/web.py: its renditions)
        self.view_extensions: list[Callable[[Recording, Viewer, dict[str, Any]], None]] = []
        # each gives attributes for the player page's <video> of a published item, so that it starts before any
        # module or API call: (recording) -> {"data-…": value} (recorder/hls/web.py: its master playlist)
        self.page_video_attributes: list[Callable[[Recording], dict[str, str]]] = []
        # each names files of a published item the player page will want first (recorder/hls/web.py: the lowest
        # rendition's playlists, init and first segments): preloaded with the page (a `Link` header)
        self.page_preloads: list[Callable[[Recording], list[str]]] = []
        self._compose_status = compose_status
        self._authenticate = authenticate
        self._audit = audit
        self.export_on_publish = export_on_publish
        self._secret = secret
        # a key of its own: a file-URL signature can never be replayed as (part of) a token
        self._file_key = hmac.new(secret.encode(), b"ketang library file urls", hashlib.sha256).digest()
        self.jobs: dict[str, ExportJob] = {}
        self._executor = ThreadPoolExecutor(max_workers=EXPORT_WORKERS, thread_name_prefix="ketang-export")
        self._tasks: set[asyncio.Task[None]] = set()

    # --- who is asking -----------------------------------------------------------------------------------

    def viewer(self, request: web.Request) -> Viewer:
        auth = request.headers.get("Authorization", "")
        if not auth:  # a signed-in account (signaling's session middleware), else anonymous
            signed_in = request.get(SESSION_VIEWER)
            return signed_in if isinstance(signed_in, Viewer) else Viewer.anonymous()
        if not auth.startswith("Bearer "):
            raise LibraryError("unauthorized", "Authorization must be 'Bearer <token>'")
        try:
            return self._authenticate(auth.removeprefix("Bearer ").strip())
        except LibraryError as exc:
            self.record("library_token", request, None, exc.code, path=request.path)
            raise

    def record(self, action: str, request: web.Request, viewer: Viewer | None, outcome: str = "ok",
               **detail: Any) -> None:
        """An audited action (a review, an edit, an export, a refused token) with who and from where."""
        if self._audit is not None:
            self._audit(action, viewer, request.remote, outcome, **detail)

    def sign(self, rec_id: str, exp: int) -> str:
        mac = hmac.new(self._file_key, f"{rec_id}:{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode()[:SIGNATURE_CHARS]

    def _signed_ok(self, request: web.Request, rec_id: str) -> bool:
        sig = request.query.get("sig", "")
        exp = int_param(request.query, "exp", 0, 0, 10 ** MAX_DIGITS - 1)
        if not sig or exp < time.time():
            return False
        return hmac.compare_digest(sig, self.sign(rec_id, exp))

    def urls(self, rec: Recording, item: Recording | None = None) -> dict[str, str | None]:
        """The file URLs of ``rec`` (an item, or a source of ``item``): plain once the item is published, signed
        for this recording otherwise."""
        query = ""
        if (item or rec).state != PUBLISHED:
            exp = int(time.time()) + FILE_URL_TTL_S
            query = f"exp={exp}&sig={self.sign(rec.id, exp)}"
        base = f"/library/files/{rec.id}"
        def url(path: str, extra: str = "") -> str:
            q = "&".join(x for x in (extra, query) if x)
            return f"{path}?{q}" if q else path
        composite = rec.item_id is None and self.composite_path(rec) is not None
        return {"webm": url(base), "webm_download": url(base, "download=1"),
                "mp4": url(base, "format=mp4") if rec.mp4 else None,
                "mp4_download": url(base, "format=mp4&download=1") if rec.mp4 else None,
                "composite": url(base, "format=composite") if composite else None,
                "composite_download": url(base, "format=composite&download=1") if composite else None,
                "chapters": url(base, "format=chapters") if composite and self._chapters_path(rec) else None,
                "poster": url(f"{base}/poster") if rec.poster else None,
                "play": f"/library/play/{rec.id}"}

    def composite_path(self, item: Recording) -> Path | None:
        """The lesson's composite 课例 (recorder/compose) once it is there."""
        try:
            path = self.library.lesson_record_dir(item.lesson_id) / COMPOSITE_NAME
        except LibraryError:
            return None
        return path if path.is_file() and self.compose(item)["state"] in ("done", "none") else None

    def _chapters_path(self, item: Recording) -> Path | None:
        path = self.library.lesson_record_dir(item.lesson_id) / CHAPTERS_NAME
        return path if path.is_file() else None

    def compose(self, item: Recording) -> dict[str, Any]:
        """The item's composite job as the pages show it: {state, progress 0..100, error}."""
        status = self._compose_status(item.lesson_id) if self._compose_status is not None else None
        if not status:
            return {"state": "none", "progress": 0, "error": None}
        return {"state": status.get("state", "none"), "progress": int(status.get("progress") or 0),
                "error": status.get("error")}

    def view(self, rec: Recording, viewer: Viewer, item: Recording | None = None) -> dict[str, Any]:
        """``rec`` as the API shows it to ``viewer``: an item, or a source of ``item`` (who may do what follows the
        item). The reviewer's note is for the lesson's teacher and reviewers only."""
        item = item or rec
        data = rec.to_dict()
        del data["teacher_sub"], data["file"], data["poster"], data["mp4"], data["node"], data["hls"]
        data["urls"] = self.urls(rec, item)
        actors = viewer.actors(item)
        if not actors:
            data["review_note"] = data["reviewer"] = data["reviewed_at"] = None
        is_item = rec.item_id is None
        data["can"] = {"edit": is_item and bool(actors) and (REVIEWER in actors
                                                             or item.state not in (PUBLISHED, TAKEN_DOWN)),
                       "review": is_item and REVIEWER in actors and item.state == AWAITING_REVIEW,
                       "take_down": is_item and REVIEWER in actors and item.state == PUBLISHED,
                       "republish": is_item and REVIEWER in actors and item.state == TAKEN_DOWN,
                       "resubmit": is_item and bool(actors) and item.state == REJECTED,
                       "export": bool(actors) or (viewer.role is not None and item.state == PUBLISHED),
                       "lesson_files": bool(actors)}
        job = self.jobs.get(rec.id)
        data["export"] = job.to_dict() if job else ({"state": "done", "progress": 1.0} if rec.mp4 else None)
        if is_item:
            data["compose"] = self.compose(rec)
        for extend in self.view_extensions:
            extend(rec, viewer, data)
        return data

    def lesson_file_urls(self, item: Recording) -> dict[str, str]:
        """Signed links to the lesson's record files (for its teacher and reviewers: a link cannot carry a
        bearer header), those that exist."""
        exp = int(time.time()) + FILE_URL_TTL_S
        sig = self.sign(f"{item.id}/lesson", exp)
        return {name: f"/api/library/{item.id}/lesson/{name}?exp={exp}&sig={sig}" for name in LESSON_FILE_STEMS
                if self.library.lesson_record_file(item.lesson_id, name) is not None}

    async def detail(self, rec: Recording, viewer: Viewer) -> dict[str, Any]:
        """The full view of one recording: an item with its sources (the composite first when there is one) and
        its lesson's files; a source with the item it belongs to."""
        item = await self.library.item_of(rec) or rec
        data = self.view(rec, viewer, item)
        if rec.item_id is None:
            data["sources"] = [self.view(s, viewer, item) for s in await self.library.sources(rec)]
            if viewer.actors(rec):
                data["lesson_files"] = self.lesson_file_urls(rec)
        else:
            data["item"] = {"id": item.id, "title": item.title, "play": f"/library/play/{item.id}"}
        if viewer.actors(item):
            data["history"] = await self.library.history(rec.id)
        return data

    # --- API ---------------------------------------------------------------------------------------------

    async def search(self, request: web.Request) -> web.Response:
        viewer = self.viewer(request)
        q = request.query
        page = int_param(q, "page", 1, 1, MAX_PAGE)
        per_page = int_param(q, "per_page", 20, 1, MAX_PER_PAGE)
        filters = {k: v for k, v in q.items() if k in FILTER_FIELDS and v}
        unknown = set(q) - set(FILTER_FIELDS) - {"q", "page", "per_page", "lang"}
        if unknown:
            raise LibraryError("invalid_field", f"unknown parameter {', '.join(sorted(unknown))}")
        items, total = await self.library.search(q.get("q", ""), filters, page, per_page, viewer)
        # total: lessons (each item is one lesson, its files grouped under it); viewer: what the page offers
        return web.json_response({"total": total, "page": page, "per_page": per_page,
                                  "items": [self.view(r, viewer) for r in items],
                                  "viewer": {"role": viewer.role, "reviewer": viewer.is_reviewer,
                                             "name": viewer.name if viewer.role else None}})

    async def show(self, request: web.Request) -> web.Response:
        viewer = self.viewer(request)
        rec = await self.library.get_for(request.match_info["id"], viewer)
        return web.json_response(await self.detail(rec, viewer))

    async def lesson_item(self, request: web.Request) -> web.Response:
        """The newest item of a lesson visible to the asker (the teacher page's link at the lesson's end)."""
        viewer = self.viewer(request)
        rec = await self.library.item_for_lesson(request.match_info["lesson"], viewer)
        return web.json_response(await self.detail(rec, viewer))

    async def vocabulary(self, request: web.Request) -> web.Response:
        return web.json_response(curriculum.vocabulary(), headers={"Cache-Control": "public, max-age=3600"})

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        raw = b""
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                while len(raw) <= MAX_BODY_BYTES:
                    chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
                    if not chunk:
                        break
                    raw += chunk
        except TimeoutError:
            raise LibraryError("request_timeout", f"the request body did not arrive within {BODY_TIMEOUT_S:g} s") \
                from None
        if len(raw) > MAX_BODY_BYTES:
            raise LibraryError("bad_request", f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise LibraryError("bad_request", "body is not JSON") from None
        if not isinstance(body, dict):
            raise LibraryError("bad_request", "body must be a JSON object")
        return body

    async def patch(self, request: web.Request) -> web.Response:
        viewer = self.viewer(request)
        body = await self._json_body(request)
        rec = await self.library.update_metadata(request.match_info["id"], body, viewer)
        self.record("library_edit", request, viewer, recording=rec.id, fields=sorted(body)[:20])
        return web.json_response(self.view(rec, viewer))

    async def review(self, request: web.Request) -> web.Response:
        viewer = self.viewer(request)
        body = await self._json_body(request)
        decision, note = body.get("decision"), body.get("note", "")
        if not isinstance(decision, str) or not isinstance(note, str):
            raise LibraryError("bad_request", "expected {decision: publish|reject, note: string}")
        rec = await self.library.review(request.match_info["id"], decision, note, viewer)
        self.record("library_review", request, viewer, recording=rec.id, decision=decision, state=rec.state)
        if rec.state == PUBLISHED:
            for hook in self.on_publish:
                hook(rec)
        if rec.state == PUBLISHED and self.export_on_publish and not rec.mp4:
            self.start_export(rec)  # what schools most want is the MP4: have it ready
        return web.json_response(self.view(rec, viewer))

    async def take_down(self, request: web.Request) -> web.Response:
        """下架: {note} saying why (its teacher reads it)."""
        viewer = self.viewer(request)
        note = (await self._json_body(request)).get("note", "")
        if not isinstance(note, str):
            raise LibraryError("bad_request", "expected {note: string}")
        rec = await self.library.take_down(request.match_info["id"], note, viewer)
        self.record("library_take_down", request, viewer, recording=rec.id, state=rec.state)
        return web.json_response(self.view(rec, viewer))

    async def republish(self, request: web.Request) -> web.Response:
        """重新上架: {note} optional."""
        viewer = self.viewer(request)
        note = (await self._json_body(request)).get("note", "")
        if not isinstance(note, str):
            raise LibraryError("bad_request", "expected {note: string}")
        rec = await self.library.republish(request.match_info["id"], note, viewer)
        self.record("library_republish", request, viewer, recording=rec.id, state=rec.state)
        return web.json_response(self.view(rec, viewer))

    async def resubmit(self, request: web.Request) -> web.Response:
        viewer = self.viewer(request)
        rec = await self.library.resubmit(request.match_info["id"], viewer)
        self.record("library_resubmit", request, viewer, recording=rec.id)
        return web.json_response(self.view(rec, viewer))

    async def export_start(self, request: web.Request) -> web.Response:
        viewer = self.viewer(request)
        rec = await self.library.get_for(request.match_info["id"], viewer)
        if not self.view(rec, viewer)["can"]["export"]:
            raise LibraryError("unauthorized" if viewer.role is None else "forbidden",
                               "exporting costs server time: sign in with a ketang token")
        force = flag_param(request.query, "force")
        if force and not viewer.actors(rec):
            # an export costs a core for minutes: only those responsible for the lesson may throw one away
            raise LibraryError("forbidden", "only a reviewer or the lesson's teacher may redo an export (force=1)")
        if (node := self.remote.elsewhere(rec, request)) is not None:
            return await self.remote.forward(request, node)  # the node that wrote it makes what is made from it
        if rec.mp4 and not force and self.library.path_of(rec.mp4).is_file():
            return web.json_response({"rec_id": rec.id, "state": "done", "progress": 1.0, "error": None})
        job = self.start_export(rec)
        self.record("library_export", request, viewer, recording=rec.id, force=force)
        return web.json_response(job.to_dict(), status=202)

    async def export_status(self, request: web.Request) -> web.Response:
        viewer = self.viewer(request)
        rec = await self.library.get_for(request.match_info["id"], viewer)
        if (node := self.remote.elsewhere(rec, request)) is not None and not rec.mp4:
            return await self.remote.forward(request, node)
        job = self.jobs.get(rec.id)
        if job is not None:
            return web.json_response(job.to_dict())
        state = "done" if rec.mp4 else "none"
        return web.json_response({"rec_id": rec.id, "state": state, "progress": 1.0 if rec.mp4 else 0.0,
                                  "error": None})

    # --- exports -----------------------------------------------------------------------------------------

    def start_export(self, rec: Recording) -> ExportJob:
        """One job per recording: a second request while one runs gets the running one."""
        job = self.jobs.get(rec.id)
        if job is not None and job.state in ("queued", "running"):
            return job
        job = self.jobs[rec.id] = ExportJob(rec.id)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run_export(loop, job, rec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run_export(self, loop: asyncio.AbstractEventLoop, job: ExportJob, rec: Recording) -> None:
        try:
            dst = await loop.run_in_executor(self._executor, self._export_blocking, job, rec)
            await self.library.set_mp4(rec.id, dst)
        except Exception as exc:  # noqa: BLE001 - a failed export is a job state, not a server error
            job.state, job.error = ("cancelled" if job.cancel.is_set() else "failed"), str(exc)
            log.warning("export of %s failed: %s", rec.id, exc)
            return
        job.progress, job.state = 1.0, "done"
        log.info("exported %s to %s", rec.id, dst)

    def _export_blocking(self, job: ExportJob, rec: Recording) -> Path:
        if job.cancel.is_set():
            raise MediaError("cancelled before it started")
        job.state = "running"
        _lower_this_threads_priority()
        dst = self.library.exports_dir / f"{rec.id}.mp4"

        def progress(fraction: float) -> None:
            job.progress = fraction

        export_mp4(self.library.path_of(rec.file), dst, progress, job.cancel)
        return dst

    async def close(self, app: web.Application | None = None) -> None:
        for job in self.jobs.values():
            job.cancel.set()
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
        for task in list(self._tasks):
            task.cancel()
        await self.remote.close()

    # --- files -------------------------------------------------------------------------------------------

    async def _file_recording(self, request: web.Request) -> tuple[Recording, bool]:
        """The recording whose file is asked for (a signed URL, or a viewer who may see it), and whether its
        item is public."""
        rec_id = request.match_info["id"]
        if self._signed_ok(request, rec_id):
            rec = await self.library.get(rec_id)
            if rec is None:
                raise LibraryError("not_found", f"no recording {rec_id!r}")
            return rec, False
        rec = await self.library.get_for(rec_id, self.viewer(request))
        item = await self.library.item_of(rec)
        return rec, item is not None and item.state == PUBLISHED

    def _send(self, path: Path, public: bool, download_name: str | None = None) -> web.FileResponse:
        if not path.is_file():
            raise LibraryError("not_found", "the file is not there (yet)")
        headers = {"Cache-Control": "public, max-age=3600" if public else "private, no-store",
                   "Content-Type": CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")}
        if download_name:
            headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(download_name)}"
        # FileResponse answers Range (206 + Content-Range, 416 when unsatisfiable) and If-Modified-Since
        return web.FileResponse(path, headers=headers)

    async def file(self, request: web.Request) -> web.StreamResponse:
        rec, public = await self._file_recording(request)
        fmt = request.query.get("format", "webm")
        if fmt not in ("webm", "mp4", "composite", "chapters"):
            raise LibraryError("bad_request", "format must be webm, mp4, composite or chapters")
        download = flag_param(request.query, "download")
        if fmt in ("composite", "chapters"):
            found = (self.composite_path(rec) if fmt == "composite" else self._chapters_path(rec)) \
                if rec.item_id is None else None
            if found is None:
                raise LibraryError("not_found", "the lesson's composite is not made (yet)")
            path = found
        elif fmt == "mp4":
            if not rec.mp4:
                raise LibraryError("not_found", "no MP4 yet: POST /api/library/{id}/export")
            path = self.library.path_of(rec.mp4)
        else:
            path = self.library.path_of(rec.file)
        if not path.is_file() and (node := self.remote.elsewhere(rec, request)) is not None:
            return await self.remote.forward(request, node)
        name = None
        if download:
            name = f"{rec.title}{path.suffix}".replace("/", "_")
        return self._send(path, public, name)

    async def lesson_record(self, request: web.Request) -> web.StreamResponse:
        """The lesson's attendance CSV, chat transcript CSV or record JSON (stage timeline, chat, attendance):
        for the recording's teacher and reviewers only — attendance is about schools, not for the public."""
        rec_id = request.match_info["id"]
        if self._signed_ok(request, f"{rec_id}/lesson"):  # the links the item's page gives its teacher and reviewers
            rec = await self.library.get(rec_id)
            if rec is None:
                raise LibraryError("not_found", f"no recording {rec_id!r}")
        else:
            viewer = self.viewer(request)
            rec = await self.library.get_for(rec_id, viewer)
            item = await self.library.item_of(rec) or rec
            if not viewer.actors(item):
                raise LibraryError("forbidden", "the lesson's record is for its teacher and reviewers")
        name = request.match_info["name"]
        path = self.library.lesson_record_file(rec.lesson_id, name)
        if path is None:
            raise LibraryError("not_found", f"no {name} for this lesson")
        return self._send(path, False, f"{rec.title}-{LESSON_FILE_STEMS[name]}{path.suffix}".replace("/", "_"))

    async def poster(self, request: web.Request) -> web.StreamResponse:
        rec, public = await self._file_recording(request)
        if not rec.poster:
            raise LibraryError("not_found", "this recording has no poster")
        path = self.library.path_of(rec.poster)
        if not path.is_file() and (node := self.remote.elsewhere(rec, request)) is not None:
            return await self.remote.forward(request, node)
        return self._send(path, public)

    # --- pages -------------------------------------------------------------------------------------------

    async def page_index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(LIBRARY_WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def page_play(self, request: web.Request) -> web.StreamResponse:
        """The player page; for a published item (what anyone may see) its <video> carries what it plays
        (``page_video_attributes``), so that the page's first script starts it at once, and the files the video
        asks for first come along with the page (``page_preloads``, as a ``Link: rel=preload`` header)."""
        headers = {"Cache-Control": "no-cache"}
        attributes: dict[str, str] = {}
        preloads: list[str] = []
        if self.page_video_attributes or self.page_preloads:
            try:
                rec = await self.library.get_for(request.match_info["id"], Viewer.anonymous())
            except (LibraryError, SQLAlchemyError, ConnectionError) as exc:
                rec = None  # not visible to everyone, or the store down: the page asks the API as usual
                if not isinstance(exc, LibraryError):
                    log.warning("library: the player page of %s without its item: %s", request.match_info["id"],
                                " ".join(str(exc).split())[:300])
            if rec is not None and rec.state == PUBLISHED:
                for hook in self.page_video_attributes:
                    attributes.update(hook(rec))
                for preload in self.page_preloads:
                    preloads.extend(preload(rec))
        if preloads:
            # as=fetch: fetched now into the HTTP cache (public, cacheable), where the video's own requests find
            # them (a request still on its way is waited for, not made twice)
            headers["Link"] = ", ".join(f"<{quote(url, safe='/:')}>; rel=preload; as=fetch; crossorigin"
                                        for url in preloads)
        if not attributes:
            response = web.FileResponse(LIBRARY_WEB_DIR / "play.html", headers=headers)
            response.enable_compression()
            return response
        page = (LIBRARY_WEB_DIR / "play.html").read_text(encoding="utf-8")
        extra = "".join(f' {name}="{html.escape(value, quote=True)}"' for name, value in sorted(attributes.items())
                        if VIDEO_ATTRIBUTE.fullmatch(name))
        page = page.replace(VIDEO_TAG, VIDEO_TAG + extra, 1)
        response = web.Response(text=page, content_type="text/html", charset="utf-8", headers=headers)
        response.enable_compression()
        return response


def _lower_this_threads_priority() -> None:
    # On Linux a thread is a schedulable task of its own: PRIO_PROCESS with its native id nices only it.
    try:
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < EXPORT_NICENESS:
            os.setpriority(os.PRIO_PROCESS, tid, EXPORT_NICENESS)
    except (OSError, AttributeError):
        pass


def _errors(handler):  # type: ignore[no-untyped-def]
    """A LibraryError becomes a JSON error with its HTTP status; a store that cannot be reached or written (the
    database down, a full disk) a 503 saying so; anything else stays aiohttp's business."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except LibraryError as exc:
            return _error(exc)
        except (SQLAlchemyError, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
                raise
            log.error("library: the store failed on %s %s: %s", request.method, request.path,
                      " ".join(str(exc).split())[:300])
            return _error(LibraryError("unavailable", "the library's database cannot be reached or written "
                                                      "just now; try again in a minute"))
    return wrapped


def _client_file(path: Path) -> web.FileResponse:
    """A page's script or style sheet: revalidated each time (no-cache: an update is seen at once, an unchanged
    file costs a 304), gzipped for a browser that takes it — on a 250 kbit/s school link i18n.js is 2 s as it
    is and a third of that gzipped."""
    response = web.FileResponse(path, headers={"Cache-Control": "no-cache"})
    response.enable_compression()
    return response


async def _library_static(request: web.Request) -> web.StreamResponse:
    """/library/static/<name>: the library pages' own scripts and style sheets (client_web/library/*.js, *.css)."""
    name = request.match_info["name"]
    path = LIBRARY_WEB_DIR / name
    if not STATIC_NAME.fullmatch(name) or not path.is_file():
        raise web.HTTPNotFound()
    return _client_file(path)


def _shared_module(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        return _client_file(path)
    return serve


def add_routes(app: web.Application, library: Library, secret: str, authenticate: Authenticate, *,
               export_on_publish: bool = True, audit: LibraryAudit | None = None,
               compose_status: ComposeStatus | None = None) -> LibraryRoutes:
    """Mount the library's API, files and pages on ``app``; returns the routes object (its export jobs).
    ``compose_status``: each lesson's composite job (the server's compose queue), shown on its item."""
    routes = LibraryRoutes(library, secret, authenticate, export_on_publish=export_on_publish, audit=audit,
                           compose_status=compose_status)
    r = app.router
    r.add_get("/api/library", _errors(routes.search))
    r.add_get("/api/library/curriculum", _errors(routes.vocabulary))
    r.add_get("/api/library/lessons/{lesson}", _errors(routes.lesson_item))
    r.add_get("/api/library/{id}", _errors(routes.show))
    r.add_patch("/api/library/{id}", _errors(routes.patch))
    r.add_post("/api/library/{id}/review", _errors(routes.review))
    r.add_post("/api/library/{id}/resubmit", _errors(routes.resubmit))
    r.add_post("/api/library/{id}/take-down", _errors(routes.take_down))
    r.add_post("/api/library/{id}/republish", _errors(routes.republish))
    r.add_post("/api/library/{id}/export", _errors(routes.export_start))
    r.add_get("/api/library/{id}/export", _errors(routes.export_status))
    r.add_get("/library/files/{id}", _errors(routes.file))
    r.add_get("/library/files/{id}/poster", _errors(routes.poster))
    r.add_get("/api/library/{id}/lesson/{name:attendance\\.csv|chat\\.csv|record\\.json}",
              _errors(routes.lesson_record))
    r.add_get("/library", routes.page_index)
    r.add_get("/library/play/{id}", routes.page_play)
    r.add_get("/library/static/{name}", _library_static)
    for name in SHARED_MODULES:
        r.add_get(f"/library/{name}", _shared_module(CLIENT_WEB_DIR / name))
    app.on_cleanup.append(routes.close)
    return routes

"""The aiohttp application: /ws (signalling), /healthz, and the server's run loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import WSMsgType, web

from recorder.compose.jobs import JOBS_FILE, ComposeQueue, LocalComposeQueue
from recorder.compose.shared import SharedComposeQueue, SharedJobs
from recorder.hls.jobs import JOBS_FILE as HLS_JOBS_FILE
from recorder.hls.jobs import LocalHlsQueue, SharedHlsQueue
from recorder.hls.web import add_routes as add_hls_routes
from recorder.library.catalog import Library, LibraryError, Viewer
from recorder.library.web import add_routes as add_library_routes
from recorder.record.handoff import drain as drain_catalog
from recorder.record.repair import repair_unfinished
from signaling import metrics
from signaling.accounts import Accounts, AccountsApi
from signaling.accounts import add_routes as add_account_routes
from signaling.accounts.web import library_sessions
from signaling.accounts.filing import filer
from signaling.supervision import LessonWatch, Supervision, SupervisionApi, Webhooks
from signaling.audit import (
    AUDITED_MESSAGES,
    AuditLog,
    actor_of,
    audit_path,
    message_detail,
)
from signaling.config import Config, pid_file
from signaling.connection import Connection
from signaling.forwarded import forwarded_middleware, trusted_networks
from signaling.handlers import HANDLERS
from signaling.hub import UNAVAILABLE_MESSAGE, Hub
from signaling.logcontext import set_participant
from signaling.messages import (
    MAX_MESSAGE_BYTES,
    Message,
    ProtocolError,
    error_reply,
    parse_message,
)
from signaling.ratelimit import TokenBucket
from signaling.state import StoreUnavailable, open_store
from signaling.tokens import TokenError, verify_token
from store import Store, database_url_from

log = logging.getLogger("ketang.signaling")

# aiohttp closes the socket above this; below it, but above MAX_MESSAGE_BYTES, the client gets a clear error
WS_HARD_LIMIT_BYTES = 1 << 20
WS_HEARTBEAT_S = 20.0
# a request's line and headers must arrive within this after the connection opens (or after the previous
# response); an idle keep-alive connection is closed after it too
HTTP_TIMEOUT_S = 15.0
HTTP_LINGER_S = 10.0  # what is left of a body the handler did not read, at most this long
CLOSE_JOIN_TIMEOUT = 4008  # a websocket that did not join within Config.join_timeout_s (docs/protocol.md)
HUB_KEY: web.AppKey[Hub] = web.AppKey("hub", Hub)
AUDIT_KEY: web.AppKey[AuditLog] = web.AppKey("audit", AuditLog)
# each ended lesson's composite 课例 (recorder/compose/): status(lesson_id) for the library page
COMPOSE_KEY: web.AppKey[ComposeQueue] = web.AppKey("compose", ComposeQueue)
# the library's jobs on Redis, shared by the nodes (recorder/compose/shared.py); absent without --redis-url
JOBS_KEY: web.AppKey[SharedJobs] = web.AppKey("jobs", SharedJobs)
# what the supervision dashboard and webhooks hear of the lessons (signaling/supervision/watch.py)
WATCH_KEY: web.AppKey[LessonWatch] = web.AppKey("watch", LessonWatch)
# the browser pages (plain HTML + ES modules, no build step), shipped as package data
CLIENT_WEB_DIR = Path(__file__).resolve().parent.parent / "client_web"
PAGES = {"/": "index.html", "/teacher": "teacher.html", "/classroom": "classroom.html",
         # accounts (docs/accounts.md): sign-in, the district's administration, a teacher's 我的课程
         "/login": "login.html", "/admin": "admin.html", "/me": "me.html",
         # a receiving classroom's standing screen: its timetable, and the classroom page framed in it per lesson
         "/screen": "screen.html",
         "/admin/supervision": "supervision.html"}  # 督导 (docs/supervision.md)
# the one page another page may frame: the classroom page, by this site's /screen only
FRAMED_BY_SELF = frozenset({"/classroom"})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    hub = request.app[HUB_KEY]
    ws = web.WebSocketResponse(max_msg_size=WS_HARD_LIMIT_BYTES, heartbeat=WS_HEARTBEAT_S)
    await ws.prepare(request)
    conn = Connection(ws, TokenBucket(hub.config.messages_per_s, hub.config.message_burst, time.monotonic()),
                      transport=request.transport)
    # a socket must join within join_timeout_s: one that never does would hold a descriptor for good
    join_deadline = asyncio.get_running_loop().call_later(hub.config.join_timeout_s, _join_timeout, conn,
                                                          hub.config.join_timeout_s)
    try:
        async for frame in ws:
            if frame.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await _dispatch(hub, conn, frame.data, request.app.get(AUDIT_KEY), request.remote)
            elif frame.type == WSMsgType.ERROR:
                break
            if conn.closed:
                break
    finally:
        join_deadline.cancel()
        await hub.leave(conn)
        await conn.close()
    return ws


_CLOSING: set[asyncio.Future[None]] = set()  # the join-timeout closes under way (a task needs a reference)


def _join_timeout(conn: Connection, timeout_s: float) -> None:
    if conn.claims is not None or conn.closed:
        return
    conn.send(error_reply("join_timeout", f"no join within {timeout_s:g} s: closing"))
    task = asyncio.ensure_future(_close_unjoined(conn, timeout_s))
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


async def _close_unjoined(conn: Connection, timeout_s: float) -> None:
    await conn.drain()
    await conn.close(code=CLOSE_JOIN_TIMEOUT, reason=f"no join within {timeout_s:g} s")


async def _dispatch(hub: Hub, conn: Connection, raw: str | bytes, audit: AuditLog | None = None,
                    address: str | None = None) -> None:
    """Validate and handle one message; every refusal becomes an error reply and the connection carries on."""
    if not conn.bucket.allow(time.monotonic()):
        conn.send(error_reply("rate_limited", "too many messages: slow down"))
        return
    ref = None
    msg: Message | None = None
    try:
        msg = parse_message(raw)
        ref = msg.id
        reply = await HANDLERS[msg.type](hub, conn, msg)
    except ProtocolError as exc:
        conn.send(error_reply(exc.code, exc.message, exc.ref))
        if audit is not None and msg is not None and msg.type in AUDITED_MESSAGES:
            _audit(audit, conn, msg, address, exc.code)
        return
    except StoreUnavailable as exc:  # an outage, not a bug: the page tries again (logged once per outage)
        hub.store_failed(exc, "handling a client's message")
        conn.send(error_reply("unavailable", UNAVAILABLE_MESSAGE, ref))
        return
    except Exception:  # noqa: BLE001 - a bug must cost one reply, not the lesson
        log.exception("handler failed")
        conn.send(error_reply("internal", "the server could not handle this message", ref))
        return
    if reply is not None:
        conn.send(reply)
    if msg.type == "join" and conn.claims is not None:
        # every line logged while this connection's messages are handled says whose they are
        set_participant(conn.lesson_id, conn.participant_id, conn.claims.role)
        log.info("joined as %s (%s)", conn.claims.role, conn.claims.name)
    if audit is not None and msg.type in AUDITED_MESSAGES:
        _audit(audit, conn, msg, address, "ok" if msg.type != "join" or conn.claims is not None else "elsewhere")


def _audit(audit: AuditLog, conn: Connection, msg: Message, address: str | None, outcome: str) -> None:
    """One audit line for a message that joins, moderates or ends a lesson: who (the joined connection's claims;
    nobody for a refused join), from where, and what it asked."""
    audit.record(msg.type, actor=actor_of(conn.claims), address=address, outcome=outcome,
                 lesson=conn.lesson_id or msg.fields.get("lesson"), **message_detail(msg.fields))


def _lesson_staff(request: web.Request) -> web.Response | None:
    """None when the Bearer token is the lesson's teacher's or an observer's, else the refusal to send."""
    hub = request.app[HUB_KEY]
    auth = request.headers.get("Authorization", "")
    try:
        claims = verify_token(hub.config.secret, auth.removeprefix("Bearer ").strip(),
                              lesson=request.match_info["lesson"])
    except TokenError as exc:
        return web.json_response(error_reply(exc.code, str(exc)), status=401)
    if claims.role not in ("teacher", "observer"):
        return web.json_response(error_reply("forbidden", "teachers and observers only"), status=403)
    return None


async def lesson_stats(request: web.Request) -> web.Response:
    """Forwarding figures of one lesson on this node, for its teacher or an observer (Bearer token)."""
    refused = _lesson_staff(request)
    if refused is not None:
        return refused
    lesson_id = request.match_info["lesson"]
    lesson = request.app[HUB_KEY].lessons.get(lesson_id)
    router = lesson.router if lesson is not None else None
    return web.json_response(router.stats() if router else {"lesson": lesson_id, "producers": [], "subscribers": {}})


async def lesson_attendance(request: web.Request) -> web.Response:
    """Each classroom's attendance and reception over the lesson so far: JSON, or CSV for a spreadsheet."""
    refused = _lesson_staff(request)
    if refused is not None:
        return refused
    hub, lesson_id = request.app[HUB_KEY], request.match_info["lesson"]
    lesson, now = hub.lesson(lesson_id), time.time()
    if request.match_info.get("csv"):
        return web.Response(body=lesson.attendance_csv(now).encode("utf-8"),
                            headers={"Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
                                     "Content-Disposition": f'attachment; filename="attendance-{lesson_id}.csv"'})
    return web.json_response(lesson.attendance(now))


async def healthz(request: web.Request) -> web.Response:
    """200 {"status": "ok", ...}, or 503 {"status": "degraded", "redis": "down", ...} naming what is down."""
    hub = request.app[HUB_KEY]
    health = await hub.health()
    if hub.config.worker_index is not None:
        health["worker"] = hub.config.worker_index
    return web.json_response(health, status=200 if health["status"] == "ok" else 503)


async def readyz(request: web.Request) -> web.Response:
    """200 {"ready": true} while this node takes new lessons; 503 {"ready": false, "reasons": [...]} while it does
    not (draining; later overloaded). Cheap: memory only, no room-state call (a load balancer asks every second)."""
    hub = request.app[HUB_KEY]
    reasons = hub.not_ready()
    body: dict[str, object] = {"ready": not reasons, "node": hub.config.node_id,
                               "lessons": len(hub.carried())}
    if hub.config.worker_index is not None:
        body["worker"] = hub.config.worker_index
    if reasons:
        body["reasons"] = reasons
    if hub.drain_started is not None:
        body["draining_s"] = round(time.monotonic() - hub.drain_started, 1)
    return web.json_response(body, status=503 if reasons else 200)


def _page(filename: str):  # type: ignore[no-untyped-def]
    async def serve(request: web.Request) -> web.FileResponse:
        # no-cache: a lesson day may span a server upgrade, and a stale protocol module would not join
        return web.FileResponse(CLIENT_WEB_DIR / filename, headers={"Cache-Control": "no-cache"})
    return serve


async def _favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(CLIENT_WEB_DIR / "favicon.svg",
                            headers={"Content-Type": "image/svg+xml", "Cache-Control": "max-age=86400"})


# the lesson API is asked by pages of another origin when several server processes share Redis: a page served by
# one node follows its lesson to the node that carries it (`lesson_elsewhere`), and asks that node for the stats.
# Bearer tokens only, no cookies: any origin may ask.
CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Headers": "Authorization",
                "Access-Control-Allow-Methods": "GET, OPTIONS", "Access-Control-Max-Age": "600"}


@web.middleware
async def lesson_api_cors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if not request.path.startswith("/api/lessons/"):
        return await handler(request)
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=CORS_HEADERS)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(CORS_HEADERS)
        raise
    response.headers.update(CORS_HEADERS)
    return response


async def lesson_preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=CORS_HEADERS)  # (answered by lesson_api_cors)


# -- security headers on every response (docs/protocol.md, "HTTP") ------------------------------------------

# the inline <script> blocks of the pages (index.html's few lines): allowed by their hash, nothing else inline
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)
# a Host header fit to be named in the policy (anything else is left out, never copied into a header)
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def inline_script_hashes(*dirs: Path) -> list[str]:
    """CSP sources ('sha256-...') for every inline script of the HTML pages in these directories."""
    hashes = set()
    for directory in dirs:
        for page in sorted(directory.glob("*.html")):
            for body in _INLINE_SCRIPT.findall(page.read_text(encoding="utf-8")):
                digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
                hashes.add(f"'sha256-{digest}'")
    return sorted(hashes)


def content_security_policy(script_hashes: list[str], other_nodes: bool) -> str:
    """The pages load their scripts, styles, posters and recordings from this server only (no inline style, no
    eval); their websocket goes to this server (added per request by its Host, since CSP's 'self' has not always
    covered ws:) or — with several nodes on one Redis — to the node carrying the lesson, whose origin is only
    learnt from `lesson_elsewhere`: then any http(s)/ws(s) origin may be connected to. No page may be framed (but
    the classroom page by this site's own /screen: FRAMED_BY_SELF)."""
    connect = "'self'" + (" http: https: ws: wss:" if other_nodes else "")
    scripts = " ".join(["'self'", *script_hashes])
    return "; ".join([
        "default-src 'self'", f"script-src {scripts}", "style-src 'self'",
        "img-src 'self' blob:", "media-src 'self' blob:", f"connect-src {connect}", "object-src 'none'",
        "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"])


def security_headers(policy: str):  # type: ignore[no-untyped-def]
    """Middleware: Content-Security-Policy, nosniff, no referrer (the pages carry tokens in their URL fragment;
    a fragment is never sent, but a page's own URL may hold ?lang= and more) and no framing, on every response
    — pages, API, files, static files and errors alike."""
    fixed = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}

    def add(headers, request: web.Request) -> None:  # type: ignore[no-untyped-def]
        csp = policy
        host = request.headers.get("Host", "")
        if _HOST.fullmatch(host):
            csp = csp.replace("connect-src 'self'", f"connect-src 'self' ws://{host} wss://{host}", 1)
        headers.update(fixed)
        if request.path in FRAMED_BY_SELF:
            csp = csp.replace("frame-ancestors 'none'", "frame-ancestors 'self'")
            headers["X-Frame-Options"] = "SAMEORIGIN"
        headers["Content-Security-Policy"] = csp

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            add(exc.headers, request)
            raise
        if not response.prepared:  # (a websocket's handshake has gone out already)
            add(response.headers, request)
        return response

    return middleware


def token_viewer(secret: str) -> Callable[[str], Viewer]:
    """How the library (a layer below) learns who holds a bearer token: this layer's tokens, checked here."""

    def authenticate(token: str) -> Viewer:
        try:
            return Viewer.from_claims(verify_token(secret, token))
        except TokenError as exc:
            raise LibraryError("unauthorized", exc.message) from exc

    return authenticate


def library_audit(audit: AuditLog) -> Callable[..., None]:
    """How the library (a layer below) records its audited actions in this layer's audit log."""

    def record(action: str, viewer: Viewer | None, address: str | None, outcome: str, **detail: object) -> None:
        actor = actor_of(viewer) if viewer is not None else None
        audit.record(action, actor=actor, address=address, outcome=outcome, lesson=None, **detail)

    return record


async def _close(audit: AuditLog) -> None:
    audit.close()


@web.middleware
async def client_address(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """A worker (listening on a unix socket only its supervisor reaches): the client's address is the one the
    supervisor names (signaling/supervisor.py sets the header on every request, never copies it from a client)."""
    return await handler(request.clone(remote=request.headers.get(CLIENT_HEADER) or None))


CLIENT_HEADER = "X-Ketang-Client"


def make_app(config: Config) -> web.Application:
    policy = content_security_policy(inline_script_hashes(CLIENT_WEB_DIR, CLIENT_WEB_DIR / "library"),
                                     other_nodes=bool(config.redis_url))
    middlewares = [security_headers(policy), lesson_api_cors]
    if config.listen_socket:
        middlewares.insert(0, client_address)
    elif config.trusted_proxies:  # a worker hears the client's address from its supervisor, which read the headers
        middlewares.insert(0, forwarded_middleware(trusted_networks(config.trusted_proxies)))
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES, middlewares=middlewares)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/lessons/{lesson}/stats", lesson_stats)
    app.router.add_get("/api/lessons/{lesson}/attendance", lesson_attendance)
    app.router.add_get("/api/lessons/{lesson}/attendance{csv:\\.csv}", lesson_attendance)
    app.router.add_route("OPTIONS", "/api/lessons/{tail:.*}", lesson_preflight)
    for path, filename in PAGES.items():
        app.router.add_get(path, _page(filename))
    app.router.add_get("/favicon.ico", _favicon)  # asked by browsers (and in-app ones) that ignore the pages' icon link
    app.router.add_static("/static/", CLIENT_WEB_DIR, append_version=False)
    library = Library(config.data_dir, database_url=config.database_url or None, node_url=config.url,
                      media_dir=config.media_dir)
    audit = app[AUDIT_KEY] = AuditLog(audit_path(config.data_dir))
    app.on_cleanup.append(lambda _app: _close(audit))
    # accounts, classroom screens and the timetable: /api/login, /api/me/..., /api/admin/..., /api/openapi.json
    accounts = Accounts(Store(database_url_from(config.database_url or None, config.data_dir)))
    app.on_cleanup.append(lambda _app: accounts.close())
    app.middlewares.append(library_sessions(accounts))  # the library's API for signed-in teachers and reviewers
    # the supervision dashboard and webhooks (signaling/supervision/): their routes join the accounts' table
    supervision = Supervision(accounts)
    webhooks = Webhooks(accounts, backoff_s=config.webhook_backoff_s)
    watch = app[WATCH_KEY] = LessonWatch(supervision, webhooks, library, absent_after_s=config.absent_after_s)
    add_account_routes(app, AccountsApi(accounts, config.secret, audit,
                                        secure_cookies=bool(config.tls) or config.url.startswith("https:"),
                                        extra={"supervision": SupervisionApi(supervision, webhooks,
                                                                                lambda: app.get(HUB_KEY))}))
    library_routes = add_library_routes(app, library, config.secret, token_viewer(config.secret),
                                        audit=library_audit(audit),
                                        # each item's composite progress, from the queue made at start-up below
                                        compose_status=lambda lesson: app[COMPOSE_KEY].status(lesson)
                                        if COMPOSE_KEY in app else None)
    # the library's jobs (composite, HLS): with Redis on one queue the nodes share (any node with a shared media
    # dir, else the node with the files), worked by one process per node unless this node has jobs off
    works_jobs = config.jobs and config.worker_index in (None, 0)
    shared: SharedJobs | None = None
    if config.redis_url:
        shared = app[JOBS_KEY] = SharedJobs(config.redis_url, config.redis_prefix,
                                            "" if config.media_dir else config.url, work=works_jobs,
                                            lease_s=config.job_lease_s, node=config.url)
    # each published lesson's HLS renditions for weak links, made by a niced child process (recorder/hls/)
    hls_queue: LocalHlsQueue | SharedHlsQueue
    if shared is not None:
        hls_queue = SharedHlsQueue(shared, library.relative, library.path_of)
    else:
        hls_queue = LocalHlsQueue(config.data_dir, jobs_file=HLS_JOBS_FILE if config.worker_index is None
                                  else f"hls-jobs-w{config.worker_index}.json", run_jobs=config.jobs)
    add_hls_routes(app, library_routes, hls_queue)  # type: ignore[arg-type]
    # /metrics: Prometheus text, read from this process's state when scraped (docs/metrics.md)
    collector = metrics.ServerCollector(lambda: app.get(HUB_KEY), lambda: library_routes.jobs)
    registry = metrics.make_registry(collector)

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=metrics.generate_latest(registry), headers={"Content-Type": metrics.CONTENT_TYPE})

    app.router.add_get("/metrics", scrape)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        try:  # the store migrated to the newest schema before anything reads it
            await library.open()
        except Exception as exc:  # noqa: BLE001 - serves anyway: each library call tries the store again
            log.error("the library's store %s cannot be opened (%s): the server runs without the library until "
                      "it can", library.store, " ".join(str(exc).split())[:300])
        # recordings a crash left open are repaired and put in the library before anything new starts
        # (a worker of several: the supervisor repaired them before starting any worker, and a worker starting
        # again must not take the recordings its live siblings are writing for unfinished ones)
        repaired = 0 if config.listen_socket else await repair_unfinished(library)
        if repaired:
            log.info("repaired %d recording(s) left unfinished by an unclean stop", repaired)
        store = open_store(config.redis_url, config.store_socket, prefix=config.redis_prefix)
        hub = Hub(config, store, library if config.record else None)
        app[HUB_KEY] = hub
        # -- the composite 课例 of each ended lesson, made by a niced child process (recorder/compose/jobs.py)
        def record_file(lesson_id: str) -> Path | None:
            return library.lesson_record_file(lesson_id, "record.json")

        compose: LocalComposeQueue | SharedComposeQueue
        if shared is not None:
            compose = app[COMPOSE_KEY] = SharedComposeQueue(shared, record_file, library.recordings_dir)
            await shared.start()
        else:
            compose = app[COMPOSE_KEY] = LocalComposeQueue(
                config.data_dir, record_file, library.recordings_dir, run_jobs=config.jobs,
                jobs_file=JOBS_FILE if config.worker_index is None else f"compose-jobs-w{config.worker_index}.json")
        compose.start()
        if shared is not None and not config.jobs and not config.media_dir:
            log.warning("--jobs off without a shared --media-dir: only this node has its recordings' files, so their "
                        "jobs (composite, HLS) wait in its own queue until it runs with jobs on (docs/deploy.md)")
        if not works_jobs:
            log.info("this %s runs no library jobs (composite, HLS): %s", "node" if not config.jobs else "worker",
                     "they wait for a node that runs them" if not config.jobs else "worker 0 of this node runs them")
        file_soon = filer(accounts, library)  # a scheduled lesson's recordings get its curriculum fields

        def recorded(lesson_id: str) -> None:
            compose.enqueue(lesson_id)
            file_soon(lesson_id)
            watch.recorded(lesson_id)

        hub.on_lesson_recorded = recorded
        watch.attach(hub)  # lesson runs for the dashboard, webhooks' events
        webhooks.start()
        lag = asyncio.ensure_future(metrics.measure_loop_lag())
        if not await hub.start():  # serves anyway: /healthz says what is down, joins get `unavailable`
            log.warning("Redis at %s is not reachable (%s): serving without room state; joins are refused with "
                        "`unavailable` and /healthz answers 503 until it answers (tried again every few seconds)",
                        config.redis_url, hub.store_error)
        yield
        lag.cancel()
        await watch.close()
        await webhooks.close()
        await asyncio.to_thread(compose.close)
        if shared is not None:
            await shared.close()
        try:
            await hub.close()
        finally:
            await store.close()
            await drain_catalog()  # the recorder's last library updates, then the store's connections
            await library.close()

    app.cleanup_ctx.append(lifecycle)

    async def going_away(app: web.Application) -> None:  # (before aiohttp waits for the open websockets)
        await app[HUB_KEY].disconnect_all()

    app.on_shutdown.append(going_away)
    return app


def http_timeouts() -> dict[str, float]:
    """The HTTP server's timeouts (KETANG_HTTP_TIMEOUT_S, default HTTP_TIMEOUT_S). aiohttp starts its keep-alive
    timer when a connection opens and again after each response, and closes the connection when it fires while no
    complete request has arrived: it bounds the time to send a request's line and headers as well as idle
    keep-alive. (Its default, an hour, let a slowloris client hold sockets open for good.) A body that does not
    arrive is bounded by lingering_time, or by the handler that reads it (recorder.library.web: BODY_TIMEOUT_S)."""
    timeout_s = Config.float_from("KETANG_HTTP_TIMEOUT_S", HTTP_TIMEOUT_S)
    return {"keepalive_timeout": timeout_s, "lingering_time": min(timeout_s, HTTP_LINGER_S)}


TLS_MIN_VERSION = ssl.TLSVersion.TLSv1_2  # what every browser in a school speaks; older versions are broken
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _no_passphrase() -> bytes:
    raise ValueError("encrypted")


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server's TLS context from a PEM certificate (chain) and its private key, or a ValueError saying in one
    line which file is wrong and how (checked at start: a bad file must not surface as a handshake failure)."""
    for what, path in (("certificate", cert), ("private key", key)):
        if not path.is_file():
            raise ValueError(f"TLS {what} file {path} does not exist")
        if not os.access(path, os.R_OK):
            raise ValueError(f"TLS {what} file {path} is not readable by this user")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_MIN_VERSION
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ValueError(f"TLS private key {key} does not belong to the certificate {cert}") from None
        raise ValueError(f"TLS files {cert} and {key} are not a PEM certificate and its private key") from None
    except ValueError:
        raise ValueError(f"TLS private key {key} is encrypted: give the server an unencrypted key "
                         "(readable by its user only)") from None
    except OSError as exc:
        raise ValueError(f"TLS files {cert} and {key} cannot be read ({exc.strerror})") from None
    return context


def _print_urls(config: Config, app: web.Application) -> None:
    scheme = "https" if config.tls else "http"
    listen = f"{scheme}://{config.host}:{config.port}"
    base = config.url
    state = f"Redis at {config.redis_url}" if config.redis_url else "in process (embedded)"
    if config.redis_url:
        state += f"; lessons placed here are joined at {config.url}"
        if not app[HUB_KEY].store_up:
            state += "; NOT REACHABLE yet, retrying: joins wait for it"
    print(f"ketang serving on {listen}  (room state: {state}; node {config.node_id})", flush=True)
    print(f"  health:     {base}/healthz   ready: {base}/readyz   (SIGTERM or `ketang drain`: drains, then stops)",
          flush=True)
    print(f"  signalling: {'wss' if base.startswith('https:') else 'ws'}://{base.split('://', 1)[1]}/ws", flush=True)
    print(f"  teacher:    {base}/teacher#token=TEACHER_TOKEN", flush=True)
    print(f"  classroom:  {base}/classroom#token=CLASSROOM_TOKEN", flush=True)
    print(f"  library:    {base}/library   (资源库: recorded lessons)", flush=True)
    print(f"  links:      ketang lesson create --title \"七年级数学\" --data-dir {config.data_dir} --url {base}"
          "   (prints the teacher link and the classroom links with their tokens)", flush=True)
    print(f"  tokens:     ketang token --role teacher --lesson LESSON_ID --data-dir {config.data_dir}", flush=True)
    host = base.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    if base.startswith("http:") and host not in LOOPBACK_HOSTS:
        print("  注意 NOTE:  浏览器只在 HTTPS 页面（或本机 localhost）打开摄像头和麦克风。browsers open the camera "
              "only on https pages (or localhost): start with --tls-cert/--tls-key or behind a TLS proxy "
              "(docs/deploy.md)", flush=True)


def _write_pid(path: Path) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{os.getpid()}\n")
        return True
    except OSError as exc:  # (a read-only data dir: `ketang drain` cannot find it; kill -TERM still works)
        log.warning("could not write %s (%s): `ketang drain` will not find this server", path, exc.strerror)
        return False


async def _orphaned(stop: asyncio.Event, parent: int) -> None:
    """A worker whose supervisor is gone (killed: it could not stop its workers) stops too."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("the supervisor (pid %d) is gone: this worker stops", parent)
    stop.set()


async def run_server(config: Config, ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve pages, REST and the websocket on one port (https and wss with TLS). SIGTERM (or `ketang drain`)
    drains: no new lessons, the live ones go on until they end or the drain timeout passes, then move to another
    node, and the server stops when empty. SIGINT, or a second SIGTERM, stops at once (sockets closed, 1001)."""
    if ssl_context is None and config.tls_cert is not None and config.tls_key is not None:
        ssl_context = tls_context(config.tls_cert, config.tls_key)
    app = make_app(config)
    # (a worker's requests are logged by its supervisor, which owns the public port)
    access = {"access_log": None} if config.listen_socket else {}
    runner = web.AppRunner(app, handle_signals=False, **http_timeouts(), **access)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    watchdog: asyncio.Future[None] | None = None
    if config.listen_socket:  # a worker: its supervisor owns the public port, prints the links, keeps the pid file
        site: web.BaseSite = web.UnixSite(runner, config.listen_socket)
        await site.start()
        os.chmod(config.listen_socket, 0o600)
        watchdog = asyncio.ensure_future(_orphaned(stop, os.getppid()))
        log.info("worker %s serving on %s (node %s)", config.worker_index, config.listen_socket, config.node_id)
    else:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
        await site.start()
        _print_urls(config, app)
    pid_path = pid_file(config.data_dir, config.port)
    wrote_pid = not config.listen_socket and _write_pid(pid_path)
    draining: list[asyncio.Future[None]] = []

    async def drain_then_stop() -> None:
        try:
            await app[HUB_KEY].drain(config.drain_timeout_s)
        finally:
            stop.set()

    def on_sigterm() -> None:
        if draining:  # the second one: at once
            log.warning("SIGTERM again while draining: stopping now")
            stop.set()
            return
        draining.append(asyncio.ensure_future(drain_then_stop()))

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await stop.wait()
    finally:
        for task in draining:
            task.cancel()
        if watchdog is not None:
            watchdog.cancel()
        await runner.cleanup()
        if wrote_pid:
            pid_path.unlink(missing_ok=True)

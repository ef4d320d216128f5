"""`ketang serve --workers N`: every core behind one address. This process (the supervisor) owns the public
host:port and starts N worker processes (each a whole `ketang serve`: hub, SFU, recorder) listening on unix sockets
of a private directory; it proxies HTTP and websockets to them, choosing the worker of a websocket from its first
message (the join token's lesson claim, read without trusting it for anything but routing: the worker verifies the
token) and the lesson's placement in the room state. Media (UDP) goes straight to the owner worker's own ports.

Without Redis the supervisor also hosts the one room state of the machine (signaling.state.rpc); with Redis every
worker is a node of it. A worker that dies is started again (its lessons come back as after a node crash); SIGTERM
drains every worker and exits when all are done. docs/architecture.md ("Workers") says why a proxy and what it costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from recorder.library.catalog import Library
from recorder.record.repair import repair_unfinished
from signaling.app import CLIENT_HEADER, WS_HARD_LIMIT_BYTES, WS_HEARTBEAT_S, http_timeouts
from signaling.config import Config, pid_file
from signaling.forwarded import forwarded_middleware, trusted_networks
from signaling.state import MemoryRoomStore, RoomStore, StoreUnavailable, open_store
from signaling.state.rpc import RpcStoreServer
from signaling.tokens import MAX_TOKEN_CHARS

log = logging.getLogger("ketang.supervisor")

WORKER_ENV = "KETANG_WORKER"  # set by the supervisor for its workers: their WorkerSpec as JSON
ROUTE_MEMORY_S = 5.0  # a lesson sent to a worker before it placed the lesson goes there again meanwhile
POLL_S = 1.0  # each worker's /readyz (ready, lessons) is read this often
RESTART_FIRST_S = 0.5  # a worker that died is started again after this, doubled while it keeps dying young
RESTART_MAX_S = 10.0
YOUNG_S = 10.0  # a worker that dies sooner than this after its start counts as crash-looping
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0  # after the workers stopped (SIGINT), or the drain ended, the supervisor waits this long
FIRST_MESSAGE_TIMEOUT_S = 10.0  # as the workers' join timeout: a socket that says nothing is closed
JOIN_TRIES = 3  # a join a worker sends `lesson_elsewhere` to this same address is re-routed this many times
CLOSE_WORKER_GONE = 1012  # "service restart": the worker died; the page reconnects and lands on a live one
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", CLIENT_HEADER.lower()})


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is told (environment KETANG_WORKER, JSON): who it is and where it listens."""

    index: int
    node: str  # its node id in the room state (new at each start: a restarted worker is a new node)
    listen: str  # the unix socket it serves HTTP on
    store: str  # the supervisor's room-state socket ("" with Redis)
    url: str  # the public address (the supervisor's), for `lesson_elsewhere` and printed links
    media_ports: str  # its slice of --media-ports ("" : any port)
    parent: int  # the supervisor's pid: a worker whose parent is gone stops

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, raw: str) -> WorkerSpec:
        return cls(**json.loads(raw))


def media_port_slices(ports: str, n: int) -> list[str]:
    """--media-ports FIRST-LAST cut into n contiguous ranges, one per worker ("" for every worker without it)."""
    if not ports:
        return [""] * n
    first, _, last = ports.strip().partition("-")
    lo, hi = int(first), int(last or first)
    size = (hi - lo + 1) // n
    if size < 1:
        raise ValueError(f"--media-ports {ports}: {hi - lo + 1} port(s) cannot be shared by {n} workers")
    return [f"{lo + i * size}-{hi if i == n - 1 else lo + (i + 1) * size - 1}" for i in range(n)]


def lesson_claim(raw: str | bytes) -> str | None:
    """The lesson a websocket's first message (a join) names in its token, NOT verified: for routing only (the
    worker verifies the token and refuses a forged one). None for anything else."""
    try:
        msg = json.loads(raw)
        token = msg.get("token") if isinstance(msg, dict) and msg.get("type") == "join" else None
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            return None
        lesson = jwt.decode(token, options={"verify_signature": False}).get("lesson")
    except (ValueError, jwt.PyJWTError, AttributeError):
        return None
    return lesson if isinstance(lesson, str) and lesson else None


class Worker:
    """One worker process and what the supervisor knows of it."""

    def __init__(self, index: int, runtime: Path, media_ports: str) -> None:
        self.index, self.media_ports = index, media_ports
        self.socket = runtime / f"worker-{index}.sock"
        self.generation = 0
        self.node = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.up = False  # answered after its start
        self.ready = False  # /readyz: takes new lessons
        self.lessons = 0
        self.connections = 0  # websockets proxied to it now
        self.session: aiohttp.ClientSession | None = None

    def describe(self) -> dict[str, Any]:
        return {"worker": self.index, "pid": self.proc.pid if self.proc else None, "node": self.node, "up": self.up,
                "ready": self.ready, "lessons": self.lessons, "websockets": self.connections,
                "restarts": self.restarts}


async def _send(target: Any, msg: aiohttp.WSMessage) -> None:
    if msg.type == WSMsgType.TEXT:
        await target.send_str(msg.data)
    else:
        await target.send_bytes(msg.data)


def _type_of(data: str | bytes) -> str | None:
    try:
        msg = json.loads(data)
    except ValueError:
        return None
    return msg.get("type") if isinstance(msg, dict) else None


class _Link:
    """A browser's websocket and the worker websocket it is proxied to now."""

    def __init__(self, sup: Supervisor, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.sup, self.request, self.ws = sup, request, ws
        self.upstream: aiohttp.ClientWebSocketResponse | None = None
        self.worker: Worker | None = None
        self.joined = False
        self.join: aiohttp.WSMessage | None = None  # the latest join the browser sent, while not joined
        self.lesson: str | None = None
        self.tries = 0

    def saw(self, msg: aiohttp.WSMessage) -> None:
        """A message from the browser, before it has joined: a join names the lesson (not verified)."""
        if not self.joined and msg.type == WSMsgType.TEXT:
            lesson = lesson_claim(msg.data)
            if lesson is not None:
                self.join, self.lesson = msg, lesson

    async def connect(self, first: aiohttp.WSMessage) -> bool:
        """A websocket to the worker for self.lesson, `first` sent on it; False when no worker answers."""
        self.detach()
        while self.tries < JOIN_TRIES:
            self.tries += 1
            worker = await self.sup.route(self.lesson)
            if worker is None or worker.session is None:
                return False
            try:
                upstream = await worker.session.ws_connect("http://worker/ws", headers=self.sup._forwarded(self.request),
                                                           max_msg_size=WS_HARD_LIMIT_BYTES, autoping=True)
                await _send(upstream, first)
            except (aiohttp.ClientError, OSError):
                worker.up = False  # (polled again within a second)
                continue
            self.upstream, self.worker = upstream, worker
            worker.connections += 1
            return True
        return False

    def detach(self) -> None:
        if self.worker is not None:
            self.worker.connections -= 1
            self.worker = None

    async def pump(self) -> None:
        """Frames both ways until one side closes; the other is closed with its code (a worker that died: 1012)."""
        down = asyncio.ensure_future(self._down())
        up = asyncio.ensure_future(self._up())
        try:
            await asyncio.wait([down, up], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (down, up):
                task.cancel()
            await asyncio.gather(down, up, return_exceptions=True)
            if self.upstream is not None and not self.upstream.closed:
                await self.upstream.close()
            if not self.ws.closed:
                await self.ws.close(code=CLOSE_WORKER_GONE)

    async def _down(self) -> None:
        while True:
            upstream = self.upstream
            assert upstream is not None
            msg = await upstream.receive()
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            if not self.joined:
                if self.join is not None and self.sup._elsewhere_here(msg.data) and self.tries < JOIN_TRIES:
                    self.sup._recent.pop(self.lesson or "", None)
                    await upstream.close()
                    if await self.connect(self.join):
                        continue
                    break
                self.joined = _type_of(msg.data) == "joined"
            await _send(self.ws, msg)
        code = upstream.close_code
        if code is None or code < 3000 and code not in (1000, 1001):
            code = CLOSE_WORKER_GONE
        await self.ws.close(code=code)

    async def _up(self) -> None:
        async for msg in self.ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            self.saw(msg)
            if self.upstream is not None:
                try:
                    await _send(self.upstream, msg)
                except ConnectionError:  # (the worker went, or the join moved to another worker meanwhile)
                    if self.joined:
                        break


class Supervisor:
    def __init__(self, config: Config, workers: int, argv: list[str], ssl_context: ssl.SSLContext | None,
                 media_ports: str) -> None:
        self.config, self.argv, self.ssl_context = config, argv, ssl_context
        self.runtime = Path(tempfile.mkdtemp(prefix="ketang-workers-"))  # 0700: only this user reaches the sockets
        slices = media_port_slices(media_ports, workers)
        self.workers = [Worker(i, self.runtime, slices[i]) for i in range(workers)]
        self.store: RoomStore
        self.rpc: RpcStoreServer | None = None
        if config.redis_url:
            self.store = open_store(config.redis_url, prefix=config.redis_prefix)
        else:
            self.store = MemoryRoomStore()
            self.rpc = RpcStoreServer(self.store, self.runtime / "state.sock")
        self._recent: dict[str, tuple[Worker, float]] = {}
        self.draining = False
        self.stopping = False
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Future[Any]] = []

    # -- workers -------------------------------------------------------------------------------------------

    async def _start(self, worker: Worker) -> None:
        worker.generation += 1
        worker.node = f"{self.config.node_id}-w{worker.index}-{worker.generation}"
        spec = WorkerSpec(worker.index, worker.node, str(worker.socket), str(self.rpc.path) if self.rpc else "",
                          self.config.url, worker.media_ports, os.getpid())
        worker.socket.unlink(missing_ok=True)
        env = dict(os.environ, **{WORKER_ENV: spec.to_env()})
        worker.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ketang.cli", *self.argv, env=env)
        worker.started_at = time.monotonic()
        worker.up = worker.ready = False
        if worker.session is None or worker.session.closed:
            # no cookie jar: a Set-Cookie (a sign-in's session) goes to its browser only, never kept here and sent
            # along with every other client's requests
            worker.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(worker.socket)),
                                                   auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None),
                                                   cookie_jar=aiohttp.DummyCookieJar())
        log.info("worker %d started (pid %d, node %s, media ports %s)", worker.index, worker.proc.pid, worker.node,
                 worker.media_ports or "any")

    async def _wait_up(self, worker: Worker, timeout_s: float = START_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and worker.proc is not None and worker.proc.returncode is None:
            if await self._poll(worker):
                return True
            await asyncio.sleep(0.1)
        return False

    async def _poll(self, worker: Worker) -> bool:
        """Reads the worker's /readyz; whether it answered."""
        if worker.session is None or not worker.socket.exists():
            return False
        try:
            async with worker.session.get("http://worker/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                body = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError):
            worker.up = worker.ready = False
            return False
        worker.up, worker.ready, worker.lessons = True, bool(body.get("ready")), int(body.get("lessons", 0))
        return True

    async def _watch(self, worker: Worker) -> None:
        """Start the worker again whenever it dies (unless the supervisor is stopping or draining)."""
        delay = RESTART_FIRST_S
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            worker.up = worker.ready = False
            if self.stopping or self.draining:
                return
            lived = time.monotonic() - worker.started_at
            log.warning("worker %d (pid %d, node %s) exited with %s after %.1f s: starting it again; its lessons "
                        "come back as their participants reconnect", worker.index, worker.proc.pid, worker.node,
                        code, lived)
            try:  # its placements are free at once (its liveness removed), not after the node TTL
                await self.store.remove_node(worker.node)
            except StoreUnavailable as exc:
                log.warning("room state unavailable (%s): worker %d's lessons are free when its liveness expires",
                            exc, worker.index)
            delay = min(delay * 2, RESTART_MAX_S) if lived < YOUNG_S else RESTART_FIRST_S
            await asyncio.sleep(delay)
            if self.stopping or self.draining:
                return
            worker.restarts += 1
            await self._start(worker)
            await self._wait_up(worker)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await asyncio.gather(*(self._poll(w) for w in self.workers if w.proc and w.proc.returncode is None))
            now = time.monotonic()
            for lesson, (_, at) in list(self._recent.items()):
                if now - at > ROUTE_MEMORY_S:
                    del self._recent[lesson]

    # -- routing -------------------------------------------------------------------------------------------

    def _alive(self) -> list[Worker]:
        return [w for w in self.workers if w.up and w.proc is not None and w.proc.returncode is None]

    def _least_loaded(self) -> Worker | None:
        alive = self._alive()
        ready = [w for w in alive if w.ready] or alive
        # lessons first (a new lesson's classrooms are still to come), counting those just sent to a worker and not
        # yet in its /readyz; then websockets
        fresh = [w for w, _ in self._recent.values()]
        return min(ready, key=lambda w: (w.lessons + fresh.count(w), w.connections, w.index)) if ready else None

    async def route(self, lesson: str | None) -> Worker | None:
        """The worker for a lesson: the one its placement names, else the one this lesson was just sent to, else
        the least loaded ready worker (by lessons, then websockets). A lesson placed on another machine's node
        goes to any worker, which answers `lesson_elsewhere` with that node's address."""
        if lesson is None:
            return self._least_loaded()
        try:
            placed = await self.store.placement(lesson)
        except StoreUnavailable:
            placed = None
        alive = self._alive()
        if placed is not None:
            for worker in alive:
                if worker.node == placed.node:
                    return worker
        recent = self._recent.get(lesson)
        if recent is not None and recent[0] in alive and time.monotonic() - recent[1] < ROUTE_MEMORY_S:
            return recent[0]
        worker = self._least_loaded()
        if worker is not None:
            self._recent[lesson] = (worker, time.monotonic())
        return worker

    # -- websockets ----------------------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """One browser websocket, proxied to a worker. Until it has joined, the supervisor reads what each side
        says: a join's token names the lesson (routing), and a worker answering `lesson_elsewhere` with this same
        address (another worker here carries the lesson: placed meanwhile, or a join that came after other
        messages) is left for the right worker, the join sent there again: the browser sees one address and one
        websocket. After the join, frames pass unread."""
        ws = web.WebSocketResponse(max_msg_size=WS_HARD_LIMIT_BYTES, heartbeat=WS_HEARTBEAT_S)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=FIRST_MESSAGE_TIMEOUT_S)
        except asyncio.TimeoutError:
            await ws.close(code=4008, reason=b"no join in time")
            return ws
        if first.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            await ws.close()
            return ws
        link = _Link(self, request, ws)
        link.saw(first)
        if not await link.connect(first):
            await ws.send_json({"type": "error", "code": "unavailable",
                                "message": "the server is starting or restarting: try again in a few seconds"})
            await ws.close(code=CLOSE_WORKER_GONE, message=b"no worker available")
            return ws
        try:
            await link.pump()
        finally:
            link.detach()
        return ws

    def _elsewhere_here(self, data: str | bytes) -> bool:
        try:
            reply = json.loads(data)
        except ValueError:
            return False
        return (isinstance(reply, dict) and reply.get("code") == "lesson_elsewhere"
                and str(reply.get("url", "")).rstrip("/") == self.config.url)

    # -- HTTP ----------------------------------------------------------------------------------------------

    @staticmethod
    def _forwarded(request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
                   and not k.lower().startswith("sec-websocket")}
        headers[CLIENT_HEADER] = request.remote or ""
        return headers

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        """Any other request, to a worker: a lesson's API to the worker carrying the lesson, the rest (pages,
        files, the library) to the least loaded one. Bodies stream both ways; the worker's limits apply."""
        parts = request.path.split("/")
        lesson = parts[3] if len(parts) > 4 and parts[1] == "api" and parts[2] == "lessons" else None
        worker = await self.route(lesson) if lesson else self._least_loaded()
        if worker is None or worker.session is None:
            return web.json_response({"type": "error", "code": "unavailable",
                                      "message": "the server is starting or restarting: try again in a few seconds"},
                                     status=503, headers={"Retry-After": "2"})
        try:
            async with worker.session.request(request.method, f"http://worker{request.rel_url}",
                                              headers=self._forwarded(request), allow_redirects=False,
                                              data=request.content if request.body_exists else None) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                              headers={k: v for k, v in upstream.headers.items()
                                                       if k.lower() not in HOP_BY_HOP})
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("worker %d did not answer %s %s: %s", worker.index, request.method, request.path, exc)
            return web.json_response({"type": "error", "code": "unavailable",
                                      "message": "the server could not answer just now: try again"}, status=502)

    async def _gather(self, path: str) -> list[tuple[Worker, int, Any]]:
        """(worker, status, body) of GET path on every live worker (JSON, or text for /metrics)."""

        async def one(worker: Worker) -> tuple[Worker, int, Any]:
            if worker.session is None or worker.proc is None or worker.proc.returncode is not None:
                return worker, 0, None
            try:
                async with worker.session.get(f"http://worker{path}", timeout=aiohttp.ClientTimeout(total=3)) as r:
                    body = await (r.text() if path == "/metrics" else r.json())
                    return worker, r.status, body
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError):
                return worker, 0, None

        return list(await asyncio.gather(*(one(w) for w in self.workers)))

    async def healthz(self, request: web.Request) -> web.Response:
        """200 when every worker answers healthy; the room state's counts (shared by all workers) and each
        worker's own (`workers`)."""
        answers = await self._gather("/healthz")
        workers, body = [], {}
        for worker, status, health in answers:
            entry = worker.describe()
            if isinstance(health, dict):
                entry.update(status=health.get("status"), here=health.get("here"))
                if status == 200 and not body:
                    body = health
            else:
                entry["status"] = "down"
            workers.append(entry)
        ok = all(w["status"] == "ok" for w in workers)
        here = {"lessons": sum((w.get("here") or {}).get("lessons", 0) for w in workers),
                "participants": sum((w.get("here") or {}).get("participants", 0) for w in workers)}
        body.pop("worker", None)
        out = {**body, "status": "ok" if ok else "degraded", "node": self.config.node_id, "here": here,
               "workers": workers}
        return web.json_response(out, status=200 if ok else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        """200 while some worker takes new lessons and the supervisor is not draining."""
        reasons = ["draining"] if self.draining else []
        if not any(w.ready for w in self._alive()) and not reasons:
            reasons.append("no worker ready")
        body: dict[str, Any] = {"ready": not reasons, "node": self.config.node_id,
                                "lessons": sum(w.lessons for w in self._alive()),
                                "workers": [w.describe() for w in self.workers]}
        if reasons:
            body["reasons"] = reasons
        return web.json_response(body, status=503 if reasons else 200)

    async def metrics(self, request: web.Request) -> web.Response:
        """Every worker's /metrics in one exposition, each sample labelled with its `worker`, plus the
        supervisor's own (workers up, restarts, websockets proxied)."""
        families: dict[str, Metric] = {}
        for worker, status, text in await self._gather("/metrics"):
            if status != 200 or not isinstance(text, str):
                continue
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                            family.unit)
                for s in family.samples:
                    merged.add_sample(s.name, {**s.labels, "worker": str(worker.index)}, s.value, s.timestamp,
                                      s.exemplar)
        for name, doc, kind, value in (
                ("ketang_worker_up", "1 while the worker answers", "gauge", lambda w: float(w.up)),
                ("ketang_worker_restarts", "Times the worker was started again after it died", "counter",
                 lambda w: float(w.restarts)),
                ("ketang_worker_websockets", "Websockets the supervisor proxies to the worker now", "gauge",
                 lambda w: float(w.connections))):
            family = Metric(name, doc, kind)
            for w in self.workers:
                family.add_sample(name + ("_total" if kind == "counter" else ""), {"worker": str(w.index)},
                                  value(w))
            families[name] = family

        class Merged:
            def collect(self) -> list[Metric]:
                return list(families.values())

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Merged())  # type: ignore[arg-type]
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    # -- the whole -----------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        networks = trusted_networks(self.config.trusted_proxies)
        app = web.Application(middlewares=[forwarded_middleware(networks)] if networks else [])
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_route("*", "/{tail:.*}", self.proxy)
        return app

    def _print(self) -> None:
        cfg = self.config
        scheme = "https" if cfg.tls else "http"
        state = f"Redis at {cfg.redis_url}" if cfg.redis_url else "in the supervisor, shared by the workers"
        print(f"ketang serving on {scheme}://{cfg.host}:{cfg.port} with {len(self.workers)} workers (room state: "
              f"{state}; node {cfg.node_id})", flush=True)
        for w in self.workers:
            print(f"  worker {w.index}: pid {w.proc.pid if w.proc else '-'}, media ports {w.media_ports or 'any'}",
                  flush=True)
        base = cfg.url
        print(f"  health:     {base}/healthz   ready: {base}/readyz   metrics: {base}/metrics", flush=True)
        print(f"  signalling: {'wss' if base.startswith('https:') else 'ws'}://{base.split('://', 1)[1]}/ws",
              flush=True)
        print(f"  teacher:    {base}/teacher#token=TEACHER_TOKEN", flush=True)
        print(f"  classroom:  {base}/classroom#token=CLASSROOM_TOKEN", flush=True)
        print(f"  links:      ketang lesson create --title \"七年级数学\" --data-dir {cfg.data_dir} --url {base}",
              flush=True)

    async def _repair(self) -> int:
        """Recordings an unclean stop left open, repaired and put in the library (0 when the store is down: the
        next start tries again)."""
        library = Library(self.config.data_dir, database_url=self.config.database_url or None,
                          node_url=self.config.url, media_dir=self.config.media_dir)
        try:
            await library.open()
            return await repair_unfinished(library)
        except Exception as exc:  # noqa: BLE001 - the workers serve anyway; each tries the store again
            log.error("could not repair unfinished recordings: %s", " ".join(str(exc).split())[:300])
            return 0
        finally:
            await library.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # recordings an unclean stop left open are repaired once, before any worker records
        repaired = await self._repair()
        if repaired:
            log.info("repaired %d recording(s) left unfinished by an unclean stop", repaired)
        if self.rpc is not None:
            await self.rpc.start()
        runner: web.AppRunner | None = None
        pid_path = pid_file(self.config.data_dir, self.config.port)
        try:
            for worker in self.workers:
                await self._start(worker)
            started = await asyncio.gather(*(self._wait_up(w) for w in self.workers))
            if not all(started):
                raise RuntimeError(f"worker(s) {[w.index for w, ok in zip(self.workers, started) if not ok]} did "
                                   "not start (their log lines above say why)")
            self._tasks = [asyncio.ensure_future(self._watch(w)) for w in self.workers]
            self._tasks.append(asyncio.ensure_future(self._poll_loop()))
            runner = web.AppRunner(self.make_app(), handle_signals=False, **http_timeouts())
            await runner.setup()
            await web.TCPSite(runner, self.config.host, self.config.port, ssl_context=self.ssl_context).start()
            self._print()
            with contextlib.suppress(OSError):
                pid_path.parent.mkdir(parents=True, exist_ok=True)
                pid_path.write_text(f"{os.getpid()}\n")
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            await self._stopped.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await self._wait_workers(STOP_TIMEOUT_S if self.stopping else None)
        finally:
            self.stopping = True
            for task in self._tasks:
                task.cancel()
            for worker in self.workers:
                if worker.proc is not None and worker.proc.returncode is None:
                    worker.proc.kill()
                    await worker.proc.wait()
                if worker.session is not None:
                    await worker.session.close()
            if runner is not None:
                await runner.cleanup()
            if self.rpc is not None:
                await self.rpc.close()
            await self.store.close()
            pid_path.unlink(missing_ok=True)
            shutil.rmtree(self.runtime, ignore_errors=True)

    async def _wait_workers(self, timeout_s: float | None) -> None:
        procs = [w.proc.wait() for w in self.workers if w.proc is not None and w.proc.returncode is None]
        if procs:
            await asyncio.wait_for(asyncio.gather(*procs), timeout_s) if timeout_s else await asyncio.gather(*procs)

    def _signal_workers(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(sig)

    def _on_sigterm(self) -> None:
        """Drain: every worker drains (hub.drain) and the supervisor exits once all have; again: at once."""
        if self.draining:
            log.warning("SIGTERM again while draining: stopping the workers now")
        else:
            log.warning("draining %d workers: no new lessons; the live ones go on until they end or the drain "
                        "timeout passes", len(self.workers))
        self.draining = True
        self._signal_workers(signal.SIGTERM)
        self._stopped.set()

    def _on_sigint(self) -> None:
        self.stopping = True
        self._signal_workers(signal.SIGINT)
        self._stopped.set()


async def run_supervisor(config: Config, workers: int, argv: list[str], ssl_context: ssl.SSLContext | None,
                         media_ports: str) -> None:
    await Supervisor(config, workers, argv, ssl_context, media_ports).run()

"""One load test: a server (ketang, or the MediaRelay reference with `baseline="relay"`), a synthetic teacher,
N synthetic classrooms ramped in across worker processes, a hold window measured on the server (psutil CPU and
memory, forwarded packets from its stats API), and the report.

Timeline: start server -> teacher publishes -> classrooms join at `ramp` per second -> settle -> hold window
(`duration` s, the only part CPU figures come from) -> teacher stops sending -> counters read -> teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from loadtest.classroom import SyntheticClassroom, Uplink, classroom_id
from loadtest.receiver import ReceiveOptions
from loadtest.report import (
    ServerCounts,
    Window,
    build_report,
    simulcast_report,
    uplink_report,
)
from signaling.messages import MAX_WALL_TILES
from signaling.tokens import issue_token

log = logging.getLogger("ketang.loadtest")

SERVER_START_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 40.0
JOIN_GRACE_S = 20.0  # after the ramp's last start, how long stragglers may take before the window opens
SETTLE_S = 2.0  # after the last join: let keyframe replays and joins' RTCP settle before measuring
DRAIN_S = 1.0  # after the teacher stops: packets in flight arrive before counters are read
PROGRESS_INTERVAL_S = 0.5
JITTER_SAMPLE_S = 1.0
CLASSROOMS_PER_WORKER = 150  # default split: one loop comfortably drives this many at ~500 kbit/s
CLASSROOMS_PER_WORKER_UPLINK = 75  # ... and this many when each also publishes its camera and microphone
DEFAULT_WALL = 16  # the teacher page's wall: one page of tiles
WALL_TIMEOUT_S = 30.0
PICTURE_IDS = 1 << 15


@dataclass
class LoadTestConfig:
    classrooms: int = 20
    duration_s: float = 20.0
    ramp_per_s: float = 20.0
    bitrate_kbps: int = 500
    url: str | None = None  # target an existing server instead of starting one
    secret: str | None = None
    baseline: str | None = None  # None: ketang; "relay": aiortc MediaRelay reference server
    workers: int = 0  # 0: automatic
    lesson: str | None = None
    profile_server: str | None = None  # cProfile output path for the server subprocess
    server_pid: int | None = None  # with `url`: measure this process's CPU and memory (same machine)
    classroom_mode: str = "counter"  # "stock": classrooms also run aiortc's receiver per packet (cost study)
    classroom_loss: float = 0.0  # emulated downlink loss at each classroom (0.013 = the rural link, docs/architecture.md)
    # the interactive classroom: each classroom also publishes a 320x180 VP8 camera at this many kbit/s + Opus
    classroom_uplink_kbps: int = 0
    wall: int | None = None  # classroom tiles on the teacher's wall; None: DEFAULT_WALL with uplinks, else none
    # classrooms send only what somebody receives (the server's `demand`), as the page does; False: all the time
    classroom_demand: bool = True
    # each classroom reports this downlink estimate by REMB (kbit/s, cycled over the classrooms; empty: none), as
    # a browser does: with --simulcast the layer mix follows it
    classroom_downlink_kbps: tuple[int, ...] = ()
    # the teacher sends its camera as three simulcast layers q/h/f, as Chromium does (loadtest/simulcast.py)
    simulcast: bool = False
    simulcast_kbps: tuple[int, ...] | None = None  # the layers' video kbit/s, q,h,f; None: from bitrate_kbps
    simulcast_size: tuple[int, int] = (640, 360)  # the full layer's size; q and h are ÷4 and ÷2
    # busy-loop processes running through the whole test, each pinned to one of the last cores (the overload
    # run: other work takes a core of the machine while the server carries its lesson)
    cpu_hog: int = 0
    quiet: bool = False

    @property
    def mode(self) -> str:
        return self.baseline or "ketang"

    @property
    def wall_tiles(self) -> int:
        """How many classrooms the synthetic teacher puts on its wall (0: it sends no `wall`)."""
        wall = self.wall if self.wall is not None else (DEFAULT_WALL if self.classroom_uplink_kbps else 0)
        return max(0, min(wall, self.classrooms))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HOG_CODE = "while True: pass"


def start_hogs(n: int) -> list[subprocess.Popen]:
    """`n` busy loops, the i-th pinned to core (cores - 1 - i): another program taking the machine's last cores
    (what `taskset -c 1 python -c 'while True: pass'` does)."""
    cores = sorted(os.sched_getaffinity(0))
    hogs = []
    for i in range(n):
        core = cores[-1 - i % len(cores)]
        proc = subprocess.Popen([sys.executable, "-c", HOG_CODE], stdin=subprocess.DEVNULL)
        os.sched_setaffinity(proc.pid, {core})
        hogs.append(proc)
    return hogs


def stop_hogs(hogs: list[subprocess.Popen]) -> float:
    """Stop them; returns the CPU seconds they used."""
    used = 0.0
    for proc in hogs:
        with contextlib.suppress(psutil.Error):
            used += _process_cpu(psutil.Process(proc.pid))
        proc.kill()
        proc.wait(10)
    return used


class ServerProcess:
    """The server under test as a subprocess of ours (or a pid we were pointed at)."""

    def __init__(self, cfg: LoadTestConfig, secret: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, KETANG_SECRET=secret, KETANG_DATA_DIR=str(workdir))
        env.pop("KETANG_REDIS_URL", None)
        env.setdefault("KETANG_WORKERS", "1")  # one process, whose CPU is measured (loadtest.lessons: workers)
        module = ["-m", "loadtest.relay_server"] if cfg.baseline == "relay" else ["-m", "ketang.cli", "serve"]
        prefix = [sys.executable]
        if cfg.profile_server:
            prefix += ["-m", "cProfile", "-o", cfg.profile_server]
        args = prefix + module + ["--port", str(self.port)]
        self.log_path = workdir / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the server's lifetime
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(Path(__file__).resolve().parent.parent))
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"server did not answer /healthz: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # a clean exit, so cProfile writes its output
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far (all cores)."""
    t = psutil.cpu_times()
    steal = getattr(t, "steal", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle - steal - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0), steal


def _process_cpu(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return t.user + t.system


def _process_sys(ps: psutil.Process | None) -> float:
    return ps.cpu_times().system if ps is not None else 0.0


def _process_switches(ps: psutil.Process | None) -> int:
    """Context switches of all the process's threads so far (each thread hand-off of the GIL costs some)."""
    if ps is None:
        return 0
    c = ps.num_ctx_switches()
    return c.voluntary + c.involuntary


# ---------------------------------------------------------------- worker processes (classrooms)


@dataclass
class _Shared:
    send_times: Any  # mp.Array('d', PICTURE_IDS): the teacher's send time per VP8 picture id
    publish_time: Any  # mp.Value('d')
    start_at: Any  # mp.Value('d'): monotonic time of classroom 0's start
    go: Any  # mp.Event
    measuring: Any  # mp.Event: sample jitter
    media_stop: Any  # mp.Event: the classrooms stop publishing (the teacher has stopped too)
    stop: Any  # mp.Event: stop counting and report
    progress: Any  # mp.Queue of (worker, connected, failed, packets)
    results: Any  # mp.Queue of (worker, [classroom result])
    # simulcast: the teacher's frame keys (media.frame_keys), one copy per worker; they index `send_times`
    frame_keys: Any = None


@dataclass(frozen=True)
class _WorkerPlan:
    """What one load-generator process runs: which classrooms, how they receive, whether they publish."""

    indices: list[int]
    ws_url: str
    secret: str
    lesson: str
    ramp: float
    options: ReceiveOptions
    uplink_kbps: int = 0
    simulcast: bool = False
    follow_demand: bool = True
    downlink_kbps: tuple[int, ...] = ()  # per classroom index, cycled: the REMB it reports


def _options_of(plan: _WorkerPlan, index: int) -> ReceiveOptions:
    """Classroom `index`'s receiving options: its REMB from the cycled --classroom-downlink list."""
    if not plan.downlink_kbps:
        return plan.options
    return replace(plan.options, remb_bps=plan.downlink_kbps[index % len(plan.downlink_kbps)] * 1000)


def _worker_main(worker: int, plan: _WorkerPlan, shared: _Shared) -> None:
    import uvloop

    if plan.options.stock:
        # this worker process only: stock receivers would otherwise decode every frame in their threads
        from aiortc import rtcrtpreceiver

        from sfu.seams import _forward_only_decoder_worker
        rtcrtpreceiver.decoder_worker = _forward_only_decoder_worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    logging.getLogger("aioice").setLevel(logging.WARNING)
    uplink = None
    if plan.uplink_kbps:
        from loadtest.media import make_uplink_clips

        uplink = Uplink(*make_uplink_clips(plan.uplink_kbps), follow_demand=plan.follow_demand)  # once per process
    uvloop.run(_worker(worker, plan, shared, uplink))


async def _worker(worker: int, plan: _WorkerPlan, shared: _Shared, uplink: Uplink | None) -> None:
    while not shared.go.is_set():
        await asyncio.sleep(0.05)
    keys = shared.frame_keys.get(timeout=60) if plan.simulcast else None  # put before `go` is set
    t0 = shared.start_at.value
    rooms: list[SyntheticClassroom] = []
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def start(i: int) -> None:
        await asyncio.sleep(max(0.0, t0 + i / plan.ramp - time.monotonic()))
        token = issue_token(plan.secret, "classroom", plan.lesson, name=f"loadtest classroom {i}",
                            sub=classroom_id(i))
        room = SyntheticClassroom(i, session, plan.ws_url, token, plan.lesson, shared.send_times,
                                  shared.publish_time, _options_of(plan, i), uplink, keys)
        rooms.append(room)
        await room.join(JOIN_TIMEOUT_S)

    tasks = [asyncio.ensure_future(start(i)) for i in plan.indices]
    last_jitter = 0.0
    uplinks_stopped = False
    while not shared.stop.is_set():
        await asyncio.sleep(PROGRESS_INTERVAL_S / 2)
        now = time.monotonic()
        if shared.measuring.is_set() and now - last_jitter >= JITTER_SAMPLE_S:
            last_jitter = now
            for room in rooms:
                room.receiver.measure_delay = True
                room.receiver.sample_jitter()
        if shared.media_stop.is_set() and not uplinks_stopped:
            uplinks_stopped = True
            for room in rooms:
                room.stop_uplink()
        connected = sum(1 for r in rooms if r.ready)
        failed = sum(1 for r in rooms if r.error is not None)
        packets = sum(r.receiver.packets() for r in rooms)
        with contextlib.suppress(Exception):
            shared.progress.put_nowait((worker, connected, failed, packets))
    for room in rooms:
        room.receiver.counting = False
    for t in tasks:
        t.cancel()
    shared.results.put((worker, [room.result() for room in rooms]))
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(r.close() for r in rooms), return_exceptions=True), 20)
    await session.close()


# ---------------------------------------------------------------- the run


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet or not total

    def show(self, phase: str, connected: int, failed: int, extra: str = "") -> None:
        if self.quiet:
            return
        width = 30
        filled = int(width * connected / self.total)
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r{phase:<8} [{bar}] {connected}/{self.total} connected"
                         f"{f', {failed} failed' if failed else ''} {extra}   ")
        sys.stderr.flush()

    def done(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _auto_workers(cfg: LoadTestConfig) -> int:
    if cfg.workers > 0:
        return cfg.workers
    per_worker = CLASSROOMS_PER_WORKER_UPLINK if cfg.classroom_uplink_kbps else CLASSROOMS_PER_WORKER
    return max(1, min(os.cpu_count() or 1, math.ceil(cfg.classrooms / per_worker)))


def run_loadtest(cfg: LoadTestConfig) -> dict[str, Any]:
    """Run one load test (blocking) and return its report."""
    if cfg.url and not (cfg.secret or os.environ.get("KETANG_SECRET")):
        raise ValueError("targeting a server by URL needs its secret: --secret or KETANG_SECRET")
    if cfg.wall is not None and not 0 <= cfg.wall <= MAX_WALL_TILES:
        raise ValueError(f"--wall takes 0 to {MAX_WALL_TILES} tiles (the protocol's limit)")
    if cfg.baseline and (cfg.classroom_uplink_kbps or cfg.wall_tiles):
        raise ValueError("the MediaRelay baseline forwards only the teacher: no --classroom-uplink or --wall")
    if cfg.baseline and cfg.simulcast:
        raise ValueError("the MediaRelay baseline takes one video stream: no --simulcast")
    if cfg.simulcast_kbps is not None and len(cfg.simulcast_kbps) != 3:
        raise ValueError("--layers takes three bit rates: q,h,f in kbit/s")
    secret = cfg.secret or os.environ.get("KETANG_SECRET") if cfg.url else secrets.token_urlsafe(32)
    assert secret is not None
    lesson = cfg.lesson or f"loadtest-{secrets.token_hex(4)}"
    ctx = mp.get_context("fork")  # before any event loop or codec thread exists in this process
    shared = _Shared(ctx.Array("d", PICTURE_IDS, lock=False), ctx.Value("d", 0.0, lock=False),
                     ctx.Value("d", 0.0, lock=False), ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event(),
                     ctx.Queue(), ctx.Queue(), ctx.Queue() if cfg.simulcast else None)
    workdir = Path(tempfile.mkdtemp(prefix="ketang-loadtest-"))
    server: ServerProcess | None = None
    if cfg.url:
        base_url = cfg.url.rstrip("/")
    else:
        server = ServerProcess(cfg, secret, workdir)
        base_url = server.url
    ws_url = base_url.replace("http", "ws", 1) + "/ws"
    n_workers = _auto_workers(cfg)
    workers = []
    options = ReceiveOptions(stock=cfg.classroom_mode == "stock", loss=cfg.classroom_loss)
    for w in range(n_workers):
        plan = _WorkerPlan(list(range(w, cfg.classrooms, n_workers)), ws_url, secret, lesson, cfg.ramp_per_s,
                           options, cfg.classroom_uplink_kbps, cfg.simulcast, cfg.classroom_demand,
                           cfg.classroom_downlink_kbps)
        p = ctx.Process(target=_worker_main, args=(w, plan, shared), daemon=True, name=f"loadtest-worker-{w}")
        p.start()
        workers.append(p)
    hogs = start_hogs(cfg.cpu_hog)
    hog_started = time.monotonic()
    try:
        if server is not None:
            server.wait_ready()
        import uvloop

        report = uvloop.run(_run(cfg, secret, lesson, base_url, ws_url, server, workers, shared))
    except BaseException:
        log.error("load test failed; the server's log is kept in %s", workdir)
        raise
    finally:
        hog_cpu = stop_hogs(hogs)
        shared.stop.set()
        for p in workers:
            p.join(30)
            if p.is_alive():
                p.kill()
        if server is not None:
            server.stop()
    if hogs:
        report["cpu_hog"] = {"processes": len(hogs),
                             "cores_used": round(hog_cpu / max(1e-6, time.monotonic() - hog_started), 2)}
    unlearned = [x["rid"] for x in (report.get("simulcast") or {}).get("layers", []) if x.get("server_ssrc") is None]
    if unlearned:
        # the server never told these layers' SSRCs from their RIDs: keep its log to see why
        log.warning("simulcast layers %s never reached the server as layers; its log is kept in %s",
                    ",".join(unlearned), workdir)
        return report
    shutil.rmtree(workdir, ignore_errors=True)
    return report


async def _server_stats(session: aiohttp.ClientSession, base_url: str, lesson: str, secret: str) -> dict:
    """The server's stats API body for the lesson (packet counters, and per classroom its simulcast layer)."""
    token = issue_token(secret, "observer", lesson, name="loadtest")
    async with session.get(f"{base_url}/api/lessons/{lesson}/stats",
                           headers={"Authorization": f"Bearer {token}"}) as resp:
        return await resp.json()


@dataclass
class _Snapshot:
    """CPU counters at one instant: the server's (total, kernel), each load-generator process's, the machine's."""

    at: float
    server: float
    server_sys: float
    loadgen: list[float]
    busy: float
    steal: float
    server_switches: int


class _Meter:
    """psutil readings of the server and the load generator, taken at the two ends of the hold window."""

    def __init__(self, server_ps: psutil.Process | None, workers: list) -> None:
        self.server_ps = server_ps
        self.loadgen = [psutil.Process()] + [psutil.Process(p.pid) for p in workers]

    def snapshot(self) -> _Snapshot:
        busy, steal = _machine_cpu()
        return _Snapshot(time.monotonic(), _process_cpu(self.server_ps) if self.server_ps else 0.0,
                         _process_sys(self.server_ps), [_process_cpu(p) for p in self.loadgen], busy, steal,
                         _process_switches(self.server_ps))

    def window(self, a: _Snapshot, b: _Snapshot, counts: ServerCounts) -> tuple[Window, dict[str, Any]]:
        """The window's figures, and extra context for the report's config (background load, kernel share)."""
        wall = b.at - a.at
        server = b.server - a.server
        lg = [y - x for x, y in zip(a.loadgen, b.loadgen)]
        rss = self.server_ps.memory_info().rss if self.server_ps else 0
        # a negative delta means subscribers vanished from the server's stats mid-window: no per-packet figure then
        window = Window(wall_s=wall, server_cpu_s=server, server_rss_bytes=rss,
                        packets_out=max(0, counts.packets_out), loadgen_cpu_s=sum(lg), loadgen_processes=len(lg),
                        loadgen_max_process_cpu_s=max(lg), counts=counts)
        other = (b.busy - a.busy) - server - sum(lg)
        return window, {
            # other engineers' work on this shared machine during the window (cores), and the VM's steal time
            "background_cores": round(max(0.0, other) / wall, 2), "steal_cores": round((b.steal - a.steal) / wall, 2),
            # kernel share of the server's CPU: mostly sendto, i.e. loopback delivery into classroom sockets
            "server_system_cpu_share": round((b.server_sys - a.server_sys) / server, 3) if server > 0 else None,
            # the server's threads (aiortc starts one decoder thread per received track) and how often they switch
            "server_threads": self.server_ps.num_threads() if self.server_ps else None,
            "server_context_switches_per_s": round((b.server_switches - a.server_switches) / wall)
            if self.server_ps else None,
        }


class _Run:
    """The phases of one load test, in the main process (the classrooms run in the worker processes)."""

    def __init__(self, cfg: LoadTestConfig, secret: str, lesson: str, base_url: str, server_ps: psutil.Process | None,
                 workers: list, shared: _Shared) -> None:
        self.cfg, self.secret, self.lesson, self.base_url = cfg, secret, lesson, base_url
        self.server_ps, self.workers, self.shared = server_ps, workers, shared
        self.teacher_id: str | None = None  # known once the teacher has joined
        self.last_stats: dict = {}  # the server's stats body of the latest read
        self.window_stats: tuple[dict, dict] = ({}, {})  # ... at the two ends of the hold window
        self.progress = Progress(cfg.classrooms, cfg.quiet)
        self._state = {w: (0, 0, 0) for w in range(len(workers))}

    def counts(self) -> tuple[int, int, int]:
        """(connected, failed, packets received) over all workers, from their latest progress messages."""
        while True:
            try:
                w, c, f, p = self.shared.progress.get_nowait()
            except queue.Empty:
                break
            self._state[w] = (c, f, p)
        return tuple(sum(v[i] for v in self._state.values()) for i in range(3))  # type: ignore[return-value]

    async def server_counts(self, session: aiohttp.ClientSession) -> ServerCounts:
        self.last_stats = await _server_stats(session, self.base_url, self.lesson, self.secret)
        return ServerCounts.from_stats(self.last_stats, self.teacher_id)

    async def ramp(self) -> None:
        """Start the workers' schedule and wait until every classroom joined or failed (or the grace ran out)."""
        t0 = time.monotonic() + 0.2
        self.shared.start_at.value = t0
        self.shared.go.set()
        ramp_end = t0 + self.cfg.classrooms / self.cfg.ramp_per_s
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            connected, failed, _ = self.counts()
            self.progress.show("ramp", connected, failed)
            if connected + failed >= self.cfg.classrooms or time.monotonic() > ramp_end + JOIN_GRACE_S:
                return
            if any(not p.is_alive() for p in self.workers):
                raise RuntimeError("a load-generator worker died")

    async def hold(self, session: aiohttp.ClientSession, wall: Any = None) -> tuple[Window, dict[str, Any]]:
        """The measured window: CPU and the server's packet counters at both ends."""
        meter = _Meter(self.server_ps, self.workers)
        a = meter.snapshot()
        counts0 = await self.server_counts(session)
        self.shared.measuring.set()
        last_jitter = time.monotonic()
        while (left := a.at + self.cfg.duration_s - time.monotonic()) > 0:
            await asyncio.sleep(min(PROGRESS_INTERVAL_S, left))
            connected, failed, packets = self.counts()
            elapsed = time.monotonic() - a.at
            cpu = 100 * (_process_cpu(self.server_ps) - a.server) / max(1e-6, elapsed) if self.server_ps else 0
            self.progress.show("hold", connected, failed, f"{elapsed:4.0f}/{self.cfg.duration_s:.0f} s, server CPU "
                                                          f"{cpu:3.0f} %, {packets} packets received")
            if wall is not None and time.monotonic() - last_jitter >= JITTER_SAMPLE_S:
                last_jitter = time.monotonic()
                wall.sample_jitter()
        b = meter.snapshot()
        stats0 = self.last_stats
        counts1 = await self.server_counts(session)
        self.window_stats = (stats0, self.last_stats)  # simulcast: layers in and each classroom's layer, at the end
        self.progress.done()
        return meter.window(a, b, counts1 - counts0)

    async def collect(self) -> list[dict]:
        """Tell the workers to stop counting and gather their classrooms' results."""
        self.shared.stop.set()
        results: list[dict] = []
        deadline = time.monotonic() + 60
        got = 0
        while got < len(self.workers) and time.monotonic() < deadline:
            try:
                _w, rs = self.shared.results.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.1)
                continue
            results.extend(rs)
            got += 1
        return sorted(results, key=lambda r: r["index"])


async def _run(cfg: LoadTestConfig, secret: str, lesson: str, base_url: str, ws_url: str,
               server: ServerProcess | None, workers: list, shared: _Shared) -> dict[str, Any]:
    from loadtest.media import frame_keys, make_clips, make_simulcast_clips
    from loadtest.teacher import SyntheticTeacher

    logging.getLogger("aioice").setLevel(logging.WARNING)
    layers = None
    if cfg.simulcast:
        layers, audio = make_simulcast_clips(cfg.bitrate_kbps, cfg.simulcast_kbps, *cfg.simulcast_size)
        video = None
        keys = frame_keys(layers)
        for _ in workers:
            shared.frame_keys.put(keys)
    else:
        video, audio = make_clips(cfg.bitrate_kbps)
    server_ps = server.ps if server is not None else (psutil.Process(cfg.server_pid) if cfg.server_pid else None)
    run = _Run(cfg, secret, lesson, base_url, server_ps, workers, shared)
    async with aiohttp.ClientSession() as session:
        teacher = SyntheticTeacher(session, ws_url, issue_token(secret, "teacher", lesson, name="loadtest teacher"),
                                   lesson, video, audio, shared.send_times, layers)
        try:
            await teacher.publish()
            run.teacher_id = teacher.participant_id
            shared.publish_time.value = teacher.published_at or time.monotonic()
            await asyncio.sleep(1.0)  # media flowing before the first classroom joins
            await run.ramp()
            if cfg.wall_tiles:
                # the tiles of one wall page: the first classrooms (spread over every worker: round-robin)
                await teacher.open_wall([classroom_id(i) for i in range(cfg.wall_tiles)], WALL_TIMEOUT_S)
            await asyncio.sleep(SETTLE_S)
            sent0 = teacher.simulcast_figures()
            window, context = await run.hold(session, teacher.wall)
            sent1 = teacher.simulcast_figures()
            # everyone stops sending first, so what the server sent and what the receivers counted can be compared
            await teacher.stop_media()
            shared.media_stop.set()
            await asyncio.sleep(DRAIN_S + PROGRESS_INTERVAL_S)  # + the workers' polling interval
            final = await run.server_counts(session)
            if teacher.wall is not None:
                teacher.wall.counting = False
            results = await run.collect()
        finally:
            await teacher.close()
    config = {k: v for k, v in asdict(cfg).items() if k not in ("secret", "quiet")}
    video_bps = sum(x.clip.bitrate_bps for x in layers) if layers else video.bitrate_bps  # type: ignore[union-attr]
    config.update(workers=len(workers), video_kbps=round(video_bps / 1000, 1),
                  audio_kbps=round(audio.bitrate_bps / 1000, 1), teacher_packets_sent=teacher.packets_sent,
                  cpus=os.cpu_count(), external_server=server is None, **context)
    report = build_report(cfg.mode, cfg.classrooms, results, window, final.to_classrooms, config)
    before, after = run.window_stats
    if after.get("overload") is not None:
        # the server's overload controller at both ends of the window (sfu/adapt/overload.py): its shed level, the
        # late packets it dropped by kind over the window
        o0, o1 = before.get("overload") or {}, after["overload"]
        report["server_overload"] = {
            "level_start": o0.get("level"), "level_end": o1.get("level"), "max_level": o1.get("max_level"),
            "lateness_ms_end": o1.get("lateness_ms"), "loop_lag_ms_end": o1.get("loop_lag_ms"),
            "datagram_age_ms_end": o1.get("datagram_age_ms"), "overloads": o1.get("overloads"),
            "late_dropped_in_window": {k: v - (o0.get("late_dropped") or {}).get(k, 0)
                                       for k, v in (o1.get("late_dropped") or {}).items()}}
    if layers:
        stats0, stats1 = run.window_stats
        report["simulcast"] = simulcast_report(cfg.classrooms, results, window, stats0, stats1,
                                               teacher.simulcast_figures() or [], classroom_id, sent0, sent1)
    if cfg.classroom_uplink_kbps or cfg.wall_tiles:
        report["uplink"] = uplink_report(cfg.classroom_uplink_kbps, results, window, final, teacher.wall_result())
    if server_ps is None:
        for key in ("server_cpu_percent", "server_cpu_us_per_packet", "classrooms_per_core", "server_rss_mb"):
            report[key] = None  # not measured: pass --server-pid for a server on this machine
        if "uplink" in report:
            for key in ("server_cpu_us_per_forwarded_packet", "server_cpu_us_per_received_packet"):
                report["uplink"][key] = None
    return report


def write_json(report: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

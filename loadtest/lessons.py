"""Many lessons at once against one `ketang serve --workers W`, for each W given, in one run (the 1-worker figure is
the baseline the others are compared with): `python -m loadtest.lessons --lessons 8 --classrooms 40 --server-workers
1,2`. Each lesson is one `python -m loadtest --url ...` of its own (a synthetic teacher, N synthetic classrooms);
this measures the whole server (the supervisor and every worker, psutil) over a window while every lesson holds.
docs/benchmarks.md ("Workers") has the figures."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from loadtest.runner import free_port

ROOT = Path(__file__).resolve().parent.parent


def _get(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The JSON body, also of a 503 (/healthz says "degraded" while a busy server's room state answers late)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def _count(health: dict[str, Any]) -> int:
    """Participants in a /healthz answer: the room state's count, or (a "degraded" answer, the room state late on a
    saturated machine) what the processes carry themselves."""
    if "participants" in health:
        return int(health["participants"])
    workers = health.get("workers") or [health]
    return sum(int(w.get("here", {}).get("participants", 0)) for w in workers)


def _participants(url: str) -> int:
    """The server's participant count, or -1 while it is too busy to answer (a ramp of hundreds of joins)."""
    try:
        return _count(_get(url + "/healthz"))
    except (OSError, ValueError, KeyError):
        return -1


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0)


def run_one(workers: int, lessons: int, classrooms: int, duration_s: float, workdir: Path) -> dict[str, Any]:
    secret = secrets.token_hex(16)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, KETANG_SECRET=secret, KETANG_DATA_DIR=str(workdir / f"data-{workers}"),
               KETANG_WORKERS=str(workers))
    env.pop("KETANG_REDIS_URL", None)
    log = open(workdir / f"server-{workers}.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "ketang.cli", "serve", "--port", str(port)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    testers: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = _get(url + "/healthz")
                if health.get("status") == "ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the server did not start (log: {workdir}/server-{workers}.log)")
            time.sleep(0.2)
        hold = duration_s + 150  # each tester holds well past the window measured here (a slow ramp included)
        for i in range(lessons):
            testers.append(subprocess.Popen(
                [sys.executable, "-m", "loadtest", "--url", url, "--secret", secret, "--classrooms", str(classrooms),
                 "--lesson", f"bench-{i}", "--duration", str(hold), "--json", str(workdir / f"w{workers}-{i}.json"),
                 "--workers", "1", "--ramp", "20", "-q"], cwd=str(ROOT), stdout=subprocess.DEVNULL,
                stderr=open(workdir / f"w{workers}-{i}.log", "wb")))  # noqa: SIM115
        want = lessons * (classrooms + 1)
        deadline = time.monotonic() + 120
        while _participants(url) < want:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(5)  # settle: every peer connected and receiving
        root = psutil.Process(server.pid)
        procs = [root, *root.children(recursive=True)]
        start_health = _get(url + "/healthz")
        c0, m0, t0 = _cpu(procs), _machine_busy(), time.monotonic()
        per0 = [_cpu([p]) for p in procs]
        time.sleep(duration_s)
        c1, m1, t1 = _cpu(procs), _machine_busy(), time.monotonic()
        per1 = [_cpu([p]) for p in procs]
        end_health = _get(url + "/healthz")
        wall = t1 - t0
        connected = min(_count(start_health), _count(end_health)) - lessons  # (less the teachers)
        cores = (c1 - c0) / wall
        for tester in testers:  # (each stops when its hold ends; the window is measured)
            tester.kill()
        reports = []
        for i in range(lessons):
            path = workdir / f"w{workers}-{i}.json"
            if path.exists():
                reports.append(json.loads(path.read_text()))
        loss = [r["loss_ratio"] for r in reports if r.get("loss_ratio") is not None]
        return {
            "server_workers": workers, "lessons": lessons, "classrooms_per_lesson": classrooms,
            "classrooms_connected": connected, "window_s": round(wall, 1),
            "server_cores": round(cores, 3),
            "classrooms_per_core": round(connected / cores, 1) if cores > 0 else None,
            "supervisor_cores": round((per1[0] - per0[0]) / wall, 3) if workers > 1 else 0.0,
            "worker_cores": [round((b - a) / wall, 3) for a, b in zip(per0[1:], per1[1:])] if workers > 1 else [],
            "lessons_per_worker": [w.get("here", {}).get("lessons") for w in end_health.get("workers", [])] or [lessons],
            "machine_cores_busy": round((m1 - m0) / wall, 2),
            "loss_ratio_max": max(loss) if loss else None,
            "reports": len(reports),
            "complete": connected >= 0.95 * lessons * classrooms,
        }
    finally:
        for tester in testers:
            if tester.poll() is None:
                tester.kill()
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        log.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.lessons", description=__doc__)
    p.add_argument("--lessons", type=int, default=8)
    p.add_argument("--classrooms", type=int, default=40, help="per lesson")
    p.add_argument("--server-workers", default="1,2", help="the --workers of each server run, in this order")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured while every lesson holds")
    p.add_argument("--repeat", type=int, default=1, help="rounds over --server-workers (interleaved)")
    p.add_argument("--json", default=None)
    p.add_argument("--workdir", default=None, help="keep the servers' and testers' logs here (default: a temporary "
                   "folder removed at the end)")
    args = p.parse_args(argv)
    rows = []
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(args.workdir) if args.workdir
          else tempfile.TemporaryDirectory(prefix="ketang-lessons-")) as tmp:
        for _ in range(args.repeat):
            for workers in (int(w) for w in args.server_workers.split(",")):
                row = run_one(workers, args.lessons, args.classrooms, args.duration, Path(tmp))
                rows.append(row)
                print(json.dumps(row), flush=True)
    base = [r["classrooms_per_core"] for r in rows if r["server_workers"] == 1 and r["classrooms_per_core"]]
    if base:
        ref = sorted(base)[len(base) // 2]
        for r in rows:
            if r["classrooms_per_core"]:
                r["vs_one_worker"] = round(r["classrooms_per_core"] / ref, 2)
        print("classrooms per core against one worker's (median):",
              ", ".join(f"{r['server_workers']} worker(s): {r.get('vs_one_worker')}" for r in rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

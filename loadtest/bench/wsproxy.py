"""What the supervisor's websocket proxy adds to one signalling message (`ketang serve --workers N`): ping -> pong
round trips on joined websockets, against a single process (`--workers 1`, no proxy) and a supervisor with one
worker behind it (`--workers 2`: the same worker code, one hop more), in the same run.

    python -m loadtest.bench.wsproxy [--messages 3000] [--sockets 20]

Reports the median round trip and the CPU of every server process per message (supervisor and worker apart)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from loadtest.runner import free_port
from loadtest.wsclient import WsClient
from signaling.tokens import issue_token

ROOT = Path(__file__).resolve().parents[2]


def _start(workers: int, workdir: Path, secret: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, KETANG_SECRET=secret, KETANG_DATA_DIR=str(workdir / f"d{workers}"),
               KETANG_WORKERS=str(workers), KETANG_NO_RECORD="1")
    proc = subprocess.Popen([sys.executable, "-m", "ketang.cli", "serve", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if json.loads(resp.read()).get("status") == "ok":
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


async def _measure(url: str, secret: str, proc: subprocess.Popen, messages: int, sockets: int) -> dict:
    clients = []
    for i in range(sockets):
        ws = await WsClient(keep=False).connect(url.replace("http", "ws") + "/ws")
        await ws.request({"type": "join", "token": issue_token(secret, "observer", f"bench-{i % 4}", name=f"o{i}")},
                         check=True)
        clients.append(ws)
    root = psutil.Process(proc.pid)
    procs = [root, *root.children(recursive=True)]
    cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
    rtts: list[float] = []

    async def run(ws: WsClient, n: int) -> None:
        for _ in range(n):
            t = time.perf_counter()
            await ws.request({"type": "ping"})
            rtts.append(time.perf_counter() - t)

    await asyncio.gather(*(run(ws, messages // sockets) for ws in clients))
    cpu1 = [sum(p.cpu_times()[:2]) for p in procs]
    for ws in clients:
        await ws.close()
    per = [(b - a) / len(rtts) * 1e6 for a, b in zip(cpu0, cpu1)]
    return {"messages": len(rtts), "rtt_median_us": round(statistics.median(rtts) * 1e6),
            "rtt_p99_us": round(sorted(rtts)[int(len(rtts) * 0.99)] * 1e6),
            "server_cpu_us_per_message": round(sum(per), 1),
            "by_process_us": [round(x, 1) for x in per]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench.wsproxy", description=__doc__)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--sockets", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    secret = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="ketang-wsproxy-") as tmp:
        servers = {w: _start(w, Path(tmp), secret) for w in (1, 2)}
        try:
            for _ in range(args.repeat):
                for workers, (proc, url) in servers.items():
                    row = asyncio.run(_measure(url, secret, proc, args.messages, args.sockets))
                    print(json.dumps({"server": "single process" if workers == 1 else "supervisor + workers",
                                      **row}), flush=True)
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGINT)
                proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the shared job queue (recorder/compose/shared.py) costs a server process that carries live lessons, and how
soon a status written by one node is seen by another.

    python -m loadtest.bench.shared_jobs [--redis-url redis://127.0.0.1:6379/0] [--seconds 20] [--json out.json]

Three phases of ``--seconds`` each, in one run, on one event loop with a 10 ms ticker standing in for the lesson's
work: (0) nothing else — the baseline; (1) a SharedJobs that follows the statuses (every process of a node with
Redis: one ZRANGEBYSCORE a second); (2) a SharedJobs that also runs the arq worker, idle (the node's worker 0:
one ZRANGEBYSCORE of the queue a second, its health key a minute). Measured per phase: this process's CPU time
(user + system) per minute, and the ticker's lateness (p99, max) — the event loop's delay the queue adds. Then
the latency of status propagation: a writer (another board, as another node) writes 100 statuses one by one (each
at a random point of the follower's 1 s poll cycle), and the follower's cache is watched for each. Keys under a
prefix of the run's own, deleted after. Nothing is composed: the work itself runs in a niced child process (docs/benchmarks.md measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from recorder.compose.shared import SharedJobs

TICK_S = 0.010


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _phase(seconds: float) -> dict[str, float]:
    late: list[float] = []
    cpu0, t0 = _cpu_s(), time.monotonic()
    deadline = t0 + seconds
    while (now := time.monotonic()) < deadline:
        await asyncio.sleep(TICK_S)
        late.append((time.monotonic() - now - TICK_S) * 1000)
    cpu = _cpu_s() - cpu0
    late.sort()
    return {"cpu_ms_per_min": round(cpu / (time.monotonic() - t0) * 60_000, 1),
            "tick_late_p99_ms": round(late[int(len(late) * 0.99)], 2), "tick_late_max_ms": round(late[-1], 2)}


async def run(redis_url: str, seconds: float) -> dict[str, Any]:
    prefix = f"bench-jobs-{uuid.uuid4().hex[:8]}:"
    out: dict[str, Any] = {"seconds": seconds}
    try:
        out["baseline"] = await _phase(seconds)
        follower = SharedJobs(redis_url, prefix, "", work=False)
        await follower.start()
        await asyncio.sleep(1)
        out["follower"] = await _phase(seconds)
        await follower.close()
        worker = SharedJobs(redis_url, prefix, "", work=True)
        await worker.start()
        await asyncio.sleep(2)
        out["follower_and_idle_worker"] = await _phase(seconds)

        writer = SharedJobs(redis_url, prefix, "bench-writer", work=False)
        await writer.start()
        seen: list[float] = []
        for i in range(100):
            key = f"status-{i}"
            await asyncio.sleep(random.random() * worker.poll_s)  # (at any point of the follower's poll cycle)
            written = time.monotonic()
            await writer._write("compose", key, {"kind": "compose", "lesson_id": key, "state": "running",
                                                 "progress": i, "alive_at": time.time()})
            while worker.cached("compose", key) is None:
                await asyncio.sleep(0.005)
            seen.append(time.monotonic() - written)
        seen.sort()
        out["status_seen_s"] = {"p50": round(seen[50], 3), "p95": round(seen[95], 3), "max": round(seen[-1], 3),
                                "poll_s": worker.poll_s}
        await writer.close()
        await worker.close()
    finally:
        client = aioredis.from_url(redis_url)
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
        await client.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args()
    result = asyncio.run(run(args.redis_url, args.seconds))
    base = result["baseline"]["cpu_ms_per_min"]
    for name in ("baseline", "follower", "follower_and_idle_worker"):
        phase = result[name]
        print(f"{name:26s} CPU {phase['cpu_ms_per_min']:8.1f} ms/min (+{phase['cpu_ms_per_min'] - base:.1f} over "
              f"the baseline)  10 ms ticker late p99 {phase['tick_late_p99_ms']:.2f} ms, max "
              f"{phase['tick_late_max_ms']:.2f} ms")
    s = result["status_seen_s"]
    print(f"a status written by another node seen after p50 {s['p50']} s, p95 {s['p95']} s, max {s['max']} s "
          f"(poll every {s['poll_s']} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

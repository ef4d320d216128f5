"""Micro-benchmark: what stamping arrivals (sfu/adapt/overload.py) adds to each datagram a publisher sends.

    python -m loadtest.bench.arrivals [--datagrams 200000] [--repeat 7] [--json]

Results: docs/benchmarks.md, *Overload*. Every datagram of a teacher's transport is put on its aioice receive queue
when read and got by aiortc's DTLS task; with the overload work that queue is an `ArrivalStamps` (a monotonic clock
read and a tuple per put, one unpack per get) and the ingress computes the packet's age and keeps the worst:
  A "plain":   asyncio.Queue put_nowait + get_nowait (aioice's queue as it comes);
  B "stamped": ArrivalStamps put_nowait + get_nowait + the ingress's age check.
Phases interleave `repeat` times; the medians are compared (the machine is shared: the difference holds, absolute
times less so). The ingress's whole cost per incoming packet is 10-13 us (aioice + DTLS/SRTP + demux, DESIGN.md);
the fan-out to N classrooms is N x 6-8 us on top (docs/benchmarks.md, forwarding path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from sfu.adapt.overload import ArrivalStamps, Lateness
from sfu.rtp.clock import SYSTEM_CLOCK

DATAGRAM = (b"\x80" + bytes(1199), 1)


def _plain(n: int) -> float:
    q: asyncio.Queue = asyncio.Queue()
    put, get = q.put_nowait, q.get_nowait
    t0 = time.thread_time()
    for _ in range(n):
        put(DATAGRAM)
        get()
    return time.thread_time() - t0


def _stamped(n: int) -> float:
    q = ArrivalStamps()
    late = Lateness()
    now = SYSTEM_CLOCK.monotonic
    put, get = q.put_nowait, q.get_nowait
    t0 = time.thread_time()
    for _ in range(n):
        put(DATAGRAM)
        get()
        age = now() - q.read_at  # what Ingress._on_rtp adds
        if age > late.worst:
            late.worst = age
    return time.thread_time() - t0


def run(datagrams: int = 200_000, repeat: int = 7) -> dict[str, Any]:
    plain: list[float] = []
    stamped: list[float] = []
    _plain(datagrams // 10)
    _stamped(datagrams // 10)
    for _ in range(repeat):
        plain.append(_plain(datagrams) * 1e6 / datagrams)
        stamped.append(_stamped(datagrams) * 1e6 / datagrams)
    a, b = statistics.median(plain), statistics.median(stamped)
    return {"plain_us": round(a, 3), "stamped_us": round(b, 3), "added_us": round(b - a, 3),
            "plain_per_round": [round(x, 3) for x in plain], "stamped_per_round": [round(x, 3) for x in stamped],
            "datagrams": datagrams, "repeat": repeat}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datagrams", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = run(args.datagrams, args.repeat)
    if args.json:
        print(json.dumps(result))
        return
    print(f"per datagram: plain queue {result['plain_us']} us, stamped + age check {result['stamped_us']} us: "
          f"+{result['added_us']} us (medians of {args.repeat} rounds of {args.datagrams})")


if __name__ == "__main__":
    main()

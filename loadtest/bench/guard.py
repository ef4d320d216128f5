"""Micro-benchmark: what the datagram guard (sfu/seams.py) adds to each received media datagram.

    python -m loadtest.bench.guard [--datagrams 200000] [--repeat 5]

Results: docs/benchmarks.md. Two real aioice socket protocols (`StunProtocol`) on one real `aioice.Connection`
whose nominated pair is set as ICE leaves it, fed the same SRTP-sized datagram from the nominated address:
  A "stock":   aioice's own `datagram_received` (a STUN parse attempt, then the hand-off to DTLS);
  B "guarded": the guard's (first-byte sort, the proven-address check, then the same hand-off).
The hand-off itself (`Connection.data_received`, a queue put) is replaced by a counter in both, so only the
datagram's way up to DTLS is timed. Phases interleave `repeat` times; the median of each is taken (the machine is
shared: the ratio holds, absolute times do not). Also timed: a stranger's datagram, dropped by the guard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

import aioice
from aioice import ice as aioice_ice

from sfu import seams

REMOTE = ("127.0.0.1", 40000)
STRANGER = ("127.0.0.1", 40001)


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, data: bytes, component: int) -> None:
        self.n += 1


def _protocol(handler: Any, connection: aioice.Connection) -> Any:
    protocol = aioice_ice.StunProtocol(connection)
    protocol.local_candidate = aioice.Candidate(foundation="1", component=1, transport="udp", priority=1,
                                                host="127.0.0.1", port=50000, type="host")
    protocol.datagram_received = handler.__get__(protocol)  # the stock or the guarded method, bound here
    return protocol


def run(datagrams: int, repeat: int) -> dict[str, Any]:
    """The figures, in an event loop of its own (aioice's protocols are made in one)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_run(datagrams, repeat))
    finally:
        loop.close()


async def _run(datagrams: int, repeat: int) -> dict[str, Any]:
    seams.guard_datagrams()
    stock_method, guarded_method = seams.GUARD.stock_received, aioice_ice.StunProtocol.datagram_received
    connection = aioice.Connection(ice_controlling=True)
    counter = _Count()
    connection.data_received = counter  # type: ignore[method-assign]
    stock, guarded = _protocol(stock_method, connection), _protocol(guarded_method, connection)
    remote = aioice.Candidate(foundation="2", component=1, transport="udp", priority=1, host=REMOTE[0],
                              port=REMOTE[1], type="host")
    pair = aioice_ice.CandidatePair(guarded, remote)
    seams.nominate(connection, pair)  # as ICE leaves it once nominated (the guard reads it)
    datagram = bytes([0x80, 0x60]) + os.urandom(1100)  # an SRTP packet's size and first bytes
    times: dict[str, list[float]] = {"stock": [], "guarded": [], "stranger": []}
    for _ in range(repeat):
        for name, protocol, addr in (("stock", stock, REMOTE), ("guarded", guarded, REMOTE),
                                     ("stranger", guarded, STRANGER)):
            pair.protocol = protocol  # each protocol is the nominated one while it is timed
            receive = protocol.datagram_received
            before = counter.n
            start = time.thread_time()
            for _ in range(datagrams):
                receive(datagram, addr)
            times[name].append((time.thread_time() - start) / datagrams * 1e9)
            passed = counter.n - before
            if passed != (0 if name == "stranger" else datagrams):
                raise RuntimeError(f"{name}: {passed} of {datagrams} datagrams reached DTLS")
    median = {name: statistics.median(v) for name, v in times.items()}
    return {"datagrams": datagrams, "repeat": repeat, "ns_per_datagram": {k: round(v) for k, v in median.items()},
            "guarded_over_stock": round(median["guarded"] / median["stock"], 2),
            "stranger_over_stock": round(median["stranger"] / median["stock"], 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench.guard", description=__doc__.splitlines()[0])
    parser.add_argument("--datagrams", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.datagrams, args.repeat)
    if args.json:
        print(json.dumps(result))
        return
    ns = result["ns_per_datagram"]
    print(f"per received datagram (median of {args.repeat} x {args.datagrams}): stock aioice {ns['stock']} ns, "
          f"guarded {ns['guarded']} ns ({result['guarded_over_stock']}x), a stranger's dropped {ns['stranger']} ns "
          f"({result['stranger_over_stock']}x)")


if __name__ == "__main__":
    main()

"""Where the server's CPU went: a short text summary of a cProfile dump (`--profile-server PATH`)."""

from __future__ import annotations

import io
import pstats
from pathlib import Path

TOP = 25


def summarize(path: str, text_path: str | None = None, top: int = TOP) -> list[dict]:
    """Top functions by own time (tottime) with their share of the profiled total; also written as text."""
    stats = pstats.Stats(path)
    total = stats.total_tt or 1e-9  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": nc, "tottime_s": round(tt, 3),
                     "cumtime_s": round(ct, 3), "share": round(tt / total, 4)})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    if text_path:
        buf = io.StringIO()
        s = pstats.Stats(path, stream=buf)
        s.sort_stats("tottime").print_stats(40)
        s.sort_stats("cumulative").print_stats(40)
        Path(text_path).write_text(buf.getvalue(), encoding="utf-8")
    return rows[:top]


# (label, function key as "file:line(name)" suffix) — cumulative time of these entry points, as shares of the total
CATEGORIES = [
    ("fan-out: Producer.fan_out -> Consumer.forward (all subscribers, in slices)", "sfu/producer.py", "fan_out"),
    ("  of which Consumer._write own time (header, tail, sendto + kernel loopback)", "sfu/consumer/base.py", "_write"),
    ("  of which SRTP protect (sfu.seams lean protect + libsrtp C)", "sfu/seams.py", "protect_packet"),
    ("event loop itself (uvloop C: epoll, UDP reads, callbacks)", "runners.py", "run"),
    ("RTCP out: sender reports per classroom stream (aiortc)", "rtcrtpsender.py", "_run_rtcp"),
    ("RTCP in: receiver reports / NACK from classrooms", "rtcdtlstransport.py", "_handle_rtcp_data"),
    ("ICE: STUN in (consent checks, binding requests)", "aioice/ice.py", "datagram_received"),
    ("signalling: join handler", "signaling/handlers/session.py", "handle_join"),
    ("signalling: subscribe (offer to a classroom)", "signaling/handlers/common.py", "subscribe"),
    ("signalling: websocket writes (events, offers)", "signaling/connection.py", "_write_loop"),
]


def categories(path: str) -> list[dict]:
    """Cumulative share of a few entry points (the event loop's own time for `run`)."""
    stats = pstats.Stats(path)
    total = stats.total_tt or 1e-9  # type: ignore[attr-defined]
    out = []
    for label, file_part, func in CATEGORIES:
        cum = own = 0.0
        for (file, _line, name), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if name == func and file_part in file:
                cum, own = max(cum, ct), max(own, tt)
        value = own if func in ("run", "_write") else cum
        out.append({"what": label, "seconds": round(value, 2), "share": round(value / total, 3)})
    return out

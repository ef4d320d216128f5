"""Turns per-classroom results and server measurements into the load-test report (numpy statistics)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TARGET_LOSS = 0.005  # the target: < 0.5 % loss


@dataclass
class Window:
    """What was measured on the server (and on the load generator) over the hold window."""

    wall_s: float
    server_cpu_s: float
    server_rss_bytes: int
    packets_out: int  # the server's forwarded packets over the window
    loadgen_cpu_s: float
    loadgen_processes: int
    loadgen_max_process_cpu_s: float


def _pct(values: list[float], q: float) -> float | None:
    return None if not values else round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 2)


def build_report(mode: str, requested: int, results: list[dict], window: Window, packets_forwarded_total: int,
                 config: dict[str, Any]) -> dict[str, Any]:
    connected = [r for r in results if r["connected"]]
    join = [r["join_ms"] for r in connected if r["join_ms"] is not None]
    first = [r["first_frame_ms"] for r in connected if r["first_frame_ms"] is not None]
    delays = [d for r in connected for d in r["delays_ms"]]
    expected = lost = recovered = received_originals = rtx = 0
    jitter: list[float] = []
    per_room_loss: list[float] = []
    for r in connected:
        room_expected = room_lost = 0
        for kind in ("audio", "video"):
            s = r.get(kind)
            if not s:
                continue
            room_expected += s["expected"]
            room_lost += s["lost"]
            recovered += s["recovered"]
            received_originals += s["packets"] - s["rtx_packets"]
            rtx += s["rtx_packets"]
            jitter.extend(s["jitter_ms"])
        expected += room_expected
        lost += room_lost
        per_room_loss.append(room_lost / room_expected if room_expected else 1.0)
    cores = window.server_cpu_s / window.wall_s if window.wall_s > 0 else 0.0
    n = len(connected)
    report: dict[str, Any] = {
        "server": mode,
        "classrooms_requested": requested,
        "classrooms_connected": n,
        "classrooms_failed": requested - n,
        "errors": sorted({r["error"] for r in results if r["error"]})[:5],
        "join_ms": {"p50": _pct(join, 50), "p95": _pct(join, 95), "max": round(max(join), 1) if join else None,
                    # p50 of each tenth of the ramp, in join order: shows whether joins slow down as N grows
                    "p50_by_ramp_tenth": [_pct(list(part), 50) for part in np.array_split(
                        np.asarray([r["join_ms"] for r in results if r["join_ms"] is not None]), 10) if len(part)]},
        "first_frame_ms": {"p50": _pct(first, 50), "p95": _pct(first, 95)},
        "classrooms_without_keyframe": sum(1 for r in connected if r["first_frame_ms"] is None),
        "loss_ratio": round(lost / expected, 6) if expected else None,
        "loss_ratio_before_repair": round((lost + recovered) / expected, 6) if expected else None,
        "loss_ratio_worst_classroom": round(max(per_room_loss), 6) if per_room_loss else None,
        "classrooms_over_target_loss": sum(1 for x in per_room_loss if x >= TARGET_LOSS),
        "jitter_ms_p95": _pct(jitter, 95),
        # video frames, teacher's send (first packet) to the classroom's socket read; None through the relay,
        # whose re-encoded frames carry no picture id the teacher stamped
        "delivery_ms": {"p50": _pct(delays, 50), "p95": _pct(delays, 95), "p99": _pct(delays, 99),
                        "over_150_ms": round(sum(1 for d in delays if d > 150) / len(delays), 4) if delays else None,
                        "samples": len(delays)},
        "packets_expected": expected,
        "packets_received": received_originals,
        "packets_retransmitted_received": rtx,
        "packets_forwarded": packets_forwarded_total,
        # share of packets the classrooms read on their fast path (the rest went through aiortc's DTLS transport)
        "classroom_fast_path_share": round(sum(r.get("fast_path_packets", 0) for r in connected)
                                           / max(1, received_originals + rtx), 3),
        "srtp_errors": sum(r.get("srtp_errors", 0) for r in connected),
        "packets_dropped_emulated": sum(r.get("dropped_emulated", 0) for r in connected),
        "window_s": round(window.wall_s, 2),
        "window_packets_forwarded": window.packets_out,
        "window_packets_per_s": round(window.packets_out / window.wall_s, 1) if window.wall_s else None,
        "server_cpu_percent": round(100 * cores, 1),
        "server_cpu_us_per_packet": round(window.server_cpu_s * 1e6 / window.packets_out, 2)
        if window.packets_out else None,
        "server_rss_mb": round(window.server_rss_bytes / 2**20, 1),
        # linear extrapolation: the classrooms this server carries at 100 % of one core at this load's cost each
        "classrooms_per_core": round(n / cores, 1) if cores > 0 and n else None,
        "loadgen_cpu_percent": round(100 * window.loadgen_cpu_s / window.wall_s, 1) if window.wall_s else None,
        "loadgen_processes": window.loadgen_processes,
        "loadgen_max_process_cpu_percent": round(100 * window.loadgen_max_process_cpu_s / window.wall_s, 1)
        if window.wall_s else None,
        "config": config,
    }
    if window.wall_s and report["window_packets_per_s"]:
        # per packet the classrooms received (~ the server's forwarded packets in the same window)
        report["loadgen_cpu_us_per_packet"] = round(window.loadgen_cpu_s * 1e6 / window.packets_out, 2)
    report["loadgen_saturated"] = (report["loadgen_max_process_cpu_percent"] or 0) >= 90
    report["meets_target"] = bool(n == requested and report["loss_ratio"] is not None
                                  and report["loss_ratio"] < TARGET_LOSS)
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One human line: what an operator reads first."""
    loss = report["loss_ratio"]
    return (f"{report['server']}: {report['classrooms_connected']}/{report['classrooms_requested']} classrooms, "
            f"loss {100 * loss:.3f} %, " if loss is not None else f"{report['server']}: no media, ") + (
        f"server CPU {report['server_cpu_percent']} % ({report['server_cpu_us_per_packet']} us/packet, "
        f"{report['server_rss_mb']} MB), ~{report['classrooms_per_core']} classrooms/core; join p95 "
        f"{report['join_ms']['p95']} ms, first frame p95 {report['first_frame_ms']['p95']} ms, delivery p99 "
        f"{report['delivery_ms']['p99']} ms, jitter p95 {report['jitter_ms_p95']} ms; load generator "
        f"{report['loadgen_cpu_percent']} % over {report['loadgen_processes']} process(es)"
        + (" SATURATED" if report["loadgen_saturated"] else ""))

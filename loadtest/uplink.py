"""`python -m loadtest uplink`: what the interactive classroom costs the server. At each size N, one run without
classroom uplinks and one with them (every classroom publishing its small camera and microphone, the teacher's
wall showing `--wall` tiles), same settings; then a markdown table and the figures derived from the pairs
(docs/benchmarks.md, "The interactive classroom: what classroom uplinks cost")."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.report import summary_line
from loadtest.runner import DEFAULT_WALL, LoadTestConfig, run_loadtest

DEFAULT_CAMERA_KBPS = 150  # KETANG_CLASSROOM_UPLINK_KBPS's default
PLAN_N = 400  # the lesson size the conclusions are extrapolated to
TEACHER_PPS = 112  # the synthetic teacher's packets/s at the default 500 kbit/s (VP8 30 fps + Opus)
TEACHER_BEHIND = 0.9  # the server took in less than this share of them in the window: it fell behind
DELIVERY_P99_LIMIT_MS = 1000.0  # teacher -> classroom; beyond this the lesson is not live any more


def _one(n: int, uplink_kbps: int, args: argparse.Namespace) -> dict[str, Any]:
    cfg = LoadTestConfig(classrooms=n, duration_s=args.duration, ramp_per_s=args.ramp, bitrate_kbps=args.bitrate,
                         workers=args.workers, quiet=args.quiet, classroom_mode=args.classroom_mode,
                         classroom_loss=args.classroom_loss, classroom_uplink_kbps=uplink_kbps,
                         wall=args.wall if uplink_kbps else 0, classroom_demand=not args.ignore_demand)
    report = run_loadtest(cfg)
    print(summary_line(report), file=sys.stderr, flush=True)
    return report


def run_pairs(args: argparse.Namespace) -> int:
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
    else:
        kbps = args.classroom_uplink or DEFAULT_CAMERA_KBPS
        if args.wall is None:
            args.wall = DEFAULT_WALL
        pairs = [{"n": n, "without": _one(n, 0, args), "with": _one(n, kbps, args)}
                 for n in (int(x) for x in args.sizes.split(",") if x.strip())]
        data = {"command": "python -m loadtest " + shlex.join(sys.argv[1:]), "pairs": pairs}
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(render(data))
    return 0


def _cores(r: dict) -> float:
    return (r["server_cpu_percent"] or 0.0) / 100


def overloaded(r: dict) -> str | None:
    """Why a run's per-packet figures mean nothing (the server fell behind), or None. Loss stays 0 when it falls
    behind: packets queue in user space (aioice's per-connection queue) and arrive seconds late."""
    up = r.get("uplink") or {}
    wall = up.get("wall") or {}
    sent = r["config"].get("teacher_packets_sent") or 0
    teacher_in = up.get("teacher_packets_in_per_s", r.get("window_packets_in_per_s"))
    p99 = r["delivery_ms"]["p99"]
    if r["classrooms_connected"] < r["classrooms_requested"]:
        return f"only {r['classrooms_connected']} of {r['classrooms_requested']} classrooms connected"
    if up and wall.get("tiles_receiving", 0) < wall.get("tiles", 0):
        return f"only {wall.get('tiles_receiving', 0)} of {wall.get('tiles', 0)} wall tiles received"
    if sent and teacher_in is not None and teacher_in < TEACHER_BEHIND * TEACHER_PPS:
        return f"the server took in {teacher_in:.0f} of the teacher's ~{TEACHER_PPS} packets/s"
    if p99 is None or p99 > DELIVERY_P99_LIMIT_MS:
        return "no delivery measured" if p99 is None else f"delivery p99 {p99:.0f} ms"
    return None


def derive(data: dict) -> dict[str, Any]:
    """Figures from the pairs: the marginal cost of a forwarded packet (fitted over the runs without uplinks),
    the extra CPU per uplink packet received, classrooms per core with uplinks, and the cost of forwarding every
    classroom's tile instead of the visible ones. Pairs whose run with uplinks overloaded the server are named,
    not used."""
    pairs = data["pairs"]
    base = [(p["without"]["window_packets_per_s"], _cores(p["without"])) for p in pairs
            if not overloaded(p["without"])]
    fwd_us = None
    if len(base) >= 2:
        slope, _ = np.polyfit(*np.array(base).T, 1)
        fwd_us = float(slope) * 1e6
    rows = []
    for p in pairs:
        a, b = p["without"], p["with"]
        up = b["uplink"]
        why = overloaded(b) or overloaded(a)
        if why:
            rows.append({"n": p["n"], "overloaded": why})
            continue
        extra_cores = _cores(b) - _cores(a)
        uplink_pps = up["classroom_packets_in_per_s"] or 0.0
        wall_pps = up["wall_packets_forwarded_per_s"] or 0.0
        row = {"n": p["n"], "extra_cores": extra_cores, "uplink_pps": uplink_pps, "wall_pps": wall_pps,
               "us_per_uplink_packet": extra_cores * 1e6 / uplink_pps if uplink_pps else None,
               "classrooms_per_core": b["classrooms_per_core"], "tiles": up["wall"]["tiles"],
               "per_classroom_pps": up["classroom_packets_in_per_classroom_per_s"],
               "per_classroom_kbps": up["classroom_uplink_kbps"]}
        if fwd_us is not None and uplink_pps:
            # the same extra CPU less what forwarding the wall's packets costs at the marginal forwarding cost
            row["us_per_uplink_packet_received_only"] = (extra_cores * 1e6 - wall_pps * fwd_us) / uplink_pps
        rows.append(row)
    out: dict[str, Any] = {"forward_us_marginal": fwd_us, "rows": rows}
    good = [r for r in rows if "overloaded" not in r and r["per_classroom_pps"]]
    if good and fwd_us is not None:
        last = good[-1]
        extra_pps = (PLAN_N - last["tiles"]) * last["per_classroom_pps"]
        out["all_tiles_at_plan"] = {"n": PLAN_N, "tiles": last["tiles"], "extra_packets_per_s": round(extra_pps),
                                    "extra_cores": round(extra_pps * fwd_us / 1e6, 3),
                                    "teacher_packets_per_s": round(PLAN_N * last["per_classroom_pps"]),
                                    "teacher_mbps": round(PLAN_N * (last["per_classroom_kbps"] or 0) / 1000, 1),
                                    "visible_mbps": round(last["tiles"] * (last["per_classroom_kbps"] or 0) / 1000,
                                                          1)}
    return out


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _row(n: int, r: dict) -> str:
    up = r.get("uplink")
    wall = (up or {}).get("wall") or {}
    cfg = r["config"]
    loss = None if r["loss_ratio"] is None else 100 * r["loss_ratio"]
    wall_loss = None if wall.get("loss_ratio") is None else 100 * wall["loss_ratio"]
    teacher_in = up["teacher_packets_in_per_s"] if up else r.get("window_packets_in_per_s")
    to_rooms = up["packets_to_classrooms_per_s"] if up else r["window_packets_per_s"]
    cells = [
        str(n), "off" if not up else f"{up['camera_kbps']} kbit/s, wall {wall.get('tiles', 0)}",
        f"{r['classrooms_connected']}/{r['classrooms_requested']}", _f(r["server_cpu_percent"]),
        _f(up["classroom_packets_in_per_s"] if up else 0, "{:.0f}") + " + " + _f(teacher_in, "{:.0f}"),
        _f(to_rooms, "{:.0f}") + " + " + _f(up["wall_packets_forwarded_per_s"] if up else 0, "{:.0f}"),
        f"{wall.get('tiles_receiving', 0)}/{wall.get('tiles', 0)}" if up else "–",
        _f(loss, "{:.3f}") + " / " + _f(wall_loss, "{:.3f}"),
        _f(r["delivery_ms"]["p50"]) + " / " + _f(r["delivery_ms"]["p99"], "{:.0f}"),
        _f(r["server_cpu_us_per_packet"], "{:.2f}"), _f(up["server_cpu_us_per_received_packet"] if up else None,
                                                       "{:.2f}"),
        "overloaded" if overloaded(r) else "**" + _f(r["classrooms_per_core"], "{:.0f}") + "**",
        _f(cfg.get("server_threads"), "{}") + " / " + _f(cfg.get("server_context_switches_per_s"), "{}"),
        _f(r["loadgen_cpu_percent"]), _f(cfg.get("background_cores"), "{}")]
    return "| " + " | ".join(cells) + " |"


def render(data: dict) -> str:
    lines = ["```", data["command"], "```", "",
             ("| N | classroom uplinks | connected | server CPU % | packets in /s (classrooms + teacher) | "
              "forwarded /s (to classrooms + to wall) | wall tiles receiving | loss % (classrooms / wall) | "
              "delivery p50 / p99 ms | server µs / forwarded packet | server µs / received packet | "
              "classrooms / core | server threads / context switches /s | load gen CPU % | background cores |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(p["n"], p[label]) for p in data["pairs"] for label in ("without", "with")]
    d = derive(data)
    lines += [""]
    if d["forward_us_marginal"] is not None:
        lines.append(f"Marginal cost of a forwarded packet, fitted over the runs without uplinks: "
                     f"{d['forward_us_marginal']:.2f} µs.")
    for row in d["rows"]:
        if "overloaded" in row:
            lines.append(f"N = {row['n']}: overloaded ({row['overloaded']}): no per-packet figures.")
            continue
        lines.append(f"N = {row['n']}: uplinks add {100 * row['extra_cores']:.1f} % of a core for "
                     f"{row['uplink_pps']:.0f} uplink packets/s in ({row['per_classroom_pps']} per classroom) and "
                     f"{row['wall_pps']:.0f} packets/s to the wall: {_f(row['us_per_uplink_packet'], '{:.2f}')} µs "
                     f"per uplink packet received, wall included; "
                     f"{_f(row.get('us_per_uplink_packet_received_only'), '{:.2f}')} µs without the wall's "
                     f"forwarding; {_f(row['classrooms_per_core'], '{:.0f}')} classrooms per core with uplinks.")
    if d.get("all_tiles_at_plan"):
        a = d["all_tiles_at_plan"]
        lines.append(f"Every tile instead of {a['tiles']} at N = {a['n']}: +{a['extra_packets_per_s']} forwarded "
                     f"packets/s = +{100 * a['extra_cores']:.1f} % of a core on the server (at the marginal cost "
                     f"above), and {a['teacher_packets_per_s']} packets/s, {a['teacher_mbps']} Mbit/s into the "
                     f"teacher's page instead of {a['visible_mbps']} Mbit/s.")
    return "\n".join(lines)


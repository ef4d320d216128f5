"""Turns per-classroom results and server measurements into the load-test report (numpy statistics)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

TARGET_LOSS = 0.005  # the target: < 0.5 % loss
# audio continues for a classroom when, over the hold window, it got at least this share of the teacher's Opus
# packets (50 a second: loadtest/media.py AUDIO_FRAME_S) and never went longer than AUDIO_GAP_LIMIT_MS without one
AUDIO_CONTINUOUS_SHARE = 0.95
AUDIO_GAP_LIMIT_MS = 400.0
TEACHER_AUDIO_PPS = 50


@dataclass(frozen=True)
class ServerCounts:
    """The server's own packet counters for one lesson (its stats API), at one instant or as a difference."""

    to_classrooms: int = 0  # packets sent to every receiver but the teacher (the teacher's tracks, mostly)
    to_wall: int = 0  # packets sent to the teacher's receiving connection: its wall's tiles
    teacher_in: int = 0  # packets received from the teacher (new ones: duplicates and padding not counted)
    classrooms_in: int = 0  # packets received from the classrooms' own cameras and microphones
    classroom_tracks: int = 0  # the classrooms' published tracks (a level, not a counter)
    classroom_tracks_forwarded: int = 0  # ... of which someone receives (a level)

    @classmethod
    def from_stats(cls, body: dict, teacher: str | None) -> ServerCounts:
        out = {pid: sum(int(c.get("packets_out", 0)) for c in consumers)
               for pid, consumers in body.get("subscribers", {}).items()}
        to_wall = out.pop(teacher, 0) if teacher is not None else 0
        mine, theirs = [], []
        for p in body.get("producers", []):
            (mine if teacher is None or p.get("participant") in (teacher, None) else theirs).append(p)
        # a simulcast camera's upper layers are producers of their own, listed under `layers` only
        upper = sum(int(layer.get("packets_in", 0)) for p in mine for layer in body.get("layers", {}).get(p.get("id"), [])
                    if layer.get("id") != p.get("id"))
        return cls(to_classrooms=sum(out.values()), to_wall=to_wall,
                   teacher_in=upper + sum(int(p.get("packets_in", 0)) for p in mine),
                   classrooms_in=sum(int(p.get("packets_in", 0)) for p in theirs), classroom_tracks=len(theirs),
                   classroom_tracks_forwarded=sum(1 for p in theirs if p.get("consumers")))

    def __sub__(self, before: ServerCounts) -> ServerCounts:
        """The counters' growth since `before` (the track levels are this instant's)."""
        levels = ("classroom_tracks", "classroom_tracks_forwarded")
        return ServerCounts(**{f.name: getattr(self, f.name) - (0 if f.name in levels else getattr(before, f.name))
                               for f in fields(self)})

    @property
    def packets_out(self) -> int:
        return self.to_classrooms + self.to_wall

    @property
    def packets_in(self) -> int:
        return self.teacher_in + self.classrooms_in


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
    counts: ServerCounts = field(default_factory=ServerCounts)  # the server's counters' growth over the window


def _pct(values: list[float], q: float) -> float | None:
    return None if not values else round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 2)


@dataclass
class _Totals:
    """Receive figures added up over streams (audio and video, one or many receivers)."""

    expected: int = 0
    lost: int = 0
    recovered: int = 0
    received: int = 0  # original packets (not retransmissions)
    rtx: int = 0
    packets: int = 0  # everything, retransmissions included
    bytes: int = 0
    jitter: list[float] = field(default_factory=list)

    def add(self, *streams: dict | None) -> _Totals:
        for s in streams:
            if not s:
                continue
            self.expected += s["expected"]
            self.lost += s["lost"]
            self.recovered += s["recovered"]
            self.received += s["packets"] - s["rtx_packets"]
            self.rtx += s["rtx_packets"]
            self.packets += s["packets"]
            self.bytes += s["bytes"]
            self.jitter.extend(s["jitter_ms"])
        return self

    def loss(self) -> float | None:
        return round(self.lost / self.expected, 6) if self.expected else None

    def loss_before_repair(self) -> float | None:
        return round((self.lost + self.recovered) / self.expected, 6) if self.expected else None


def build_report(mode: str, requested: int, results: list[dict], window: Window, packets_forwarded_total: int,
                 config: dict[str, Any]) -> dict[str, Any]:
    connected = [r for r in results if r["connected"]]
    join = [r["join_ms"] for r in connected if r["join_ms"] is not None]
    first = [r["first_frame_ms"] for r in connected if r["first_frame_ms"] is not None]
    delays = [d for r in connected for d in r["delays_ms"]]
    total = _Totals()
    per_room_loss: list[float] = []
    for r in connected:
        room = _Totals().add(r.get("audio"), r.get("video"))
        total.add(r.get("audio"), r.get("video"))
        per_room_loss.append(room.lost / room.expected if room.expected else 1.0)
    expected, received_originals, rtx, jitter = total.expected, total.received, total.rtx, total.jitter
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
        "loss_ratio": total.loss(),
        "loss_ratio_before_repair": total.loss_before_repair(),
        "loss_ratio_worst_classroom": round(max(per_room_loss), 6) if per_room_loss else None,
        "classrooms_over_target_loss": sum(1 for x in per_room_loss if x >= TARGET_LOSS),
        "jitter_ms_p95": _pct(jitter, 95),
        # video frames, teacher's send (first packet) to the classroom's socket read; None through the relay,
        # whose re-encoded frames carry no picture id the teacher stamped
        "delivery_ms": {"p50": _pct(delays, 50), "p95": _pct(delays, 95), "p99": _pct(delays, 99),
                        "over_150_ms": round(sum(1 for d in delays if d > 150) / len(delays), 4) if delays else None,
                        "samples": len(delays),
                        # frames the SFU replayed from its cache when a classroom's video (re)started, left out
                        "replayed_frames": sum(r.get("replayed_frames", 0) for r in connected)},
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
        # what the server received (the teacher's packets; with uplinks the classrooms' too) in the window
        "window_packets_in_per_s": _per_s(window.counts.packets_in, window),
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
    report["audio"] = audio_continuity(connected, window.wall_s)
    if window.wall_s and report["window_packets_per_s"]:
        # per packet the classrooms received (~ the server's forwarded packets in the same window)
        report["loadgen_cpu_us_per_packet"] = round(window.loadgen_cpu_s * 1e6 / window.packets_out, 2)
    report["loadgen_saturated"] = (report["loadgen_max_process_cpu_percent"] or 0) >= 90
    report["meets_target"] = bool(n == requested and report["loss_ratio"] is not None
                                  and report["loss_ratio"] < TARGET_LOSS)
    return report


def audio_continuity(connected: list[dict], window_s: float) -> dict[str, Any]:
    """Whether every classroom kept hearing the teacher through the window: its share of the teacher's audio
    packets (from its first audio packet in the window on) and its longest gap between two of them."""
    rooms = [r for r in connected if "audio_window_packets" in r]
    # each classroom over its own part of the window (one let in after a refusal joined during it): from its first
    # audio packet on, or the whole window when it got none
    shares = []
    for r in rooms:
        span = r.get("audio_window_span_s")
        expected = min(span, window_s) * TEACHER_AUDIO_PPS + 1 if span else window_s * TEACHER_AUDIO_PPS
        shares.append(min(1.0, r["audio_window_packets"] / expected) if r["audio_window_packets"] else 0.0)
    gaps = [r["audio_gap_max_ms"] for r in rooms]
    ok = sum(1 for share, gap in zip(shares, gaps) if share >= AUDIO_CONTINUOUS_SHARE and gap <= AUDIO_GAP_LIMIT_MS)
    return {"classrooms": len(rooms), "classrooms_continuous": ok,
            "share_min": round(min(shares), 3) if shares else None,
            "share_p50": _pct(shares, 50),
            "gap_max_ms": {"p50": _pct(gaps, 50), "p99": _pct(gaps, 99), "max": max(gaps) if gaps else None}}


def _per_s(n: int, window: Window) -> float | None:
    return round(n / window.wall_s, 1) if window.wall_s else None


def _us_per(window: Window, packets: int) -> float | None:
    return round(window.server_cpu_s * 1e6 / packets, 2) if packets > 0 else None


def uplink_report(camera_kbps: int, results: list[dict], window: Window, final: ServerCounts,
                  wall: dict | None) -> dict[str, Any]:
    """The interactive classroom's figures: what the classrooms send the server, what reaches the teacher's wall,
    and the server's CPU per packet counted both ways. Every uplink packet the server receives costs it CPU
    (SRTP unprotect, ingress, cache) although only the visible tiles' packets are forwarded: so the CPU per
    forwarded packet alone would flatter or blame the forwarding; both divisions are given."""
    connected = [r for r in results if r["connected"]]
    ups = [r["uplink"] for r in connected if r.get("uplink")]
    publishing = [u for u in ups if u["publish_ms"] is not None]
    c = window.counts
    # classrooms send only while somebody receives them (the server's `demand`; --ignore-demand: always): the
    # rates per classroom are those of a classroom while it sends
    sending = sum(u["sending_s"] for u in publishing)
    active = sum(max(0.0, u["sending_s"] - u.get("camera_paused_s", 0.0)) for u in publishing)
    active_share = active / sending if sending else 0.0
    per_room_pps = (c.classrooms_in / window.wall_s / (len(publishing) * active_share)
                    if publishing and window.wall_s and active_share else None)
    per_room_kbps = sum(u["bytes_sent"] for u in publishing) * 8 / 1000 / active if active else None
    out: dict[str, Any] = {
        "camera_kbps": camera_kbps,
        "classrooms_publishing": len(publishing),
        # the share of the classrooms' time their camera was not sent because nobody received it
        "camera_paused_share": round(1 - active_share, 3) if sending else None,
        "camera_paused_s": {r.get("index", i): r["uplink"].get("camera_paused_s", 0.0)
                            for i, r in enumerate(connected) if r.get("uplink")},
        "publish_ms": {"p50": _pct([u["publish_ms"] for u in publishing], 50),
                       "p95": _pct([u["publish_ms"] for u in publishing], 95)},
        # what one classroom sends (SRTP bytes, audio + video) and what the server receives from each
        "classroom_uplink_kbps": round(per_room_kbps, 1) if per_room_kbps else None,
        "classroom_packets_in_per_classroom_per_s": round(per_room_pps, 1) if per_room_pps else None,
        "classroom_packets_sent": sum(u["packets_sent"] for u in ups),
        # the server's counters over the hold window, per second
        "classroom_packets_in_per_s": _per_s(c.classrooms_in, window),
        "teacher_packets_in_per_s": _per_s(c.teacher_in, window),
        "packets_in_per_s": _per_s(c.packets_in, window),
        "packets_to_classrooms_per_s": _per_s(c.to_classrooms, window),
        "wall_packets_forwarded_per_s": _per_s(c.to_wall, window),
        "packets_forwarded_per_s": _per_s(c.packets_out, window),
        "classroom_tracks": final.classroom_tracks,
        "classroom_tracks_forwarded": final.classroom_tracks_forwarded,
        # the same server CPU (hold window) divided three ways
        "server_cpu_us_per_forwarded_packet": _us_per(window, c.packets_out),
        "server_cpu_us_per_received_packet": _us_per(window, c.packets_in),
        "server_cpu_us_per_packet_handled": _us_per(window, c.packets_in + c.packets_out),
    }
    if wall is not None:
        tiles = wall["tiles"]
        total = _Totals()
        for tile in tiles.values():
            total.add(tile.get("audio"), tile.get("video"))
        receiving = [pid for pid, t in tiles.items() if all(t.get(k) and t[k]["packets"] for k in ("audio", "video"))]
        out["wall"] = {
            "tiles": len(wall["visible"]),
            "tiles_receiving": len(receiving),  # both the camera's and the microphone's packets arrived
            "visible": wall["visible"],
            "others": wall["others"],  # classrooms not on the wall whose packets arrived anyway: must be none
            "others_packets": wall["others_packets"],
            "ready_ms": None if wall["ready_ms"] is None else round(wall["ready_ms"], 1),
            "packets_forwarded": final.to_wall,  # the server's count, whole run
            "packets_received": total.received,  # the wall's count of original packets, whole run
            "packets_retransmitted_received": total.rtx,
            "loss_ratio": total.loss(),
            "loss_ratio_before_repair": total.loss_before_repair(),
            "jitter_ms_p95": _pct(total.jitter, 95),
            "unrouted_packets": wall["unrouted_packets"],
            "srtp_errors": wall["srtp_errors"],
            "per_tile": {pid: {k: (t[k] or {}).get("packets", 0) for k in ("audio", "video")}
                         for pid, t in tiles.items()},
        }
        if per_room_pps and per_room_kbps:
            n, shown = len(connected), len(wall["visible"])
            # what the teacher's page (and the server) would carry if every classroom's tile flowed to it
            out["all_tiles_estimate"] = {
                "tiles": n, "teacher_packets_per_s": round(n * per_room_pps), "teacher_mbps":
                round(n * per_room_kbps / 1000, 2), "visible_packets_per_s": round(shown * per_room_pps),
                "visible_mbps": round(shown * per_room_kbps / 1000, 2),
                "extra_forwarded_packets_per_s": round((n - shown) * per_room_pps)}
    return out


def simulcast_report(requested: int, results: list[dict], window: Window, stats0: dict, stats1: dict,
                     sent: list[dict], classroom_id: Callable[[int], str], sent0: list[dict] | None = None,
                     sent1: list[dict] | None = None) -> dict[str, Any]:
    """A simulcast teacher's figures: per layer what the teacher sent and the server received (its stats API),
    and per classroom the layer it ended the hold window on (the server's `video.{pid}.simulcast`, read at the
    window's end) and the layer of the last frame it received (told by the frame's bytes). Mixes count every
    requested classroom: `none` is one without a layer (not connected, or its video not started)."""
    rids = [x["rid"] for x in sent]
    tracks1 = stats1.get("layers", {})
    track = next((t for t, ls in tracks1.items() if len(ls) == len(rids)), next(iter(tracks1), None))
    before = {x["id"]: x for x in stats0.get("layers", {}).get(track, [])} if track else {}
    layers = []
    for i, rid in enumerate(rids):
        server = tracks1.get(track, [])[i] if track and i < len(tracks1.get(track, [])) else {}
        grown = int(server.get("packets_in", 0)) - int(before.get(server.get("id"), {}).get("packets_in", 0))
        # the teacher's packets sent in the window (sent0/sent1: its figures at the window's ends) against what
        # the server took in: a server that cannot keep up reads its socket late (aioice queues without bound)
        # and takes in less than is sent, with no loss, while the delivery delay grows
        teacher_pps = _per_s(sent1[i]["packets_sent"] - sent0[i]["packets_sent"], window) \
            if sent0 and sent1 and i < min(len(sent0), len(sent1)) else None
        layers.append({**sent[i], "server_ssrc": server.get("ssrc"), "server_packets_in": server.get("packets_in"),
                       "server_kbps": server.get("kbps"), "teacher_packets_per_s": teacher_pps,
                       "server_packets_in_per_s": _per_s(max(0, grown), window)})

    def rid_of(layer: Any) -> str:
        return rids[layer] if isinstance(layer, int) and 0 <= layer < len(rids) else "none"

    received = {r["index"]: r.get("simulcast") or {} for r in results if r["connected"]}
    video = stats1.get("video", {})
    per_classroom = []
    for i in range(requested):
        states = (video.get(classroom_id(i)) or {}).get("simulcast") or {}
        st = states.get(track) if track in states else next(iter(states.values()), {})
        st = st or {}
        per_classroom.append({"index": i, "layer": rid_of(st.get("layer")), "target": rid_of(st.get("target")),
                              "received": rid_of(received.get(i, {}).get("last_layer")),
                              "reason": st.get("reason", "")})

    def mix(key: str) -> dict[str, int]:
        out = {rid: 0 for rid in [*rids, "none"]}
        for c in per_classroom:
            out[c[key]] += 1
        return out

    frames = [sum(x) for x in zip(*(s.get("frames_by_layer", []) for s in received.values()))] if received else []
    return {
        "track": track,
        "rids": rids,
        "layers": layers,
        # the server took in (almost) every packet the teacher sent in the window: not falling behind
        "server_keeps_up": all(x["server_packets_in_per_s"] >= 0.97 * x["teacher_packets_per_s"] for x in layers)
        if layers and all(x["teacher_packets_per_s"] for x in layers) else None,
        # the layer each classroom was forwarded at the end of the hold window (the server's view)
        "layer_mix": mix("layer"),
        "target_mix": mix("target"),  # ... and the one its selector chose (a switch waits for a key frame)
        # the layer of the last frame each classroom received (its own view, after the teacher stopped)
        "received_layer_mix": mix("received"),
        "server_and_classroom_agree": sum(1 for c in per_classroom if c["layer"] == c["received"] != "none"),
        "frames_received_by_layer": dict(zip(rids, frames)),
        "frames_unrecognised": sum(s.get("frames_unknown", 0) for s in received.values()),
        "per_classroom": per_classroom,
    }


def summary_line(report: dict[str, Any]) -> str:
    """One human line: what an operator reads first."""
    loss = report["loss_ratio"]
    return (f"{report['server']}: {report['classrooms_connected']}/{report['classrooms_requested']} classrooms, "
            f"loss {100 * loss:.3f} %, " if loss is not None else f"{report['server']}: no media, ") + (
        f"server CPU {report['server_cpu_percent']} % ({report['server_cpu_us_per_packet']} us/packet, "
        f"{report['server_rss_mb']} MB), ~{report['classrooms_per_core']} classrooms/core; join p95 "
        f"{report['join_ms']['p95']} ms, first frame p95 {report['first_frame_ms']['p95']} ms, delivery p99 "
        f"{report['delivery_ms']['p99']} ms{_audio_summary(report.get('audio'))}, jitter p95 "
        f"{report['jitter_ms_p95']} ms; load generator "
        f"{report['loadgen_cpu_percent']} % over {report['loadgen_processes']} process(es)"
        + (" SATURATED" if report["loadgen_saturated"] else "") + _uplink_summary(report.get("uplink"))
        + _simulcast_summary(report.get("simulcast")))


def _audio_summary(audio: dict | None) -> str:
    if not audio or not audio["classrooms"]:
        return ""
    return (f", audio continuous in {audio['classrooms_continuous']}/{audio['classrooms']} classrooms "
            f"(longest gap {audio['gap_max_ms']['max']} ms)")


def _simulcast_summary(sc: dict | None) -> str:
    if not sc:
        return ""
    layers = ", ".join(f"{x['rid']} {x['width']}x{x['height']} {x['server_packets_in_per_s']} packets/s in"
                       for x in sc["layers"])
    mix = " ".join(f"{k}={v}" for k, v in sc["layer_mix"].items())
    behind = "" if sc.get("server_keeps_up") is not False else " (SERVER FALLING BEHIND the teacher's packets)"
    return f"; simulcast: {layers}; classrooms' layers {mix}{behind}"


def _uplink_summary(up: dict | None) -> str:
    if not up:
        return ""
    wall = up.get("wall") or {}
    loss = wall.get("loss_ratio")
    return (f"; uplinks: {up['classrooms_publishing']} classrooms publishing, {up['classroom_packets_in_per_s']} "
            f"packets/s in, {up['wall_packets_forwarded_per_s']} packets/s to the wall "
            f"({wall.get('tiles_receiving', 0)}/{wall.get('tiles', 0)} tiles, loss "
            f"{'–' if loss is None else f'{100 * loss:.3f} %'}); server {up['server_cpu_us_per_forwarded_packet']} "
            f"us per forwarded packet, {up['server_cpu_us_per_received_packet']} us per received packet")

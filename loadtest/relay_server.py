"""The usual alternative, for comparison only: a lesson server built the way aiortc users usually build one —
aiortc's `MediaRelay` decodes the teacher's tracks once and every classroom's `RTCRtpSender` re-encodes them
(one VP8 and one Opus encoder per classroom). Not part of ketang.

It speaks the subset of docs/protocol.md the load tester uses: `join` (signed token, as ketang), `publish`
(teacher offer -> `answer`), server `offer` to classrooms (once the teacher's tracks exist) and their
`answer`; plus `GET /healthz` and `GET /api/lessons/{lesson}/stats` with per-classroom `packets_out`.

    KETANG_SECRET=... python -m loadtest.relay_server --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from sfu import seams
from signaling.tokens import SECRET_ENV_VAR, TokenError, verify_token

log = logging.getLogger("ketang.loadtest.relay")


@dataclass
class Lesson:
    id: str
    relay: MediaRelay = field(default_factory=MediaRelay)
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)
    teacher: RTCPeerConnection | None = None
    subscribers: dict[str, RTCPeerConnection] = field(default_factory=dict)
    waiting: dict[str, web.WebSocketResponse] = field(default_factory=dict)  # classrooms waiting for tracks


class RelayServer:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.lessons: dict[str, Lesson] = {}
        self.started = time.time()

    def lesson(self, lesson_id: str) -> Lesson:
        if lesson_id not in self.lessons:
            self.lessons[lesson_id] = Lesson(lesson_id)
        return self.lessons[lesson_id]

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "lessons": len(self.lessons),
                                  "participants": sum(len(x.subscribers) for x in self.lessons.values()),
                                  "uptime_s": time.time() - self.started})

    async def stats(self, request: web.Request) -> web.Response:
        try:
            verify_token(self.secret, request.headers.get("Authorization", "").removeprefix("Bearer "))
        except TokenError:
            return web.json_response({"type": "error", "code": "token_invalid"}, status=401)
        lesson = self.lessons.get(request.match_info["lesson"])
        subs: dict[str, list[dict]] = {}
        for pid, pc in (lesson.subscribers.items() if lesson else ()):
            subs[pid] = [{"kind": s.kind, "packets_out": seams.sender_counts(s)[0],
                          "octets_out": seams.sender_counts(s)[1]} for s in pc.getSenders()]
        return web.json_response({"producers": [], "subscribers": subs})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        pid = secrets.token_urlsafe(12)
        joined: tuple[str, Lesson] | None = None
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                msg = json.loads(frame.data)
                kind, ref = msg.get("type"), msg.get("id")
                try:
                    if kind == "join":
                        claims = verify_token(self.secret, msg.get("token", ""), msg.get("lesson"))
                        lesson = self.lesson(claims.lesson)
                        joined = (claims.role, lesson)
                        await ws.send_json({"type": "joined", "ref": ref,
                                            "participant": {"id": pid, "role": claims.role, "name": claims.name},
                                            "lesson": {"id": lesson.id}, "participants": [], "tracks": []})
                        if claims.role != "teacher":
                            await self._offer(pid, lesson, ws)
                    elif kind == "publish" and joined and joined[0] == "teacher":
                        answer = await self._publish(joined[1], msg["sdp"])
                        await ws.send_json({"type": "answer", "ref": ref, "sdp": answer})
                        for sub_id, sub_ws in list(joined[1].waiting.items()):
                            del joined[1].waiting[sub_id]
                            await self._offer(sub_id, joined[1], sub_ws)
                    elif kind == "answer" and joined and pid in joined[1].subscribers:
                        await joined[1].subscribers[pid].setRemoteDescription(
                            RTCSessionDescription(msg["sdp"], "answer"))
                    elif kind == "ping":
                        await ws.send_json({"type": "pong", "ref": ref})
                except TokenError as exc:
                    await ws.send_json({"type": "error", "code": exc.code, "message": str(exc), "ref": ref})
                except Exception as exc:
                    log.exception("handling %s", kind)
                    await ws.send_json({"type": "error", "code": "internal", "message": str(exc), "ref": ref})
        finally:
            if joined:
                lesson = joined[1]
                lesson.waiting.pop(pid, None)
                pc = lesson.subscribers.pop(pid, None)
                if pc is not None:
                    await pc.close()
                if joined[0] == "teacher" and lesson.teacher is not None:
                    await lesson.teacher.close()
                    lesson.teacher = None
                    lesson.tracks.clear()
        return ws

    async def _publish(self, lesson: Lesson, sdp: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        lesson.teacher = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            lesson.tracks[track.kind] = track

        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def _offer(self, pid: str, lesson: Lesson, ws: web.WebSocketResponse) -> None:
        if not lesson.tracks:
            lesson.waiting[pid] = ws  # offered when the teacher publishes
            return
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        lesson.subscribers[pid] = pc
        slots = []
        for kind in ("audio", "video"):
            track = lesson.tracks.get(kind)
            if track is not None:
                # the relay hands each subscriber its own proxy of the decoded track; its sender encodes it
                pc.addTransceiver(lesson.relay.subscribe(track), direction="sendonly")
                slots.append(kind)
        await pc.setLocalDescription(await pc.createOffer())
        tracks = [{"mid": t.mid, "kind": t.kind, "track": t.kind, "source": None} for t in pc.getTransceivers()]
        await ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp, "tracks": tracks})


async def run(port: int, host: str, secret: str) -> None:
    server = RelayServer(secret)
    app = web.Application()
    app.router.add_get("/healthz", server.healthz)
    app.router.add_get("/ws", server.websocket)
    app.router.add_get("/api/lessons/{lesson}/stats", server.stats)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"relay reference server on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for lesson in server.lessons.values():
        for pc in list(lesson.subscribers.values()) + ([lesson.teacher] if lesson.teacher else []):
            await pc.close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="aiortc MediaRelay reference server (decode once, encode per "
                                                 "subscriber), for ketang's load-test baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    secret = os.environ.get(SECRET_ENV_VAR)
    if not secret:
        raise SystemExit(f"set {SECRET_ENV_VAR}")
    asyncio.run(run(args.port, args.host, secret))


if __name__ == "__main__":
    main()

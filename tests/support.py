"""Real peers for integration tests: a `ketang serve` subprocess, websocket clients, an aiortc teacher that
publishes a synthetic moving VP8 video plus Opus, and aiortc classrooms that decode what they receive."""

from __future__ import annotations

import asyncio
import fractions
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack

from loadtest.wsclient import (
    WsClient,  # the one protocol client, shared with the load tester
)

VIDEO_CLOCK = 90000
TEST_SECRET = "integration-test-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_dir(tmp: Path, name: str) -> Path:
    """A data directory of its own for one of several server processes (nodes): each has its own library."""
    path = tmp / name
    path.mkdir(parents=True, exist_ok=True)
    return path


class Server:
    """`ketang serve` in a subprocess (its own event loop, uvloop, decoding patched off)."""

    def __init__(self, tmp: Path, redis_url: str | None = None, redis_prefix: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        env = dict(os.environ, KETANG_SECRET=TEST_SECRET, KETANG_DATA_DIR=str(tmp), **(env or {}))
        env.pop("KETANG_REDIS_URL", None)
        args = [sys.executable, "-m", "ketang.cli", "serve", "--port", str(self.port)]
        if redis_url:
            args += ["--redis-url", redis_url, "--redis-prefix", redis_prefix or "ketang-test:"]
        self.log = open(tmp / f"server-{self.port}.log", "wb")
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 20.0) -> dict:
        """Block until /healthz answers (the server prints its URLs and starts within a few seconds)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    return json.loads(resp.read())
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("server did not answer /healthz")

    async def health(self) -> dict:
        async with aiohttp.ClientSession() as http, http.get(self.url + "/healthz") as resp:
            return await resp.json()

    async def stats(self, lesson: str) -> dict:
        headers = {"Authorization": f"Bearer {token('observer', lesson)}"}
        async with aiohttp.ClientSession() as http, \
                http.get(f"{self.url}/api/lessons/{lesson}/stats", headers=headers) as resp:
            return await resp.json()

    def kill(self) -> None:
        """A crash: no clean shutdown, nothing removed from room state."""
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.log.closed:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # at once (SIGTERM drains: tests/scenario/test_drain.py)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def token(role: str, lesson: str, name: str | None = None, ttl_s: int = 3600, now: float | None = None,
          secret: str = TEST_SECRET) -> str:
    from signaling.tokens import issue_token
    return issue_token(secret, role, lesson, name=name, ttl_s=ttl_s, now=now)


class MovingVideoTrack(MediaStreamTrack):
    """Synthetic camera: a bright square moving over a gradient, 30 fps; counts the frames it produced."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 30) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.frames_sent = 0
        self._start: float | None = None
        base = np.linspace(0, 255, width, dtype=np.uint8)
        self._background = np.repeat(np.tile(base, (height, 1))[:, :, None], 3, axis=2)

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.time()
        n = self.frames_sent
        target = self._start + n / self.fps
        delay = target - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        img = self._background.copy()
        x = (n * 4) % (self.width - 40)
        img[100:140, x:x + 40] = (255, 40, 40)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = n * VIDEO_CLOCK // self.fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.frames_sent += 1
        return frame


class Teacher:
    """An aiortc teacher that publishes video (+ audio) through the signalling protocol."""

    def __init__(self, ws: WsClient, audio: bool = True, size: tuple[int, int] = (320, 240)) -> None:
        self.ws = ws
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = MovingVideoTrack(*size)
        self.screen_transceiver: Any = None
        self.pc.addTransceiver(self.video, direction="sendonly")
        if audio:
            self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")

    def add_screen(self) -> MovingVideoTrack:
        """Start a second video (screen share); publish() again renegotiates."""
        screen = MovingVideoTrack(width=640, height=360, fps=10)
        self.screen_transceiver = self.pc.addTransceiver(screen, direction="sendonly")
        return screen

    async def publish(self, **extra: Any) -> dict:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        if self.screen_transceiver is not None:
            extra.setdefault("sources", {self.screen_transceiver.mid: "screen"})
        reply = await self.ws.request({"type": "publish", "sdp": self.pc.localDescription.sdp, **extra})
        if reply["type"] == "answer":
            await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        return reply

    async def close(self) -> None:
        await self.pc.close()


async def join_lesson(server: Server, role: str, lesson: str, name: str, participant_token: str | None = None
                      ) -> WsClient:
    """A websocket that has joined `lesson` (with a fresh token of `role`, or the one given)."""
    ws = await WsClient().connect(server.ws_url)
    reply = await ws.request({"type": "join", "token": participant_token or token(role, lesson, name),
                              "lesson": lesson})
    assert reply["type"] == "joined", reply
    return ws


async def publishing_teacher(server: Server, lesson: str, name: str = "Ms Li") -> Teacher:
    """A teacher that has joined `lesson` and published its camera and microphone."""
    teacher = Teacher(await join_lesson(server, "teacher", lesson, name))
    reply = await teacher.publish()
    assert reply["type"] == "answer", reply
    return teacher


async def hang_up(*peers: Teacher | Classroom) -> None:
    """Close each peer connection and its websocket (test teardown)."""
    for peer in peers:
        await peer.close()
        await peer.ws.close()


class DropIncoming:
    """User-space downlink impairment: wraps the classroom's ICE receive and drops a share of incoming SRTP
    packets (seeded RNG, so runs repeat) and, when `rate_bps` is set, whatever exceeds that rate (a policer with
    a small bucket, like a school's saturated link). RTCP and DTLS are left alone."""

    BUCKET_BYTES = 6000

    def __init__(self, loss: float, seed: int = 7) -> None:
        self.loss = loss
        self.rng = random.Random(seed)
        self.dropped = 0
        self.passed = 0
        self.rate_bps: float | None = None
        self._tokens = float(self.BUCKET_BYTES)
        self._at = time.monotonic()

    def _over_rate(self, size: int) -> bool:
        if self.rate_bps is None:
            return False
        now = time.monotonic()
        self._tokens = min(self.BUCKET_BYTES, self._tokens + (now - self._at) * self.rate_bps / 8)
        self._at = now
        if self._tokens < size:
            return True
        self._tokens -= size
        return False

    def install(self, pc: RTCPeerConnection) -> None:
        for transceiver in pc.getTransceivers():
            # the DTLS transport reads datagrams through RTCIceTransport._recv (an instance attribute)
            ice = transceiver.receiver.transport.transport
            if getattr(ice, "_ketang_loss", None) is not None:
                continue
            original = ice._recv

            async def recv(original=original) -> bytes:
                while True:
                    data = await original()
                    is_rtp = len(data) > 1 and 127 < data[0] < 192 and not (192 <= data[1] <= 223)
                    if is_rtp and (self.rng.random() < self.loss or self._over_rate(len(data))):
                        self.dropped += 1
                        continue
                    self.passed += is_rtp
                    return data

            ice._recv = recv
            ice._ketang_loss = self


class Classroom:
    """An aiortc classroom: answers the server's offers and decodes every frame it receives."""

    def __init__(self, ws: WsClient, loss: float = 0.0, impair: bool = False,
                 answer_filter: Callable[[str], str] | None = None) -> None:
        self.ws = ws
        self.answer_filter = answer_filter  # what the network does to our answer on its way (a NAT test)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames: list[float] = []  # arrival time of each decoded video frame
        self.video_pts: list[int] = []  # their presentation times (90 kHz, from the first frame received)
        self.frame_sizes: set[tuple[int, int]] = set()
        self.frames_by_size: dict[tuple[int, int], int] = {}  # whose video it is, when senders differ in size
        self.video_tracks: dict[str, int] = {}  # decoded frames per received video track
        self.audio_frames = 0
        self.loss = DropIncoming(loss) if loss or impair else None
        self.offers = 0
        self._tasks: list[asyncio.Task] = []
        self._seen = 0
        self._pump = asyncio.ensure_future(self._answer_offers())

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _answer_offers(self) -> None:
        while True:
            try:
                msg = await self.ws.wait_for(lambda m: m.get("type") == "offer", timeout_s=3600, start=self._seen)
            except TimeoutError:
                return  # the websocket closed
            self._seen = self.ws.messages.index(msg) + 1
            await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
            if self.loss is not None:
                self.loss.install(self.pc)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            sdp = self.pc.localDescription.sdp
            await self.ws.send({"type": "answer", "sdp": self.answer_filter(sdp) if self.answer_filter else sdp})
            self.offers += 1

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frames.append(time.monotonic())
                    self.video_pts.append(frame.pts)
                    self.video_tracks[track.id] = self.video_tracks.get(track.id, 0) + 1
                    self.frame_sizes.add((frame.width, frame.height))
                    size = (frame.width, frame.height)
                    self.frames_by_size[size] = self.frames_by_size.get(size, 0) + 1
                else:
                    self.audio_frames += 1
        except Exception:  # noqa: BLE001 - track ended
            return

    async def wait_frames(self, n: int, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.frames) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"decoded {len(self.frames)} of {n} frames")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._pump.cancel()
        for t in self._tasks:
            t.cancel()
        await self.pc.close()


def read_recording(path: Path) -> tuple[list[str], dict[str, list[tuple[float, bytes]]], int]:
    """A recorded WebM as PyAV reads it: stream kinds, (pts seconds, bytes) of each packet, decoded video frames."""
    with av.open(str(path)) as c:
        kinds = sorted(s.type for s in c.streams)
        packets: dict[str, list[tuple[float, bytes]]] = {"video": [], "audio": []}
        for pkt in c.demux():
            if pkt.size:
                packets[pkt.stream.type].append((float(pkt.pts * pkt.time_base), bytes(pkt)))
    with av.open(str(path)) as c:
        decoded = sum(1 for _ in c.decode(video=0)) if c.streams.video else 0
    return kinds, packets, decoded

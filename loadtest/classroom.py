"""A synthetic classroom: joins through the signalling protocol, receives the lesson on a counting WebRTC
subscriber (`CountingReceiver`: real ICE, DTLS, SRTP, receiver reports and NACKs, never decoding), and with
`--classroom-uplink` also publishes its own small camera and microphone on a second, publishing connection
(`MediaPublisher`, `publish` as the teacher does), as the interactive classroom's page does (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from loadtest.media import Clip
from loadtest.publisher import MediaPublisher
from loadtest.receiver import CountingReceiver, ReceiveOptions
from loadtest.wsclient import ProtocolError, WsClient, join_lesson



def classroom_id(index: int) -> str:
    """The participant id (token `sub`) of synthetic classroom `index`: the teacher's wall names tiles by it."""
    return f"loadtest-classroom-{index}"


@dataclass
class Uplink:
    """A classroom's own camera and microphone: pre-encoded once per load-generator process, looped."""

    video: Clip
    audio: Clip
    # send only what somebody receives, as the classroom page does (the server's `demand`); False: always send
    follow_demand: bool = True


class SyntheticClassroom:
    """Joins a lesson with a classroom token, counts what it receives by RTP header, optionally publishes."""

    def __init__(self, index: int, session: aiohttp.ClientSession, ws_url: str, token: str, lesson: str,
                 send_times: Sequence[float] | None = None, publish_time: Any = None,
                 options: ReceiveOptions | None = None, uplink: Uplink | None = None,
                 frame_keys: dict[bytes, tuple[int, int]] | None = None) -> None:
        self.index = index
        self.lesson = lesson
        self.token = token
        self.ws = WsClient(session, ws_url, keep=False)
        self.receiver = CountingReceiver(self.ws, index, send_times, options, frame_keys)
        self.publish_time = publish_time  # the teacher's publish time (a multiprocessing Value), shared
        self.uplink = uplink
        self.publisher: MediaPublisher | None = None
        self.started_at = 0.0
        self.publish_ms: float | None = None
        self.uplink_stopped_at: float | None = None
        self._error: str | None = None
        self.join_retries = 0  # joins refused with `overloaded` before this one got in

    @property
    def connected_at(self) -> float | None:
        return self.receiver.connected_at

    @property
    def error(self) -> str | None:
        return self._error or self.receiver.error

    @property
    def ready(self) -> bool:
        """Receiving, and publishing when it has an uplink."""
        return (self.connected_at is not None and self.error is None
                and (self.uplink is None or self.publish_ms is not None))

    async def join(self, timeout_s: float = 30.0) -> None:
        """Websocket join, wait for ICE + DTLS to connect (the server offers at once on join), then publish."""
        self.started_at = time.monotonic()
        try:
            await self.ws.connect()
            # a server short of CPU refuses new classrooms for a while: tried again, as the page does
            reply, self.join_retries = await join_lesson(self.ws, self.token, self.lesson, timeout_s)
            if reply.get("type") == "error":
                raise ProtocolError(f"{reply.get('code')}: {reply.get('message')}")
            await asyncio.wait_for(self.receiver.connected.wait(), timeout_s)
            if self.uplink is not None and self.receiver.error is None:
                t0 = time.monotonic()
                self.publisher = MediaPublisher(self.ws, self.uplink.video, self.uplink.audio)
                if self.uplink.follow_demand:
                    self.ws.handlers["event"] = self._on_event
                reply = await self.publisher.publish()
                demand = reply.get("demand")
                if self.uplink.follow_demand and demand is not None:
                    self.publisher.set_sending(demand["video"], demand["audio"])
                await self.publisher.wait_connected(timeout_s)
                self.publish_ms = (time.monotonic() - t0) * 1000
        except Exception as exc:  # noqa: BLE001 - reported per classroom, the run goes on
            self._error = self._error or f"{type(exc).__name__}: {exc}"

    async def _on_event(self, msg: dict) -> None:
        if msg.get("event") == "demand" and self.publisher is not None:
            self.publisher.set_sending(bool(msg.get("video")), bool(msg.get("audio")))

    def stop_uplink(self) -> None:
        if self.publisher is not None:
            self.publisher.stop_media()
            self.uplink_stopped_at = time.monotonic()

    def result(self) -> dict:
        """Per-classroom figures (times in ms; loss counted after retransmission)."""
        rx = self.receiver
        publish = self.publish_time.value if self.publish_time is not None else 0.0
        first_ref = max(self.started_at, publish) if publish else self.started_at
        out: dict[str, Any] = {
            "index": self.index,
            "connected": self.connected_at is not None and self.error is None,
            "error": self.error,
            "join_ms": None if self.connected_at is None else (self.connected_at - self.started_at) * 1000,
            "first_frame_ms": None if rx.first_keyframe_at is None
            else max(0.0, rx.first_keyframe_at - first_ref) * 1000,
            "delays_ms": rx.delays_ms,
            "replayed_frames": rx.replayed_frames,  # (cached frames replayed at a video (re)start: not delays)
            "join_retries": self.join_retries,
            # the teacher's audio in the hold window: packets, and the longest gap between two of them (ms)
            "audio_window_packets": rx.audio_in_window,
            "audio_gap_max_ms": round(rx.audio_gap_max_s * 1000, 1),
            # from its first to its last audio packet in the window (a classroom let in during the window: less)
            "audio_window_span_s": round(rx.audio_last_at - rx.audio_first_at, 3)
            if rx.audio_first_at is not None and rx.audio_last_at is not None else 0.0,
            **rx.counters(),
            **rx.by_kind(),
        }
        if rx.frame_keys is not None:
            # a simulcast teacher: the frames received per layer (smallest first) and the layer of the last one
            out["simulcast"] = {"frames_by_layer": list(rx.frames_by_layer), "last_layer": rx.last_layer,
                                "frames_unknown": rx.frames_unknown}
        if self.uplink is not None:
            pub = self.publisher
            sent_s = (self.uplink_stopped_at or time.monotonic()) - pub.connected_at \
                if pub is not None and pub.connected_at is not None else 0.0
            until = self.uplink_stopped_at or time.monotonic()
            paused_s = pub.video.paused_s(until) if pub is not None and pub.video is not None else 0.0
            out["uplink"] = {"publish_ms": self.publish_ms, "packets_sent": pub.packets_sent if pub else 0,
                             "bytes_sent": pub.bytes_sent if pub else 0, "sending_s": round(sent_s, 2),
                             "camera_paused_s": round(paused_s, 2)}
        return out

    async def close(self) -> None:
        self.receiver.counting = False
        try:
            await self.ws.close()
        finally:
            await self.receiver.close()
            if self.publisher is not None:
                await self.publisher.close()

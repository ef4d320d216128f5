"""The synthetic teacher: joins with a teacher token and publishes a looped pre-encoded VP8 + Opus clip through
an aiortc RTCPeerConnection (packed, never encoded), stamping each video frame's send time by VP8 picture id
into an array shared with the classrooms (same machine, same CLOCK_MONOTONIC, even across processes)."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import MutableSequence

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from sfu.vp8 import vp8_picture_id

from .media import Clip, PacketTrack
from .wsclient import WsClient

log = logging.getLogger("ketang.loadtest.teacher")

RTP_FIXED = struct.Struct("!BBHII")
PICTURE_IDS = 1 << 15


class SyntheticTeacher:
    def __init__(self, session: aiohttp.ClientSession, ws_url: str, token: str, lesson: str, video: Clip,
                 audio: Clip, send_times: MutableSequence[float] | None = None) -> None:
        self.lesson = lesson
        self.token = token
        self.ws = WsClient(session, ws_url)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = PacketTrack(video)
        self.audio = PacketTrack(audio)
        self.pc.addTransceiver(self.video, direction="sendonly")
        self.pc.addTransceiver(self.audio, direction="sendonly")
        self.send_times = send_times
        self.packets_sent = 0
        self.bytes_sent = 0
        self.published_at: float | None = None
        self._video_pts: set[int] = set()

    async def publish(self) -> None:
        await self.ws.connect()
        await self.ws.request({"type": "join", "token": self.token, "lesson": self.lesson})
        await self.pc.setLocalDescription(await self.pc.createOffer())
        reply = await self.ws.request({"type": "publish", "sdp": self.pc.localDescription.sdp})
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                self._video_pts.update(c.payloadType for c in transceiver._codecs)
        dtls = self.pc.getTransceivers()[0].sender.transport
        original = dtls._send_rtp

        async def send_rtp(data: bytes) -> None:
            # RTCP goes through here too (sender reports): only RTP packets are counted and stamped
            if len(data) > 12 and not 192 <= data[1] <= 223:
                self.packets_sent += 1
                self.bytes_sent += len(data)
                b0 = data[0]
                if self.send_times is not None and (data[1] & 0x7F) in self._video_pts:
                    pos = 12 + 4 * (b0 & 0x0F)
                    if b0 & 0x10:
                        pos += 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
                    if data[pos] & 0x17 == 0x10:  # the first packet of a frame
                        pid = vp8_picture_id(data[pos:pos + 4])
                        if pid is not None:
                            self.send_times[pid % PICTURE_IDS] = time.monotonic()
            await original(data)

        dtls._send_rtp = send_rtp  # this teacher's transport only
        self.published_at = time.monotonic()

    async def stop_media(self) -> None:
        """Stop sending (the connection stays up so the lesson does not end while counters are read)."""
        self.video.stop()
        self.audio.stop()

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            await self.pc.close()

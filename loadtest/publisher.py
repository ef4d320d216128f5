"""The publishing side of a synthetic participant: its own RTCPeerConnection that offers a looped pre-encoded VP8
+ Opus clip to the server with `publish` (docs/protocol.md), packed by aiortc and never encoded. The synthetic
teacher publishes its lesson camera this way, and with `--classroom-uplink` every synthetic classroom its small
camera and microphone, through the same code.

It counts the RTP packets it sends, and for the teacher stamps each video frame's send time by VP8 picture id into
an array shared with the classrooms (same machine, same CLOCK_MONOTONIC, even across processes).

With `simulcast` layers (the teacher's `--simulcast`) the camera goes out as three RTP streams the way Chromium
sends it (loadtest/simulcast.py): the offer is reshaped like Chromium's, aiortc's video sender stays idle and a
`SimulcastSender` sends the layers through the same DTLS transport (stamping send times per layer and frame)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableSequence

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from loadtest.media import Clip, PacketTrack, SimulcastLayer
from loadtest.wsclient import WsClient
from sfu import seams
from sfu.rtp.vp8 import vp8_picture_id

PICTURE_IDS = 1 << 15


class MediaPublisher:
    def __init__(self, ws: WsClient, video: Clip | None, audio: Clip,
                 send_times: MutableSequence[float] | None = None,
                 simulcast: list[SimulcastLayer] | None = None) -> None:
        self.ws = ws
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.simulcast = None
        if simulcast:
            from loadtest.simulcast import SimulcastSender

            self.simulcast = SimulcastSender(simulcast, send_times)
            self.video = None
            self.pc.addTransceiver("video", direction="sendonly")  # no track: aiortc's sender stays idle
        else:
            assert video is not None
            self.video = PacketTrack(video)
            self.pc.addTransceiver(self.video, direction="sendonly")
        self.audio = PacketTrack(audio)
        self.pc.addTransceiver(self.audio, direction="sendonly")
        self.send_times = send_times
        self.packets_sent = 0
        self.bytes_sent = 0
        self.published_at: float | None = None
        self.connected_at: float | None = None
        self.connected = asyncio.Event()
        self._video_pts: set[int] = set()

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState in ("connected", "failed"):
                if self.pc.connectionState == "connected" and self.connected_at is None:
                    self.connected_at = time.monotonic()
                self.connected.set()

    async def publish(self) -> dict:
        """Offer the clips with `publish` and apply the server's answer (returned); media flows once ICE + DTLS are
        up."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription.sdp
        if self.simulcast is not None:
            from loadtest.simulcast import chromium_simulcast_offer

            offer = chromium_simulcast_offer(offer, self.simulcast.rids)
        reply = await self.ws.request({"type": "publish", "sdp": offer}, 30.0, check=True)
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                self._video_pts.update(c.payloadType for c in seams.transceiver_codecs(transceiver))
        dtls = self.pc.getTransceivers()[0].sender.transport
        stamp = self.send_times is not None and self.simulcast is None  # the simulcast sender stamps its own

        async def send_rtp(data: bytes) -> None:
            # RTCP goes through here too (sender reports): only RTP packets are counted and stamped
            if len(data) > 12 and not 192 <= data[1] <= 223:
                self.packets_sent += 1
                self.bytes_sent += len(data)
                if stamp and (data[1] & 0x7F) in self._video_pts:
                    self._stamp(data)
            await original(data)

        original = seams.hook_dtls_send(dtls, send_rtp)  # this publisher's transport only
        if self.simulcast is not None:
            video = next(t for t in self.pc.getTransceivers() if t.kind == "video")
            self.simulcast.start(video, reply["sdp"], seams.peer_cname(self.pc))
        self.published_at = time.monotonic()
        return reply

    def set_sending(self, video: bool, audio: bool) -> None:
        """Send the camera / microphone or not (the server's `demand`: whether anyone receives them)."""
        if self.video is not None:
            self.video.set_active(video)
        self.audio.set_active(audio)

    def _stamp(self, data: bytes) -> None:
        b0 = data[0]
        pos = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            pos += 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
        if data[pos] & 0x17 == 0x10:  # the first packet of a frame
            pid = vp8_picture_id(data[pos:pos + 4])
            if pid is not None:
                self.send_times[pid % PICTURE_IDS] = time.monotonic()  # type: ignore[index]

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout_s)
        if self.connected_at is None:
            raise ConnectionError("publishing connection failed")

    def stop_media(self) -> None:
        """Stop sending (the connection stays up so nothing leaves the lesson while counters are read)."""
        if self.video is not None:
            self.video.stop()
        if self.simulcast is not None:
            self.simulcast.stop()
        self.audio.stop()

    async def close(self) -> None:
        if self.simulcast is not None:
            await self.simulcast.close()
        await self.pc.close()

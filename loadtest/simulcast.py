"""`--simulcast`: the synthetic teacher sends its camera the way Chromium does with the teacher page's
sendEncodings (client_web/protocol.js): three RTP streams q (÷4, 15 fps), h (÷2) and f (full), each on its own
SSRC, named only by the RID header extension on its first packets. aiortc cannot send simulcast, so:

- **Offer** (`chromium_simulcast_offer`): aiortc's own offer text, with the video m-section reshaped like
  Chromium's simulcast offer (tests/unit/sfu/test_simulcast.py's CHROMIUM_OFFER): the RID and repaired-RID extmaps (ids 10
  and 11, Chromium's), `a=rid:<q|h|f> send`, `a=simulcast:send q;h;f`, and no `a=ssrc`/`a=ssrc-group` lines.
  aiortc keeps its own local description; only the server sees the reshaped text. The server's answer must
  accept the layers (its `munge_answer` adds the RID extmaps and `a=simulcast:recv`), or publishing fails.
- **Media** (`SimulcastSender`): aiortc's video transceiver is added without a track (its sender sends no RTP);
  the three looped pre-encoded clips are packed with aiortc's VP8 packetizer (never encoded) into RTP packets
  written here, with the MID, RID and abs-send-time extensions, and sent through the same DTLS transport's
  `_send_rtp` (SRTP with the session DTLS negotiated), like aiortc's own sender does. As Chromium, MID and RID
  go only on a stream's packets until a receiver report acknowledges its SSRC.
- **RTCP**: the sender registers its SSRCs (media and RTX) with the transport's `RtpRouter` (seam
  `register_sender`, as aiortc's senders do), so the server's NACKs are answered on the layer's RTX SSRC with the
  repaired-RID extension, a PLI/FIR makes that layer's next frame its clip's next key frame (Chromium answers
  one with a key frame too; at most one per `FORCED_KEYFRAME_INTERVAL_S`), receiver reports stop the RID/MID,
  and sender reports (+ SDES CNAME) go out per layer about once a second.

Each frame's send time is stamped per (layer, frame of its clip) into the array shared with the classrooms,
which recognise the frame by its first VP8 bytes (`media.frame_keys`): the server rewrites picture ids when it
switches a classroom's layer, so the picture-id stamps of the single-stream teacher would not match.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import MutableSequence
from typing import Any

from aiortc import clock
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
)

from loadtest.media import VIDEO_CLOCK, VIDEO_FPS, SimulcastLayer
from sfu import seams
from sfu.simulcast.sdp import URI_RID, URI_RRID, split_sections

log = logging.getLogger("ketang.loadtest.simulcast")

RID_EXT_ID = 10  # Chromium's ids for the RID and repaired-RID extensions
RRID_EXT_ID = 11
URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
HISTORY = 1024  # packets per layer kept for retransmission (~10 s of the full layer)
FORCED_KEYFRAME_INTERVAL_S = 0.5
SR_INTERVAL_S = 1.0


def chromium_simulcast_offer(sdp: str, rids: list[str]) -> str:
    """aiortc's offer with its (first) video m-section reshaped as Chromium offers a simulcast camera."""
    session, sections = split_sections(sdp)
    done = False
    out = list(session)
    for lines in sections:
        if done or not lines[0].startswith("m=video "):
            out += lines
            continue
        done = True
        kept = [x for x in lines if not x.startswith(("a=ssrc:", "a=ssrc-group:"))]
        at = max((i for i, x in enumerate(kept) if x.startswith("a=extmap:")), default=0) + 1
        kept[at:at] = [f"a=extmap:{RID_EXT_ID} {URI_RID}", f"a=extmap:{RRID_EXT_ID} {URI_RRID}"]
        # Chromium closes the section with the RIDs, in the sendEncodings order
        end = next((i for i, x in enumerate(kept) if x.startswith(("a=end-of-candidates", "a=ice-ufrag"))),
                   len(kept))
        kept[end:end] = [f"a=rid:{rid} send" for rid in rids] + ["a=simulcast:send " + ";".join(rids)]
        out += kept
    if not done:
        raise ValueError("the offer has no video m-section")
    return "\r\n".join(out) + "\r\n"


def answer_extensions(sdp: str, mid: str) -> dict[str, int]:
    """uri -> id of the answer's extmaps in the m-section `mid`."""
    _, sections = split_sections(sdp)
    for lines in sections:
        if f"a=mid:{mid}" in lines:
            found = {}
            for line in lines:
                if line.startswith("a=extmap:"):
                    ident, _, rest = line[len("a=extmap:"):].partition(" ")
                    found[rest.split()[0]] = int(ident.split("/")[0])
            return found
    return {}


class _Layer:
    """One RTP stream (and its RTX stream) of the simulcast camera."""

    def __init__(self, index: int, spec: SimulcastLayer) -> None:
        self.index = index
        self.spec = spec
        self.rid = spec.rid
        self.frames = spec.clip.frames
        self.keyframes = [i for i, (_, key) in enumerate(self.frames) if key]
        self.ssrc = random.getrandbits(32)
        self.rtx_ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.rtx_seq = random.getrandbits(16)
        self.ts_origin = random.getrandbits(32)  # the layers' RTP clocks are unrelated, as Chromium's
        self.step = VIDEO_CLOCK // spec.fps
        self.picture_id = random.getrandbits(15)
        self.every = max(1, round(VIDEO_FPS / spec.fps))  # send on every n-th tick of the base frame rate
        self.pos = 0  # next frame of the clip (jumps ahead to a key frame on a PLI)
        self.sent_frames = 0
        self.history: dict[int, tuple[int, int, bytes]] = {}  # seq % HISTORY -> (seq, ts + marker, payload)
        self.acked = False  # a receiver report named the media SSRC: no more MID/RID on its packets
        self.want_keyframe = False
        self.forced_at = -1e9
        # figures
        self.packets = 0
        self.bytes = 0
        self.plis = 0
        self.keyframes_on_request = 0
        self.nacked = 0
        self.retransmitted = 0
        self.rtx_unavailable = 0
        self.remb_bps: int | None = None
        self.last_rtp_ts = 0
        self.last_ntp = 0

    def next_frame(self, now: float) -> tuple[int, bytes, bool]:
        """(clip frame index, data, forced) of the next frame; a key frame when one was asked for."""
        n = len(self.frames)
        idx = self.pos % n
        forced = False
        if self.want_keyframe and now - self.forced_at >= FORCED_KEYFRAME_INTERVAL_S:
            self.want_keyframe = False
            if not self.frames[idx][1]:
                nxt = next((k for k in self.keyframes if k > idx), self.keyframes[0] + n)
                self.pos += nxt - idx
                idx = self.pos % n
                forced = True
                self.keyframes_on_request += 1
            self.forced_at = now
        self.pos += 1
        return idx, self.frames[idx][0], forced

    def figures(self) -> dict[str, Any]:
        s = self.spec
        return {"rid": self.rid, "width": s.width, "height": s.height, "fps": s.fps,
                "target_kbps": round(s.target_bps / 1000), "clip_kbps": round(s.clip.bitrate_bps / 1000, 1),
                "ssrc": self.ssrc, "rtx_ssrc": self.rtx_ssrc, "packets_sent": self.packets,
                "bytes_sent": self.bytes, "frames_sent": self.sent_frames, "plis": self.plis,
                "keyframes_on_request": self.keyframes_on_request, "nacked": self.nacked,
                "retransmitted": self.retransmitted, "rid_acknowledged": self.acked, "remb_bps": self.remb_bps}


class SimulcastSender:
    """Sends the layers on a DTLS transport that aiortc set up, and handles their RTCP (see the module doc)."""

    def __init__(self, layers: list[SimulcastLayer], send_times: MutableSequence[float] | None = None) -> None:
        self.layers = [_Layer(i, spec) for i, spec in enumerate(layers)]
        self.send_times = send_times
        self.dtls: Any = None
        self.mid = ""
        self.payload_type = 0
        self.rtx_payload_type: int | None = None
        self.cname = ""
        self._ext = HeaderExtensionsMap()
        self._by_ssrc: dict[int, tuple[_Layer, bool]] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopped = False
        self.started_at: float | None = None

    @property
    def rids(self) -> list[str]:
        return [layer.rid for layer in self.layers]

    def start(self, transceiver: Any, answer_sdp: str, cname: str) -> None:
        """After setRemoteDescription(answer): pick the negotiated payload types and extension ids, register the
        SSRCs for RTCP and start sending (media flows once DTLS is up)."""
        self.mid = transceiver.mid
        codecs = seams.transceiver_codecs(transceiver)
        vp8 = next(c for c in codecs if c.mimeType.lower() == "video/vp8")
        self.payload_type = vp8.payloadType
        self.rtx_payload_type = next((c.payloadType for c in codecs if c.mimeType.lower() == "video/rtx"
                                      and str(c.parameters.get("apt")) == str(vp8.payloadType)), None)
        ext = answer_extensions(answer_sdp, self.mid)
        if URI_RID not in ext:
            raise ConnectionError("the server's answer does not accept simulcast (no RID extension)")
        params = RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u)
                                                    for u, i in ext.items()])
        self._ext.configure(params)
        self.cname = cname
        self.dtls = transceiver.sender.transport
        for layer in self.layers:
            self._by_ssrc[layer.ssrc] = (layer, False)
            self._by_ssrc[layer.rtx_ssrc] = (layer, True)
            seams.register_rtp_sender(self.dtls, self, layer.ssrc)
            seams.register_rtp_sender(self.dtls, self, layer.rtx_ssrc)
        self._tasks = [asyncio.ensure_future(self._run_rtp()), asyncio.ensure_future(self._run_rtcp())]

    async def _send(self, data: bytes) -> None:
        await seams.dtls_send_rtp(self.dtls, data)  # looked up each time: the publisher's counting hook is in place

    # -- RTP -----------------------------------------------------------------------------------------------

    async def _run_rtp(self) -> None:
        try:
            while self.dtls.state != "connected":
                if self._stopped or self.dtls.state in ("closed", "failed"):
                    return
                await asyncio.sleep(0.01)
            start = self.started_at = time.monotonic()
            tick = 0
            while not self._stopped:
                delay = start + tick / VIDEO_FPS - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._stopped:
                    break
                for layer in self.layers:
                    if tick % layer.every == 0:
                        await self._send_frame(layer)
                tick += 1
        except (asyncio.CancelledError, ConnectionError):
            pass
        except Exception:
            log.exception("simulcast sender failed")

    async def _send_frame(self, layer: _Layer) -> None:
        now = time.monotonic()
        idx, data, _forced = layer.next_frame(now)
        ts = (layer.ts_origin + layer.sent_frames * layer.step) & 0xFFFFFFFF
        layer.sent_frames += 1
        payloads = seams.vp8_packetize(data, layer.picture_id)
        layer.picture_id = (layer.picture_id + 1) & 0x7FFF
        if self.send_times is not None:
            self.send_times[layer.spec.slot_offset + idx] = now
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            seq = layer.seq
            layer.seq = (seq + 1) & 0xFFFF
            marker = 1 if i == last else 0
            layer.history[seq % HISTORY] = (seq, ts | (marker << 32), payload)
            packet = RtpPacket(payload_type=self.payload_type, marker=marker, sequence_number=seq, timestamp=ts,
                               ssrc=layer.ssrc, payload=payload)
            self._extensions(packet, layer.rid if not layer.acked else None, None, layer.acked)
            raw = packet.serialize(self._ext)
            layer.packets += 1
            layer.bytes += len(raw)
            layer.last_rtp_ts = ts
            layer.last_ntp = clock.current_ntp_time()
            await self._send(raw)

    def _extensions(self, packet: RtpPacket, rid: str | None, rrid: str | None, acked: bool) -> None:
        x = packet.extensions
        x.abs_send_time = (clock.current_ntp_time() >> 14) & 0x00FFFFFF
        if not acked:
            x.mid = self.mid
            x.rtp_stream_id = rid
            x.repaired_rtp_stream_id = rrid

    async def _retransmit(self, layer: _Layer, seq: int) -> None:
        entry = layer.history.get(seq % HISTORY)
        if entry is None or entry[0] != seq or self.rtx_payload_type is None:
            layer.rtx_unavailable += 1
            return
        _, ts_marker, payload = entry
        rtx_seq = layer.rtx_seq
        layer.rtx_seq = (rtx_seq + 1) & 0xFFFF
        packet = RtpPacket(payload_type=self.rtx_payload_type, marker=ts_marker >> 32, sequence_number=rtx_seq,
                           timestamp=ts_marker & 0xFFFFFFFF, ssrc=layer.rtx_ssrc,
                           payload=struct.pack("!H", seq) + payload)
        # the RTX stream is never acknowledged by the server's reports: it keeps MID and repaired RID
        self._extensions(packet, None, layer.rid, False)
        layer.retransmitted += 1
        await self._send(packet.serialize(self._ext))

    # -- RTCP ----------------------------------------------------------------------------------------------

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        """Called by the transport's RtpRouter for RTCP naming one of our SSRCs."""
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                entry = self._by_ssrc.get(report.ssrc)
                if entry is not None and not entry[1]:
                    entry[0].acked = True
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            entry = self._by_ssrc.get(packet.media_ssrc)
            if entry is not None and not entry[1]:
                entry[0].nacked += len(packet.lost)
                for seq in packet.lost:
                    await self._retransmit(entry[0], seq)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            entry = self._by_ssrc.get(packet.media_ssrc)
            if entry is not None:
                entry[0].plis += 1
                entry[0].want_keyframe = True
        elif isinstance(packet, RtcpPsfbPacket):
            from aiortc.rtp import unpack_remb_fci

            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            for ssrc in ssrcs:
                entry = self._by_ssrc.get(ssrc)
                if entry is not None:
                    entry[0].remb_bps = bitrate

    async def _run_rtcp(self) -> None:
        try:
            while not self._stopped:
                await asyncio.sleep(SR_INTERVAL_S * (0.5 + random.random()))
                if self.dtls.state != "connected":
                    continue
                packets: list[Any] = []
                for layer in self.layers:
                    if not layer.packets:
                        continue
                    packets.append(RtcpSrPacket(ssrc=layer.ssrc, sender_info=RtcpSenderInfo(
                        ntp_timestamp=layer.last_ntp, rtp_timestamp=layer.last_rtp_ts,
                        packet_count=layer.packets & 0xFFFFFFFF, octet_count=layer.bytes & 0xFFFFFFFF)))
                if packets:
                    packets.append(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=p.ssrc, items=[
                        (1, self.cname.encode())]) for p in packets]))
                    with_sr = b"".join(bytes(p) for p in packets)
                    try:
                        await self._send(with_sr)
                    except ConnectionError:
                        pass
        except asyncio.CancelledError:
            pass

    # -- lifecycle -----------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopped = True

    async def close(self) -> None:
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.dtls is not None:
            senders = seams.rtp_senders(self.dtls)
            for ssrc in list(self._by_ssrc):
                if senders.get(ssrc) is self:
                    del senders[ssrc]

    def figures(self) -> list[dict[str, Any]]:
        return [layer.figures() for layer in self.layers]

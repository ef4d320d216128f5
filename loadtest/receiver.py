"""The receiving side of a synthetic participant: a real WebRTC subscriber (ICE, DTLS, SRTP through an aiortc
RTCPeerConnection) that answers the server's offers and counts what arrives by RTP header, never decoding.

Used twice: by every synthetic classroom (the teacher's camera and microphone) and by the synthetic teacher's wall
(the visible classrooms' small cameras and microphones, `wall {visible}`), the same code path for both.

Choice about RTCP (measured, see docs/benchmarks.md): with aiortc's stock receiver on every packet (aioice queue,
DTLS task, RtpPacket.parse, REMB estimator, NACK generator, depayload, jitter buffer; decoding off) the load
generator spent 89 us of CPU per received packet at 100 classrooms (one worker saturated), against 22 us for this
counter (`--classroom-mode stock|counter`, 100 classrooms, 500 kbit/s): at 400 classrooms x ~110 packets/s the
stock path would need ~4 cores, the counter ~1. So this receiver counts by RTP header only and still behaves
like a browser on the wire: it feeds the receiver's RFC 3550 `StreamStatistics` (so aiortc's RTCP loop keeps
sending receiver reports with loss and jitter, and answers sender reports via LSR/DLSR) and sends a NACK for every
new gap. It skips the jitter buffer, depacketization, REMB and decoding.

Where it hooks, on its own instances only (nothing is patched at module level): `_handle_rtp_data` on its DTLS
transport (packets before DTLS is up), then, once connected, `datagram_received` on its nominated ICE pair's
protocol, which unprotects SRTP with the DTLS transport's own session and counts at once, skipping aioice's STUN
parse attempt and queue and the DTLS receive task (DTLS, STUN and SRTCP still take the stock path).

Packets are told apart by SSRC: the server declares each slot's media and RTX SSRC in its offer (`a=ssrc`,
`a=ssrc-group:FID`), and its `offer`/`tracks` messages say whose track each slot (mid) carries, so a wall of 16
tiles, whose video slots all share one payload type, is counted tile by tile.

With a simulcast teacher (`--simulcast`) the classroom is given `frame_keys` (first bytes of every frame of the
teacher's three clips -> layer and send-time slot): it tells which layer each frame it receives came from and
takes its delivery delay from the teacher's per-(layer, frame) stamp, since the server rewrites picture ids on a
layer switch.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from loadtest.media import FRAME_KEY_BYTES
from loadtest.streamstats import SeqCounter
from loadtest.wsclient import WsClient
from sfu import seams
from sfu.consumer.base import RESUME_SEQ_JUMP
from sfu.peers.sdp import declared_ssrcs
from sfu.rtp.vp8 import vp8_is_keyframe_start, vp8_picture_id

REMB_INTERVAL_S = 1.0  # as Chromium sends its REMB (receive-side estimate) about once a second

RTP_FIXED = struct.Struct("!BBHII")
VP8_START_MASK = 0x17  # S bit + partition index: 0x10 means "first packet of the frame"
DELAY_SAMPLE_LIMIT = 20_000  # per receiver: bounds memory on long runs
# a forward jump of at least this many sequence numbers is the SFU (re)starting this classroom's video (a loss burst
# that long reads as one too: it would cost a few samples, not add false ones)
RESTART_JUMP = RESUME_SEQ_JUMP // 2
PICTURE_IDS = 1 << 15
CLOCKS = {"audio": 48000, "video": 90000}  # Opus and VP8, the lesson codecs


@dataclass(frozen=True)
class ReceiveOptions:
    """How the synthetic receivers receive."""

    # also run aiortc's stock receiver on every packet (`--classroom-mode stock`): only to measure what it costs
    stock: bool = False
    # downlink loss emulated in user space on the receiver's socket (RTP only, seeded per receiver), e.g. 0.013
    # for the rural link in docs/architecture.md (measured facts); retransmissions can be lost too
    loss: float = 0.0
    # the downlink estimate this receiver reports by REMB about once a second, bit/s (0: none), as a browser's
    # bandwidth estimator does: the server's layer selection (simulcast) and audio-first ladder follow it
    remb_bps: int = 0


class _Shim:
    """What aiortc's StreamStatistics.add reads from a packet (reused: no allocation per packet)."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self) -> None:
        self.sequence_number = 0
        self.timestamp = 0


class _Stream:
    """One received media stream (a slot's track): counters plus the receiver's RTCP statistics it feeds."""

    __slots__ = (
        "bytes",
        "clock",
        "jitter_samples_ms",
        "kind",
        "packets",
        "participant",
        "receiver",
        "rtcp_stats",
        "rtx_packets",
        "seq",
        "shim",
        "ssrc",
    )

    def __init__(self, kind: str, receiver: Any, participant: str | None) -> None:
        self.kind = kind
        self.receiver = receiver
        self.participant = participant  # whose track it is (the `participant` of the offer/tracks entry)
        self.clock = CLOCKS.get(kind, 90000)
        self.seq = SeqCounter()
        self.rtcp_stats: StreamStatistics | None = None
        self.ssrc: int | None = None
        self.packets = 0  # every RTP packet of this stream incl. retransmissions and duplicates
        self.rtx_packets = 0
        self.bytes = 0
        self.shim = _Shim()
        self.jitter_samples_ms: list[float] = []

    def bind(self, ssrc: int) -> None:
        """First packet (or a new SSRC): register RFC 3550 statistics where aiortc's RTCP loop reads them."""
        self.ssrc = ssrc
        self.rtcp_stats = StreamStatistics(self.clock)
        seams.set_receiver_stream_statistics(self.receiver, ssrc, self.rtcp_stats)

    def jitter_ms(self) -> float | None:
        if self.rtcp_stats is None or self.rtcp_stats.packets_received < 2:
            return None
        return self.rtcp_stats.jitter * 1000.0 / self.clock


def stream_totals(streams: list[_Stream]) -> dict | None:
    """The figures of one or more streams of a kind, added up (None when there are none)."""
    if not streams:
        return None
    return {"packets": sum(s.packets for s in streams), "rtx_packets": sum(s.rtx_packets for s in streams),
            "bytes": sum(s.bytes for s in streams), "expected": sum(s.seq.expected for s in streams),
            "received": sum(s.seq.received for s in streams), "lost": sum(s.seq.lost for s in streams),
            "recovered": sum(s.seq.recovered for s in streams),
            "duplicates": sum(s.seq.duplicates for s in streams),
            "jitter_ms": [j for s in streams for j in s.jitter_samples_ms]}


class CountingReceiver:
    """Answers the server's offers on `ws` with its own peer connection and counts every RTP packet it gets."""

    def __init__(self, ws: WsClient, index: int = 0, send_times: Sequence[float] | None = None,
                 options: ReceiveOptions | None = None,
                 frame_keys: dict[bytes, tuple[int, int]] | None = None) -> None:
        self.ws = ws
        ws.handlers["offer"] = self._on_offer
        ws.handlers["tracks"] = self._on_tracks
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.send_times = send_times  # the teacher's send time (time.monotonic) per VP8 picture id, shared
        self.counting = True
        # stock=True: every packet also goes through aiortc's own receiver (parse, NACK generator, jitter buffer,
        # REMB estimate, RTCP statistics); only to measure what that costs (`--classroom-mode stock`)
        options = options or ReceiveOptions()
        self.stock = options.stock
        self.fast_path = not options.stock
        self.loss = options.loss
        self.remb_bps = options.remb_bps
        self._remb: asyncio.Task | None = None
        self.rng = random.Random(index)
        self.dropped = 0
        self.fast_packets = 0
        self.srtp_errors = 0
        self.unrouted = 0  # packets of an SSRC no offer declared
        # delays are sampled only in the hold window: the keyframe the SFU replays to a late joiner carries an
        # old picture id (sent seconds ago) and is not a delivery delay
        self.measure_delay = False
        # ... and so are the packets the SFU replays from its cache when this classroom's video (re)starts — a late
        # join, or video back after the ladder or the overload controller paused it: the server marks each start by
        # a jump of its sequence numbers (sfu/consumer/base.py RESUME_SEQ_JUMP) or it is the stream's first packet.
        # A frame the teacher sent before the start it arrived after is a replay, counted apart, not a delay; a
        # backlog of late live packets keeps its numbers in order and is measured.
        self._video_seq: dict[int, int] = {}  # ssrc -> its latest sequence number
        self._video_live_from: dict[int, float] = {}  # ssrc -> when its latest (re)start arrived
        self.replayed_frames = 0
        self.connected_at: float | None = None
        self.first_keyframe_at: float | None = None
        self.error: str | None = None
        self.delays_ms: list[float] = []
        # audio continuity in the hold window: the longest silence between two packets of the teacher's audio
        self.audio_first_at: float | None = None
        self.audio_last_at: float | None = None
        self.audio_gap_max_s = 0.0
        self.audio_in_window = 0
        self.streams: dict[tuple[str, str | None], _Stream] = {}  # (mid, participant) -> stream
        self.owners: dict[str, str | None] = {}  # mid -> participant whose track the slot carries now
        self._declared: dict[str, tuple[int | None, int | None]] = {}  # mid -> (media SSRC, RTX SSRC)
        self._routes: dict[int, tuple[_Stream, bool]] = {}  # SSRC -> (stream, is RTX)
        self._hooked: set[int] = set()
        self.connected = asyncio.Event()
        # simulcast teacher: which layer each received video frame came from (by its first VP8 bytes)
        self.frame_keys = frame_keys
        self.frames_by_layer: list[int] = [0] * (1 + max((v[0] for v in frame_keys.values()), default=0)) \
            if frame_keys else []
        self.frames_unknown = 0
        self.last_layer: int | None = None

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()
                self._install_fast_path()
                if self.remb_bps:
                    self._remb = asyncio.ensure_future(self._remb_loop())
                self.connected.set()
            elif self.pc.connectionState == "failed":
                self.error = self.error or "ice/dtls failed"
                self.connected.set()

    # -- signalling ----------------------------------------------------------------------------------------

    async def _on_offer(self, msg: dict) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._hook()
        self._declared = declared_ssrcs(msg["sdp"])
        self._set_owners(msg.get("tracks") or [])
        await self.ws.send({"type": "answer", "sdp": self.pc.localDescription.sdp})

    async def _on_tracks(self, msg: dict) -> None:
        self._set_owners(msg.get("tracks") or [])

    def _set_owners(self, tracks: list[dict]) -> None:
        self.owners.update({t["mid"]: t.get("participant") for t in tracks if t.get("mid") is not None})
        self._routes.clear()  # a slot may carry someone else's track now: rebuilt lazily

    def _hook(self) -> None:
        for transceiver in self.pc.getTransceivers():
            dtls = transceiver.receiver.transport
            if dtls is None or id(dtls) in self._hooked:
                continue
            self._hooked.add(id(dtls))
            if self.stock:
                seams.hook_dtls(dtls, self._stock_caller(seams.dtls_handlers(dtls)[0]))
            else:
                seams.hook_dtls(dtls, self._on_rtp)  # only this receiver's transport

    def _route(self, ssrc: int) -> tuple[_Stream, bool] | None:
        for mid, (media, rtx) in self._declared.items():
            if ssrc not in (media, rtx):
                continue
            transceiver = next((t for t in self.pc.getTransceivers() if t.mid == mid), None)
            if transceiver is None:
                return None
            participant = self.owners.get(mid)
            stream = self.streams.get((mid, participant))
            if stream is None:
                stream = self.streams[(mid, participant)] = _Stream(transceiver.kind, transceiver.receiver,
                                                                    participant)
            route = (stream, ssrc == rtx)
            self._routes[ssrc] = route
            return route
        return None

    # -- receiving -----------------------------------------------------------------------------------------

    def _install_fast_path(self) -> None:
        """Once DTLS is up, read SRTP straight from this peer's ICE socket: skip aioice's STUN parse attempt and
        queue, and the DTLS transport's receive task (~half the load generator's cost per packet). SRTP is still
        unprotected with the session DTLS negotiated; DTLS, STUN and SRTCP still go the stock way."""
        if not self.fast_path:
            return
        for transceiver in self.pc.getTransceivers():
            dtls = transceiver.receiver.transport
            path = seams.receive_path(dtls) if dtls is not None else None
            if path is None or getattr(path[0], "_lt_fast", False):
                continue
            protocol, unprotect = path
            original = protocol.datagram_received

            def datagram_received(data: bytes, addr: tuple, original=original, unprotect=unprotect) -> None:
                # RTP: first byte 128-191 and not an RTCP packet type (RFC 5761/7983 demultiplexing)
                if 127 < data[0] < 192 and len(data) > 12 and not 192 <= data[1] <= 223:
                    if self.loss and self.rng.random() < self.loss:
                        self.dropped += 1  # emulated downlink loss, before SRTP sees the packet
                        return
                    try:
                        plain = unprotect(data)
                    except Exception:  # noqa: BLE001 - a replayed or damaged packet, as the stock path drops it
                        self.srtp_errors += 1
                        return
                    self.fast_packets += 1
                    self._count(plain)
                    return
                original(data, addr)

            protocol.datagram_received = datagram_received
            protocol._lt_fast = True

    async def _on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        self._count(data)

    def _stock_caller(self, original: Any) -> Any:
        async def on_rtp(data: bytes, arrival_time_ms: int) -> None:
            self._count(data)
            await original(data, arrival_time_ms)
        return on_rtp

    def _count(self, data: bytes) -> None:
        if not self.counting or len(data) < 12:
            return
        b0, _b1, seq, ts, ssrc = RTP_FIXED.unpack_from(data, 0)
        route = self._routes.get(ssrc)
        if route is None:
            route = self._route(ssrc)
            if route is None:
                self.unrouted += 1
                return
        stream, is_rtx = route
        pos = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            pos += 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
        stream.packets += 1
        stream.bytes += len(data)
        if is_rtx:
            stream.rtx_packets += 1
            if len(data) >= pos + 2:
                stream.seq.repair((data[pos] << 8) | data[pos + 1])
            return
        if self.stock:
            stream.seq.add(seq)  # the stock receiver keeps the RTCP statistics and sends the NACKs
            if stream.rtcp_stats is None:
                stream.rtcp_stats = seams.receiver_remote_streams(stream.receiver).get(ssrc)
            gap = None
        else:
            if ssrc != stream.ssrc:
                stream.bind(ssrc)
            shim = stream.shim
            shim.sequence_number = seq
            shim.timestamp = ts
            stream.rtcp_stats.add(shim)  # type: ignore[union-attr]
            gap = stream.seq.add(seq)
        if stream.kind == "audio" and self.measure_delay:
            now = time.monotonic()
            last = self.audio_last_at
            if last is not None and now - last > self.audio_gap_max_s:
                self.audio_gap_max_s = now - last
            if self.audio_first_at is None:
                self.audio_first_at = now
            self.audio_last_at = now
            self.audio_in_window += 1
        if gap:
            # like a browser: ask for the holes at once (the stock NackGenerator's behaviour, minus re-asking)
            asyncio.ensure_future(seams.receiver_send_nack(stream.receiver, ssrc, gap))
        if stream.kind == "video":
            self._note_video_seq(ssrc, seq, time.monotonic())
        if stream.kind == "video" and (data[pos] & VP8_START_MASK) == 0x10:
            now = time.monotonic()
            head = data[pos:pos + 16]
            if self.first_keyframe_at is None and vp8_is_keyframe_start(head):
                self.first_keyframe_at = now
            if self.frame_keys is not None:
                self._simulcast_frame(data, pos, now, ssrc)
            elif self.measure_delay and self.send_times is not None and len(self.delays_ms) < DELAY_SAMPLE_LIMIT:
                pid = vp8_picture_id(head)
                if pid is not None:
                    self._delay(self.send_times[pid % PICTURE_IDS], now, ssrc)

    def _note_video_seq(self, ssrc: int, seq: int, now: float) -> None:
        """A video packet's number: its stream's first, or a jump forward of RESTART_JUMP or more, is a (re)start."""
        last = self._video_seq.get(ssrc)
        self._video_seq[ssrc] = seq
        if last is None or RESTART_JUMP <= (seq - last) & 0xFFFF < 0x8000:
            self._video_live_from[ssrc] = now

    def _delay(self, sent: float, now: float, ssrc: int) -> None:
        """One frame's delivery delay, unless the frame was sent before the (re)start it arrived after (a replay)."""
        if not 0 < sent <= now:
            return
        if sent < self._video_live_from.get(ssrc, 0.0):
            self.replayed_frames += 1
        else:
            self.delays_ms.append((now - sent) * 1000.0)

    def _simulcast_frame(self, data: bytes, pos: int, now: float, ssrc: int) -> None:
        """A frame start from a simulcast teacher: its layer, and its delay from the (layer, frame) stamp."""
        x = data[pos]
        n = 1
        if x & 0x80 and len(data) > pos + 1:  # X: I/L/T/K flags follow
            flags = data[pos + 1]
            n = 2
            if flags & 0x80:  # I: PictureID, 7 or 15 bits
                n += 2 if len(data) > pos + n and data[pos + n] & 0x80 else 1
            if flags & 0x40:  # L: TL0PICIDX
                n += 1
            if flags & 0x30:  # T or K: TID/Y/KEYIDX
                n += 1
        entry = self.frame_keys.get(data[pos + n:pos + n + FRAME_KEY_BYTES])  # type: ignore[union-attr]
        if entry is None:
            self.frames_unknown += 1
            return
        layer, slot = entry
        self.frames_by_layer[layer] += 1
        self.last_layer = layer
        if self.measure_delay and self.send_times is not None and len(self.delays_ms) < DELAY_SAMPLE_LIMIT:
            self._delay(self.send_times[slot], now, ssrc)

    # -- figures -------------------------------------------------------------------------------------------

    def sample_jitter(self) -> None:
        for stream in self.streams.values():
            j = stream.jitter_ms()
            if j is not None:
                stream.jitter_samples_ms.append(j)

    def by_kind(self, participants: Collection[str | None] | None = None) -> dict[str, dict | None]:
        """{"audio": totals, "video": totals} over the streams of `participants` (None: every stream)."""
        chosen = [s for s in self.streams.values() if participants is None or s.participant in participants]
        return {kind: stream_totals([s for s in chosen if s.kind == kind]) for kind in ("audio", "video")}

    def participants(self) -> list[str | None]:
        """Whose tracks arrived (in the order first seen)."""
        return list(dict.fromkeys(s.participant for s in self.streams.values() if s.packets))

    def counters(self) -> dict[str, int]:
        return {"fast_path_packets": self.fast_packets, "srtp_errors": self.srtp_errors,
                "dropped_emulated": self.dropped, "unrouted_packets": self.unrouted}

    def packets(self) -> int:
        return sum(s.packets for s in self.streams.values())

    async def _remb_loop(self) -> None:
        """REMB for the video streams received, once a second, through one of their receivers' RTCP."""
        while True:
            await asyncio.sleep(REMB_INTERVAL_S)
            video = [s for s in self.streams.values() if s.kind == "video" and s.ssrc is not None]
            if not video:
                continue
            receiver = video[0].receiver
            rtcp_ssrc = seams.receiver_rtcp_ssrc(receiver)
            if rtcp_ssrc is None:
                continue
            fci = pack_remb_fci(self.remb_bps, sorted({s.ssrc for s in video}))
            try:
                await seams.receiver_send_rtcp(receiver, RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci))
            except ConnectionError:
                return

    async def close(self) -> None:
        self.counting = False
        if self._remb is not None:
            self._remb.cancel()
        await self.pc.close()

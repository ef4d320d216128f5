"""The teacher's connection (Publisher): answers the teacher's offer and turns each received transceiver into a
Producer; sends the teacher REMB, NACKs and receiver reports (with the classrooms' loss for Opus FEC)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from typing import Any, Protocol

from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    pack_remb_fci,
)

from sfu import seams
from sfu.adapt.uplink import UplinkBudget
from sfu.ingress import Ingress, Route
from sfu.peers.sdp import (
    LESSON_CODECS,
    TEACHER_MAX_TRACKS_PER_KIND,
    SdpError,
    announce,
    declared_ssrcs,
    ext_id,
    lesson_codecs,
    make_peer_connection,
    restrict_codecs,
    set_description,
)
from sfu.producer import Producer
from sfu.rtp.clock import Clock, as_clock
from sfu.rtp.feedback import LayerFeedback
from sfu.rtp.header import URI_AUDIO_LEVEL, URI_MID
from sfu.simulcast.demux import LayerDemux
from sfu.simulcast.sdp import (
    SimulcastOffer,
    layers_low_to_high,
    munge_answer,
    parse_simulcast_offer,
)
from sfu.sink import SubscriberStream

log = logging.getLogger("ketang.sfu")

# a classroom starts on this simulcast layer (the middle one: quick to start, a step from either end) and its
# selector moves it from there
START_LAYER = 1
# the teacher's microphone is told of the classrooms' loss at this quantile (the weak links, not the median),
# from reports at most this old, and never of more than this (FEC beyond ~20 % costs more than it saves)
CLASSROOM_LOSS_QUANTILE = 0.9
CLASSROOM_LOSS_STALE_S = 5.0
CLASSROOM_LOSS_MAX = 0.2
# what a simulcast teacher is asked for at least: the three layers (~150 + 500 + 1500 kbit/s) and headroom
SIMULCAST_UPLINK_BPS = 2_300_000
# a classroom's own camera and microphone: one track of each kind (the signalling refuses a screen)
CLASSROOM_MAX_TRACKS_PER_KIND = 1


class PublisherHost(Protocol):
    """What a Publisher needs of the lesson it publishes into (the Router implements it)."""

    def add_producer(self, producer: Producer) -> None: ...

    async def remove_publisher(self, publisher: Publisher) -> None: ...


def classroom_loss(producer: Producer, now: float) -> float:
    """The loss the classrooms report for a track: the CLASSROOM_LOSS_QUANTILE of their latest receiver
    reports (fresh ones only), as a fraction."""
    lost = sorted(c.fraction_lost for c in producer.consumers if isinstance(c, SubscriberStream)
                  and c.report_at is not None and now - c.report_at <= CLASSROOM_LOSS_STALE_S)
    if not lost:
        return 0.0
    return lost[min(len(lost) - 1, int(CLASSROOM_LOSS_QUANTILE * len(lost)))] / 256


def _report_classroom_loss(receiver: RTCRtpReceiver, producer: Producer, clock: Clock) -> None:
    """The receiver reports to the teacher for its microphone carry the classrooms' loss when it is higher than
    the server's own, so the teacher's Opus encoder adds in-band FEC for the classrooms' links (it sizes FEC by
    the loss it is told of), capped at CLASSROOM_LOSS_MAX."""

    async def send_rtcp(packet: Any, send: Any) -> None:
        if isinstance(packet, RtcpRrPacket):
            loss = min(classroom_loss(producer, clock.monotonic()), CLASSROOM_LOSS_MAX)
            for block in packet.reports:
                if block.ssrc == producer.ssrc:
                    block.fraction_lost = max(block.fraction_lost, int(loss * 256))
        await send(packet)

    seams.wrap_receiver_rtcp(receiver, send_rtcp)


class Publisher:
    """The teacher's connection: every received transceiver becomes a Producer."""

    def __init__(self, router: PublisherHost, participant_id: str, ice_servers: list[str] | None = None,
                 uplink_bps: int | None = None, role: str = "teacher", clock: Clock | None = None) -> None:
        self.router = router
        self.clock = as_clock(clock)
        self.participant_id = participant_id
        self.role = role  # "classroom": one small camera and one microphone at most
        self.pc = make_peer_connection(ice_servers)
        # what the teacher is asked to send (REMB), in place of aiortc's slowly rising estimate; None: aiortc's
        self.uplink = UplinkBudget(uplink_bps) if uplink_bps else None
        self._video_receivers: dict[str, RTCRtpReceiver] = {}  # producer id -> its receiver (video, REMB)
        self._receivers: dict[str, RTCRtpReceiver] = {}  # producer id -> its receiver (every track)
        self.ingress: Ingress | None = None
        self.producers: dict[str, Producer] = {}  # by mid
        self._declared: dict[str, tuple[int | None, int | None]] = {}
        self._lock = asyncio.Lock()  # an offer being answered (ICE gathering its sockets) and close: one at a time
        self.closed = False

        @self.pc.on("connectionstatechange")
        async def _on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                await self.router.remove_publisher(self)

    async def accept_offer(self, sdp: str, sources: dict[str, str] | None = None) -> str:
        """Answer the teacher's offer (first publish or renegotiation); returns the answer SDP. One at a time, and
        never with `close` midway (see `close`)."""
        async with self._lock:
            if self.closed:
                raise SdpError("this connection was replaced or closed", "lesson_closed")
            return await self._accept_offer(sdp, sources)

    async def _accept_offer(self, sdp: str, sources: dict[str, str] | None) -> str:
        await set_description(self.pc, sdp, "offer", max_per_kind=TEACHER_MAX_TRACKS_PER_KIND
                               if self.role == "teacher" else CLASSROOM_MAX_TRACKS_PER_KIND)
        self._declared = declared_ssrcs(sdp)
        # simulcast (the camera sent as 2-3 layers, told apart by RIDs): aiortc ignores it, we accept it
        simulcast = parse_simulcast_offer(sdp) if self.role == "teacher" else {}
        receiving = [t for t in self.pc.getTransceivers()
                     if t.kind in LESSON_CODECS and seams.offer_direction(t) in ("recvonly", "sendrecv")]  # ours: reversed
        if not receiving:
            raise SdpError("the offer publishes no audio or video track", "nothing_to_publish")
        for t in receiving:
            # a classroom's microphone is muted most of the lesson: with DTX its silence costs ~2 packets a
            # second instead of 50 (400 classrooms: 20,000 packets a second the server would take in for nothing)
            restrict_codecs(t, dtx=self.role == "classroom")
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        for t in receiving:
            if t.mid not in self.producers:
                self._add_producer(t, (sources or {}).get(t.mid or ""), simulcast.get(t.mid or ""))
        if simulcast and self.uplink is not None:
            # the budget asked for must cover every layer, or the browser never starts the top one
            self.uplink.budget_bps = max(self.uplink.budget_bps, SIMULCAST_UPLINK_BPS)
            self.uplink.bps = max(self.uplink.bps, SIMULCAST_UPLINK_BPS)
        return announce(munge_answer(self.pc.localDescription.sdp, simulcast) if simulcast
                        else self.pc.localDescription.sdp)

    def _add_producer(self, t: RTCRtpTransceiver, source: str | None, simulcast: SimulcastOffer | None = None) -> None:
        pt, rtx, name, rate = lesson_codecs(t)
        receiver = t.receiver
        dtls = receiver.transport
        if self.ingress is None or self.ingress.dtls is not dtls:
            self.ingress = Ingress(dtls)

        def send_pli(ssrc: int) -> None:
            asyncio.ensure_future(seams.request_keyframe(receiver, ssrc))

        track_id = f"{self.participant_id[:8]}-{t.mid}-{uuid.uuid4().hex[:6]}"
        source = source or ("microphone" if t.kind == "audio" else "camera")

        def new_producer(pid: str) -> Producer:
            p = Producer(pid, t.kind, name, rate, send_pli, source, owner=self.participant_id, clock=self.clock)
            p.owner_role = self.role
            return p

        producer = new_producer(track_id)
        route = Route(producer, t.mid, pt, rtx, ext_id(t, URI_MID),
                      ext_id(t, URI_AUDIO_LEVEL) if t.kind == "audio" else 0)
        if simulcast is not None and t.kind == "video":
            rids = layers_low_to_high(simulcast)
            # layer 0 is the track everyone knows; the others are fed alongside it
            producer.layers = [producer] + [new_producer(f"{track_id}~{rid}") for rid in rids[1:]]
            for layer in producer.layers[1:]:
                layer.feedback = LayerFeedback()  # aiortc's receiver sees layer 0 only: we report the others
            route.demux = LayerDemux(rids, simulcast.rid_ext_id, simulcast.rrid_ext_id)
            route.layers = [dataclasses.replace(route, producer=p, demux=None, layers=None, stock=i == 0)
                            for i, p in enumerate(producer.layers)]
            self.ingress.add_route(route)
        else:
            if self.role == "classroom":
                # hundreds of classroom uplinks: none goes through aiortc's receiver (its jitter buffer and
                # thread per track cost more than the forwarding); the server reports and NACKs them itself
                route.stock = False
                producer.feedback = LayerFeedback()
            # browsers put the MID extension only on a stream's first packets: an m-line reused for a new track
            # (share, stop, share again) can only be routed by the SSRCs its offer declares
            ssrc, rtx_ssrc = self._declared.get(t.mid or "", (None, None))
            self.ingress.add_route(route, ssrc, rtx_ssrc)
        self.producers[t.mid or producer.id] = producer
        self._receivers[producer.id] = receiver
        if t.kind == "audio" and self.role == "teacher":
            _report_classroom_loss(receiver, producer, self.clock)
        if t.kind == "video" and self.uplink is not None:
            seams.disable_receiver_remb(receiver)  # the stock receiver's own REMB would contradict ours
            self._video_receivers[producer.id] = receiver
        self.router.add_producer(producer)

    async def send_uplink_remb(self) -> int | None:
        """Tell the teacher's browser how much video to send (about once a second); returns the bitrate."""
        if self.uplink is None or self.closed:
            return None
        video = [layer for p in self.producers.values() if p.id in self._video_receivers
                 for layer in (p.layers or [p]) if layer.ssrc is not None]
        if not video:
            return None
        expected = lost = 0
        for producer in video:
            e, lo = producer.take_uplink_loss()
            expected, lost = expected + e, lost + lo
        bps = self.uplink.update(expected, lost)
        receiver = next(self._video_receivers[p.id] for p in self.producers.values() if p.id in self._video_receivers)
        rtcp_ssrc = seams.receiver_rtcp_ssrc(receiver)
        if rtcp_ssrc is not None:
            await seams.receiver_send_rtcp(receiver, RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                                                     fci=pack_remb_fci(bps, [p.ssrc for p in video])))
        return bps

    async def send_layer_feedback(self, now: float, reports: bool) -> int:
        """NACKs (and, with `reports`, receiver reports) to the publisher for the streams the stock receiver
        does not see (upper simulcast layers, classroom uplinks); returns how many RTCP packets went out."""
        sent = 0
        for producer in list(self.producers.values()):
            receiver = self._receivers.get(producer.id)
            if receiver is None:
                continue
            rtcp_ssrc = seams.receiver_rtcp_ssrc(receiver)
            if rtcp_ssrc is None:
                continue
            blocks = []
            for layer in producer.layers or [producer]:
                feedback = layer.feedback
                if feedback is None or layer.ssrc is None:
                    continue
                lost = feedback.nacks(now)
                if lost and layer.kind == "video":  # audio has no retransmissions to ask for
                    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=rtcp_ssrc, media_ssrc=layer.ssrc, lost=lost)
                    await seams.receiver_send_rtcp(receiver, nack)
                    sent += 1
                figures = feedback.report() if reports else None
                if figures is not None:
                    lsr = dlsr = 0
                    if layer.last_sr is not None:
                        ntp, at = layer.last_sr
                        lsr, dlsr = (ntp >> 16) & 0xFFFFFFFF, int((now - at) * 65536)
                    blocks.append(RtcpReceiverInfo(ssrc=layer.ssrc, fraction_lost=figures[0], packets_lost=figures[1],
                                                   highest_sequence=figures[2], jitter=0, lsr=lsr, dlsr=dlsr))
            if blocks:
                await seams.receiver_send_rtcp(receiver, RtcpRrPacket(ssrc=rtcp_ssrc, reports=blocks))
                sent += 1
        return sent

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for producer in self.producers.values():
            producer.close()
        if self.ingress is not None:
            self.ingress.close()
        async with self._lock:  # not while an answer is being made: its ICE sockets would outlive the close
            await self.pc.close()


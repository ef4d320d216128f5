"""The peer connections of a lesson: the teacher's (Publisher) and each subscriber's (Subscriber).

A Publisher answers the teacher's offer and turns each received transceiver into a Producer. A Subscriber is
the server-offered connection to one classroom: it keeps "slots" (send-only transceivers with a placeholder
track) and binds a Consumer into a slot for each producer, renegotiating only when it needs a new slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiortc import (MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection,
                    RTCRtpSender, RTCSessionDescription)
from aiortc import sdp
from aiortc.codecs import is_rtx
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import (RTCP_PSFB_APP, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpReceiverInfo, RtcpRrPacket,
                        RtcpRtpfbPacket, pack_remb_fci)

from . import seams
from .consumer import Consumer, ResumePoint
from .feedback import LayerFeedback
from .ladder import COURSEWARE, VIDEO, LinkReport, VideoLadder
from .uplink import UplinkBudget
from .ingress import Ingress, Route
from .producer import Producer
from .rtp import URI_ABS_SEND_TIME, URI_AUDIO_LEVEL, URI_MID, extension_layout
from .simulcast import LayerDemux
from .simulcast_consumer import SimulcastConsumer
from .simulcast_sdp import SimulcastOffer, layers_low_to_high, munge_answer, parse_simulcast_offer
from .simulcast_select import LayerReport, LayerSelector

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("ketang.sfu")

# the lesson's codecs: forwarding never transcodes, so teacher and classrooms must share one per kind
LESSON_CODECS = {"audio": "opus", "video": "vp8"}
SDP_MAX_CHARS = 60000


class SdpError(ValueError):
    """An SDP we cannot use; .code is the protocol error code."""

    def __init__(self, message: str, code: str = "bad_sdp") -> None:
        super().__init__(message)
        self.code = code


def make_peer_connection(ice_servers: list[str] | None = None) -> RTCPeerConnection:
    # an explicit empty list: otherwise aiortc queries a public STUN server for every connection
    servers = [RTCIceServer(urls=u) for u in (ice_servers or [])]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


def _ext_id(transceiver: RTCRtpTransceiver, uri: str) -> int:
    for ext in seams.transceiver_header_extensions(transceiver):
        if ext.uri == uri:
            return ext.id
    return 0


def _lesson_codecs(transceiver: RTCRtpTransceiver) -> tuple[int, int | None, str, int]:
    """(payload type, RTX payload type, codec name, clock rate) of the lesson codec negotiated here."""
    wanted = LESSON_CODECS[transceiver.kind]
    codecs = seams.transceiver_codecs(transceiver)
    primary = next((c for c in codecs if c.name.lower() == wanted), None)
    if primary is None:
        raise SdpError(f"{transceiver.kind} must use {wanted.upper()} (offered: "
                       f"{', '.join(c.name for c in codecs) or 'none'})", "unsupported_codec")
    rtx = next((c.payloadType for c in codecs
                if is_rtx(c) and c.parameters.get("apt") == primary.payloadType), None)
    return primary.payloadType, rtx, primary.name, primary.clockRate


# Opus in-band FEC: asked of the teacher's encoder in our answer, so a classroom that loses a packet can rebuild
# most of it from the next one without waiting for a retransmission (audio has no NACK)
OPUS_ANSWER_PARAMETERS = {"useinbandfec": 1, "minptime": 10}


def _restrict_codecs(transceiver: RTCRtpTransceiver, dtx: bool = False) -> None:
    """Keep only the lesson codec (and its RTX) in what we answer (seam: RTCRtpTransceiver._codecs); `dtx`
    asks the browser's Opus encoder to send (almost) nothing during silence."""
    pt, rtx, _, _ = _lesson_codecs(transceiver)
    kept = [c for c in seams.transceiver_codecs(transceiver) if c.payloadType in (pt, rtx)]
    opus = {**OPUS_ANSWER_PARAMETERS, **({"usedtx": 1} if dtx else {})}
    seams.set_transceiver_codecs(transceiver, [
        dataclasses.replace(c, parameters={**c.parameters, **opus})
        if c.name.lower() == "opus" else c for c in kept])


def _prefer_lesson_codecs(transceiver: RTCRtpTransceiver) -> None:
    caps = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    wanted = LESSON_CODECS[transceiver.kind]
    transceiver.setCodecPreferences([c for c in caps if c.name.lower() in (wanted, "rtx")])


# what an offer may hold: a teacher's camera, microphone, courseware and its sound fit in 2 tracks of each kind;
# m-sections of stopped tracks stay in a browser's offers (and are reused), so the sections themselves may be more
PUBLISH_MAX_SECTIONS = 16
TEACHER_MAX_TRACKS_PER_KIND = 2
MID_MAX_CHARS = 32  # as `sources` in messages.py
_MID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_FINGERPRINT_ALGORITHMS = frozenset({"sha-256", "sha-384", "sha-512"})


def check_description(text: Any, kind: str, max_sections: int = PUBLISH_MAX_SECTIONS,
                      max_per_kind: int | None = None) -> sdp.SessionDescription:
    """Refuse, before aiortc sees it, an SDP that would fail inside aiortc or cost the lesson: every refusal an
    SdpError with a message a client author can act on (docs/protocol.md, `bad_sdp`, `too_many_tracks`).
    `max_per_kind`: how many audio (and video) tracks an offer may send."""
    if not isinstance(text, str) or not text.startswith("v=0") or len(text) > SDP_MAX_CHARS:
        raise SdpError(f"not an SDP description (v=0 first, {SDP_MAX_CHARS} characters at most)")
    try:
        parsed = sdp.SessionDescription.parse(text)
    except Exception as exc:  # noqa: BLE001 - aiortc's parser raises ValueError, KeyError, IndexError...
        raise SdpError(f"the SDP {kind} cannot be parsed ({type(exc).__name__})") from exc
    if not parsed.media:
        if kind == "offer":
            raise SdpError("the offer publishes no audio or video track", "nothing_to_publish")
        raise SdpError(f"the SDP {kind} has no media section")
    if len(parsed.media) > max_sections:
        raise SdpError(f"the SDP {kind} has {len(parsed.media)} media sections; {max_sections} at most",
                       "too_many_tracks")
    mids: set[str] = set()
    sending = {"audio": 0, "video": 0}
    for media in parsed.media:
        if media.kind not in ("audio", "video"):
            raise SdpError(f"m={media.kind}: only audio and video are carried")
        mid = media.rtp.muxId
        if not mid or len(mid) > MID_MAX_CHARS or not set(mid) <= _MID_CHARS:
            raise SdpError(f"every media section needs an a=mid of 1-{MID_MAX_CHARS} letters, digits, '-', '_' or '.'")
        if mid in mids:
            raise SdpError(f"a=mid:{mid} is used by two media sections")
        mids.add(mid)
        if media.port == 0:
            continue  # a rejected or stopped section: nothing more to check
        if media.dtls is None or not any(f.algorithm.lower() in _FINGERPRINT_ALGORITHMS
                                         for f in media.dtls.fingerprints):
            raise SdpError("a media section has no a=fingerprint (sha-256, sha-384 or sha-512): DTLS needs one")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise SdpError("a media section has no a=ice-ufrag / a=ice-pwd")
        if media.direction in (None, "sendrecv", "sendonly"):
            sending[media.kind] += 1
    if max_per_kind is not None:
        for media_kind, n in sending.items():
            if n > max_per_kind:
                raise SdpError(f"the offer sends {n} {media_kind} tracks; {max_per_kind} at most", "too_many_tracks")
    return parsed


async def _set_description(pc: RTCPeerConnection, sdp: str, kind: str, max_sections: int = PUBLISH_MAX_SECTIONS,
                           max_per_kind: int | None = None) -> None:
    check_description(sdp, kind, max_sections, max_per_kind)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    except SdpError:
        raise
    except Exception as exc:  # aiortc raises ValueError, InvalidStateError, OperationError, KeyError...
        raise SdpError(f"SDP {kind} rejected: {exc}") from exc


def declared_ssrcs(sdp_text: str) -> dict[str, tuple[int | None, int | None]]:
    """mid -> (media SSRC, RTX SSRC) as declared by a=ssrc / a=ssrc-group:FID lines (none with simulcast)."""
    found: dict[str, tuple[int | None, int | None]] = {}
    for media in sdp.SessionDescription.parse(sdp_text).media:
        mid = media.rtp.muxId
        fid = next((g.items for g in media.ssrc_group if g.semantic == "FID" and len(g.items) == 2), None)
        if fid is not None:
            found[mid] = (int(fid[0]), int(fid[1]))
        elif len({s.ssrc for s in media.ssrc}) == 1:
            found[mid] = (media.ssrc[0].ssrc, None)
    return found


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


def classroom_loss(producer: Producer, now: float) -> float:
    """The loss the classrooms report for a track: the CLASSROOM_LOSS_QUANTILE of their latest receiver
    reports (fresh ones only), as a fraction."""
    lost = sorted(c.fraction_lost for c in producer.consumers
                  if getattr(c, "report_at", None) is not None and now - c.report_at <= CLASSROOM_LOSS_STALE_S)
    if not lost:
        return 0.0
    return lost[min(len(lost) - 1, int(CLASSROOM_LOSS_QUANTILE * len(lost)))] / 256


def _report_classroom_loss(receiver: RTCRtpReceiver, producer: Producer) -> None:
    """The receiver reports to the teacher for its microphone carry the classrooms' loss when it is higher than
    the server's own, so the teacher's Opus encoder adds in-band FEC for the classrooms' links (it sizes FEC by
    the loss it is told of), capped at CLASSROOM_LOSS_MAX."""

    async def send_rtcp(packet: Any, send: Any) -> None:
        if isinstance(packet, RtcpRrPacket):
            loss = min(classroom_loss(producer, time.monotonic()), CLASSROOM_LOSS_MAX)
            for block in packet.reports:
                if block.ssrc == producer.ssrc:
                    block.fraction_lost = max(block.fraction_lost, int(loss * 256))
        await send(packet)

    seams.wrap_receiver_rtcp(receiver, send_rtcp)


class Publisher:
    """The teacher's connection: every received transceiver becomes a Producer."""

    def __init__(self, router: Router, participant_id: str, ice_servers: list[str] | None = None,
                 uplink_bps: int | None = None, role: str = "teacher") -> None:
        self.router = router
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
        await _set_description(self.pc, sdp, "offer", max_per_kind=TEACHER_MAX_TRACKS_PER_KIND
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
            _restrict_codecs(t, dtx=self.role == "classroom")
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        for t in receiving:
            if t.mid not in self.producers:
                self._add_producer(t, (sources or {}).get(t.mid or ""), simulcast.get(t.mid or ""))
        if simulcast and self.uplink is not None:
            # the budget asked for must cover every layer, or the browser never starts the top one
            self.uplink.budget_bps = max(self.uplink.budget_bps, SIMULCAST_UPLINK_BPS)
            self.uplink.bps = max(self.uplink.bps, SIMULCAST_UPLINK_BPS)
        return munge_answer(self.pc.localDescription.sdp, simulcast) if simulcast else self.pc.localDescription.sdp

    def _add_producer(self, t: RTCRtpTransceiver, source: str | None, simulcast: SimulcastOffer | None = None) -> None:
        pt, rtx, name, rate = _lesson_codecs(t)
        receiver = t.receiver
        dtls = receiver.transport
        if self.ingress is None or self.ingress.dtls is not dtls:
            self.ingress = Ingress(dtls)

        def send_pli(ssrc: int) -> None:
            asyncio.ensure_future(seams.request_keyframe(receiver, ssrc))

        track_id = f"{self.participant_id[:8]}-{t.mid}-{uuid.uuid4().hex[:6]}"
        source = source or ("microphone" if t.kind == "audio" else "camera")

        def new_producer(pid: str) -> Producer:
            p = Producer(pid, t.kind, name, rate, send_pli, source, owner=self.participant_id)
            p.owner_role = self.role
            return p

        producer = new_producer(track_id)
        route = Route(producer, t.mid, pt, rtx, _ext_id(t, URI_MID),
                      _ext_id(t, URI_AUDIO_LEVEL) if t.kind == "audio" else 0)
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
            _report_classroom_loss(receiver, producer)
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
            rtcp_ssrc = seams.receiver_rtcp_ssrc(receiver) if receiver is not None else None
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
                    await seams.receiver_send_rtcp(receiver, nack)  # type: ignore[arg-type]
                    sent += 1
                figures = feedback.report() if reports else None
                if figures is not None:
                    lsr = dlsr = 0
                    if layer.last_sr is not None:
                        ntp, at = layer.last_sr
                        lsr, dlsr = (ntp >> 16) & 0xFFFFFFFF, int((time.monotonic() - at) * 65536)
                    blocks.append(RtcpReceiverInfo(ssrc=layer.ssrc, fraction_lost=figures[0], packets_lost=figures[1],
                                                   highest_sequence=figures[2], jitter=0, lsr=lsr, dlsr=dlsr))
            if blocks:
                await seams.receiver_send_rtcp(receiver, RtcpRrPacket(ssrc=rtcp_ssrc, reports=blocks))  # type: ignore[arg-type]
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


class PlaceholderTrack(MediaStreamTrack):
    """A track whose recv() never returns: a forward-only sender with no track would poll every 20 ms."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] = asyncio.get_event_loop().create_future()

    async def recv(self):  # type: ignore[override]
        await self._never
        raise asyncio.CancelledError


@dataclass
class Slot:
    transceiver: RTCRtpTransceiver
    kind: str
    producer: Producer | None = None
    consumer: Consumer | None = None
    negotiated: bool = False
    resume: ResumePoint | None = None  # where the previous producer's stream in this slot stopped


class SubscriberSignals(Protocol):
    """How a Subscriber reaches its client (the signalling layer implements it)."""

    async def send_offer(self, sdp: str, tracks: list[dict]) -> None: ...

    def send_tracks(self, tracks: list[dict]) -> None: ...


@dataclass
class Subscriber:
    """A classroom's (or observer's) connection, offered by the server."""

    router: Router
    participant_id: str
    signals: SubscriberSignals
    ice_servers: list[str] | None = None
    slots: list[Slot] = field(default_factory=list)
    closed: bool = False
    video: bool = True  # False: the classroom chose audio only; its video consumers are paused in the SFU
    ladder: VideoLadder | None = None  # when video is allowed: whether the link can carry it
    selectors: dict[str, LayerSelector] = field(default_factory=dict)  # simulcast track id -> its layer choice
    pinned_layer: int | None = None  # the classroom's own cap on the simulcast layer (0: "low"); None: automatic

    def __post_init__(self) -> None:
        self.pc = make_peer_connection(self.ice_servers)
        self._awaiting_answer = False
        self._renegotiate = False
        self._lock = asyncio.Lock()

        @self.pc.on("connectionstatechange")
        async def _on_state() -> None:
            if self.pc.connectionState == "failed":
                await self.router.remove_subscriber(self.participant_id)

    def _add_slot(self, kind: str) -> Slot:
        t = self.pc.addTransceiver(PlaceholderTrack(kind), direction="sendonly")
        _prefer_lesson_codecs(t)
        slot = Slot(t, kind)
        self.slots.append(slot)
        return slot

    async def start(self, producers: list[Producer]) -> None:
        """One audio and one video slot from the start, so ICE/DTLS are up before the teacher publishes."""
        for kind in ("audio", "video"):
            self._add_slot(kind)
        for producer in producers:
            self.place(producer)
        await self.negotiate()

    def place(self, producer: Producer) -> bool:
        """Put a producer into a free slot (binding it now if negotiated); True if a new slot is needed."""
        new, bound = self._put(producer)
        if bound:
            self.signals.send_tracks(self.track_map())
        return new

    def unplace(self, producer: Producer) -> None:
        for slot in self.slots:
            if slot.producer is producer:
                self._free(slot)
                self.signals.send_tracks(self.track_map())

    def sync(self, wanted: list[Producer], among: list[Producer] | None = None) -> bool:
        """Receive the `wanted` producers and none of the others of `among` (None: of all it receives now),
        with one `tracks` message for the whole change (a wall page of 16 tiles is one message, not 32).
        Freed slots are reused first; True when new slots are needed (the caller sends a new offer)."""
        keep = {id(p) for p in wanted}
        scope = None if among is None else {id(p) for p in among}
        changed = new = False
        for slot in self.slots:
            p = slot.producer
            if p is not None and id(p) not in keep and (scope is None or id(p) in scope):
                self._free(slot)
                changed = True
        have = {id(s.producer) for s in self.slots if s.producer is not None}
        for producer in wanted:
            if id(producer) not in have:
                added, _ = self._put(producer)
                new |= added
                changed = True
        if changed:
            self.signals.send_tracks(self.track_map())
        return new

    def _put(self, producer: Producer) -> tuple[bool, bool]:
        """(a new slot was added, the producer is bound now)."""
        slot = next((s for s in self.slots if s.kind == producer.kind and s.producer is None), None)
        new = slot is None
        if slot is None:
            slot = self._add_slot(producer.kind)
        slot.producer = producer
        if slot.negotiated:
            self._bind(slot)
            return new, True
        return new, False

    def _free(self, slot: Slot) -> None:
        """The slot's track goes; a later one in this slot continues its sequence numbers and timestamps."""
        if slot.consumer is not None:
            slot.resume = slot.consumer.resume_point()
            slot.consumer.close()
        if slot.producer is not None and slot.producer.closed:
            self.selectors.pop(slot.producer.id, None)  # a track that ended (kept while only paged away)
        slot.producer = slot.consumer = None

    def _bind(self, slot: Slot) -> None:
        producer = slot.producer
        if producer is None or slot.consumer is not None or producer.closed:
            return
        t = slot.transceiver
        pt, rtx, _, _ = _lesson_codecs(t)
        layout = extension_layout(t.mid, _ext_id(t, URI_MID), _ext_id(t, URI_ABS_SEND_TIME),
                                  _ext_id(t, URI_AUDIO_LEVEL) if t.kind == "audio" else 0)
        if producer.layers:
            selector = self.selectors.get(producer.id)
            start = selector.layer if selector is not None else START_LAYER
            if self.pinned_layer is not None:
                start = min(start, self.pinned_layer)
            slot.consumer = SimulcastConsumer(producer, t.sender, pt, rtx, layout, resume=slot.resume,
                                              start_layer=min(start, len(producer.layers) - 1))
        else:
            slot.consumer = Consumer(producer, t.sender, pt, rtx, layout, resume=slot.resume)
        if slot.kind == "video" and not self._flows(producer):
            slot.consumer.pause()

    def _flows(self, producer: Producer) -> bool:
        """Whether this video track flows to the classroom now (its choice, then the ladder's rung)."""
        if not self.video:
            return False
        level = self.ladder.level if self.ladder is not None else VIDEO
        return level == VIDEO or (level == COURSEWARE and producer.source == "screen")

    def set_video(self, enabled: bool) -> None:
        """Audio only (the school's choice) or video again, as far as the link allows (the ladder decides);
        enforced here, not in the page, so the bandwidth is really saved."""
        self.video = enabled
        self.ladder = None  # a fresh start for the automatic choice
        self._apply_video()

    def _apply_video(self) -> None:
        for slot in self.slots:
            if slot.kind == "video" and slot.consumer is not None and slot.producer is not None:
                if self._flows(slot.producer):
                    slot.consumer.unpause()
                else:
                    slot.consumer.pause()

    def adapt(self, now: float, video_bps: float, screen_bps: float = 0.0) -> None:
        """Audio first: pause this classroom's video while its link cannot carry it (REMB, loss)."""
        if not self.video:
            return  # the school chose audio only
        consumers = self.consumers()
        video = [c for c in consumers if c.kind == "video"]
        if not video:
            return
        if self.ladder is None:
            self.ladder = VideoLadder(now)
        with_remb = [c for c in video if c.remb_at is not None]
        latest = max(with_remb, key=lambda c: c.remb_at or 0.0) if with_remb else None
        lossiest = max(consumers, key=lambda c: c.fraction_lost)
        report = LinkReport(latest.remb_bps if latest else None, latest.remb_at if latest else None,
                            lossiest.fraction_lost / 256, video_bps, lossiest.report_at, screen_bps)
        self._choose_layers(now, latest, lossiest)
        was = self.ladder.level
        self.ladder.update(report, now)
        if self.ladder.level != was:
            log.info("classroom %s: %s (%s)", self.participant_id, self.ladder.state, self.ladder.reason)
            self._apply_video()

    def _choose_layers(self, now: float, latest: Consumer | None, lossiest: Consumer) -> None:
        """Simulcast: each track's layer from this classroom's estimate and loss (sfu/simulcast_select.py)."""
        for consumer in self.consumers():
            if not isinstance(consumer, SimulcastConsumer) or consumer.paused:
                continue
            selector = self.selectors.get(consumer.producer.id)
            if selector is None:
                selector = self.selectors[consumer.producer.id] = LayerSelector(now, consumer.switcher.target)
            report = LayerReport(latest.remb_bps if latest else None, latest.remb_at if latest else None,
                                 lossiest.fraction_lost / 256, lossiest.report_at, consumer.layer_rates())
            chosen = selector.update(report, now)
            if self.pinned_layer is not None:
                chosen = min(chosen, self.pinned_layer)
            consumer.set_layer(chosen)

    def pin_layer(self, layer: int | None) -> None:
        """The classroom's own choice: at most this simulcast layer (0: the smallest), or None: automatic."""
        self.pinned_layer = layer
        if layer is not None:
            for consumer in self.consumers():
                if isinstance(consumer, SimulcastConsumer):
                    consumer.set_layer(min(consumer.switcher.target, layer))

    def layer_states(self) -> dict[str, dict]:
        """Per simulcast track: the layer forwarded, the one chosen, and why (for the teacher's page)."""
        out = {}
        for consumer in self.consumers():
            if isinstance(consumer, SimulcastConsumer):
                selector = self.selectors.get(consumer.producer.id)
                reason = selector.reason if selector else ""
                if self.pinned_layer is not None:
                    reason = "the classroom chose the low layer"
                out[consumer.producer.id] = {"layer": consumer.current, "target": consumer.switcher.target,
                                             "layers": len(consumer.layers), "reason": reason}
        return out

    def track_map(self) -> list[dict]:
        """Which mid carries which lesson track, for the client."""
        return [{"mid": s.transceiver.mid, "kind": s.kind, "track": s.producer.id if s.producer else None,
                 "source": s.producer.source if s.producer else None,
                 "participant": s.producer.owner if s.producer else None} for s in self.slots]

    async def negotiate(self) -> None:
        """Send a (re)offer, unless one is already waiting for its answer: then offer again after it."""
        async with self._lock:
            if self.closed:
                return
            if self._awaiting_answer:
                self._renegotiate = True
                return
            self._awaiting_answer = True
            offer = await self.pc.createOffer()
            await self.pc.setLocalDescription(offer)
            sdp = self.pc.localDescription.sdp
        await self.signals.send_offer(sdp, self.track_map())

    async def accept_answer(self, sdp: str) -> None:
        if not self._awaiting_answer:
            raise SdpError("no offer is waiting for an answer", "unexpected_answer")
        await _set_description(self.pc, sdp, "answer", max_sections=len(self.pc.getTransceivers()))
        self._awaiting_answer = False
        for slot in self.slots:
            try:
                _lesson_codecs(slot.transceiver)  # the classroom must accept the lesson codec
            except SdpError:
                continue  # that slot stays dark; the others play
            slot.negotiated = True
            self._bind(slot)
        if self._renegotiate:
            self._renegotiate = False
            await self.negotiate()

    def consumers(self) -> list[Consumer]:
        return [s.consumer for s in self.slots if s.consumer is not None]

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for slot in self.slots:
            if slot.consumer is not None:
                slot.consumer.close()
        # not while an offer is being made: aiortc gathers the ICE sockets then, and a close in the middle left
        # them open for good (50 joins at once with one link once leaked one)
        async with self._lock:
            await self.pc.close()

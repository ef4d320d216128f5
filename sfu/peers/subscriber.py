"""A classroom's (or observer's) connection (Subscriber), offered by the server.

It keeps "slots" (send-only transceivers with a placeholder track) and binds a Consumer into a slot for each
producer, renegotiating only when it needs a new slot."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from aiortc import MediaStreamTrack
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from sfu import seams
from sfu.adapt.gcc import SendSideEstimator
from sfu.adapt.ladder import COURSEWARE, VIDEO, LinkReport, VideoLadder
from sfu.adapt.link import fresh
from sfu.adapt.overload import RUNG_AUDIO, RUNG_CAMERA_OFF, RUNG_LAYER_Q
from sfu.adapt.probe import PROBE_MAX_STEP, ProbeSchedule
from sfu.adapt.select import REMB_FIT_RATIO, LayerReport, LayerSelector
from sfu.consumer.base import BaseConsumer, ResumePoint
from sfu.consumer.simple import Consumer
from sfu.consumer.simulcast import SimulcastConsumer
from sfu.peers.publisher import START_LAYER
from sfu.peers.sdp import (
    SdpError,
    announce,
    answered_red,
    answered_transport_cc,
    ext_id,
    lesson_codecs,
    make_peer_connection,
    offer_red,
    offer_transport_cc,
    prefer_lesson_codecs,
    set_description,
)
from sfu.pacer import PACE_BELOW_TOP, PACING_FACTOR, PACING_OVER_SENT, Pacer
from sfu.producer import Producer
from sfu.rtp.clock import SYSTEM_CLOCK, Clock
from sfu.rtp.header import URI_ABS_SEND_TIME, URI_AUDIO_LEVEL, URI_MID, extension_layout
from sfu.rtp.red import RedEncoder
from sfu.rtp.twcc import TransportSeq, split_compound

log = logging.getLogger("ketang.sfu")

# with a send-side estimate, the camera is paused only after its simulcast tracks have been on their lowest layer
# this long (a cap that hits the top layer first takes it down layer by layer: q -> h -> f before courseware)
LOWEST_SETTLE_S = 0.5
# bytes a packet takes on the wire besides its payload (the producers measure payload): the RTP header and its
# extensions (~24), the SRTP tag and IPv4/UDP (sfu/rtp/twcc.py WIRE_OVERHEAD, 38)
OTHERS_PACKET_OVERHEAD = 62
# RED (RFC 2198) audio towards a classroom whose answer kept it: on at this much transport-cc loss, off below the
# other, held at least RED_HOLD_S
RED_ON_LOSS = 0.02
RED_OFF_LOSS = 0.005
RED_HOLD_S = 10.0
# ...and only while the estimate carries this multiple of what arrives with the redundancy (loss on a full link
# is congestion: RED would add to it; there the estimate sits at or below what arrives)
RED_ROOM = 1.0


class PlaceholderTrack(MediaStreamTrack):
    """A track whose recv() never returns: a forward-only sender with no track would poll every 20 ms."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] = asyncio.get_event_loop().create_future()

    async def recv(self):  # type: ignore[override]
        await self._never
        raise asyncio.CancelledError


@dataclass(frozen=True)
class LinkState:
    """A classroom's downlink as its decisions see it (Subscriber.link)."""

    estimate_bps: int | None
    estimate_at: float | None
    loss: float  # 0..1
    loss_at: float | None
    send_side: bool  # from transport-cc feedback (else the classroom's REMB and receiver reports)
    probe: bool = False  # up-switches wait for the estimate, which probes raise (sfu/adapt/probe.py)


@dataclass
class Slot:
    transceiver: RTCRtpTransceiver
    kind: str
    producer: Producer | None = None
    consumer: BaseConsumer | None = None
    negotiated: bool = False
    resume: ResumePoint | None = None  # where the previous producer's stream in this slot stopped


class SubscriberSignals(Protocol):
    """How a Subscriber reaches its client (the signalling layer implements it)."""

    async def send_offer(self, sdp: str, tracks: list[dict]) -> None: ...

    def send_tracks(self, tracks: list[dict]) -> None: ...


class SubscriberHost(Protocol):
    """What a Subscriber needs of the lesson it receives from (the Router implements it)."""

    async def remove_subscriber(self, participant_id: str) -> None: ...


@dataclass
class Subscriber:
    """A classroom's (or observer's) connection, offered by the server."""

    router: SubscriberHost
    participant_id: str
    signals: SubscriberSignals
    ice_servers: list[str] | None = None
    slots: list[Slot] = field(default_factory=list)
    closed: bool = False
    video: bool = True  # False: the classroom chose audio only; its video consumers are paused in the SFU
    camera: bool = True  # False: the classroom chose courseware and sound (只看课件): no camera is sent to it
    ladder: VideoLadder | None = None  # when video is allowed: whether the link can carry it
    selectors: dict[str, LayerSelector] = field(default_factory=dict)  # simulcast track id -> its layer choice
    pinned_layer: int | None = None  # the classroom's own cap on the simulcast layer (0: "low"); None: automatic
    shed: int = 0  # the node's cap while it is short of CPU (sfu/adapt/overload.py rungs; the Router sets it)
    clock: Clock = SYSTEM_CLOCK  # its consumers' (the Router's)

    def __post_init__(self) -> None:
        self.pc = make_peer_connection(self.ice_servers)
        # transport-cc (sfu/rtp/twcc.py), once the classroom's answer accepts it: the transport-wide numbers its
        # consumers stamp, and the send-side estimate fed by its feedback (sfu/adapt/gcc.py)
        self.twcc: TransportSeq | None = None
        self.bwe: SendSideEstimator | None = None
        # its output pacer and prober (sfu/pacer.py, sfu/adapt/probe.py), with transport-cc
        self.pacer: Pacer | None = None
        self.probes: ProbeSchedule | None = None
        self._decreases_seen = 0
        self._layers_seen: tuple = ()
        self._lowest_since: float | None = None
        self._red: dict[str, tuple[int, int]] = {}  # mid -> (RED pt, Opus pt) where the answer kept RED
        self.red_on = False
        self._red_since = 0.0
        self._twcc_offer_id = 0
        self._stock_rtcp: seams.DtlsHandlers | None = None
        self._awaiting_answer = False
        self._renegotiate = False
        self._lock = asyncio.Lock()

        @self.pc.on("connectionstatechange")
        async def _on_state() -> None:
            if self.pc.connectionState == "failed":
                await self.router.remove_subscriber(self.participant_id)

    def _add_slot(self, kind: str) -> Slot:
        t = self.pc.addTransceiver(PlaceholderTrack(kind), direction="sendonly")
        prefer_lesson_codecs(t)
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
        pt, rtx, _, _ = lesson_codecs(t)
        twcc = self.twcc
        layout = extension_layout(t.mid, ext_id(t, URI_MID), ext_id(t, URI_ABS_SEND_TIME),
                                  ext_id(t, URI_AUDIO_LEVEL) if t.kind == "audio" else 0,
                                  twcc.ext_id if twcc is not None else 0)
        if producer.layers:
            selector = self.selectors.get(producer.id)
            start = selector.layer if selector is not None else START_LAYER
            cap = self._layer_cap()
            if cap is not None:
                start = min(start, cap)
            slot.consumer = SimulcastConsumer(producer, t.sender, pt, rtx, layout, resume=slot.resume,
                                              start_layer=min(start, len(producer.layers) - 1), clock=self.clock,
                                              twcc=twcc)
        else:
            slot.consumer = Consumer(producer, t.sender, pt, rtx, layout, resume=slot.resume, clock=self.clock,
                                     twcc=twcc)
            red = self._red.get(t.mid or "")
            if t.kind == "audio" and red is not None and red[1] == pt:
                slot.consumer.red, slot.consumer.red_pt = RedEncoder(pt), red[0]
                slot.consumer.set_red(self.red_on)
        slot.consumer.pacer = self.pacer
        if slot.kind == "video" and not self._flows(producer):
            slot.consumer.pause()

    def _flows(self, producer: Producer) -> bool:
        """Whether this video track flows to the classroom now (its choice, then the ladder's rung)."""
        if not self.video or (not self.camera and producer.source != "screen"):
            return False
        if self.shed >= RUNG_AUDIO or (self.shed >= RUNG_CAMERA_OFF and producer.source != "screen"):
            return False  # the node is short of CPU: video goes before audio is ever late
        level = self.ladder.level if self.ladder is not None else VIDEO
        return level == VIDEO or (level == COURSEWARE and producer.source == "screen")

    def _layer_cap(self) -> int | None:
        """The highest simulcast layer allowed now: the classroom's own pin, and 0 while the node sheds layers."""
        if self.shed >= RUNG_LAYER_Q:
            return 0
        return self.pinned_layer

    def set_shed(self, rung: int) -> None:
        """The node's overload cap for this classroom (sfu/adapt/overload.py): layers, camera, all video."""
        if rung == self.shed:
            return
        self.shed = rung
        self._apply_video()
        cap = self._layer_cap()
        if cap is not None:
            for consumer in self.consumers():
                if isinstance(consumer, SimulcastConsumer):
                    consumer.set_layer(min(consumer.switcher.target, cap))

    def set_video(self, enabled: bool) -> None:
        """Audio only (the school's choice) or video again, as far as the link allows (the ladder decides);
        enforced here, not in the page, so the bandwidth is really saved."""
        self.video = enabled
        self.ladder = None  # a fresh start for the automatic choice
        self._apply_video()

    def set_camera(self, enabled: bool) -> None:
        """Courseware and sound only (False: no camera, the teacher's or a staged classroom's, is sent), or the
        cameras again; the courseware still follows the ladder."""
        self.camera = enabled
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
        if not self.camera:
            video_bps = screen_bps  # what this classroom receives at the top rung is the courseware alone
        link = self.link(now)
        self._choose_layers(now, link)
        estimate = link.estimate_bps
        if link.send_side and self.ladder.level == VIDEO and not self._on_lowest_layers(now):
            estimate = None  # q -> h -> f first: the camera pauses only once its lowest layer does not fit either
        audio_bps = sum(c.producer.rate_bps for c in self.consumers() if c.kind == "audio" and not c.paused)
        report = LinkReport(estimate, link.estimate_at, link.loss, video_bps, link.loss_at, screen_bps,
                            send_side=link.send_side, probe=link.probe, audio_bps=audio_bps)
        was = self.ladder.level
        self.ladder.update(report, now)
        if self.ladder.level != was:
            log.info("classroom %s: %s (%s)", self.participant_id, self.ladder.state, self.ladder.reason)
            self._apply_video()
        if link.probe:
            self._pace_and_probe(now, link, report)

    def _on_lowest_layers(self, now: float) -> bool:
        """Whether every simulcast track flowing to this classroom has been on its lowest layer for
        LOWEST_SETTLE_S (the switch's keyframe went through the link): only then may the ladder pause the camera
        on the estimate."""
        lowest = all(c.current in (None, 0) and c.switcher.target == 0 for c in self.consumers()
                     if isinstance(c, SimulcastConsumer) and not c.paused)
        if not lowest:
            self._lowest_since = None
            return False
        if self._lowest_since is None:
            self._lowest_since = now
        return now - self._lowest_since >= LOWEST_SETTLE_S

    def _choose_layers(self, now: float, link: LinkState) -> None:
        """Simulcast: each track's layer from this classroom's estimate and loss (sfu/adapt/select.py)."""
        others = self._others_bps()
        for consumer in self.consumers():
            if not isinstance(consumer, SimulcastConsumer) or consumer.paused:
                continue
            selector = self.selectors.get(consumer.producer.id)
            if selector is None:
                selector = self.selectors[consumer.producer.id] = LayerSelector(now, consumer.switcher.target)
            report = LayerReport(link.estimate_bps, link.estimate_at, link.loss, link.loss_at, consumer.layer_rates(),
                                 send_side=link.send_side, probe=link.probe, others_bps=others)
            chosen = selector.update(report, now)
            cap = self._layer_cap()
            if cap is not None:
                chosen = min(chosen, cap)
            consumer.set_layer(chosen, hold=selector.collapsed)

    def _others_bps(self) -> float:
        """What this classroom receives besides the simulcast tracks (audio, courseware) on the wire: with the
        send-side estimate (of the wire), a layer must fit the link with it. Payload rates plus OTHERS_PACKET_OVERHEAD
        a packet: Opus's ~25 kbit/s of payload is ~50 on the wire, and counted as 25 a 265-290 kbit/s layer stayed
        on a 300 kbit/s link for 16 s in one run (its estimate, 253 kbit/s, was short of 0.85 x the need only when
        the layer's measured rate peaked)."""
        return sum(c.producer.rate_bps + 8 * OTHERS_PACKET_OVERHEAD * c.producer.packet_rate
                   for c in self.consumers() if not isinstance(c, SimulcastConsumer) and not c.paused)

    def link(self, now: float) -> LinkState:
        """What the server knows of this classroom's downlink now: with transport-cc feedback (fresh within
        STALE_S), the send-side estimate (the classroom's REMB, where it still sends one, as a ceiling) and the
        loss transport-cc measured; without, its latest REMB and the lossiest receiver report."""
        consumers = self.consumers()
        with_remb = [c for c in consumers if c.kind == "video" and c.remb_at is not None]
        latest = max(with_remb, key=lambda c: c.remb_at or 0.0) if with_remb else None
        remb, remb_at = (latest.remb_bps, latest.remb_at) if latest is not None else (None, None)
        bwe = self.bwe
        if bwe is not None and fresh(bwe.updated_at, now):
            estimate = bwe.estimate_bps
            if remb is not None and fresh(remb_at, now):
                estimate = min(estimate, remb)
            return LinkState(estimate, bwe.updated_at, bwe.loss, bwe.updated_at, True, self._can_probe())
        lossiest = max(consumers, key=lambda c: c.fraction_lost) if consumers else None
        return LinkState(remb, remb_at, lossiest.fraction_lost / 256 if lossiest else 0.0,
                         lossiest.report_at if lossiest else None, False)

    def link_stats(self, now: float) -> dict:
        """The estimate and loss this classroom's decisions use, and where they come from (for /stats)."""
        link = self.link(now)
        out: dict = {"source": "transport-cc" if link.send_side else ("remb" if link.estimate_bps else "none"),
                     "estimate_bps": link.estimate_bps, "loss": round(link.loss, 4),
                     # what the classroom receives besides the simulcast cameras (payload rates, as measured)
                     "others_bps": round(self._others_bps())}
        if self.bwe is not None and self.twcc is not None:
            out["transport_cc"] = {**self.twcc.stats(), **self.bwe.stats()}
        if self.pacer is not None:
            out["pacer"] = self.pacer.stats()
        if self._red:
            out["red"] = self.red_on
        return out

    # -- pacing and probing (sfu/pacer.py, sfu/adapt/probe.py) ---------------------------------------------------

    def _padder(self) -> BaseConsumer | None:
        """The stream that carries probe padding: a started video stream with RTX."""
        return next((c for c in self.consumers() if c.kind == "video" and c.rtx_payload_type is not None
                     and c._raw_send is not None and not c.closed), None)  # noqa: SLF001

    def _can_probe(self) -> bool:
        return self.pacer is not None and self._padder() is not None

    def _pad(self, nbytes: int) -> int:
        padder = self._padder()
        return padder.send_padding(nbytes) if padder is not None else 0

    def _wanted_bps(self, report: LinkReport) -> float | None:
        """What the estimate must reach for the next step up (the ladder's next rung, else the next simulcast
        layer), with the rest of what this classroom receives (audio, courseware) on top; None: at the top."""
        assert self.ladder is not None
        if self.ladder.level != VIDEO:
            return self.ladder.wanted_bps(report)
        wanted = None
        others = self._others_bps()
        for consumer in self.consumers():
            if not isinstance(consumer, SimulcastConsumer) or consumer.paused:
                continue
            selector = self.selectors.get(consumer.producer.id)
            if selector is None or (self.pinned_layer is not None and selector.layer >= self.pinned_layer):
                continue
            rates = consumer.layer_rates()
            above = [r for i, r in enumerate(rates) if i > selector.layer and r > 0]
            if above:
                need = max(above[0] / REMB_FIT_RATIO, above[0] + others)  # what the selector goes up on
                wanted = need if wanted is None else max(wanted, need)
        return wanted

    def _pace_and_probe(self, now: float, link: LinkState, report: LinkReport) -> None:
        """The pacer's rate from the estimate, and a probe when the next step up needs more than it says."""
        pacer, bwe, schedule = self.pacer, self.bwe, self.probes
        if pacer is None or bwe is None or schedule is None or self.ladder is None:
            return
        estimate = float(link.estimate_bps or bwe.estimate_bps)
        prober = pacer.prober
        seen = (self.ladder.level, *(s.layer for s in self.selectors.values()))
        if seen != self._layers_seen:
            # down: a lower rung (a higher level number), or a lower layer on a track seen before
            was = self._layers_seen
            down = bool(was) and (seen[0] > was[0] or (len(seen) == len(was)
                                                      and any(a < b for a, b in zip(seen[1:], was[1:]))))
            self._layers_seen = seen
            schedule.changed(now, down=down)
        probing = prober is not None and prober.state == "probing"
        top = max((max(c.layer_rates(), default=0.0) for c in self.consumers() if isinstance(c, SimulcastConsumer)),
                  default=report.video_bps)
        pacer.estimate_bps = estimate
        sending = sum(c.layers[c.current].rate_bps if isinstance(c, SimulcastConsumer) and c.current is not None
                      else c.producer.rate_bps for c in self.consumers() if not c.paused)
        pacer.media_bps = sending
        self._choose_red(now, estimate, bwe.acked_bps or sending, bwe.loss)
        pacer.set_rate(max(PACING_FACTOR * estimate, PACING_OVER_SENT * sending,
                           1.5 * prober.target_bps if probing and prober else 0.0))
        active = probing or estimate < PACE_BELOW_TOP * top
        if pacer.active and not active:
            pacer.tick()  # what waits goes now
        pacer.active = active
        if prober is not None and prober.active:
            prober.judge(now, bwe.rtt_s)
            self._probe_done(now)
            return
        wanted = self._wanted_bps(report)
        if wanted is None or estimate >= wanted or not schedule.due(now):
            return
        if bwe.signal == "overuse" or bwe.loss > 0.10:
            return
        target = min(wanted, PROBE_MAX_STEP * estimate)  # far below: in steps, each one's overshoot small
        pacer.start_probe(target)
        pacer.set_rate(max(pacer.rate_bps, 1.5 * target))
        pacer.active = True
        log.debug("classroom %s: probing %d kbit/s (estimate %d)", self.participant_id, target // 1000,
                  estimate // 1000)

    def _choose_red(self, now: float, estimate: float, arriving: float, loss: float) -> None:
        """RED for this classroom's audio while its link loses packets (RED_ON_LOSS) and the estimate has room for
        the audio twice (RED_ROOM); off again below RED_OFF_LOSS (after RED_HOLD_S at least), or at once when the
        room runs out."""
        audio = [c for c in self.consumers() if isinstance(c, Consumer) and c.red is not None]
        if not audio:
            return
        red_bps = sum(c.producer.rate_bps for c in audio)  # what the redundancy adds: the audio once more
        # `arriving`: what the classroom acknowledges (on the wire, the redundancy included while it is on)
        room = estimate >= RED_ROOM * (arriving + (0.0 if self.red_on else red_bps))
        on = self.red_on
        if not on and loss >= RED_ON_LOSS and room:
            on = True
        elif on and (not room or (now - self._red_since >= RED_HOLD_S and loss < RED_OFF_LOSS)):
            on = False  # no room: at once (the loss is the link's queue; redundancy would only add to it)
        if on != self.red_on:
            self.red_on, self._red_since = on, now
            log.info("classroom %s: RED audio %s (loss %.1f%%)", self.participant_id, "on" if on else "off",
                     100 * loss)
            for consumer in audio:
                consumer.set_red(on)

    def _probe_done(self, now: float) -> None:
        """A probe that ended: its result into the estimate (succeeded), or the next one later (failed)."""
        pacer, bwe, schedule = self.pacer, self.bwe, self.probes
        prober = pacer.prober if pacer is not None else None
        if prober is None or bwe is None or schedule is None or prober.active or prober.state == "idle":
            return
        if prober.state == "succeeded" and prober.result_bps is not None:
            bwe.on_probe(prober.result_bps, now)
            schedule.succeeded(now)
        else:
            schedule.failed(now)
        log.debug("classroom %s: probe %s (%s)", self.participant_id, prober.state, prober.reason)
        prober.state = "idle"

    # -- transport-cc ----------------------------------------------------------------------------------------

    def _start_twcc(self, ext_id: int) -> None:
        """The classroom's answer accepted transport-cc (`ext_id` > 0): number its packets and read its feedback
        (taken out of the transport's RTCP before aiortc parses it, which would read it as a NACK)."""
        if ext_id <= 0 or self.twcc is not None or not self.slots:
            return
        dtls = self.slots[0].transceiver.sender.transport
        if dtls is None:
            return
        self.twcc = TransportSeq(ext_id, self.clock.monotonic)
        self.bwe = SendSideEstimator(self.clock.monotonic())
        loop = asyncio.get_event_loop()
        self.pacer = Pacer(self.clock.monotonic, loop.call_later, self.twcc, PACING_FACTOR * self.bwe.estimate_bps)
        self.pacer.pad = self._pad
        self.probes = ProbeSchedule(self.clock.monotonic())
        for consumer in self.consumers():
            consumer.pacer = self.pacer  # bound before the answer (not started yet: they take it at their start)
        self._stock_rtcp = seams.hook_dtls(dtls, seams.dtls_handlers(dtls)[0], self._on_rtcp)

    async def _on_rtcp(self, data: bytes) -> None:
        try:
            feedback, rest = split_compound(data)
            for packet in feedback:
                self.on_transport_feedback(packet)
        except Exception:  # noqa: BLE001 - one classroom's bad RTCP must not escape into its DTLS transport
            log.debug("bad transport-cc feedback ignored", exc_info=True)
            rest = data
        if rest and self._stock_rtcp is not None:
            await self._stock_rtcp[1](rest)

    def on_transport_feedback(self, packet: bytes) -> None:
        """One transport-cc feedback packet: its results into the estimate."""
        if self.twcc is None or self.bwe is None:
            return
        results = self.twcc.on_feedback(packet)
        if results:
            rtts = [r for r in (seams.sender_rtt(c.sender) for c in self.consumers()) if r is not None]
            now = self.clock.monotonic()
            self.bwe.on_feedback(results, now, min(rtts) if rtts else None)
            prober = self.pacer.prober if self.pacer is not None else None
            decreased = self.bwe.decreases != self._decreases_seen
            self._decreases_seen = self.bwe.decreases
            if prober is not None and prober.active:
                prober.on_feedback(results, now, decreased or self.bwe.signal == "overuse", self.bwe.rtt_s)
                self._probe_done(now)

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
            sdp, self._twcc_offer_id = offer_transport_cc(announce(self.pc.localDescription.sdp),
                                                          self.twcc.ext_id if self.twcc else self._twcc_offer_id)
            sdp = offer_red(sdp)
        await self.signals.send_offer(sdp, self.track_map())

    async def accept_answer(self, sdp: str) -> None:
        if not self._awaiting_answer:
            raise SdpError("no offer is waiting for an answer", "unexpected_answer")
        await set_description(self.pc, sdp, "answer", max_sections=len(self.pc.getTransceivers()))
        self._awaiting_answer = False
        self._start_twcc(answered_transport_cc(sdp))
        self._red = answered_red(sdp)
        for slot in self.slots:
            try:
                lesson_codecs(slot.transceiver)  # the classroom must accept the lesson codec
            except SdpError:
                continue  # that slot stays dark; the others play
            slot.negotiated = True
            self._bind(slot)
        if self._renegotiate:
            self._renegotiate = False
            await self.negotiate()

    def consumers(self) -> list[BaseConsumer]:
        return [s.consumer for s in self.slots if s.consumer is not None]

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for slot in self.slots:
            if slot.consumer is not None:
                slot.consumer.close()
        if self.pacer is not None:
            self.pacer.close()
        if self._stock_rtcp is not None and self.slots and self.slots[0].transceiver.sender.transport is not None:
            seams.unhook_dtls(self.slots[0].transceiver.sender.transport, self._stock_rtcp)
            self._stock_rtcp = None
        # not while an offer is being made: aiortc gathers the ICE sockets then, and a close in the middle left
        # them open for good (50 joins at once with one link once leaked one)
        async with self._lock:
            await self.pc.close()

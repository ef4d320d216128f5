"""A Router is one lesson's media graph: Publisher -> Producers -> Consumers <- Subscribers.

The Router never touches websockets; it reports track changes to whoever listens (the signalling layer).
`close()` is idempotent and cascades: publisher, producers, consumers, subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sfu.adapt.overload import NODE
from sfu.peers.publisher import Publisher
from sfu.peers.sdp import SdpError
from sfu.peers.subscriber import Subscriber, SubscriberSignals
from sfu.producer import Producer
from sfu.rtp.clock import Clock, as_clock
from sfu.seams import GUARD
from sfu.sink import SubscriberStream

log = logging.getLogger("ketang.sfu")

# sender reports go out every 0.5-1.5 s (aiortc's RTCP loop); refresh their figures a bit more often
REPORT_REFRESH_S = 0.25
UPLINK_REMB_EVERY = 4  # ticks: the teacher hears the server's REMB about once a second

TrackListener = Callable[[str, Producer], Awaitable[None]]
# demand listener(classroom, video, audio): whether anyone receives that classroom's camera / microphone now
DemandListener = Callable[[str, bool, bool], None]


class Router:
    """Who receives what: the teacher's tracks go to everyone; a classroom's small camera and microphone go to
    the teacher and observers while its tile is on their wall (`set_visible`), and to everyone (and the
    recorder) while it is on stage (`set_stage`). A hard-muted classroom's audio goes to nobody."""

    def __init__(self, lesson_id: str, ice_servers: list[str] | None = None, uplink_bps: int | None = None,
                 classroom_uplink_bps: int | None = None, clock: Clock | None = None) -> None:
        self.lesson_id = lesson_id
        self.clock = as_clock(clock)  # the system's by default: every publisher, subscriber and track gets it
        self.ice_servers = ice_servers
        self.uplink_bps = uplink_bps  # the teacher's video budget, asked for by REMB (None: aiortc's estimate)
        self.classroom_uplink_bps = classroom_uplink_bps  # a classroom's thumbnail budget, the same way
        self.publisher: Publisher | None = None  # the teacher's
        self.classroom_publishers: dict[str, Publisher] = {}
        self.producers: dict[str, Producer] = {}
        self.subscribers: dict[str, Subscriber] = {}
        self.roles: dict[str, str] = {}  # participant -> role, for those with media here
        self.visible: dict[str, set[str]] = {}  # teacher/observer -> classrooms whose tiles are on its wall
        self.stage: list[str] = []  # classrooms on stage, in the order they came up
        self.muted: set[str] = set()  # classrooms hard-muted by the teacher
        self._stage_listeners: list[Callable[[list[str]], None]] = []
        # per publishing classroom, (video, audio) as last told: a track nobody receives need not be sent at all
        self.demand: dict[str, tuple[bool, bool]] = {}
        self._demand_listeners: list[DemandListener] = []
        self.closed = False
        self.video_bps = 0.0  # what the lesson's video needs, measured from the teacher's tracks
        self._listeners: list[TrackListener] = []
        self._reports = asyncio.ensure_future(self._refresh_reports())

    def on_track(self, listener: TrackListener) -> None:
        """listener("added" | "removed", producer)"""
        self._listeners.append(listener)

    def _notify(self, change: str, producer: Producer) -> None:
        for listener in self._listeners:
            asyncio.ensure_future(listener(change, producer))

    # -- publishing ----------------------------------------------------------------------------------------

    async def publish(self, participant_id: str, sdp: str, sources: dict[str, str] | None = None,
                      role: str = "teacher") -> str:
        """Answer a publisher's offer: the teacher's (a new teacher connection replaces the previous one) or a
        classroom's own camera and microphone."""
        if self.closed:
            raise SdpError("the lesson is closed", "lesson_closed")
        self.roles[participant_id] = role
        fresh_teacher = False
        if role == "teacher":
            publisher = self.publisher
            if publisher is None or publisher.participant_id != participant_id:
                # a new teacher connection takes over only once its offer has been answered: a bad offer from a
                # second teacher link must not cost the live teacher's tracks
                publisher = Publisher(self, participant_id, self.ice_servers, self.uplink_bps, clock=self.clock)
                fresh_teacher = True
        else:
            publisher = self.classroom_publishers.get(participant_id)  # type: ignore[assignment]
            if publisher is None:
                publisher = Publisher(self, participant_id, self.ice_servers, self.classroom_uplink_bps,
                                      role="classroom", clock=self.clock)
                self.classroom_publishers[participant_id] = publisher
        try:
            answer = await publisher.accept_offer(sdp, sources)
        except SdpError:
            if fresh_teacher:
                await publisher.close()
            elif not publisher.producers:
                await self.remove_publisher(publisher)
            raise
        if fresh_teacher:
            previous, self.publisher = self.publisher, publisher
            if previous is not None and previous is not publisher:
                await previous.close()
        if role != "teacher":  # the publish answer tells it (a new connection starts sending): no event
            self.demand[participant_id] = self.demand_of(participant_id)
        return answer

    def publishers(self) -> list[Publisher]:
        return ([self.publisher] if self.publisher is not None else []) + list(self.classroom_publishers.values())

    def wants(self, subscriber_id: str, producer: Producer) -> bool:
        """Whether a subscriber receives a producer (the forwarding policy, in one place)."""
        owner = producer.owner
        if owner == subscriber_id:
            return False  # nobody receives itself
        if producer.owner_role != "classroom" or owner in self.stage:
            return True
        return owner in self.visible.get(subscriber_id, ())

    def add_producer(self, producer: Producer) -> None:
        self.producers[producer.id] = producer
        producer.on_close(self._producer_closed)
        if producer.kind == "audio" and producer.owner in self.muted:
            producer.muted = True
        for pid, sub in list(self.subscribers.items()):
            if self.wants(pid, producer) and sub.place(producer):
                asyncio.ensure_future(sub.negotiate())
        self._notify("added", producer)

    def _producer_closed(self, producer: Producer) -> None:
        if self.producers.pop(producer.id, None) is None:
            return
        for sub in self.subscribers.values():
            sub.unplace(producer)
        self._notify("removed", producer)

    async def remove_publisher(self, publisher: Publisher) -> None:
        if self.publisher is publisher:
            self.publisher = None
        elif self.classroom_publishers.get(publisher.participant_id) is publisher:
            del self.classroom_publishers[publisher.participant_id]
        await publisher.close()

    # -- the interactive classroom -------------------------------------------------------------------------

    def demand_of(self, classroom: str) -> tuple[bool, bool]:
        """(video, audio): whether anyone receives the classroom's camera / microphone now — a teacher's or an
        observer's wall shows its tile, or it is on stage (everyone, and the recorder); its audio not while
        hard-muted. What nobody receives, the classroom need not send: on weak school uplinks and for the
        server's intake (docs/protocol.md, `demand`)."""
        watched = classroom in self.stage or any(classroom in tiles for who, tiles in self.visible.items()
                                                 if who != classroom)
        return watched, watched and classroom not in self.muted

    def on_demand(self, listener: DemandListener) -> None:
        self._demand_listeners.append(listener)

    def _update_demand(self) -> None:
        """Tell the listeners of every publishing classroom whose demand changed."""
        for classroom in list(self.classroom_publishers):
            now = self.demand_of(classroom)
            if self.demand.get(classroom) == now:
                continue
            self.demand[classroom] = now
            for listener in self._demand_listeners:
                try:
                    listener(classroom, *now)
                except Exception:  # noqa: BLE001
                    log.exception("demand listener failed")
        for gone in set(self.demand) - set(self.classroom_publishers):
            del self.demand[gone]

    def _resync(self, owners: set[str], subscribers: list[str] | None = None) -> None:
        """Re-apply the policy to the producers of `owners` for `subscribers` (None: all of them)."""
        theirs = [p for p in self.producers.values() if p.owner in owners]
        for pid in subscribers if subscribers is not None else list(self.subscribers):
            sub = self.subscribers.get(pid)
            if sub is None:
                continue
            if sub.sync([p for p in theirs if self.wants(pid, p)], among=theirs):
                asyncio.ensure_future(sub.negotiate())

    def set_visible(self, subscriber_id: str, classrooms: list[str]) -> None:
        """The classroom tiles on a teacher's (or observer's) wall now: only their tracks flow to it."""
        before = self.visible.get(subscriber_id, set())
        self.visible[subscriber_id] = set(classrooms)
        self._resync(before ^ self.visible[subscriber_id], [subscriber_id])
        self._update_demand()

    def set_stage(self, classrooms: list[str]) -> None:
        """The classrooms on stage: their tracks go to everyone, and to the recorder."""
        before = set(self.stage)
        self.stage = list(classrooms)
        changed = before ^ set(self.stage)
        if changed:
            self._resync(changed)
            self._update_demand()
        for listener in self._stage_listeners:
            try:
                listener(list(self.stage))
            except Exception:  # noqa: BLE001
                log.exception("stage listener failed")

    def on_stage(self, listener: Callable[[list[str]], None]) -> None:
        self._stage_listeners.append(listener)

    def set_muted(self, classroom: str, muted: bool) -> None:
        """Hard mute: the classroom's audio is dropped here, whatever its browser sends."""
        if muted:
            self.muted.add(classroom)
        else:
            self.muted.discard(classroom)
        for producer in self.producers.values():
            if producer.owner == classroom and producer.kind == "audio":
                if producer.muted and not muted:
                    for sink in producer.consumers:
                        if isinstance(sink, SubscriberStream):  # the recorder's taps: a gap is fine
                            sink.close_gap()  # the muted stretch is no loss to the classrooms
                producer.muted = muted
        self._update_demand()

    async def unpublish(self, participant_id: str, track_id: str | None = None) -> int:
        """Stop forwarding one (or every) track of the teacher; returns how many were removed."""
        publisher = next((p for p in self.publishers() if p.participant_id == participant_id), None)
        if publisher is None:
            return 0
        if track_id is None:
            n = len(publisher.producers)
            await self.remove_publisher(publisher)
            return n
        for mid, producer in list(publisher.producers.items()):
            if producer.id == track_id:
                del publisher.producers[mid]
                if publisher.ingress is not None:
                    publisher.ingress.remove_producer(producer)
                producer.close()
                return 1
        return 0

    # -- subscribing ---------------------------------------------------------------------------------------

    async def subscribe(self, participant_id: str, signals: SubscriberSignals, role: str = "classroom") -> Subscriber:
        """A participant's subscriber, replacing any it had. The new one is in place before anything is awaited,
        so of several joins at once with one link, the last stays and every other is closed (was: a subscriber
        stored across the await of another's close was overwritten and never closed, its sockets leaked)."""
        if self.closed:
            raise SdpError("the lesson is closed", "lesson_closed")
        self.roles.setdefault(participant_id, role)
        sub = Subscriber(self, participant_id, signals, self.ice_servers, clock=self.clock)
        old, self.subscribers[participant_id] = self.subscribers.get(participant_id), sub
        if old is not None:
            await old.close()
        if self.subscribers.get(participant_id) is sub:
            try:
                await sub.start([p for p in self.producers.values() if self.wants(participant_id, p)])
            except Exception:  # noqa: BLE001 - closed under it by a newer join: nothing lost
                if self.subscribers.get(participant_id) is sub:
                    raise
        if self.subscribers.get(participant_id) is not sub:  # replaced or removed meanwhile
            await sub.close()
        return sub

    async def remove_subscriber(self, participant_id: str, sub: Subscriber | None = None) -> None:
        """Close the participant's subscriber (only if it is still `sub`, when given)."""
        current = self.subscribers.get(participant_id)
        if current is not None and (sub is None or current is sub):
            del self.subscribers[participant_id]
            await current.close()
        if sub is not None and sub is not current:
            await sub.close()

    async def remove_participant(self, participant_id: str) -> None:
        """Its connections go; whether it is on stage or muted stays (a reconnecting classroom finds it so)."""
        if self.publisher is not None and self.publisher.participant_id == participant_id:
            await self.remove_publisher(self.publisher)
        classroom = self.classroom_publishers.get(participant_id)
        if classroom is not None:
            await self.remove_publisher(classroom)
        await self.remove_subscriber(participant_id)
        if self.visible.pop(participant_id, None):
            self._update_demand()  # a teacher's wall gone: its tiles' cameras are no longer watched

    # -- reports and lifecycle -----------------------------------------------------------------------------

    async def _refresh_reports(self) -> None:
        """Every REPORT_REFRESH_S: sender-report figures, and each classroom's audio-first ladder."""
        video_bytes, then = 0, self.clock.monotonic()
        tick = 0
        while not self.closed:
            await asyncio.sleep(REPORT_REFRESH_S)
            tick += 1
            for publisher in self.publishers():
                try:  # NACKs every tick, receiver reports about once a second (upper layers, classroom uplinks)
                    await publisher.send_layer_feedback(self.clock.monotonic(), tick % UPLINK_REMB_EVERY == 0)
                except Exception:  # noqa: BLE001
                    log.exception("publisher feedback failed")
            if tick % UPLINK_REMB_EVERY == 0:
                for publisher in self.publishers():
                    try:
                        await publisher.send_uplink_remb()
                    except Exception:  # noqa: BLE001
                        log.exception("uplink REMB failed")
            now, mono = self.clock.wall(), self.clock.monotonic()
            # what a classroom needs: the teacher's video (thumbnails go to the teacher, judged the same way)
            total = sum(p.bytes_in for p in self.producers.values() if p.kind == "video" and p.owner_role == "teacher")
            rate = max(0, total - video_bytes) * 8 / max(mono - then, 1e-3)
            # smoothed: a keyframe is a burst, not what the lesson's video needs
            self.video_bps = rate if self.video_bps == 0 else 0.8 * self.video_bps + 0.2 * rate
            video_bytes, then = total, mono
            screen_bps = 0.0
            for producer in list(self.producers.values()):
                for layer in producer.layers or ():
                    layer.measure_rate(mono)  # what each simulcast layer needs: the classrooms' selectors read it
                if not producer.layers:
                    # every other stream too: a classroom's ladder (with the send-side estimate, the audio counts),
                    # pacer, probes and RED read what it sends
                    rate = producer.measure_rate(mono)
                    if producer.source == "screen" and producer.owner_role == "teacher":
                        screen_bps += rate  # the ladder's courseware-only rung needs this
            self.apply_shed(NODE.rung)
            for sub in list(self.subscribers.values()):
                try:
                    for consumer in sub.consumers():
                        consumer.update_report(now)
                    sub.adapt(mono, self.video_bps, screen_bps)
                except Exception:  # noqa: BLE001 - one classroom's trouble must not stop the others' reports
                    log.exception("report refresh failed")

    def apply_shed(self, rung: Callable[[int], int]) -> None:
        """The node's overload caps (sfu/adapt/overload.py): `rung(i)` for the i-th classroom in join order, so
        every lesson sheds the same share of its classrooms."""
        index = 0
        for pid, sub in list(self.subscribers.items()):
            if self.roles.get(pid) == "classroom":
                sub.set_shed(rung(index))
                index += 1

    def stats(self) -> dict:
        return {"lesson": self.lesson_id, "overload": NODE.stats(), "stage": list(self.stage),
                "muted": sorted(self.muted),
                "producers": [p.stats() for p in self.producers.values()],
                "video_bps": round(self.video_bps),
                "subscribers": {pid: [c.stats() for c in s.consumers()] for pid, s in self.subscribers.items()},
                "video": {pid: {"chosen": s.video, "state": s.ladder.state if s.ladder else "video",
                                "reason": s.ladder.reason if s.ladder else "", "simulcast": s.layer_states(),
                                "link": s.link_stats(self.clock.monotonic())}
                          for pid, s in self.subscribers.items()},
                "datagram_guard": GUARD.counts(),  # process-wide: what never reached DTLS/SRTP
                "layers": {p.id: [{"id": layer.id, "ssrc": layer.ssrc, "packets_in": layer.packets_in,
                                   "kbps": round(layer.rate_bps / 1000)} for layer in p.layers]
                           for p in self.producers.values() if p.layers}}

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._reports.cancel()
        for publisher in self.publishers():
            await self.remove_publisher(publisher)
        for pid in list(self.subscribers):
            await self.remove_subscriber(pid)

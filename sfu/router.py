"""A Router is one lesson's media graph: Publisher -> Producers -> Consumers <- Subscribers.

The Router never touches websockets; it reports track changes to whoever listens (the signalling layer).
`close()` is idempotent and cascades: publisher, producers, consumers, subscribers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .peers import Publisher, SdpError, Subscriber, SubscriberSignals
from .producer import Producer

log = logging.getLogger("ketang.sfu")

# sender reports go out every 0.5-1.5 s (aiortc's RTCP loop); refresh their figures a bit more often
REPORT_REFRESH_S = 0.25
UPLINK_REMB_EVERY = 4  # ticks: the teacher hears the server's REMB about once a second

TrackListener = Callable[[str, Producer], Awaitable[None]]


class Router:
    def __init__(self, lesson_id: str, ice_servers: list[str] | None = None, uplink_bps: int | None = None) -> None:
        self.lesson_id = lesson_id
        self.ice_servers = ice_servers
        self.uplink_bps = uplink_bps  # the teacher's video budget, asked for by REMB (None: aiortc's estimate)
        self.publisher: Publisher | None = None
        self.producers: dict[str, Producer] = {}
        self.subscribers: dict[str, Subscriber] = {}
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

    async def publish(self, participant_id: str, sdp: str, sources: dict[str, str] | None = None) -> str:
        """Answer the teacher's offer. A new teacher connection replaces the previous one."""
        if self.closed:
            raise SdpError("the lesson is closed", "lesson_closed")
        if self.publisher is not None and self.publisher.participant_id != participant_id:
            await self.remove_publisher(self.publisher)
        if self.publisher is None:
            self.publisher = Publisher(self, participant_id, self.ice_servers, self.uplink_bps)
        try:
            return await self.publisher.accept_offer(sdp, sources)
        except SdpError:
            if not self.publisher.producers:
                failed, self.publisher = self.publisher, None
                await failed.close()
            raise

    def add_producer(self, producer: Producer) -> None:
        self.producers[producer.id] = producer
        producer.on_close(self._producer_closed)
        for sub in list(self.subscribers.values()):
            if sub.place(producer):
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
        await publisher.close()

    async def unpublish(self, participant_id: str, track_id: str | None = None) -> int:
        """Stop forwarding one (or every) track of the teacher; returns how many were removed."""
        if self.publisher is None or self.publisher.participant_id != participant_id:
            return 0
        if track_id is None:
            n = len(self.publisher.producers)
            await self.remove_publisher(self.publisher)
            return n
        for mid, producer in list(self.publisher.producers.items()):
            if producer.id == track_id:
                del self.publisher.producers[mid]
                if self.publisher.ingress is not None:
                    self.publisher.ingress.remove_producer(producer)
                producer.close()
                return 1
        return 0

    # -- subscribing ---------------------------------------------------------------------------------------

    async def subscribe(self, participant_id: str, signals: SubscriberSignals) -> Subscriber:
        old = self.subscribers.pop(participant_id, None)
        if old is not None:
            await old.close()
        sub = Subscriber(self, participant_id, signals, self.ice_servers)
        self.subscribers[participant_id] = sub
        await sub.start(list(self.producers.values()))
        return sub

    async def remove_subscriber(self, participant_id: str) -> None:
        sub = self.subscribers.pop(participant_id, None)
        if sub is not None:
            await sub.close()

    async def remove_participant(self, participant_id: str) -> None:
        if self.publisher is not None and self.publisher.participant_id == participant_id:
            await self.remove_publisher(self.publisher)
        await self.remove_subscriber(participant_id)

    # -- reports and lifecycle -----------------------------------------------------------------------------

    async def _refresh_reports(self) -> None:
        """Every REPORT_REFRESH_S: sender-report figures, and each classroom's audio-first ladder."""
        video_bytes, then = 0, time.monotonic()
        tick = 0
        while not self.closed:
            await asyncio.sleep(REPORT_REFRESH_S)
            tick += 1
            if tick % UPLINK_REMB_EVERY == 0 and self.publisher is not None:
                try:
                    await self.publisher.send_uplink_remb()
                except Exception:  # noqa: BLE001
                    log.exception("uplink REMB failed")
            now, mono = time.time(), time.monotonic()
            total = sum(p.bytes_in for p in self.producers.values() if p.kind == "video")
            rate = max(0, total - video_bytes) * 8 / max(mono - then, 1e-3)
            # smoothed: a keyframe is a burst, not what the lesson's video needs
            self.video_bps = rate if self.video_bps == 0 else 0.8 * self.video_bps + 0.2 * rate
            video_bytes, then = total, mono
            for sub in list(self.subscribers.values()):
                try:
                    for consumer in sub.consumers():
                        consumer.update_report(now)
                    sub.adapt(mono, self.video_bps)
                except Exception:  # noqa: BLE001 - one classroom's trouble must not stop the others' reports
                    log.exception("report refresh failed")

    def stats(self) -> dict:
        return {"lesson": self.lesson_id, "producers": [p.stats() for p in self.producers.values()],
                "video_bps": round(self.video_bps),
                "subscribers": {pid: [c.stats() for c in s.consumers()] for pid, s in self.subscribers.items()},
                "video": {pid: {"chosen": s.video, "state": s.ladder.state if s.ladder else "video",
                                "reason": s.ladder.reason if s.ladder else ""}
                          for pid, s in self.subscribers.items()}}

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._reports.cancel()
        if self.publisher is not None:
            await self.remove_publisher(self.publisher)
        for pid in list(self.subscribers):
            await self.remove_subscriber(pid)

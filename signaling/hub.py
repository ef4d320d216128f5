"""The lessons this node serves: room state, one SFU Router per lesson, and lesson events to the clients."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from ketang.config import Config
from sfu.producer import Producer
from sfu.router import Router

from .connection import Connection
from recorder.recorder import Catalog, LessonRecorder

from .interaction import LessonInteraction
from .state import Lesson, Participant, RoomStore, TrackInfo

# each classroom's reception (loss, round-trip time, bitrate, video) is sampled this often for attendance
SAMPLE_EVERY_S = 2.0
# websocket close code: the lesson now lives on another server process; the page reconnects and is sent there
CLOSE_MOVED = 4005

log = logging.getLogger("ketang.signaling")


def sees(viewer: str | None, role: str | None, itself: bool = False) -> bool:
    """Who is told about whom: the teacher and observers see everyone; a classroom sees the teacher (and
    itself), not the hundreds of other classrooms."""
    return viewer != "classroom" or role != "classroom" or itself


def public_participant(p: Participant) -> dict[str, Any]:
    return {"id": p.id, "role": p.role, "name": p.name, "joined_at": p.joined_at}


def public_track(t: TrackInfo) -> dict[str, Any]:
    return {"id": t.id, "kind": t.kind, "source": t.source, "participant": t.participant_id}


class Hub:
    def __init__(self, config: Config, store: RoomStore, catalog: Catalog | None = None) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog  # the resource library; None: lessons are not recorded
        self.recorders: dict[str, LessonRecorder] = {}
        self.recorded: dict[str, dict] = {}  # a finished recording's summary, for the lesson's record.json
        self.not_recorded: set[str] = set()  # lessons whose teacher switched recording off
        self.routers: dict[str, Router] = {}
        self.connections: dict[str, dict[str, Connection]] = {}  # lesson -> participant -> connection
        # the interactive classroom: hands, stage, moderation, chat, attendance (per lesson, on its node)
        self.interactions: dict[str, LessonInteraction] = {}
        self.seen: dict[str, set[str]] = {}  # lesson -> classrooms that have been in it (a locked lesson's own)
        self.started_at = time.time()
        self._heartbeats = asyncio.ensure_future(self._heartbeat_loop())
        self._samples = asyncio.ensure_future(self._sample_loop())
        self._octets: dict[tuple[str, str], tuple[int, float]] = {}

    def interaction(self, lesson_id: str) -> LessonInteraction:
        inter = self.interactions.get(lesson_id)
        if inter is None:
            inter = self.interactions[lesson_id] = LessonInteraction(stage_max=self.config.stage_max)
        return inter

    def classrooms(self, lesson_id: str) -> dict[str, Connection]:
        """The classrooms connected to this lesson here."""
        return {pid: c for pid, c in self.connections.get(lesson_id, {}).items() if c.role == "classroom"}

    def send_to(self, lesson_id: str, participant_id: str, message: dict[str, Any]) -> None:
        conn = self.connections.get(lesson_id, {}).get(participant_id)
        if conn is not None:
            conn.send(message)

    def classroom_state(self, lesson_id: str, participant_id: str) -> None:
        """Tell a classroom, the teacher and observers what the classroom's hand, stage and mute are now."""
        event = {"type": "event", "event": "classroom-state", **self.interaction(lesson_id).state_of(participant_id)}
        self.send_to(lesson_id, participant_id, event)
        self.broadcast(lesson_id, event, about="classroom")

    # -- membership ----------------------------------------------------------------------------------------

    async def join(self, conn: Connection) -> dict[str, Any]:
        """Register a participant whose token was verified; returns the lesson state for the `joined` reply."""
        claims = conn.claims
        assert claims is not None and conn.participant_id is not None
        # the lesson's teacher and classrooms must meet in one SFU: the first node to see the lesson carries it
        # (several processes on one Redis carry more lessons); anyone arriving elsewhere is sent there
        placement = await self.store.place_lesson(claims.lesson, self.config.node_id, self.config.url,
                                                  self.config.participant_ttl_s)
        if placement.node != self.config.node_id:
            raise LessonElsewhere(placement.url)
        lesson = await self.store.ensure_lesson(claims.lesson, title=claims.title or None,
                                                teacher=claims.name if claims.role == "teacher" else None)
        if lesson.state == "ended" and claims.role != "teacher":
            raise LessonEnded(lesson.id)
        inter = self.interaction(lesson.id)
        if claims.role == "classroom":
            seen = self.seen.setdefault(lesson.id, set())
            refused = inter.may_join(conn.participant_id, conn.participant_id in seen)
            if refused is not None:
                raise JoinRefused(refused)
            seen.add(conn.participant_id)
        now = time.time()
        participant = Participant(id=conn.participant_id, lesson_id=lesson.id, role=claims.role, name=claims.name,
                                  joined_at=now, last_seen=now, node=self.config.node_id, expires_at=0.0)
        await self.store.add_participant(participant, self.config.participant_ttl_s)
        members = self.connections.setdefault(lesson.id, {})
        previous = members.get(conn.participant_id)
        members[conn.participant_id] = conn
        if previous is not None and previous is not conn:
            # the same token again (a reloaded page): the new connection takes over, with fresh media
            await previous.close(code=4001, reason="replaced by a new connection")
            router = self.routers.get(lesson.id)
            if router is not None:
                await router.remove_participant(conn.participant_id)
        if claims.role != "observer":  # observers watch without being listed to others
            self.broadcast(lesson.id, {"type": "event", "event": "participant-joined",
                                       "participant": public_participant(participant)}, exclude=conn,
                           about=claims.role)
        everyone = await self.store.list_participants(lesson.id)
        participants = [public_participant(p) for p in everyone
                        if p.role != "observer" and sees(claims.role, p.role, p.id == participant.id)]
        classrooms = {p.id for p in everyone if p.role == "classroom"}
        on_stage = {s["id"] for s in inter.stage.on()}
        # a classroom hears of the teacher's tracks and of those on stage, not of every classroom's camera
        tracks = [public_track(t) for t in await self.store.list_tracks(lesson.id)
                  if claims.role != "classroom" or t.participant_id not in classrooms
                  or t.participant_id in on_stage or t.participant_id == participant.id]
        state: dict[str, Any] = {"participant": {"id": participant.id, "role": participant.role,
                                                 "name": participant.name},
                                 "lesson": lesson.to_dict(), "participants": participants, "tracks": tracks,
                                 "settings": inter.settings_dict(), "stage": inter.stage.on(),
                                 "chat": inter.chat.recent()}
        if claims.role == "classroom":
            inter.attendance.joined(participant.id, participant.name, now)
            state["state"] = inter.state_of(participant.id)
        else:
            state["hands"] = inter.hands.queue()
            # a reloaded teacher page finds every classroom's hand, stage and mute as they are
            state["classrooms"] = [inter.state_of(pid) for pid in sorted(classrooms)]
        return state

    async def leave(self, conn: Connection) -> None:
        """Idempotent: forget the participant here, in room state and in the SFU, and tell the others."""
        lesson_id, pid = conn.lesson_id, conn.participant_id
        if lesson_id is None or pid is None:
            return
        members = self.connections.get(lesson_id, {})
        if members.get(pid) is not conn:
            return  # already replaced by a newer connection of the same participant
        del members[pid]
        # decided now, before the awaits below: when a whole lesson's classrooms drop at once, every leave
        # would find the lesson empty after them and save its record (400 times, each with 400 rows)
        last = not members
        router = self.routers.get(lesson_id)
        if router is not None:
            await router.remove_participant(pid)
        # its tracks' removal is announced by the router as their producers close (once, not twice)
        await self.store.remove_participant(lesson_id, pid)
        if conn.role == "classroom":
            inter = self.interaction(lesson_id)
            # its hand stays up: a classroom whose link dropped finds it so when it is back
            inter.attendance.left(pid, time.time())
            self._octets.pop((lesson_id, pid), None)
        if conn.role != "observer":
            self.broadcast(lesson_id, {"type": "event", "event": "participant-left",
                                       "participant": {"id": pid, "role": conn.role,
                                                       "name": conn.claims.name if conn.claims else ""}},
                           about=conn.role)
        if last and not self.connections.get(lesson_id):  # (nobody joined meanwhile)
            self.connections.pop(lesson_id, None)
            try:  # the next participant may start the lesson on any node
                await self.store.release_lesson(lesson_id, self.config.node_id)
            except Exception:  # noqa: BLE001 - it expires anyway
                log.exception("could not release the placement of lesson %s", lesson_id)
            if self.connections.get(lesson_id):  # somebody joined while it was being released: it goes on here
                await self._renew_placement(lesson_id, self.connections[lesson_id])
                return
            self._stop_recording(lesson_id)
            self._save_record(lesson_id)
            if router is not None:
                self.routers.pop(lesson_id, None)
                await router.close()

    def broadcast_hands(self, lesson_id: str) -> None:
        """The hand queue, in order, to the teacher and observers."""
        self.broadcast(lesson_id, {"type": "event", "event": "hands", "queue": self.interaction(lesson_id).hands.queue()},
                       about="classroom")

    def broadcast(self, lesson_id: str, message: dict[str, Any], exclude: Connection | None = None,
                  about: str | None = None) -> None:
        """Send one message to a lesson's connections, encoded once. With `about` (the role a participant event
        concerns), only those who see that role get it: 400 classrooms joining must not cost 400² messages."""
        text = json.dumps(message, ensure_ascii=False)
        for conn in list(self.connections.get(lesson_id, {}).values()):
            if conn is not exclude and (about is None or sees(conn.role, about)):
                conn.send_text(text)

    # -- media ---------------------------------------------------------------------------------------------

    def router(self, lesson_id: str) -> Router:
        router = self.routers.get(lesson_id)
        if router is None:
            router = Router(lesson_id, list(self.config.ice_servers),
                            self.config.teacher_uplink_kbps * 1000 or None,
                            self.config.classroom_uplink_kbps * 1000 or None)
            inter = self.interactions.get(lesson_id)
            if inter is not None:  # a router made again (everyone had left): stage and mutes as they were
                router.stage = [s["id"] for s in inter.stage.on()]
                router.muted = set(inter.muted)
            router.on_track(lambda change, producer: self._on_track(lesson_id, change, producer))
            router.on_demand(lambda classroom, video, audio: self.send_to(
                lesson_id, classroom, {"type": "event", "event": "demand", "video": video, "audio": audio}))
            self.routers[lesson_id] = router
        return router

    async def _on_track(self, lesson_id: str, change: str, producer: Producer) -> None:
        track = TrackInfo(id=producer.id, lesson_id=lesson_id, participant_id=producer.owner, kind=producer.kind,
                          source=producer.source, published_at=time.time())
        # a classroom's own camera and microphone are news to the teacher and observers, not to 400 classrooms
        about = "classroom" if producer.owner_role == "classroom" else None
        if change == "added":
            await self.store.add_track(track)
            lesson = await self.store.get_lesson(lesson_id)
            if lesson is not None and about is None:
                self._start_recording(lesson, producer)
            if lesson is not None and lesson.state != "live" and about is None:
                lesson = await self.store.set_lesson_state(lesson_id, "live")
                self.broadcast(lesson_id, {"type": "event", "event": "lesson-started", "lesson": lesson.to_dict()})
            self.broadcast(lesson_id, {"type": "event", "event": "track-added", "track": public_track(track)},
                           about=about)
        else:
            await self.store.remove_track(lesson_id, producer.id)
            self.broadcast(lesson_id, {"type": "event", "event": "track-removed", "track": public_track(track)},
                           about=about)

    def _start_recording(self, lesson: Lesson, producer: Producer) -> None:
        """Every lesson is recorded from its first track (unless switched off), without transcoding."""
        router = self.routers.get(lesson.id)
        if self.catalog is None or lesson.id in self.recorders or router is None or lesson.id in self.not_recorded:
            return
        try:
            self.recorders[lesson.id] = LessonRecorder(router, self.catalog, lesson.title, lesson.teacher,
                                                       producer.owner)
        except Exception:  # noqa: BLE001 - a recorder failure must not stop the lesson itself
            log.exception("could not start recording lesson %s", lesson.id)

    def set_recording(self, lesson_id: str, enabled: bool) -> None:
        """The teacher's per-lesson choice (on by default); switching off mid-lesson closes the recording."""
        if enabled:
            self.not_recorded.discard(lesson_id)
        else:
            self.not_recorded.add(lesson_id)
            self._stop_recording(lesson_id)

    def _stop_recording(self, lesson_id: str) -> None:
        recorder = self.recorders.pop(lesson_id, None)
        if recorder is not None:
            try:
                recorder.close()
                main = recorder.stats()["main"]
                if main is not None:  # for the lesson's record: how the camera's recording followed its layers
                    video = next((t for t in main["tracks"] if t["kind"] == "video"), {})
                    self.recorded[lesson_id] = {"duration_s": main["duration_s"],
                                                "layer_switches": main["layer_switches"],
                                                "layer_timeline": video.get("layer_timeline", [])}
            except Exception:  # noqa: BLE001
                log.exception("could not finish the recording of lesson %s", lesson_id)

    def _save_record(self, lesson_id: str) -> None:
        """Attendance, chat and the stage timeline, kept with the lesson's library entry."""
        inter = self.interactions.get(lesson_id)
        if inter is None or self.catalog is None:
            return
        try:
            now = time.time()
            record = inter.record(now)
            recording = self.recorded.pop(lesson_id, None)
            if recording is not None:
                record["recording"] = recording
            self.catalog.save_lesson_record(lesson_id, record,
                                            inter.attendance.to_csv(now, inter.hands, inter.stage),
                                            inter.chat.transcript_csv())
        except Exception:  # noqa: BLE001 - the record is an extra; the lesson's end must go on
            log.exception("could not save the record of lesson %s", lesson_id)

    async def end_lesson(self, lesson_id: str) -> None:
        self._stop_recording(lesson_id)
        self._save_record(lesson_id)
        # kept in the library now; a teacher who starts the ended lesson again starts a fresh record
        self.interactions.pop(lesson_id, None)
        self.seen.pop(lesson_id, None)
        lesson = await self.store.set_lesson_state(lesson_id, "ended")
        self.broadcast(lesson_id, {"type": "event", "event": "lesson-ended", "lesson": lesson.to_dict()})
        router = self.routers.pop(lesson_id, None)
        if router is not None:
            await router.close()

    # -- upkeep --------------------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Refresh this node's participants so that only a crashed node's participants expire."""
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            for lesson_id, members in list(self.connections.items()):
                await self._renew_placement(lesson_id, members)
                for pid in list(members):
                    try:
                        await self.store.heartbeat(lesson_id, pid, self.config.participant_ttl_s)
                    except Exception:  # noqa: BLE001 - a Redis hiccup must not stop the loop
                        log.exception("heartbeat failed")

    async def _renew_placement(self, lesson_id: str, members: dict[str, Connection]) -> None:
        """Keep the lessons this node carries placed here. Lost to another node (this one stalled past the TTL):
        its participants are disconnected, and their pages reconnect and are sent to that node."""
        try:
            placement = await self.store.place_lesson(lesson_id, self.config.node_id, self.config.url,
                                                      self.config.participant_ttl_s)
        except Exception:  # noqa: BLE001 - a Redis hiccup must not stop the loop
            log.exception("placement renewal failed")
            return
        if placement.node == self.config.node_id:
            return
        log.warning("lesson %s is now carried by %s: moving its %d participants there", lesson_id, placement.url,
                    len(members))
        for conn in list(members.values()):
            await conn.close(code=CLOSE_MOVED, reason="the lesson moved to another server")

    async def _sample_loop(self) -> None:
        """Every SAMPLE_EVERY_S: each connected classroom's reception, for attendance."""
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            try:
                self.sample(time.time())
            except Exception:  # noqa: BLE001
                log.exception("attendance sampling failed")

    def sample(self, now: float) -> None:
        for lesson_id, router in list(self.routers.items()):
            inter = self.interactions.get(lesson_id)
            if inter is None:
                continue
            for pid in self.classrooms(lesson_id):
                sub = router.subscribers.get(pid)
                consumers = sub.consumers() if sub is not None else []
                if not consumers:
                    inter.attendance.sample(pid, now)
                    continue
                octets = sum(c.octets_out for c in consumers)
                before = self._octets.get((lesson_id, pid))
                self._octets[(lesson_id, pid)] = (octets, now)
                kbps = None
                if before is not None and now > before[1] and octets >= before[0]:
                    kbps = (octets - before[0]) * 8 / 1000 / (now - before[1])
                rtts = [r for r in (c.rtt_ms() for c in consumers) if r is not None]
                inter.attendance.sample(pid, now, loss=max(c.fraction_lost for c in consumers) / 256,
                                        rtt_ms=sum(rtts) / len(rtts) if rtts else None, kbps=kbps,
                                        video=sub.video and (sub.ladder is None or sub.ladder.video) if sub else None)

    async def health(self) -> dict[str, Any]:
        counts = await self.store.counts()
        return {"status": "ok", "node": self.config.node_id, "lessons": counts["lessons"],
                "participants": counts["participants"], "routers": len(self.routers),
                "uptime_s": round(time.time() - self.started_at, 1)}

    async def close(self) -> None:
        self._heartbeats.cancel()
        self._samples.cancel()
        for lesson_id in list(self.recorders):
            self._stop_recording(lesson_id)
        for members in list(self.connections.values()):
            for conn in list(members.values()):
                await conn.close(code=1001, reason="server shutting down")
        for router in list(self.routers.values()):
            await router.close()
        self.routers.clear()
        for lesson_id in list(self.connections):
            await self.store.release_lesson(lesson_id, self.config.node_id)
        await self.store.remove_node(self.config.node_id)


class LessonEnded(Exception):
    pass


class LessonElsewhere(Exception):
    """The lesson's media lives on another server process (several sharing Redis): join it at `url`."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class JoinRefused(Exception):
    """A classroom removed from the lesson, or new to a locked one; `code` is the protocol's error code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code

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

from .state import Lesson, Participant, RoomStore, TrackInfo

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
        self.not_recorded: set[str] = set()  # lessons whose teacher switched recording off
        self.routers: dict[str, Router] = {}
        self.connections: dict[str, dict[str, Connection]] = {}  # lesson -> participant -> connection
        self.started_at = time.time()
        self._heartbeats = asyncio.ensure_future(self._heartbeat_loop())

    # -- membership ----------------------------------------------------------------------------------------

    async def join(self, conn: Connection) -> dict[str, Any]:
        """Register a participant whose token was verified; returns the lesson state for the `joined` reply."""
        claims = conn.claims
        assert claims is not None and conn.participant_id is not None
        lesson = await self.store.ensure_lesson(claims.lesson, title=claims.title or None,
                                                teacher=claims.name if claims.role == "teacher" else None)
        if lesson.state == "ended" and claims.role != "teacher":
            raise LessonEnded(lesson.id)
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
        participants = [public_participant(p) for p in await self.store.list_participants(lesson.id)
                        if p.role != "observer" and sees(claims.role, p.role, p.id == participant.id)]
        tracks = [public_track(t) for t in await self.store.list_tracks(lesson.id)]
        return {"participant": {"id": participant.id, "role": participant.role, "name": participant.name},
                "lesson": lesson.to_dict(), "participants": participants, "tracks": tracks}

    async def leave(self, conn: Connection) -> None:
        """Idempotent: forget the participant here, in room state and in the SFU, and tell the others."""
        lesson_id, pid = conn.lesson_id, conn.participant_id
        if lesson_id is None or pid is None:
            return
        members = self.connections.get(lesson_id, {})
        if members.get(pid) is not conn:
            return  # already replaced by a newer connection of the same participant
        del members[pid]
        router = self.routers.get(lesson_id)
        if router is not None:
            await router.remove_participant(pid)
        # its tracks' removal is announced by the router as their producers close (once, not twice)
        await self.store.remove_participant(lesson_id, pid)
        if conn.role != "observer":
            self.broadcast(lesson_id, {"type": "event", "event": "participant-left",
                                       "participant": {"id": pid, "role": conn.role,
                                                       "name": conn.claims.name if conn.claims else ""}},
                           about=conn.role)
        if not members:
            self.connections.pop(lesson_id, None)
            self._stop_recording(lesson_id)
            if router is not None:
                self.routers.pop(lesson_id, None)
                await router.close()

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
                            self.config.teacher_uplink_kbps * 1000 or None)
            router.on_track(lambda change, producer: self._on_track(lesson_id, change, producer))
            self.routers[lesson_id] = router
        return router

    async def _on_track(self, lesson_id: str, change: str, producer: Producer) -> None:
        track = TrackInfo(id=producer.id, lesson_id=lesson_id, participant_id=producer.owner, kind=producer.kind,
                          source=producer.source, published_at=time.time())
        if change == "added":
            await self.store.add_track(track)
            lesson = await self.store.get_lesson(lesson_id)
            if lesson is not None:
                self._start_recording(lesson, producer)
            if lesson is not None and lesson.state != "live":
                lesson = await self.store.set_lesson_state(lesson_id, "live")
                self.broadcast(lesson_id, {"type": "event", "event": "lesson-started", "lesson": lesson.to_dict()})
            self.broadcast(lesson_id, {"type": "event", "event": "track-added", "track": public_track(track)})
        else:
            await self.store.remove_track(lesson_id, producer.id)
            self.broadcast(lesson_id, {"type": "event", "event": "track-removed", "track": public_track(track)})

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
            except Exception:  # noqa: BLE001
                log.exception("could not finish the recording of lesson %s", lesson_id)

    async def end_lesson(self, lesson_id: str) -> None:
        self._stop_recording(lesson_id)
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
                for pid in list(members):
                    try:
                        await self.store.heartbeat(lesson_id, pid, self.config.participant_ttl_s)
                    except Exception:  # noqa: BLE001 - a Redis hiccup must not stop the loop
                        log.exception("heartbeat failed")

    async def health(self) -> dict[str, Any]:
        counts = await self.store.counts()
        return {"status": "ok", "node": self.config.node_id, "lessons": counts["lessons"],
                "participants": counts["participants"], "routers": len(self.routers),
                "uptime_s": round(time.time() - self.started_at, 1)}

    async def close(self) -> None:
        self._heartbeats.cancel()
        for lesson_id in list(self.recorders):
            self._stop_recording(lesson_id)
        for members in list(self.connections.values()):
            for conn in list(members.values()):
                await conn.close(code=1001, reason="server shutting down")
        for router in list(self.routers.values()):
            await router.close()
        self.routers.clear()
        await self.store.remove_node(self.config.node_id)


class LessonEnded(Exception):
    pass

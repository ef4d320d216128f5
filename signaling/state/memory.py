"""In-process RoomStore for single-server deployments and tests.

No method awaits internally, so each operation is atomic with respect to other
coroutines on the event loop. Objects are copied in and out so callers can never
mutate stored state by accident (the Redis backend behaves the same way by
construction).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Iterable

from signaling.state.base import (
    Admission,
    Clock,
    Lesson,
    Participant,
    Placement,
    RoomStore,
    TrackInfo,
    check_lesson_state,
    check_ttl,
    lesson_sort_key,
    participant_sort_key,
    track_sort_key,
)


class MemoryRoomStore(RoomStore):
    backend = "memory"

    def __init__(self, clock: Clock = time.time) -> None:
        super().__init__(clock)
        self._lessons: dict[str, Lesson] = {}
        # lesson -> (placement, expires_at, whether its node was alive (heart-beating) when it placed it)
        self._placements: dict[str, tuple[Placement, float, bool]] = {}
        self._nodes: dict[str, float] = {}  # node -> its liveness key's expires_at
        self._ready: dict[str, tuple[str, float]] = {}  # node taking new lessons -> (its url, until)
        self._admission: dict[str, Admission] = {}
        # lesson id -> participant id -> participant
        self._participants: dict[str, dict[str, Participant]] = {}
        # lesson id -> participant id -> track id -> track; keyed by participant
        # so a participant's tracks disappear together with it
        self._tracks: dict[str, dict[str, dict[str, TrackInfo]]] = {}

    # -- expiry ---------------------------------------------------------------

    def _live(self, lesson_id: str) -> dict[str, Participant]:
        """The lesson's participants after purging expired ones (lazy expiry)."""
        now = self.clock()
        people = self._participants.get(lesson_id, {})
        for pid in [pid for pid, p in people.items() if p.expires_at <= now]:
            self._drop(lesson_id, pid)
        return people

    def _drop(self, lesson_id: str, participant_id: str) -> None:
        people = self._participants.get(lesson_id)
        if people is not None:
            people.pop(participant_id, None)
            if not people:  # keep a long-running server's maps from growing
                del self._participants[lesson_id]
        by_participant = self._tracks.get(lesson_id)
        if by_participant is not None:
            by_participant.pop(participant_id, None)
            if not by_participant:
                del self._tracks[lesson_id]

    # -- lessons --------------------------------------------------------------

    async def ensure_lesson(
        self, lesson_id: str, title: str | None = None, teacher: str | None = None
    ) -> Lesson:
        lesson = self._lessons.get(lesson_id)
        if lesson is None:
            lesson = Lesson(
                id=lesson_id,
                title=lesson_id if title is None else title,
                teacher=teacher or "",
                state="scheduled",
                created_at=self.clock(),
            )
            self._lessons[lesson_id] = lesson
        else:
            if title is not None:
                lesson.title = title
            if teacher is not None:
                lesson.teacher = teacher
        return replace(lesson)

    async def get_lesson(self, lesson_id: str) -> Lesson | None:
        lesson = self._lessons.get(lesson_id)
        return None if lesson is None else replace(lesson)

    async def list_lessons(self) -> list[Lesson]:
        return sorted((replace(x) for x in self._lessons.values()), key=lesson_sort_key)

    async def set_lesson_state(self, lesson_id: str, state: str) -> Lesson:
        check_lesson_state(state)
        lesson = self._lessons.get(lesson_id)
        if lesson is None:
            raise KeyError(lesson_id)
        now = self.clock()
        lesson.state = state  # type: ignore[assignment]  # validated above
        if state == "live":
            if lesson.started_at is None:
                lesson.started_at = now
            lesson.ended_at = None
        elif state == "ended" and lesson.ended_at is None:
            lesson.ended_at = now
        return replace(lesson)

    async def restore_lesson(self, lesson: Lesson) -> None:
        self._lessons[lesson.id] = replace(lesson)

    # -- admission ------------------------------------------------------------

    async def admission(self, lesson_id: str) -> Admission:
        held = self._admission.get(lesson_id)
        if held is None:
            return Admission()
        return Admission(held.locked, set(held.removed), set(held.seen))

    async def set_locked(self, lesson_id: str, locked: bool) -> None:
        self._admission.setdefault(lesson_id, Admission()).locked = bool(locked)

    async def add_removed(self, lesson_id: str, participant_ids: Iterable[str]) -> None:
        self._admission.setdefault(lesson_id, Admission()).removed.update(participant_ids)

    async def add_seen(self, lesson_id: str, participant_ids: Iterable[str]) -> None:
        self._admission.setdefault(lesson_id, Admission()).seen.update(participant_ids)

    async def clear_admission(self, lesson_id: str) -> None:
        self._admission.pop(lesson_id, None)

    # -- participants ---------------------------------------------------------

    async def add_participant(self, p: Participant, ttl_s: float) -> None:
        check_ttl(ttl_s)
        now = self.clock()
        self._drop(p.lesson_id, p.id)  # new incarnation: old tracks go too
        stored = replace(p, last_seen=now, expires_at=now + ttl_s)
        self._participants.setdefault(p.lesson_id, {})[p.id] = stored

    async def heartbeat(self, lesson_id: str, participant_id: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        p = self._live(lesson_id).get(participant_id)
        if p is None:
            return False
        now = self.clock()
        p.last_seen = now
        p.expires_at = now + ttl_s
        return True

    async def remove_participant(self, lesson_id: str, participant_id: str) -> None:
        self._drop(lesson_id, participant_id)

    async def get_participant(self, lesson_id: str, participant_id: str) -> Participant | None:
        p = self._live(lesson_id).get(participant_id)
        return None if p is None else replace(p)

    async def list_participants(self, lesson_id: str) -> list[Participant]:
        people = self._live(lesson_id).values()
        return sorted((replace(p) for p in people), key=participant_sort_key)

    # -- tracks ---------------------------------------------------------------

    async def add_track(self, t: TrackInfo) -> None:
        if t.participant_id not in self._live(t.lesson_id):
            return  # could never be listed; see RoomStore docstring
        by_participant = self._tracks.setdefault(t.lesson_id, {})
        by_participant.setdefault(t.participant_id, {})[t.id] = replace(t)

    async def remove_track(self, lesson_id: str, track_id: str) -> None:
        for tracks in self._tracks.get(lesson_id, {}).values():
            tracks.pop(track_id, None)

    async def list_tracks(self, lesson_id: str) -> list[TrackInfo]:
        live = self._live(lesson_id)
        by_participant = self._tracks.get(lesson_id, {})
        tracks = [replace(t) for pid in live for t in by_participant.get(pid, {}).values()]
        return sorted(tracks, key=track_sort_key)

    # -- whole store ----------------------------------------------------------

    def _alive(self, node: str, now: float) -> bool:
        return self._nodes.get(node, 0.0) > now

    async def place_lesson(self, lesson_id: str, node: str, url: str, ttl_s: float) -> Placement:
        check_ttl(ttl_s)
        now = self.clock()
        held = self._placements.get(lesson_id)
        previous = ""
        if held is not None and held[0].node != node:
            holder_dead = held[2] and not self._alive(held[0].node, now)
            if held[1] > now and not holder_dead:
                return held[0]
            previous = held[0].node if holder_dead else ""
        self._placements[lesson_id] = (Placement(node, url), now + ttl_s, self._alive(node, now))
        return Placement(node, url, previous)

    async def node_heartbeat(self, node: str, url: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        now = self.clock()
        was = self._alive(node, now)
        self._nodes[node] = now + ttl_s
        return was

    async def node_alive(self, node: str) -> bool:
        return self._alive(node, self.clock())

    async def set_node_ready(self, node: str, url: str, ready: bool, ttl_s: float) -> None:
        check_ttl(ttl_s)
        if ready:
            self._ready[node] = (url, self.clock() + ttl_s)
        else:
            self._ready.pop(node, None)

    async def ready_nodes(self) -> list[Placement]:
        now = self.clock()
        return [Placement(node, url) for node, (url, until) in sorted(self._ready.items())
                if until > now and self._alive(node, now)]

    async def placement(self, lesson_id: str) -> Placement | None:
        now = self.clock()
        held = self._placements.get(lesson_id)
        if held is None or held[1] <= now or (held[2] and not self._alive(held[0].node, now)):
            return None
        return held[0]

    async def release_lesson(self, lesson_id: str, node: str) -> None:
        held = self._placements.get(lesson_id)
        if held is not None and held[0].node == node:
            del self._placements[lesson_id]

    async def remove_node(self, node: str) -> int:
        self._nodes.pop(node, None)
        self._ready.pop(node, None)
        removed = 0
        for lesson_id in list(self._participants):
            held = [pid for pid, p in self._live(lesson_id).items() if p.node == node]
            for pid in held:
                self._drop(lesson_id, pid)
            removed += len(held)
        return removed

    async def counts(self) -> dict[str, int]:
        open_lessons = sum(1 for x in self._lessons.values() if x.state != "ended")
        people = sum(len(self._live(lesson_id)) for lesson_id in list(self._participants))
        return {"lessons": open_lessons, "participants": people}

    async def close(self) -> None:
        pass

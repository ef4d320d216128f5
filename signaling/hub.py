"""The lessons this node serves: a registry of live Lessons (signaling.lesson.live), and what is node-wide: the
room store (placement of lessons on nodes, participants, tracks, admission), this node's liveness, and riding out
the store's outages."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

from recorder.record.handoff import Catalog
from sfu.adapt.overload import NODE as OVERLOAD
from sfu.producer import Producer
from signaling import metrics
from signaling.config import Config
from signaling.connection import Connection
from signaling.lesson.live import Lesson
from signaling.lesson.outcome import public_participant, public_track
from signaling.state import Lesson as StoredLesson
from signaling.state import Participant, RoomStore, StoreUnavailable, TrackInfo

# each classroom's reception (loss, round-trip time, bitrate, video) is sampled this often for attendance
SAMPLE_EVERY_S = 2.0
# websocket close code: the lesson now lives on another server process; the page reconnects and is sent there
CLOSE_MOVED = 4005
# while the room store (Redis) is unreachable, this node tries it again after 0.5 s, 1 s, then every 2 s: back
# within seconds of its return (and then writes again what it carries), without hammering it meanwhile
STORE_RETRY_FIRST_S = 0.5
STORE_RETRY_MAX_S = 2.0
STILL_DOWN_LOG_EVERY_S = 60.0
# the `unavailable` error (docs/protocol.md): a join while the room state cannot be reached
UNAVAILABLE_MESSAGE = "the lesson's room state is unavailable just now: try again in a few seconds"
# drain (docs/deploy.md, "Rolling restart"): the message that tells a participant to join again elsewhere, and the
# close code that follows it; the `draining` error: a new lesson at a draining node with no other node to take it
CLOSE_REJOIN = 4006
DRAINING_MESSAGE = "this server is being restarted and takes no new lessons: try again in a few seconds"
DRAIN_POLL_S = 0.2
# a node short of CPU (sfu/adapt/overload.py): new lessons go to another node, new classrooms wait (the page retries)
OVERLOADED_MESSAGE = ("this server is short of CPU and takes no new classrooms just now: the page tries again by "
                      "itself")
# after the drain timeout, the participants told to rejoin elsewhere have this long to go before the node stops
MOVE_GRACE_S = 10.0

log = logging.getLogger("ketang.signaling")


class Hub:
    """Lesson id -> Lesson (the one owner of each lesson's live state here), the room store, and this node's
    liveness, placements and heartbeats. Joins and leaves go through here: they write the store first."""

    def __init__(self, config: Config, store: RoomStore, catalog: Catalog | None = None) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog  # the resource library; None: lessons are not recorded
        # a lesson ended with recorded files (its id): e.g. queue its composite (recorder/compose/jobs.py)
        self.on_lesson_recorded: Callable[[str], None] | None = None
        # a lesson went live ("started", id, {"lesson": …}) or its teacher ended it ("ended", id, {"lesson": …,
        # "attendance": its classrooms' rows}): the supervision dashboard and webhooks (must not wait)
        self.on_lesson_event: Callable[[str, str, dict[str, Any]], None] | None = None
        self.lessons: dict[str, Lesson] = {}
        self.started_at = time.time()
        # store writes an outage made fail, done when it is back: leaves, placement releases, ended admissions
        self._unsynced_leaves: set[tuple[str, str]] = set()
        self._unreleased: set[str] = set()
        self._uncleared: set[str] = set()
        self.store_up: bool | None = None  # None: not tried yet
        self.store_error = ""
        self._down_since = 0.0
        self._down_logged_at = 0.0
        self._beating: asyncio.Future[None] | None = None
        self._rebuild_lock = asyncio.Lock()
        self._admission_lock = asyncio.Lock()
        self._tasks: set[asyncio.Future[Any]] = set()
        # readiness (/readyz): a node takes new lessons unless one of these names a reason not to. Draining is
        # one; others (an overloaded node) add a check returning their reason, or None while all is well
        self.draining = False
        self.drain_started: float | None = None
        self.overload = OVERLOAD  # the node's shed level (one event loop, one CPU budget)
        self.not_ready_checks: list[Callable[[], str | None]] = [
            lambda: "draining" if self.draining else None,
            lambda: "overloaded" if self.overload.overloaded else None]
        self._moving: set[str] = set()  # lessons whose participants were told to rejoin elsewhere (drain)
        self._heartbeats = asyncio.ensure_future(self._heartbeat_loop())
        self._samples = asyncio.ensure_future(self._sample_loop())
        self._node_beats = asyncio.ensure_future(self._node_loop())

    def lesson(self, lesson_id: str) -> Lesson:
        """The lesson's live state here, made on first use."""
        lesson = self.lessons.get(lesson_id)
        if lesson is None:
            lesson = self.lessons[lesson_id] = Lesson(
                lesson_id, self.config, self.catalog, on_track=self._on_track,
                on_admission=lambda: self._spawn(self._write_admission_logged(lesson_id)),
                on_recorded=lambda lid: self.on_lesson_recorded(lid) if self.on_lesson_recorded else None)
        return lesson

    def carried(self) -> list[Lesson]:
        """The lessons somebody is connected to here."""
        return [lesson for lesson in self.lessons.values() if lesson.connections]

    def not_ready(self) -> list[str]:
        """Why this node takes no new lessons now (empty: it does); /readyz answers 503 with them."""
        return [reason for check in self.not_ready_checks if (reason := check()) is not None]

    def _refuse_while_saturated(self, lesson_id: str, participant: str, role: str) -> bool:
        """Saturated (sfu/adapt/overload.py): nobody new joins a lesson carried here; its teacher and the
        classrooms it has had (a reconnect) still do."""
        if not self.overload.saturated or role == "teacher":
            return False
        lesson = self.lessons.get(lesson_id)
        return lesson is not None and lesson.admission_loaded and participant not in lesson.seen \
            and participant not in lesson.connections

    def current(self, conn: Connection) -> bool:
        """Whether `conn` is still its participant's connection (the same link opened again replaces it)."""
        lesson = self.lessons.get(conn.lesson_id or "")
        return not conn.closed and lesson is not None and lesson.connections.get(conn.participant_id or "") is conn

    # -- membership ----------------------------------------------------------------------------------------

    async def join(self, conn: Connection) -> dict[str, Any]:
        """Register a participant whose token was verified; returns the lesson state for the `joined` reply."""
        claims = conn.claims
        assert claims is not None and conn.participant_id is not None
        if self._refuse_while_saturated(claims.lesson, conn.participant_id, claims.role):
            # (before any store call: refusals come in bursts from pages trying again, and must cost next to nothing)
            raise NodeOverloaded()
        # every store call comes first: when the store is unreachable (StoreUnavailable: `unavailable`), nothing
        # here has changed
        await self._registered()
        if self.not_ready() and not self._carries(claims.lesson):
            # a draining or overloaded node places no new lesson here: the participant is sent where it lives, or
            # will; with no other node, `draining` or `overloaded` (the page tries again)
            try:
                url = await self._elsewhere(claims.lesson)
            except NodeDraining:
                if self.draining:
                    raise
                raise NodeOverloaded() from None
            raise LessonElsewhere(url)
        # the lesson's teacher and classrooms must meet in one SFU: the first node to see the lesson carries it
        # (several processes on one Redis carry more lessons); anyone arriving elsewhere is sent there
        placement = await self.store.place_lesson(claims.lesson, self.config.node_id, self.config.url,
                                                  self.config.participant_ttl_s)
        if placement.node != self.config.node_id:
            raise LessonElsewhere(placement.url)
        if placement.previous:
            await self._forget_dead_node(placement.previous, claims.lesson)
        stored = await self.store.ensure_lesson(claims.lesson, title=claims.title or None,
                                                teacher=claims.name if claims.role == "teacher" else None)
        lesson = self.lesson(stored.id)
        lesson.stored = stored
        if stored.state == "ended" and claims.role != "teacher":
            raise LessonEnded(stored.id)
        if not lesson.admission_loaded:
            # the lock and the removals outlive the node that set them (a restart, a failover)
            lesson.load_admission(await self.store.admission(lesson.id))
        if self._refuse_while_saturated(lesson.id, conn.participant_id, claims.role):
            raise NodeOverloaded()
        refused, first_time = lesson.admit(conn.participant_id, claims.role)
        if refused is not None:
            raise JoinRefused(refused)
        if first_time:
            await self.store.add_seen(lesson.id, [conn.participant_id])
            lesson.seen.add(conn.participant_id)
        now = time.time()
        participant = Participant(id=conn.participant_id, lesson_id=lesson.id, role=claims.role, name=claims.name,
                                  joined_at=now, last_seen=now, node=self.config.node_id, expires_at=0.0)
        await self.store.add_participant(participant, self.config.participant_ttl_s)
        everyone = await self.store.list_participants(lesson.id)
        stored_tracks = await self.store.list_tracks(lesson.id)
        lesson.participants[participant.id] = participant
        self._unsynced_leaves.discard((lesson.id, participant.id))
        members = lesson.connections
        previous = members.get(conn.participant_id)
        members[conn.participant_id] = conn
        if previous is not None and previous is not conn:
            # the same token again (a reloaded page): the new connection takes over, with fresh media
            await previous.close(code=4001, reason="replaced by a new connection")
            router = lesson.router
            # unless a newer connection took over meanwhile (the same link joined again and again at once): the
            # media is then the newest one's, and removing it here left the newest without any
            if router is not None and members.get(conn.participant_id) is conn:
                await router.remove_participant(conn.participant_id)
        if claims.role != "observer":  # observers watch without being listed to others
            lesson.broadcast({"type": "event", "event": "participant-joined",
                              "participant": public_participant(participant)}, exclude=conn, about=claims.role)
        return lesson.welcome(stored, participant, everyone, stored_tracks, now)

    async def leave(self, conn: Connection) -> None:
        """Idempotent: forget the participant here, in room state and in the SFU, and tell the others."""
        lesson_id, pid = conn.lesson_id, conn.participant_id
        if lesson_id is None or pid is None:
            return
        lesson = self.lessons.get(lesson_id)
        if lesson is None or lesson.connections.get(pid) is not conn:
            return  # already replaced by a newer connection of the same participant
        members = lesson.connections
        del members[pid]
        lesson.participants.pop(pid, None)
        # decided now, before the awaits below: when a whole lesson's classrooms drop at once, every leave
        # would find the lesson empty after them and save its record (400 times, each with 400 rows)
        last = not members
        # every step below is done whatever the others do: a store outage or an SFU failure must not leave the
        # others uninformed, the attendance open, the recording unfinished or the lesson placed here
        router = lesson.router
        if router is not None:
            metrics.participant_leaving(router, pid)
            try:
                await router.remove_participant(pid)
            except Exception:  # noqa: BLE001
                log.exception("could not remove %s from the SFU of lesson %s", pid, lesson_id)
        # its tracks' removal is announced by the router as their producers close (once, not twice)
        try:
            await self.store.remove_participant(lesson_id, pid)
        except StoreUnavailable as exc:
            self.store_failed(exc, "a participant left")
            self._unsynced_leaves.add((lesson_id, pid))  # removed when the store is back
        except Exception:  # noqa: BLE001
            log.exception("could not remove %s from the room state of lesson %s", pid, lesson_id)
        if conn.role == "classroom":
            lesson.left(pid, time.time())
        if conn.role != "observer":
            lesson.broadcast({"type": "event", "event": "participant-left",
                              "participant": {"id": pid, "role": conn.role,
                                              "name": conn.claims.name if conn.claims else ""}}, about=conn.role)
        if last and not members:  # (nobody joined meanwhile)
            try:  # the next participant may start the lesson on any node
                await self.store.release_lesson(lesson_id, self.config.node_id)
            except StoreUnavailable as exc:
                self.store_failed(exc, "the last participant of a lesson left")
                self._unreleased.add(lesson_id)  # released when the store is back (or it expires)
            except Exception:  # noqa: BLE001 - it expires anyway
                log.exception("could not release the placement of lesson %s", lesson_id)
            if members:  # somebody joined while it was being released: it goes on here
                self._unreleased.discard(lesson_id)
                await self._renew_placement(lesson)
                return
            vacated = lesson.vacate()
            if vacated is not None:
                try:
                    await vacated.close()
                except Exception:  # noqa: BLE001
                    log.exception("could not close the SFU router of lesson %s", lesson_id)

    # -- media ---------------------------------------------------------------------------------------------

    async def _on_track(self, lesson_id: str, change: str, producer: Producer) -> None:
        """(A task of the router's.) The room state follows the SFU's tracks; a store outage costs the store
        write only (written again when it is back), never the events or the recording."""
        try:
            await self._track_changed(lesson_id, change, producer)
        except Exception:  # noqa: BLE001 - a task nobody awaits: logged here, not as "never retrieved"
            log.exception("could not announce the %s track %s of lesson %s", change, producer.id, lesson_id)

    async def _track_changed(self, lesson_id: str, change: str, producer: Producer) -> None:
        track = TrackInfo(id=producer.id, lesson_id=lesson_id, participant_id=producer.owner, kind=producer.kind,
                          source=producer.source, published_at=time.time())
        lesson = self.lesson(lesson_id)
        # a classroom's own camera and microphone are news to the teacher and observers, not to 400 classrooms
        about = "classroom" if producer.owner_role == "classroom" else None
        if change == "added":
            lesson.tracks[track.id] = track
            await self._quietly(self.store.add_track(track), "a track was published")
            stored = lesson.stored
            if stored is None:
                stored = await self._quietly(self.store.get_lesson(lesson_id), "a track was published")
            if stored is not None and about is None:
                lesson.start_recording(stored, producer)
            if stored is not None and stored.state != "live" and about is None:
                stored = await self._set_lesson_state(stored, "live")
                lesson.broadcast({"type": "event", "event": "lesson-started", "lesson": stored.to_dict()})
                self._lesson_event("started", lesson_id, {"lesson": stored.to_dict()})
            lesson.broadcast({"type": "event", "event": "track-added", "track": public_track(track)}, about=about)
        else:
            lesson.tracks.pop(track.id, None)
            await self._quietly(self.store.remove_track(lesson_id, producer.id), "a track ended")
            lesson.broadcast({"type": "event", "event": "track-removed", "track": public_track(track)}, about=about)

    async def _set_lesson_state(self, stored: StoredLesson, state: str) -> StoredLesson:
        """The lesson's new state, in the store, or (store unreachable) here only until it is written back."""
        try:
            changed = await self.store.set_lesson_state(stored.id, state)
        except StoreUnavailable as exc:
            self.store_failed(exc, f"the lesson went {state}")
            now = time.time()
            changed = StoredLesson(**stored.to_dict())
            changed.state = state  # type: ignore[assignment]
            if state == "live":
                changed.started_at = changed.started_at or now
                changed.ended_at = None
            elif state == "ended":
                changed.ended_at = changed.ended_at or now
        lesson = self.lessons.get(stored.id)
        if lesson is not None and (lesson.stored is not None or lesson.connections):
            lesson.stored = changed
        return changed

    def _lesson_event(self, event: str, lesson_id: str, data: dict[str, Any]) -> None:
        if self.on_lesson_event is not None:
            try:
                self.on_lesson_event(event, lesson_id, data)
            except Exception:  # noqa: BLE001 - an observer's failure must not touch the lesson
                log.exception("the lesson-%s observer failed for lesson %s", event, lesson_id)

    async def end_lesson(self, lesson_id: str) -> None:
        lesson = self.lesson(lesson_id)
        # the classrooms' attendance as its attendance.csv has it, before finishing the lesson forgets it
        attendance = lesson.attendance(time.time())["classrooms"] if lesson.has_interaction else []
        lesson.finish()
        await lesson.recorded_in_library()
        try:
            await self.store.clear_admission(lesson_id)
        except StoreUnavailable as exc:
            self.store_failed(exc, "a lesson ended")
            self._uncleared.add(lesson_id)
        known = lesson.stored
        if known is None:
            known = await self.store.get_lesson(lesson_id)
        if known is None:
            raise KeyError(lesson_id)
        stored = await self._set_lesson_state(known, "ended")
        lesson.broadcast({"type": "event", "event": "lesson-ended", "lesson": stored.to_dict()})
        self._lesson_event("ended", lesson_id, {"lesson": stored.to_dict(), "attendance": attendance})
        router = lesson.drop_router()
        if router is not None:
            await router.close()

    # -- upkeep --------------------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Refresh this node's participants so that only a crashed node's participants expire."""
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            if self.store_up is False:
                continue  # the node loop is on it, and writes everything again when the store is back
            try:
                await self._heartbeat_round()
            except StoreUnavailable as exc:
                self.store_failed(exc, "refreshing this node's participants")
            except Exception:  # noqa: BLE001 - a bug must not stop the loop
                log.exception("heartbeat failed")

    async def _heartbeat_round(self) -> None:
        for lesson in self.carried():
            if lesson.id in self._moving or not await self._renew_placement(lesson):
                continue
            for pid in list(lesson.connections):
                if await self.store.heartbeat(lesson.id, pid, self.config.participant_ttl_s):
                    continue
                # gone from the store although connected here (a node that took this node for dead cleared
                # it, or the store lost it): written again, with its tracks
                if lesson.connections.get(pid) is not None and pid in lesson.participants:
                    log.info("participant %s of lesson %s was missing from the room state: written again",
                             pid, lesson.id)
                    await self._write_participant(lesson, pid)

    async def _renew_placement(self, lesson: Lesson) -> bool:
        """Keep the lessons this node carries placed here; True when it still is. Lost to another node (this one
        stalled past the TTL): its participants are disconnected, and their pages reconnect and are sent to that
        node."""
        lesson_id, members = lesson.id, lesson.connections
        try:
            placement = await self.store.place_lesson(lesson_id, self.config.node_id, self.config.url,
                                                      self.config.participant_ttl_s)
        except StoreUnavailable as exc:
            self.store_failed(exc, "renewing a lesson's placement")
            return False
        except Exception:  # noqa: BLE001 - a bug must not stop the loop
            log.exception("placement renewal failed")
            return False
        if placement.node == self.config.node_id:
            if placement.previous:
                await self._forget_dead_node(placement.previous, lesson_id)
            return True
        log.warning("lesson %s is now carried by %s: moving its %d participants there", lesson_id, placement.url,
                    len(members))
        for conn in list(members.values()):
            await conn.close(code=CLOSE_MOVED, reason="the lesson moved to another server")
        return False

    # -- drain ---------------------------------------------------------------------------------------------

    def _carries(self, lesson_id: str) -> bool:
        lesson = self.lessons.get(lesson_id)
        return lesson is not None and bool(lesson.connections) and lesson_id not in self._moving

    async def _elsewhere(self, lesson_id: str) -> str:
        """Where a participant of a lesson this node will not carry goes: the node that carries it, else a ready
        node (the same one for every participant of the lesson); NodeDraining when there is none."""
        placed = await self.store.placement(lesson_id)
        if placed is not None and placed.node != self.config.node_id:
            return placed.url
        target = await self._ready_node(lesson_id)
        if target is None:
            raise NodeDraining()
        return target

    async def _ready_node(self, lesson_id: str) -> str | None:
        others = [n for n in await self.store.ready_nodes() if n.node != self.config.node_id]
        if not others:
            return None
        return others[zlib.crc32(lesson_id.encode()) % len(others)].url

    async def drain(self, timeout_s: float) -> None:
        """Take no new lessons (placement skips this node, /readyz 503); let the live ones go on until they end
        or `timeout_s` passes; then tell their participants to rejoin (they land on another node) and return once
        nobody is connected (or MOVE_GRACE_S later). Idempotent: a second call waits like the first."""
        if not self.draining:
            self.draining = True
            self.drain_started = time.monotonic()
            log.warning("draining: no new lessons here; %d live lesson(s) go on until they end or %g s pass, then "
                        "their participants are sent to another node", len(self.carried()), timeout_s)
            await self._quietly(self.store.set_node_ready(self.config.node_id, self.config.url, False,
                                                          self.config.node_ttl_s), "draining")
        assert self.drain_started is not None
        deadline = self.drain_started + timeout_s
        while self.carried() and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if self.carried():
            await self.move_lessons()
            deadline = time.monotonic() + MOVE_GRACE_S
            while self.carried() and time.monotonic() < deadline:
                await asyncio.sleep(DRAIN_POLL_S)
        log.warning("drained in %.1f s: %d lesson(s) left here", time.monotonic() - self.drain_started,
                    len(self.carried()))

    async def move_lessons(self) -> None:
        """Every lesson carried here moves: its placement is released (so the next node a participant reaches
        places it there), then each participant is sent `rejoin` (with a ready node's url) and its socket closed
        (4006). Their pages join again at once; the last leave here finishes this node's part of the recording."""
        lessons = [lesson for lesson in self.carried() if lesson.id not in self._moving]
        for lesson in lessons:
            self._moving.add(lesson.id)
            await self._quietly(self.store.release_lesson(lesson.id, self.config.node_id), "moving a lesson")
        conns = []
        for lesson in lessons:
            target = await self._quietly(self._ready_node(lesson.id), "moving a lesson")
            log.warning("lesson %s moves to %s: its %d participant(s) are told to rejoin", lesson.id,
                        target or "the next node they reach", len(lesson.connections))
            message: dict[str, Any] = {"type": "rejoin", "reason": "draining"}
            if target:
                message["url"] = target
            for conn in list(lesson.connections.values()):
                conn.send(message)
                conns.append(conn)
        await asyncio.gather(*(self._send_off(conn) for conn in conns), return_exceptions=True)

    @staticmethod
    async def _send_off(conn: Connection) -> None:
        await conn.drain()
        await conn.close(code=CLOSE_REJOIN, reason="server draining: join again")

    # -- the room store's outages ---------------------------------------------------------------------------

    def store_failed(self, exc: BaseException, doing: str) -> None:
        """One warning per outage (not a traceback per call); the node loop tries the store again."""
        self.store_error = str(exc)
        if self.store_up is False:
            log.debug("room state still unavailable (%s): %s", doing, exc)
            return
        self.store_up = False
        self._down_since = self._down_logged_at = time.monotonic()
        log.warning("room state unavailable (%s; when %s): the lessons on this node go on; joins are refused "
                    "with `unavailable` until it answers, tried again within %g s; what this node carries is then "
                    "written again", exc, doing, STORE_RETRY_MAX_S)

    async def _quietly(self, call: Any, doing: str) -> Any:
        """Await a store call whose failure in an outage costs nothing but the write (done again when the store
        is back); None then."""
        try:
            return await call
        except StoreUnavailable as exc:
            self.store_failed(exc, doing)
            return None

    async def start(self) -> bool:
        """The node's first beat: True when the room store answers (else logged; tried again in the background)."""
        await self._beat_shared()
        return bool(self.store_up)

    async def _registered(self) -> None:
        """Before a join: this node's liveness is in the store (its placements are then freed quickly when it
        dies). While the store is down, the joins arriving together share one try (400 classrooms retrying must
        not make 400 connection attempts); StoreUnavailable when it fails."""
        if self.store_up:
            return
        await self._beat_shared()
        if not self.store_up:
            raise StoreUnavailable(self.store_error)

    async def _beat_shared(self) -> None:
        if self._beating is None or self._beating.done():
            self._beating = asyncio.ensure_future(self._beat())
        await asyncio.shield(self._beating)

    async def _node_loop(self) -> None:
        """This node's liveness, renewed every node_heartbeat_s (its key lives node_ttl_s): a node that stops
        renewing it is dead, and its lessons go to the next node their pages reach. Also how the node notices
        that the store is unreachable, back, or lost what it knew."""
        delay, backoff = self.config.node_heartbeat_s, 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self._beat_shared()
            except Exception:  # noqa: BLE001 - a bug must not stop the node's liveness
                log.exception("node heartbeat failed")
            if self.store_up is False:
                backoff = min(backoff * 2, STORE_RETRY_MAX_S) if backoff else STORE_RETRY_FIRST_S
                delay = min(backoff, self.config.node_heartbeat_s * 2)
                now = time.monotonic()
                if now - self._down_logged_at >= STILL_DOWN_LOG_EVERY_S:
                    self._down_logged_at = now
                    log.warning("room state still unavailable after %.0f s (%s); trying every %g s",
                                now - self._down_since, self.store_error, delay)
            else:
                delay, backoff = self.config.node_heartbeat_s, 0.0

    async def _beat(self) -> None:
        was_up = self.store_up
        try:
            alive_already = await self.store.node_heartbeat(self.config.node_id, self.config.url,
                                                            self.config.node_ttl_s)
        except StoreUnavailable as exc:
            self.store_failed(exc, "renewing this node's liveness")
            return
        self.store_up = True
        try:  # listed among the nodes that take new lessons while ready (renewed with the liveness)
            await self.store.set_node_ready(self.config.node_id, self.config.url, not self.not_ready(),
                                            self.config.node_ttl_s)
        except StoreUnavailable as exc:
            self.store_failed(exc, "renewing this node's readiness")
            return
        if was_up is False:
            log.warning("room state reachable again after %.1f s", time.monotonic() - self._down_since)
        if was_up is False or (was_up and not alive_already):
            # back from an outage (writes were missed), or this node's key is gone although it kept beating
            # (the store restarted empty, or this node stalled past its TTL): write everything it carries again
            await self._rebuild("after an outage" if was_up is False else "the room state had lost this node")

    async def _rebuild(self, why: str) -> None:
        """Write again what this node knows: each lesson it carries, its participants (with their tracks) and its
        lock and removals; and the leaves, releases and endings an outage kept from the store."""
        async with self._rebuild_lock:
            started = time.monotonic()
            people = tracks = lessons = 0
            try:
                for lesson_id, pid in list(self._unsynced_leaves):
                    if not self._connected(lesson_id, pid):
                        await self.store.remove_participant(lesson_id, pid)
                    self._unsynced_leaves.discard((lesson_id, pid))
                for lesson_id in list(self._unreleased):
                    if not self._connected(lesson_id):
                        await self.store.release_lesson(lesson_id, self.config.node_id)
                    self._unreleased.discard(lesson_id)
                for lesson_id in list(self._uncleared):
                    await self.store.clear_admission(lesson_id)
                    self._uncleared.discard(lesson_id)
                for lesson in self.carried():
                    if lesson.id in self._moving or not await self._renew_placement(lesson):
                        continue
                    if lesson.stored is not None:
                        await self.store.restore_lesson(lesson.stored)
                    lessons += 1
                    for pid in list(lesson.connections):
                        if pid in lesson.participants:
                            tracks += await self._write_participant(lesson, pid)
                            people += 1
                    await self._write_admission(lesson.id)
            except StoreUnavailable as exc:
                self.store_failed(exc, "writing the room state again")
                return
            if lessons or people:
                log.warning("room state written again (%s): %d lesson(s), %d participant(s), %d track(s) in %.2f s",
                            why, lessons, people, tracks, time.monotonic() - started)

    def _connected(self, lesson_id: str, pid: str | None = None) -> bool:
        """Whether anybody (pid None) or this participant is connected to the lesson here."""
        lesson = self.lessons.get(lesson_id)
        if lesson is None:
            return False
        return bool(lesson.connections) if pid is None else pid in lesson.connections

    async def _write_participant(self, lesson: Lesson, pid: str) -> int:
        """A participant connected here, and its tracks, into the store; returns how many tracks."""
        participant = lesson.participants[pid]
        await self.store.add_participant(participant, self.config.participant_ttl_s)
        own = [t for t in list(lesson.tracks.values()) if t.participant_id == pid]
        for track in own:
            await self.store.add_track(track)
        return len(own)

    async def _write_admission(self, lesson_id: str) -> None:
        # one writer at a time: each writes the state as it is when it runs, so an earlier write (which read the
        # lock before the teacher changed it) can never land after a later one
        async with self._admission_lock:
            lesson = self.lessons.get(lesson_id)
            if lesson is None or not lesson.has_interaction or not lesson.admission_loaded:
                return  # (never read here: the store's is the one)
            await self.store.set_locked(lesson_id, lesson.interaction.locked)
            await self.store.add_removed(lesson_id, sorted(lesson.interaction.removed))
            await self.store.add_seen(lesson_id, sorted(lesson.seen))

    async def _write_admission_logged(self, lesson_id: str) -> None:
        try:
            await self._write_admission(lesson_id)
        except StoreUnavailable as exc:
            self.store_failed(exc, "the teacher locked the lesson or removed a classroom")
        except Exception:  # noqa: BLE001
            log.exception("could not keep the lock and removals of lesson %s", lesson_id)

    async def _forget_dead_node(self, node: str, lesson_id: str) -> None:
        """This node took a lesson over from a dead node: that node's participants are ghosts everywhere."""
        removed = await self.store.remove_node(node)
        log.warning("node %s is dead (its liveness expired): lesson %s is carried here now; its %d participant(s) "
                    "left the room state", node, lesson_id, removed)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sample_loop(self) -> None:
        """Every SAMPLE_EVERY_S: each connected classroom's reception, for attendance."""
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            try:
                self.sample(time.time())
            except Exception:  # noqa: BLE001
                log.exception("attendance sampling failed")

    def sample(self, now: float) -> None:
        for lesson in list(self.lessons.values()):
            lesson.sample(now)

    async def health(self) -> dict[str, Any]:
        """`status` "ok", or "degraded" naming what is down (`redis`: "down"); lessons and participants in the
        room state (all nodes), `here`: this node's own."""
        carried = self.carried()
        here = {"lessons": len(carried), "participants": sum(len(lesson.connections) for lesson in carried)}
        common = {"node": self.config.node_id, "routers": sum(1 for lesson in self.lessons.values() if lesson.router),
                  "here": here,
                  "uptime_s": round(time.time() - self.started_at, 1)}
        try:
            counts = await self.store.counts()
        except StoreUnavailable as exc:
            self.store_failed(exc, "answering /healthz")
            return {"status": "degraded", self.store.backend or "store": "down", "error": self.store_error,
                    "down_s": round(time.monotonic() - self._down_since, 1), **common}
        backend = {self.store.backend: "up"} if self.store.backend == "redis" else {}
        return {"status": "ok", **backend, "lessons": counts["lessons"], "participants": counts["participants"],
                **common}

    async def disconnect_all(self) -> None:
        """Server shutting down: every websocket is closed (1001), so their handlers end (each one's leave keeps
        the lesson's record) instead of holding the shutdown until aiohttp's timeout."""
        conns = [conn for lesson in self.carried() for conn in list(lesson.connections.values())]
        await asyncio.gather(*(conn.close(code=1001, reason="server shutting down") for conn in conns),
                             return_exceptions=True)

    async def close(self) -> None:
        self._heartbeats.cancel()
        self._samples.cancel()
        self._node_beats.cancel()
        if self._beating is not None:
            self._beating.cancel()
        if self._tasks:  # a lock or a removal being written: let it reach the store (it must outlive the node)
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        for lesson in list(self.lessons.values()):
            lesson.stop_recording()
        for lesson in self.carried():
            for conn in list(lesson.connections.values()):
                await conn.close(code=1001, reason="server shutting down")
        for lesson in list(self.lessons.values()):
            router = lesson.drop_router()
            if router is None:
                continue
            try:
                await router.close()
            except Exception:  # noqa: BLE001 - shutting down: the others still close
                log.exception("could not close a router")
        if self.store_up is False:
            log.warning("room state unavailable at shutdown: this node's placements and participants expire by "
                        "themselves (its liveness within %g s)", self.config.node_ttl_s)
            return
        try:
            for lesson in self.carried():
                await self.store.release_lesson(lesson.id, self.config.node_id)
            await self.store.remove_node(self.config.node_id)
        except StoreUnavailable as exc:
            log.warning("room state unavailable at shutdown (%s): this node's placements and participants expire "
                        "by themselves (its liveness within %g s)", exc, self.config.node_ttl_s)


class LessonEnded(Exception):
    pass


class LessonElsewhere(Exception):
    """The lesson's media lives on another server process (several sharing Redis): join it at `url`."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class NodeDraining(Exception):
    """A new lesson at a draining node, and no other node takes new lessons: `draining`, try again soon."""


class NodeOverloaded(Exception):
    """This node is short of CPU: no new lesson (and no other node takes it) or no new classroom: `overloaded`."""


class JoinRefused(Exception):
    """A classroom removed from the lesson, or new to a locked one; `code` is the protocol's error code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code

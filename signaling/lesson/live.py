"""The Lesson aggregate: the one owner of a lesson's live state on this node.

Its connections, its SFU Router, its interactive state (stage, hard mute, hands, chat, attendance, lock and
removals: `LessonInteraction`), the classrooms it has seen, its recording policy and recorder, and the reception
sampling for attendance. Stage and mute are decided here and pushed to the Router (`apply`), which forwards
accordingly; nothing else tells the Router who is on stage or muted. The node-wide parts (the room store,
placement, heartbeats) are the Hub's, which keeps a registry of these.

Decisions (`hand`, `stage`, `mute`, `remove`, `lock`, `chat_mode`, `chat`, `delete_chat`) change the state and
return an Outcome, and raise InteractionError for a refusal; `apply` carries the Outcome out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from recorder.record.handoff import Catalog
from recorder.record.recorder import LessonRecorder
from sfu.producer import Producer
from sfu.router import Router
from signaling import metrics
from signaling.config import Config
from signaling.connection import Connection
from signaling.lesson.interaction import InteractionError, LessonInteraction
from signaling.lesson.outcome import (
    Event,
    Outcome,
    public_participant,
    public_track,
    sees,
)
from signaling.state import Admission, Participant, TrackInfo
from signaling.state import Lesson as StoredLesson

log = logging.getLogger("ketang.signaling")

ERR_NOT_FOUND = "not_found"

TrackListener = Callable[[str, str, Producer], Awaitable[None]]


class Lesson:
    """One lesson on this node. What lasts while nobody is connected (the interactive state, the classrooms seen,
    the recording choice) stays until the lesson ends; the rest goes with its last connection (`vacate`)."""

    def __init__(self, lesson_id: str, config: Config, catalog: Catalog | None = None, *,
                 on_track: TrackListener | None = None, on_admission: Callable[[], None] | None = None,
                 on_recorded: Callable[[str], None] | None = None) -> None:
        self.id = lesson_id
        self.config = config
        self.catalog = catalog  # the resource library; None: not recorded
        self.router: Router | None = None
        self.connections: dict[str, Connection] = {}  # participant -> its connection here
        self.seen: set[str] = set()  # classrooms that have been in it (a locked lesson's own)
        # what this node knows of the lesson while it carries it, written back when the room store lost it
        self.stored: StoredLesson | None = None
        self.participants: dict[str, Participant] = {}
        self.tracks: dict[str, TrackInfo] = {}
        self.admission_loaded = False  # its lock, removals and seen classrooms were read from the store here
        self.recording_enabled = True  # the teacher's choice (on by default)
        self.recorder: LessonRecorder | None = None
        self.finishing: list[asyncio.Task[None]] = []  # library writes finishing the recording just stopped
        self.recorded: dict[str, Any] | None = None  # a finished recording's summary, for the lesson's record
        # every recorded file of the lesson on the wall clock (LessonRecorder.timeline), across recorders (the
        # lesson can be vacated and carried on): the record keeps it for the composite 课例 (recorder/compose/)
        self.recorded_files: list[dict[str, Any]] = []
        self._on_recorded = on_recorded  # the lesson ended with files recorded (its id): compose them
        self._octets: dict[str, tuple[int, float]] = {}  # classroom -> (octets sent to it, when), for kbps
        self._interaction: LessonInteraction | None = None
        self._on_track = on_track
        self._on_admission = on_admission

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def interaction(self) -> LessonInteraction:
        """Hands, stage, mute, chat, attendance, lock and removals (made on first use, and after the lesson ended)."""
        if self._interaction is None:
            self._interaction = LessonInteraction(stage_max=self.config.stage_max)
            self._interaction.on_admission = self._on_admission
        return self._interaction

    @property
    def has_interaction(self) -> bool:
        return self._interaction is not None

    def classrooms(self) -> dict[str, Connection]:
        """The classrooms connected to this lesson here."""
        return {pid: c for pid, c in self.connections.items() if c.role == "classroom"}

    def classroom_name(self, participant: str) -> str | None:
        """The name of a classroom of this lesson (connected now, or one that has been in it); None: no such."""
        conn = self.classrooms().get(participant)
        if conn is not None and conn.claims is not None:
            return conn.claims.name
        if participant in self.seen:
            return participant
        return None

    def load_admission(self, admission: Admission) -> None:
        """The lock, removals and seen classrooms kept in the room store (they outlive the node that set them)."""
        inter = self.interaction
        inter.locked = admission.locked
        inter.removed |= admission.removed
        self.seen |= admission.seen
        self.admission_loaded = True

    def admit(self, participant: str, role: str) -> tuple[str | None, bool]:
        """(refusal, first time): the protocol's error code when this participant may not join (a removed
        classroom, or one new to a locked lesson), and whether it is a classroom the lesson has not seen yet."""
        if role != "classroom":
            return None, False
        known = participant in self.seen
        return self.interaction.may_join(participant, known), not known

    def welcome(self, stored: StoredLesson, participant: Participant, everyone: list[Participant],
                tracks: list[TrackInfo], now: float) -> dict[str, Any]:
        """A participant joined (its connection registered): what its `joined` reply carries. A classroom's
        attendance opens."""
        inter, role = self.interaction, participant.role
        participants = [public_participant(p) for p in everyone
                        if p.role != "observer" and sees(role, p.role, p.id == participant.id)]
        classrooms = {p.id for p in everyone if p.role == "classroom"}
        on_stage = {s["id"] for s in inter.stage.on()}
        # a classroom hears of the teacher's tracks and of those on stage, not of every classroom's camera
        visible_tracks = [public_track(t) for t in tracks
                          if role != "classroom" or t.participant_id not in classrooms
                          or t.participant_id in on_stage or t.participant_id == participant.id]
        state: dict[str, Any] = {"participant": {"id": participant.id, "role": role, "name": participant.name},
                                 "lesson": stored.to_dict(),
                                 "participants": participants, "tracks": visible_tracks,
                                 "settings": inter.settings_dict(), "stage": inter.stage.on(),
                                 "chat": inter.chat.recent()}
        if role == "classroom":
            inter.attendance.joined(participant.id, participant.name, now)
            state["state"] = inter.state_of(participant.id)
        else:
            state["hands"] = inter.hands.queue()
            # a reloaded teacher page finds every classroom's hand, stage and mute as they are
            state["classrooms"] = [inter.state_of(pid) for pid in sorted(classrooms)]
        return state

    def attendance(self, now: float) -> dict[str, Any]:
        """Each classroom's attendance and reception so far, and the stage timeline."""
        inter = self.interaction
        return {"lesson": self.id, "classrooms": inter.attendance.rows(now, inter.hands, inter.stage),
                "stage_timeline": inter.stage.timeline()}

    def attendance_csv(self, now: float) -> str:
        inter = self.interaction
        return inter.attendance.to_csv(now, inter.hands, inter.stage)

    # -- media -------------------------------------------------------------------------------------------------

    def media(self) -> Router:
        """The lesson's SFU Router, made on first use; a Router made again (everyone had left) is told the stage
        and mutes as they are."""
        if self.router is None:
            router = Router(self.id, list(self.config.ice_servers), self.config.teacher_uplink_kbps * 1000 or None,
                            self.config.classroom_uplink_kbps * 1000 or None)
            if self._interaction is not None:
                router.stage = [s["id"] for s in self._interaction.stage.on()]
                router.muted = set(self._interaction.muted)
            on_track = self._on_track
            if on_track is not None:
                router.on_track(lambda change, producer: on_track(self.id, change, producer))
            router.on_demand(lambda classroom, video, audio: self.send_to(
                classroom, {"type": "event", "event": "demand", "video": video, "audio": audio}))
            self.router = router
        return self.router

    def drop_router(self) -> Router | None:
        """The Router, no longer this lesson's (the caller closes it)."""
        metrics.router_leaving(self.router)
        router, self.router = self.router, None
        return router

    # -- sending -----------------------------------------------------------------------------------------------

    def send_to(self, participant_id: str, message: dict[str, Any]) -> None:
        conn = self.connections.get(participant_id)
        if conn is not None:
            conn.send(message)

    def broadcast(self, message: dict[str, Any], exclude: Connection | None = None, about: str | None = None) -> None:
        """Send one message to the lesson's connections, encoded once. With `about` (the role a participant event
        concerns), only those who see that role get it: 400 classrooms joining must not cost 400² messages."""
        text = json.dumps(message, ensure_ascii=False)
        for conn in list(self.connections.values()):
            if conn is not exclude and (about is None or sees(conn.role, about)):
                conn.send_text(text)

    def apply(self, outcome: Outcome) -> None:
        """Carry a decision out: the SFU forwards the new mutes and stage, the recorder learns the names on stage,
        the events go out."""
        if outcome.changes_media:
            router = self.media()
            for pid, muted in outcome.muted.items():
                router.set_muted(pid, muted)
            if outcome.stage is not None:
                if self.recorder is not None:
                    self.recorder.stage_names.update({s["id"]: s["name"] for s in outcome.stage})
                router.set_stage([s["id"] for s in outcome.stage])
        for event in outcome.events:
            if event.to is not None:
                self.send_to(event.to, event.message)
            else:
                self.broadcast(event.message, about=event.about)

    # -- decisions ---------------------------------------------------------------------------------------------

    def _hands_event(self) -> Event:
        """The hand queue, in order, to the teacher and observers."""
        return Event({"type": "event", "event": "hands", "queue": self.interaction.hands.queue()}, about="classroom")

    def _state_events(self, participant: str) -> list[Event]:
        """A classroom's hand, stage and mute now: to itself, the teacher and observers."""
        message = {"type": "event", "event": "classroom-state", **self.interaction.state_of(participant)}
        return [Event(message, to=participant), Event(message, about="classroom")]

    def _stage_event(self) -> Event:
        return Event({"type": "event", "event": "stage", "participants": self.interaction.stage.on()})

    def hand(self, participant: str, name: str, up: bool, now: float) -> Outcome:
        """A classroom raises or lowers its hand; on stage already, raising asks nothing (and changes nothing)."""
        inter = self.interaction
        if up and inter.stage.is_on(participant):
            return Outcome(reply={"up": False, "position": None})
        position = inter.hands.raise_hand(participant, name, now) if up else None
        if not up:
            inter.hands.lower(participant)
        return Outcome(reply={"up": position is not None, "position": position},
                       events=[self._hands_event(), *self._state_events(participant)])

    def stage(self, participant: str, name: str, on: bool, now: float) -> Outcome:
        """The teacher puts a classroom on stage (its hand goes down, its hard mute is lifted) or takes it off
        (its mute stays as it was). Raises StageFull."""
        inter = self.interaction
        unmuted: dict[str, bool] = {}
        if on:
            was_muted = inter.is_muted(participant)
            inter.put_on_stage(participant, name, now)
            if was_muted and not inter.is_muted(participant):
                unmuted[participant] = False
        else:
            inter.take_off_stage(participant, now)
        on_stage = inter.stage.on()
        return Outcome(reply={"participants": on_stage}, muted=unmuted, stage=on_stage,
                       events=[self._stage_event(), self._hands_event(), *self._state_events(participant)])

    def mute(self, target: str | None, muted: bool) -> Outcome:
        """Hard mute (enforced in the SFU) of one classroom, or (target None) of every classroom connected here;
        unmuting all lifts every mute."""
        inter = self.interaction
        if target is not None:
            changed = [target] if (inter.mute(target) if muted else inter.unmute(target)) else []
        elif muted:
            changed = inter.mute_all(self.classrooms())
        else:
            changed = inter.unmute_all()
        return Outcome(reply={"participants": changed, "muted": muted}, muted={pid: muted for pid in changed},
                       events=[e for pid in changed for e in self._state_events(pid)])

    def remove(self, participant: str, now: float) -> Outcome:
        """The teacher removes a classroom: off stage, out of the hand queue, never again in this lesson (its
        connection is closed by the caller)."""
        inter = self.interaction
        was_on = inter.stage.is_on(participant)
        inter.remove(participant, now)
        outcome = Outcome(reply={"participant": participant})
        if was_on:
            outcome.stage = inter.stage.on()
            outcome.events.append(self._stage_event())
        outcome.events.append(self._hands_event())
        return outcome

    def _settings(self) -> Outcome:
        settings = self.interaction.settings_dict()
        return Outcome(reply={"settings": settings},
                       events=[Event({"type": "event", "event": "settings", "settings": settings})])

    def lock(self, locked: bool) -> Outcome:
        """Locked: only classrooms the lesson has seen may join."""
        self.interaction.locked = locked
        return self._settings()

    def chat_mode(self, classrooms: bool) -> Outcome:
        """Whether the classrooms may write in the chat."""
        self.interaction.chat_classrooms = classrooms
        return self._settings()

    def chat(self, participant: str, name: str, role: str, text: str, now: float) -> Outcome:
        """A chat message to everyone; raises ChatRejected (rate_limited, chat_off, bad_message)."""
        message = self.interaction.write_chat(participant, name, role, text, now)
        return Outcome(reply={"message": message},
                       events=[Event({"type": "event", "event": "chat", "message": message})])

    def delete_chat(self, message_id: str, by: str, now: float) -> Outcome:
        """The teacher deletes a chat message; InteractionError(not_found) when unknown or deleted already."""
        if not self.interaction.chat.delete(message_id, by, now):
            raise InteractionError(ERR_NOT_FOUND, f"no chat message {message_id[:32]!r}")
        return Outcome(reply={"message": message_id},
                       events=[Event({"type": "event", "event": "chat-deleted", "message": message_id})])

    # -- recording ---------------------------------------------------------------------------------------------

    def start_recording(self, stored: StoredLesson, producer: Producer) -> None:
        """Every lesson is recorded from its first track (unless switched off), without transcoding."""
        if self.catalog is None or self.recorder is not None or self.router is None or not self.recording_enabled:
            return
        try:
            self.recorder = LessonRecorder(self.router, self.catalog, stored.title, stored.teacher, producer.owner)
        except Exception:  # noqa: BLE001 - a recorder failure must not stop the lesson itself
            log.exception("could not start recording lesson %s", self.id)

    def set_recording(self, enabled: bool) -> None:
        """The teacher's per-lesson choice (on by default); switching off mid-lesson closes the recording."""
        self.recording_enabled = enabled
        if not enabled:
            self.stop_recording()

    def stop_recording(self) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return
        try:
            recorder.close()
            self.finishing = recorder.finishing
            self.recorded_files.extend(recorder.timeline())
            main = recorder.stats()["main"]
            if main is not None:  # for the lesson's record: how the camera's recording followed its layers
                video = next((t for t in main["tracks"] if t["kind"] == "video"), {})
                self.recorded = {"duration_s": main["duration_s"], "layer_switches": main["layer_switches"],
                                 "layer_timeline": video.get("layer_timeline", [])}
        except Exception:  # noqa: BLE001
            log.exception("could not finish the recording of lesson %s", self.id)

    async def recorded_in_library(self, timeout_s: float = 5.0) -> None:
        """Wait (a little) until the library has finished the items of the recording just stopped: a teacher who
        opens the library after 课程已结束 finds them with their duration."""
        finishing, self.finishing = self.finishing, []
        if finishing:
            await asyncio.wait(finishing, timeout=timeout_s)

    def save_record(self) -> None:
        """Attendance, chat and the stage timeline, kept with the lesson's library entry."""
        inter = self._interaction
        if inter is None or self.catalog is None:
            return
        try:
            now = time.time()
            record = inter.record(now)
            recording, self.recorded = self.recorded, None
            if recording is not None or self.recorded_files:
                record["recording"] = {**(recording or {}), "files": list(self.recorded_files)}
            self.catalog.save_lesson_record(self.id, record, inter.attendance.to_csv(now, inter.hands, inter.stage),
                                            inter.chat.transcript_csv())
        except Exception:  # noqa: BLE001 - the record is an extra; the lesson's end must go on
            log.exception("could not save the record of lesson %s", self.id)

    # -- lifetime ----------------------------------------------------------------------------------------------

    def vacate(self) -> Router | None:
        """Nobody is connected here any more: the recording ends, the record is kept, and what this node knew of
        the lesson goes (the next node to carry it reads the store). Returns the Router, for the caller to close."""
        self.stop_recording()
        self.save_record()
        self.stored = None
        self.tracks.clear()
        self.admission_loaded = False
        self._octets.clear()
        return self.drop_router()

    def finish(self) -> None:
        """The teacher ended the lesson: the recording ends, the record is kept in the library, and a teacher who
        starts the ended lesson again starts a fresh one (hands, stage, chat, attendance, lock, seen)."""
        self.stop_recording()
        self.save_record()
        files, self.recorded_files = self.recorded_files, []
        if files and self._on_recorded is not None and self.catalog is not None:
            try:
                self._on_recorded(self.id)
            except Exception:  # noqa: BLE001 - composing is an extra; the lesson's end must go on
                log.exception("could not queue the composite of lesson %s", self.id)
        self._interaction = None
        self.seen = set()

    # -- attendance sampling -----------------------------------------------------------------------------------

    def left(self, participant: str, now: float) -> None:
        """A classroom's connection left: its attendance closes (its hand stays up for when it is back). After the
        lesson ended there is nothing to close: a fresh interaction made here would be saved over the ended
        lesson's record when the last one leaves (vacate)."""
        if self._interaction is not None:
            self._interaction.attendance.left(participant, now)
        self._octets.pop(participant, None)

    def sample(self, now: float) -> None:
        """Each connected classroom's reception now (loss, round-trip time, bitrate, video), for attendance."""
        router, inter = self.router, self._interaction
        if router is None or inter is None:
            return
        for pid in self.classrooms():
            sub = router.subscribers.get(pid)
            consumers = sub.consumers() if sub is not None else []
            if not consumers:
                inter.attendance.sample(pid, now)
                continue
            octets = sum(c.octets_out for c in consumers)
            before = self._octets.get(pid)
            self._octets[pid] = (octets, now)
            kbps = None
            if before is not None and now > before[1] and octets >= before[0]:
                kbps = (octets - before[0]) * 8 / 1000 / (now - before[1])
            rtts = [r for r in (c.rtt_ms() for c in consumers) if r is not None]
            inter.attendance.sample(pid, now, loss=max(c.fraction_lost for c in consumers) / 256,
                                    rtt_ms=sum(rtts) / len(rtts) if rtts else None, kbps=kbps,
                                    video=sub.video and (sub.ladder is None or sub.ladder.video) if sub else None)

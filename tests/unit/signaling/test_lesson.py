"""The Lesson aggregate's decisions as tables: the state before, the request, and the Outcome (reply, events,
mutes and stage for the SFU), without sockets; then `apply` carrying an Outcome out to connections and Router."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from signaling.config import Config
from signaling.lesson.interaction import ChatRejected, InteractionError, StageFull
from signaling.lesson.live import Lesson
from signaling.lesson.outcome import Event, Outcome, sees
from signaling.state import Admission, Participant, TrackInfo
from signaling.state import Lesson as StoredLesson
from signaling.tokens import Claims

T0 = 1_700_000_000.0


class _Conn:
    """What the Lesson reads of a connection; what it is sent is kept (decoded)."""

    def __init__(self, pid: str, role: str) -> None:
        now = int(time.time())
        self.claims = Claims(role=role, lesson="l1", name=f"name-{pid}", sub=pid, iat=now, exp=now + 600)
        self.participant_id = pid
        self.role = role
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))


def _lesson(*classrooms: str, stage_max: int = 2) -> Lesson:
    lesson = Lesson("l1", Config(stage_max=stage_max))
    lesson.connections["teacher"] = _Conn("teacher", "teacher")  # type: ignore[assignment]
    for pid in classrooms:
        lesson.connections[pid] = _Conn(pid, "classroom")  # type: ignore[assignment]
    return lesson


def _kinds(outcome: Outcome) -> list[tuple[str, str | None, str | None]]:
    """(event, about, to) of each event, in order."""
    return [(e.message["event"], e.about, e.to) for e in outcome.events]


STATE = [("classroom-state", None, "c1"), ("classroom-state", "classroom", None)]


# -- hand ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("on_stage, up, reply, events", [
    (False, True, {"up": True, "position": 1}, [("hands", "classroom", None), *STATE]),
    (False, False, {"up": False, "position": None}, [("hands", "classroom", None), *STATE]),
    (True, True, {"up": False, "position": None}, []),  # on stage already: nothing to ask, nothing told
    (True, False, {"up": False, "position": None}, [("hands", "classroom", None), *STATE]),
])
def test_hand(on_stage: bool, up: bool, reply: dict, events: list) -> None:
    lesson = _lesson("c1")
    if on_stage:
        lesson.interaction.put_on_stage("c1", "C1", T0)
    outcome = lesson.hand("c1", "C1", up, T0 + 1)
    assert outcome.reply == reply
    assert _kinds(outcome) == events
    assert not outcome.changes_media
    assert lesson.interaction.hands.is_up("c1") is (up and not on_stage)


def test_a_second_hand_is_second_in_the_queue_and_the_event_carries_the_queue() -> None:
    lesson = _lesson("c1", "c2")
    lesson.hand("c1", "C1", True, T0)
    outcome = lesson.hand("c2", "C2", True, T0 + 1)
    assert outcome.reply == {"up": True, "position": 2}
    assert [h["participant"] for h in outcome.events[0].message["queue"]] == ["c1", "c2"]
    assert outcome.events[1].message == {"type": "event", "event": "classroom-state", "participant": "c2",
                                         "hand": True, "position": 2, "stage": False, "muted": False}


# -- stage -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("muted, hand, on, unmuted, still_muted", [
    (False, False, True, {}, False),
    (True, False, True, {"c1": False}, False),  # put on stage: its hard mute is lifted (the SFU told)
    (False, True, True, {}, False),  # put on stage: its hand goes down
    (True, False, False, {}, True),  # taken off (it was not on): its mute stays
])
def test_stage(muted: bool, hand: bool, on: bool, unmuted: dict, still_muted: bool) -> None:
    lesson = _lesson("c1")
    if muted:
        lesson.interaction.mute("c1")
    if hand:
        lesson.interaction.hands.raise_hand("c1", "C1", T0)
    outcome = lesson.stage("c1", "C1", on, T0 + 1)
    on_stage = [{"id": "c1", "name": "C1"}] if on else []
    assert outcome.reply == {"participants": on_stage}
    assert outcome.stage == on_stage  # the SFU is told the stage every time
    assert outcome.muted == unmuted
    assert _kinds(outcome) == [("stage", None, None), ("hands", "classroom", None), *STATE]
    assert outcome.events[0].message["participants"] == on_stage
    assert lesson.interaction.is_muted("c1") is still_muted
    assert not lesson.interaction.hands.is_up("c1")


def test_taking_off_stage_keeps_a_mute_set_while_on_and_tells_the_remaining_stage() -> None:
    lesson = _lesson("c1", "c2")
    lesson.stage("c1", "C1", True, T0)
    lesson.stage("c2", "C2", True, T0)
    lesson.mute("c1", True)
    outcome = lesson.stage("c1", "C1", False, T0 + 5)
    assert outcome.stage == [{"id": "c2", "name": "C2"}]
    assert outcome.muted == {}
    assert lesson.interaction.is_muted("c1")


def test_a_full_stage_refuses_and_changes_nothing() -> None:
    lesson = _lesson("c1", "c2", stage_max=1)
    lesson.interaction.mute("c2")
    lesson.stage("c1", "C1", True, T0)
    with pytest.raises(StageFull) as refused:
        lesson.stage("c2", "C2", True, T0 + 1)
    assert refused.value.code == "stage_full"
    assert lesson.interaction.stage.on() == [{"id": "c1", "name": "C1"}]
    assert lesson.interaction.is_muted("c2")


# -- mute ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("before, target, muted, changed", [
    (set(), "c1", True, ["c1"]),
    ({"c1"}, "c1", True, []),  # muted already: nothing changes, nobody told
    ({"c1"}, "c1", False, ["c1"]),
    (set(), "c1", False, []),
    ({"c2"}, None, True, ["c1", "c3"]),  # all connected classrooms, those not muted yet, in their order
    ({"c3", "c1"}, None, False, ["c1", "c3"]),  # every mute lifted (sorted)
    (set(), None, False, []),
])
def test_mute(before: set, target: str | None, muted: bool, changed: list) -> None:
    lesson = _lesson("c1", "c2", "c3")
    for pid in before:
        lesson.interaction.mute(pid)
    outcome = lesson.mute(target, muted)
    assert outcome.reply == {"participants": changed, "muted": muted}
    assert outcome.muted == {pid: muted for pid in changed}
    assert outcome.stage is None
    assert outcome.changes_media is bool(changed)
    assert [(e.message["participant"], e.to, e.about) for e in outcome.events] == \
        [x for pid in changed for x in ((pid, pid, None), (pid, None, "classroom"))]
    assert all(e.message["muted"] is muted for e in outcome.events)


def test_mute_all_reaches_only_classrooms_connected_here() -> None:
    lesson = _lesson("c1")
    lesson.seen.add("gone")
    assert lesson.mute(None, True).reply["participants"] == ["c1"]


# -- remove, lock, chat mode -----------------------------------------------------------------------------------

@pytest.mark.parametrize("on_stage, stage, events", [
    (True, [{"id": "c2", "name": "C2"}], [("stage", None, None), ("hands", "classroom", None)]),
    (False, None, [("hands", "classroom", None)]),
])
def test_remove(on_stage: bool, stage: list | None, events: list) -> None:
    lesson = _lesson("c1", "c2")
    lesson.stage("c2", "C2", True, T0)
    if on_stage:
        lesson.stage("c1", "C1", True, T0)
    lesson.hand("c1", "C1", True, T0)
    outcome = lesson.remove("c1", T0 + 1)
    assert outcome.reply == {"participant": "c1"}
    assert outcome.stage == stage
    assert _kinds(outcome) == events
    assert lesson.interaction.may_join("c1", known=True) == "removed"
    assert not lesson.interaction.hands.is_up("c1")


@pytest.mark.parametrize("decide, settings", [
    (lambda lesson: lesson.lock(True), {"locked": True, "chat_classrooms": True}),
    (lambda lesson: lesson.lock(False), {"locked": False, "chat_classrooms": True}),
    (lambda lesson: lesson.chat_mode(False), {"locked": False, "chat_classrooms": False}),
])
def test_settings(decide: Any, settings: dict) -> None:
    lesson = _lesson("c1")
    outcome = decide(lesson)
    assert outcome.reply == {"settings": settings}
    assert [e.message for e in outcome.events] == [{"type": "event", "event": "settings", "settings": settings}]
    assert lesson.interaction.settings_dict() == settings


def test_the_lock_is_written_to_the_store_through_the_admission_callback() -> None:
    written: list[bool] = []
    lesson = Lesson("l1", Config(), on_admission=lambda: written.append(lesson.interaction.locked))
    lesson.lock(True)
    lesson.lock(True)  # no change: nothing to write
    lesson.remove("c9", T0)
    assert written == [True, True]


# -- chat ------------------------------------------------------------------------------------------------------

def test_chat_and_delete() -> None:
    lesson = _lesson("c1")
    outcome = lesson.chat("c1", "C1", "classroom", "  hello\t", T0)
    message = outcome.reply["message"]
    assert message["text"] == "hello" and message["id"] == "m1"
    assert [e.message for e in outcome.events] == [{"type": "event", "event": "chat", "message": message}]
    deleted = lesson.delete_chat("m1", "teacher", T0 + 1)
    assert deleted.reply == {"message": "m1"}
    assert [e.message["event"] for e in deleted.events] == ["chat-deleted"]
    with pytest.raises(InteractionError) as again:
        lesson.delete_chat("m1", "teacher", T0 + 2)
    assert again.value.code == "not_found"


@pytest.mark.parametrize("role, chat_classrooms, code", [
    ("classroom", False, "chat_off"),
    ("teacher", False, None),
    ("classroom", True, None),
])
def test_chat_mode_decides_who_writes(role: str, chat_classrooms: bool, code: str | None) -> None:
    lesson = _lesson("c1")
    lesson.chat_mode(chat_classrooms)
    if code is None:
        assert lesson.chat("c1", "C1", role, "hi", T0).reply["message"]["text"] == "hi"
    else:
        with pytest.raises(ChatRejected) as refused:
            lesson.chat("c1", "C1", role, "hi", T0)
        assert refused.value.code == code


# -- classroom names, lifetime ---------------------------------------------------------------------------------

def test_classroom_name_of_connected_seen_and_unknown() -> None:
    lesson = _lesson("c1")
    lesson.seen.add("earlier")
    assert lesson.classroom_name("c1") == "name-c1"
    assert lesson.classroom_name("earlier") == "earlier"
    assert lesson.classroom_name("teacher") is None  # not a classroom
    assert lesson.classroom_name("nobody") is None


def test_finish_starts_the_interactive_state_afresh_and_vacate_keeps_it() -> None:
    lesson = _lesson("c1")
    lesson.stage("c1", "C1", True, T0)
    lesson.seen.add("c1")
    lesson.tracks["t"] = object()  # type: ignore[assignment]
    lesson.admission_loaded = True
    assert lesson.vacate() is None  # (no router)
    assert lesson.interaction.stage.is_on("c1") and lesson.seen == {"c1"}
    assert not lesson.tracks and not lesson.admission_loaded
    lesson.finish()
    assert not lesson.has_interaction and lesson.seen == set()
    assert lesson.interaction.stage.on() == []


# -- apply -----------------------------------------------------------------------------------------------------

def test_sees() -> None:
    assert sees("teacher", "classroom") and sees("observer", "classroom") and sees("classroom", "teacher")
    assert not sees("classroom", "classroom") and sees("classroom", "classroom", itself=True)


async def test_apply_tells_the_router_and_sends_each_event_to_whom_it_is_for() -> None:
    lesson = _lesson("c1", "c2")
    observer = lesson.connections["obs"] = _Conn("obs", "observer")  # type: ignore[assignment]
    teacher, c1, c2 = (lesson.connections[p] for p in ("teacher", "c1", "c2"))
    router = lesson.media()
    try:
        lesson.apply(lesson.mute("c1", True))
        assert router.muted == {"c1"}
        outcome = lesson.stage("c1", "C1", True, T0)
        lesson.apply(outcome)
        assert router.stage == ["c1"] and router.muted == set()
        staged = [m["event"] for m in c1.sent]  # type: ignore[attr-defined]
        assert staged == ["classroom-state", "stage", "classroom-state"]  # its own state: to it, twice (mute, stage)
        assert [m["event"] for m in c2.sent] == ["stage"]  # type: ignore[attr-defined]
        for conn in (teacher, observer):
            assert [m["event"] for m in conn.sent] == ["classroom-state", "stage", "hands", "classroom-state"]
        lesson.apply(Outcome(events=[Event({"event": "x"}, to="nobody")]))  # someone not here: nothing
        assert len(c2.sent) == 1  # type: ignore[attr-defined]
    finally:
        await router.close()


async def test_a_router_made_again_is_told_the_stage_and_mutes_as_they_are() -> None:
    lesson = _lesson("c1", "c2")
    lesson.stage("c1", "C1", True, T0)
    lesson.mute("c2", True)
    router = lesson.media()
    try:
        assert router.stage == ["c1"] and router.muted == {"c2"}
        assert lesson.media() is router
        assert lesson.drop_router() is router and lesson.router is None
    finally:
        await router.close()


# -- admission and the `joined` reply -----------------------------------------------------------------------------

@pytest.mark.parametrize("locked, removed, seen, pid, role, expected", [
    (False, set(), set(), "c1", "classroom", (None, True)),
    (False, set(), {"c1"}, "c1", "classroom", (None, False)),
    (True, set(), set(), "c1", "classroom", ("lesson_locked", True)),
    (True, set(), {"c1"}, "c1", "classroom", (None, False)),
    (False, {"c1"}, {"c1"}, "c1", "classroom", ("removed", False)),
    (True, set(), set(), "t", "teacher", (None, False)),  # the lock and removals are for classrooms
    (True, set(), set(), "o", "observer", (None, False)),
])
def test_admit(locked: bool, removed: set, seen: set, pid: str, role: str, expected: tuple) -> None:
    lesson = Lesson("l1", Config())
    lesson.load_admission(Admission(locked=locked, removed=set(removed), seen=set(seen)))
    assert lesson.admission_loaded
    assert lesson.admit(pid, role) == expected


def _participant(pid: str, role: str) -> Participant:
    return Participant(id=pid, lesson_id="l1", role=role, name=pid.upper(), joined_at=T0, last_seen=T0,
                       node="n", expires_at=0.0)


def _track(tid: str, owner: str) -> TrackInfo:
    return TrackInfo(id=tid, lesson_id="l1", participant_id=owner, kind="video", source="camera", published_at=T0)


@pytest.mark.parametrize("who, participants, tracks, extra", [
    # a classroom sees the teacher and itself, the teacher's tracks, its own and those on stage
    ("c1", ["t", "c1"], ["t-cam", "c1-cam", "c2-cam"], {"state"}),
    # the teacher sees everyone but observers, every track, the hands and every classroom's state
    ("t", ["t", "c1", "c2", "c3"], ["t-cam", "c1-cam", "c2-cam", "c3-cam"], {"hands", "classrooms"}),
    ("o", ["t", "c1", "c2", "c3"], ["t-cam", "c1-cam", "c2-cam", "c3-cam"], {"hands", "classrooms"}),
])
def test_welcome(who: str, participants: list, tracks: list, extra: set) -> None:
    lesson = _lesson("c1", "c2")
    lesson.stage("c2", "C2", True, T0)
    everyone = [_participant("t", "teacher"), _participant("o", "observer"), _participant("c1", "classroom"),
                _participant("c2", "classroom"), _participant("c3", "classroom")]
    stored = StoredLesson(id="l1", title="Maths", teacher="T", state="live", created_at=T0)
    me = next(p for p in everyone if p.id == who)
    state = lesson.welcome(stored, me, everyone, [_track(f"{o}-cam", o) for o in ("t", "c1", "c2", "c3")], T0)
    assert [p["id"] for p in state["participants"]] == participants
    assert [t["id"] for t in state["tracks"]] == tracks
    assert state["lesson"] == stored.to_dict() and state["stage"] == [{"id": "c2", "name": "C2"}]
    assert set(state) == {"participant", "lesson", "participants", "tracks", "settings", "stage", "chat"} | extra
    assert lesson.interaction.attendance.is_present(who) is (who == "c1")
    if "classrooms" in extra:
        assert [c["participant"] for c in state["classrooms"]] == ["c1", "c2", "c3"]


def test_attendance_views() -> None:
    lesson = _lesson("c1")
    lesson.interaction.attendance.joined("c1", "C1", T0)
    view = lesson.attendance(T0 + 60)
    assert view["lesson"] == "l1" and [r["participant"] for r in view["classrooms"]] == ["c1"]
    assert view["classrooms"][0]["present_s"] == 60.0 and view["stage_timeline"] == []
    assert lesson.attendance_csv(T0 + 60).splitlines()[1].startswith("c1,C1,")

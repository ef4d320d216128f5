"""The interactive classroom's lesson state (hands, stage, chat, attendance, moderation), clock injected."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from datetime import datetime, timedelta, timezone

import pytest

from signaling.lesson.interaction import (
    CHAT_MAX_CHARS,
    CSV_HEADER,
    DEFAULT_STAGE_MAX,
    Attendance,
    ChatLog,
    ChatRejected,
    HandQueue,
    LessonInteraction,
    Stage,
    StageFull,
    clean_chat_text,
)

T0 = 1_700_000_000.0
UTC8 = timezone(timedelta(hours=8))  # the CSV's "local" zone, fixed so the tests do not depend on the machine's


# -- hands --------------------------------------------------------------------------------------------------


def test_hands_queue_in_the_order_raised():
    q = HandQueue()
    assert q.raise_hand("c1", "一小", T0) == 1
    assert q.raise_hand("c2", "二小", T0 + 1) == 2
    assert q.raise_hand("c3", "三小", T0 + 2) == 3
    assert q.queue() == [
        {"participant": "c1", "name": "一小", "raised_at": T0},
        {"participant": "c2", "name": "二小", "raised_at": T0 + 1},
        {"participant": "c3", "name": "三小", "raised_at": T0 + 2},
    ]
    assert q.lower("c1") is True
    assert q.position("c2") == 1 and q.position("c3") == 2 and q.position("c1") is None
    assert q.lower("c1") is False
    assert q.lower("nobody") is False


def test_raising_twice_keeps_the_first_place_and_counts_once():
    q = HandQueue()
    q.raise_hand("c1", "一小", T0)
    q.raise_hand("c2", "二小", T0 + 1)
    assert q.raise_hand("c1", "一小", T0 + 5) == 1
    assert q.queue()[0]["raised_at"] == T0
    assert q.raises("c1") == 1
    # down and up again: a new raise, at the back of the queue
    q.lower("c1")
    assert q.raise_hand("c1", "一小", T0 + 9) == 2
    assert q.raises("c1") == 2
    assert q.raises("c2") == 1 and q.raises("never") == 0


def test_forget_drops_from_the_queue_but_keeps_the_count():
    q = HandQueue()
    q.raise_hand("c1", "一小", T0)
    q.raise_hand("c2", "二小", T0 + 1)
    q.forget("c1")
    assert [h["participant"] for h in q.queue()] == ["c2"]
    assert q.position("c1") is None and q.is_up("c1") is False
    assert q.raises("c1") == 1
    q.forget("never")  # harmless
    assert len(q) == 1


# -- stage --------------------------------------------------------------------------------------------------


def test_stage_full_and_idempotent_put_on():
    s = Stage()
    assert s.max_on == DEFAULT_STAGE_MAX == 2
    assert s.put_on("c1", "一小", T0) is True
    assert s.put_on("c2", "二小", T0 + 1) is True
    assert s.put_on("c1", "一小", T0 + 2) is False  # already on: no error, no new turn
    with pytest.raises(StageFull) as err:
        s.put_on("c3", "三小", T0 + 3)
    assert err.value.code == "stage_full"
    assert s.on() == [{"id": "c1", "name": "一小"}, {"id": "c2", "name": "二小"}]
    assert s.take_off("c1", T0 + 4) is True
    assert s.take_off("c1", T0 + 5) is False
    s.put_on("c3", "三小", T0 + 6)
    assert s.on() == [{"id": "c2", "name": "二小"}, {"id": "c3", "name": "三小"}]


def test_stage_max_is_configurable():
    s = Stage(max_on=1)
    s.put_on("c1", "一小", T0)
    with pytest.raises(StageFull):
        s.put_on("c2", "二小", T0)
    with pytest.raises(ValueError):
        Stage(max_on=0)


def test_stage_timeline_and_seconds_on():
    s = Stage()
    s.put_on("c1", "一小", T0)
    s.take_off("c1", T0 + 30)
    s.put_on("c2", "二小", T0 + 40)
    s.put_on("c1", "一小", T0 + 100)
    assert s.timeline() == [
        {"participant": "c1", "name": "一小", "on_at": T0, "off_at": T0 + 30},
        {"participant": "c2", "name": "二小", "on_at": T0 + 40, "off_at": None},
        {"participant": "c1", "name": "一小", "on_at": T0 + 100, "off_at": None},
    ]
    assert s.seconds_on("c1", T0 + 110) == pytest.approx(40.0)  # 30 + 10 still on
    assert s.seconds_on("c2", T0 + 110) == pytest.approx(70.0)
    assert s.seconds_on("never", T0 + 110) == 0.0


# -- chat ---------------------------------------------------------------------------------------------------


def test_chat_add_returns_the_message_with_short_unique_ids():
    chat = ChatLog()
    m1 = chat.add("t", "李老师", "teacher", "同学们好", T0)
    m2 = chat.add("c1", "一小", "classroom", "老师好", T0 + 1)
    assert m1 == {"id": "m1", "participant": "t", "name": "李老师", "role": "teacher", "text": "同学们好",
                  "at": T0}
    assert m2["id"] == "m2" and m2["text"] == "老师好"
    assert chat.recent() == [m1, m2]


def test_chat_text_is_cleaned():
    assert clean_chat_text("  hi\x00 there\x07\x1b[31m  ") == "hi there[31m"
    assert clean_chat_text("line one\r\nline two\rthree") == "line one\nline two\nthree"
    assert clean_chat_text("a\tb") == "a b"
    assert clean_chat_text("a\n\n\n\n\nb") == "a\n\nb"  # at most one empty line
    assert clean_chat_text("abc\u202edcba\u2066x") == "abcdcbax"  # direction overrides
    assert clean_chat_text("bad \ud800 surrogate") == "bad  surrogate"
    assert clean_chat_text("\x85\x9f中文 ✓") == "中文 ✓"  # C1 controls
    chat = ChatLog()
    msg = chat.add("c1", "一小", "classroom", "\x01 x = 3 \x02\n", T0)
    assert msg["text"] == "x = 3"


def test_chat_rejects_empty_and_too_long():
    chat = ChatLog()
    for text in ("", "   ", "\x00\x01\n\t", 5):
        with pytest.raises(ChatRejected) as err:
            chat.add("c1", "一小", "classroom", text, T0)  # type: ignore[arg-type]
        assert err.value.code == "bad_message"
    assert chat.add("c1", "一小", "classroom", "字" * CHAT_MAX_CHARS, T0)["text"] == "字" * 500
    with pytest.raises(ChatRejected) as err:
        chat.add("c1", "一小", "classroom", "字" * 501, T0)
    assert err.value.code == "bad_message"
    # the limit applies to the cleaned text: padding and control characters do not count
    assert len(chat.add("c1", "一小", "classroom", "  " + "字" * 500 + "\x00" * 20, T0)["text"]) == 500
    assert [m["id"] for m in chat.recent()] == ["m1", "m2"]  # refused messages take no id


def test_chat_delete_hides_from_recent_but_keeps_in_transcript():
    chat = ChatLog()
    chat.add("c1", "一小", "classroom", "one", T0)
    chat.add("c2", "二小", "classroom", "two", T0 + 1)
    chat.add("t", "李老师", "teacher", "three", T0 + 2)
    assert chat.delete("m2", by="t", now=T0 + 10) is True
    assert chat.delete("m2", by="t", now=T0 + 11) is False
    assert chat.delete("m99", by="t", now=T0 + 11) is False
    assert [m["text"] for m in chat.recent()] == ["one", "three"]
    assert len(chat) == 2
    transcript = chat.transcript()
    assert [m["id"] for m in transcript] == ["m1", "m2", "m3"]
    assert transcript[1]["deleted_at"] == T0 + 10 and transcript[1]["deleted_by"] == "t"
    assert transcript[0]["deleted_at"] is None and transcript[0]["deleted_by"] is None
    assert chat.add("c1", "一小", "classroom", "four", T0 + 12)["id"] == "m4"  # ids are never reused


def test_chat_recent_is_the_last_n_visible():
    chat = ChatLog()
    for i in range(150):
        chat.add("c1", "一小", "classroom", f"msg {i}", T0 + i)
    chat.delete("m150", by="t", now=T0 + 200)
    recent = chat.recent()
    assert len(recent) == 100
    assert recent[0]["text"] == "msg 49" and recent[-1]["text"] == "msg 148"
    assert [m["text"] for m in chat.recent(2)] == ["msg 147", "msg 148"]
    assert chat.recent(0) == []


def test_classroom_chat_switch():
    chat = ChatLog()
    chat.classrooms_enabled = False
    with pytest.raises(ChatRejected) as err:
        chat.add("c1", "一小", "classroom", "hello", T0)
    assert err.value.code == "chat_off"
    assert chat.add("t", "李老师", "teacher", "安静", T0)["id"] == "m1"  # the teacher still writes
    chat.classrooms_enabled = True
    assert chat.add("c1", "一小", "classroom", "hello", T0 + 1)["id"] == "m2"


def test_transcript_csv_parses_back():
    chat = ChatLog()
    chat.add("c1", "一小", "classroom", 'he said "x, y"\nnext line', T0)
    chat.add("c2", "二小", "classroom", "=HYPERLINK(\"http://evil\")", T0 + 61)
    chat.delete("m2", by="t", now=T0 + 62)
    text = chat.transcript_csv(tz=UTC8)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["id", "at", "participant", "name", "role", "text", "deleted_at", "deleted_by"]
    assert len(rows) == 2
    assert rows[0]["text"] == 'he said "x, y"\nnext line'
    assert rows[0]["at"] == "2023-11-15 06:13:20"  # T0 in UTC+8
    assert rows[0]["deleted_at"] == "" and rows[0]["deleted_by"] == ""
    assert rows[1]["text"] == "'=HYPERLINK(\"http://evil\")"  # a spreadsheet shows it, does not run it
    assert rows[1]["deleted_at"] == "2023-11-15 06:14:22" and rows[1]["deleted_by"] == "t"


# -- attendance ---------------------------------------------------------------------------------------------


def test_attendance_separate_sessions():
    a = Attendance()
    a.joined("c1", "一小", T0)
    a.left("c1", T0 + 600)
    a.joined("c1", "一小", T0 + 660)
    (row,) = a.rows(T0 + 1000, HandQueue(), Stage())
    assert row["sessions"] == 2
    assert row["present_s"] == 600 + 340
    assert row["joined_at"] == T0 and row["left_at"] is None
    a.left("c1", T0 + 1200)
    (row,) = a.rows(T0 + 5000, HandQueue(), Stage())
    assert row["present_s"] == 600 + 540  # absent time does not count
    assert row["left_at"] == T0 + 1200


def test_attendance_overlapping_reconnect_does_not_double_count():
    a = Attendance()
    a.joined("c1", "一小", T0)
    a.joined("c1", "一小", T0 + 100)  # the new page's socket joins before the old one is closed
    assert a.left("c1", T0 + 101) is True  # the old one closes
    assert a.is_present("c1")
    (row,) = a.rows(T0 + 200, HandQueue(), Stage())
    assert row["sessions"] == 1 and row["present_s"] == 200 and row["left_at"] is None
    assert a.left("c1", T0 + 300) is True
    assert a.left("c1", T0 + 400) is False  # nothing open: ignored
    assert not a.is_present("c1")
    (row,) = a.rows(T0 + 500, HandQueue(), Stage())
    assert row["present_s"] == 300 and row["left_at"] == T0 + 300
    assert a.left("never", T0) is False


def test_attendance_averages_over_samples_with_a_value():
    a = Attendance()
    a.joined("c1", "一小", T0)
    a.joined("c2", "二小", T0 + 5)
    a.sample("c1", T0 + 2, loss=0.10, rtt_ms=100, kbps=400, video=True)
    a.sample("c1", T0 + 4, loss=0.00, rtt_ms=None, kbps=200, video=False)
    a.sample("c1", T0 + 6, loss=None, rtt_ms=300, kbps=None, video=True)
    a.sample("c1", T0 + 8, loss=0.05, rtt_ms=200, kbps=300, video=None)
    a.sample("c1", T0 + 10, loss=7.0, rtt_ms=float("nan"), kbps=None, video=True)  # clamped; NaN dropped
    a.sample("ghost", T0 + 10, loss=0.5)  # never joined: ignored
    rows = {r["participant"]: r for r in a.rows(T0 + 10, HandQueue(), Stage())}
    assert set(rows) == {"c1", "c2"}
    c1 = rows["c1"]
    assert c1["loss_avg"] == pytest.approx((0.10 + 0.0 + 0.05 + 1.0) / 4)
    assert c1["rtt_ms_avg"] == pytest.approx(200.0)
    assert c1["kbps_avg"] == pytest.approx(300.0)
    assert c1["video_share"] == pytest.approx(0.75)
    c2 = rows["c2"]
    assert c2["loss_avg"] is None and c2["rtt_ms_avg"] is None and c2["kbps_avg"] is None
    assert c2["video_share"] is None


def test_attendance_rows_take_hands_and_stage():
    lesson = LessonInteraction()
    lesson.attendance.joined("c1", "一小", T0)
    lesson.attendance.joined("c2", "二小", T0 + 1)
    lesson.hands.raise_hand("c1", "一小", T0 + 10)
    lesson.hands.lower("c1")
    lesson.hands.raise_hand("c1", "一小", T0 + 20)
    lesson.put_on_stage("c1", "一小", T0 + 30)
    lesson.take_off_stage("c1", T0 + 90)
    rows = lesson.attendance.rows(T0 + 100, lesson.hands, lesson.stage)
    assert [r["participant"] for r in rows] == ["c1", "c2"]  # the order they first joined
    assert rows[0]["hands"] == 2 and rows[0]["stage_s"] == 60.0
    assert rows[1]["hands"] == 0 and rows[1]["stage_s"] == 0.0
    assert set(rows[0]) == {"participant", "name", "joined_at", "left_at", "present_s", "sessions", "hands",
                            "stage_s", "loss_avg", "rtt_ms_avg", "kbps_avg", "video_share"}


def test_attendance_csv_parses_back():
    a = Attendance()
    hands, stage = HandQueue(), Stage()
    a.joined("c1", "第三小学", T0)
    a.joined("c2", "第五小学, 二班", T0 + 30)
    a.joined("c3", "-1 班", T0 + 60)
    for i in range(1, 301):  # ten minutes of samples
        a.sample("c1", T0 + 2 * i, loss=0.0123, rtt_ms=80, kbps=450.4, video=i % 4 != 0)
    a.left("c2", T0 + 30 + 1234)
    hands.raise_hand("c1", "第三小学", T0 + 100)
    stage.put_on("c1", "第三小学", T0 + 200)
    stage.take_off("c1", T0 + 290)
    text = a.to_csv(T0 + 3600, hands, stage, tz=UTC8)
    assert text.startswith("\ufeff")
    data = text.encode("utf-8")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0] == CSV_HEADER
    assert len(rows) == 4  # header + one row per classroom
    by_id = {r[0]: dict(zip(CSV_HEADER, r)) for r in rows[1:]}
    c1, c2, c3 = by_id["c1"], by_id["c2"], by_id["c3"]
    assert c1["name"] == "第三小学" and c2["name"] == "第五小学, 二班" and c3["name"] == "'-1 班"
    assert c1["joined_at"] == "2023-11-15 06:13:20" and c1["left_at"] == ""
    assert c2["left_at"] == "2023-11-15 06:34:24"
    assert datetime.strptime(c2["left_at"], "%Y-%m-%d %H:%M:%S")  # the documented format
    assert c1["present_min"] == "60.0" and c2["present_min"] == "20.6"  # 1234 s
    assert c1["sessions"] == "1" and c1["hands"] == "1" and c1["stage_min"] == "1.5"
    assert c1["loss_pct"] == "1.23" and c1["rtt_ms_avg"] == "80" and c1["kbps_avg"] == "450"
    assert c1["video_pct"] == "75.0"
    assert c2["loss_pct"] == "" and c2["video_pct"] == ""  # no samples: empty, not zero


def test_attendance_csv_uses_local_time_by_default():
    a = Attendance()
    a.joined("c1", "一小", T0)
    rows = list(csv.reader(io.StringIO(a.to_csv(T0 + 60, HandQueue(), Stage()).lstrip("\ufeff"))))
    assert rows[1][2] == datetime.fromtimestamp(T0).strftime("%Y-%m-%d %H:%M:%S")


def test_attendance_memory_is_bounded_by_classrooms_not_samples():
    """400 classrooms sampled every 2 s: after a warm-up, thousands more samples allocate nothing that stays."""
    a = Attendance()
    classrooms = [f"c{i}" for i in range(400)]
    for pid in classrooms:
        a.joined(pid, pid, T0)

    def sample_round(t: float) -> None:
        for k, pid in enumerate(classrooms):
            a.sample(pid, t, loss=(k % 7) / 100, rtt_ms=50.0 + k, kbps=300.0 + k, video=k % 3 != 0)

    for r in range(10):
        sample_round(T0 + 2 * r)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for r in range(10, 310):  # 120 000 more samples
            sample_round(T0 + 2 * r)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024  # keeping even 8 bytes per sample would be ~1 MB
    rows = a.rows(T0 + 620, HandQueue(), Stage())
    assert len(rows) == 400 and rows[10]["rtt_ms_avg"] == 60.0 and rows[0]["video_share"] == 0.0


# -- the lesson's bundle ------------------------------------------------------------------------------------


def test_put_on_stage_lowers_the_hand_and_lifts_the_mute_taking_off_leaves_the_mute():
    lesson = LessonInteraction()
    lesson.hands.raise_hand("c1", "一小", T0)
    lesson.hands.raise_hand("c2", "二小", T0 + 1)
    lesson.mute("c1")
    assert lesson.state_of("c1") == {"participant": "c1", "hand": True, "position": 1, "stage": False, "muted": True}
    assert lesson.put_on_stage("c1", "一小", T0 + 5) is True
    assert lesson.state_of("c1") == {"participant": "c1", "hand": False, "position": None, "stage": True,
                                     "muted": False}
    assert lesson.hands.position("c2") == 1
    lesson.mute("c1")  # the teacher mutes it on stage
    assert lesson.take_off_stage("c1", T0 + 10) is True
    assert lesson.state_of("c1") == {"participant": "c1", "hand": False, "position": None, "stage": False,
                                     "muted": True}
    lesson.put_on_stage("c2", "二小", T0 + 11)
    assert lesson.take_off_stage("c2", T0 + 12) is True
    assert lesson.is_muted("c2") is False  # unmuted stays unmuted


def test_stage_full_through_the_lesson_changes_nothing():
    lesson = LessonInteraction(stage_max=1)
    lesson.put_on_stage("c1", "一小", T0)
    lesson.hands.raise_hand("c2", "二小", T0)
    lesson.mute("c2")
    with pytest.raises(StageFull):
        lesson.put_on_stage("c2", "二小", T0 + 1)
    assert lesson.state_of("c2") == {"participant": "c2", "hand": True, "position": 1, "stage": False, "muted": True}


def test_mute_all_and_unmute_all():
    lesson = LessonInteraction()
    lesson.mute("c2")
    assert lesson.mute("c2") is False
    assert lesson.mute_all(["c1", "c2", "c3"]) == ["c1", "c3"]
    assert all(lesson.is_muted(p) for p in ("c1", "c2", "c3"))
    assert lesson.unmute("c2") is True and lesson.unmute("c2") is False
    assert lesson.unmute_all() == ["c1", "c3"]
    assert not lesson.muted


def test_may_join_removed_and_locked():
    lesson = LessonInteraction()
    assert lesson.may_join("c1", known=False) is None
    lesson.hands.raise_hand("c1", "一小", T0)
    lesson.put_on_stage("c2", "二小", T0)
    assert lesson.remove("c1", T0 + 1) is True and lesson.remove("c1", T0 + 2) is False
    assert lesson.remove("c2", T0 + 3) is True
    assert lesson.may_join("c1", known=True) == "removed"
    assert lesson.hands.queue() == [] and lesson.stage.on() == []
    assert lesson.stage.timeline()[0]["off_at"] == T0 + 3
    lesson.locked = True
    assert lesson.may_join("c3", known=False) == "lesson_locked"
    assert lesson.may_join("c3", known=True) is None  # reconnecting is let back in
    assert lesson.may_join("c2", known=False) == "removed"  # removed wins over locked
    lesson.locked = False
    assert lesson.may_join("c3", known=False) is None


def test_settings_drive_the_chat():
    lesson = LessonInteraction()
    assert lesson.settings_dict() == {"locked": False, "chat_classrooms": True}
    lesson.chat_classrooms = False
    lesson.locked = True
    assert lesson.settings_dict() == {"locked": True, "chat_classrooms": False}
    with pytest.raises(ChatRejected) as err:
        lesson.chat.add("c1", "一小", "classroom", "hi", T0)
    assert err.value.code == "chat_off"
    assert LessonInteraction(chat_classrooms=False).chat.classrooms_enabled is False


def test_record_is_json_and_complete():
    lesson = LessonInteraction()
    lesson.attendance.joined("c1", "一小", T0)
    lesson.attendance.sample("c1", T0 + 2, loss=0.02, rtt_ms=90, kbps=300, video=True)
    lesson.put_on_stage("c1", "一小", T0 + 10)
    lesson.chat.add("c1", "一小", "classroom", "你好", T0 + 11)
    lesson.chat.add("t", "李老师", "teacher", "oops", T0 + 12)
    lesson.chat.delete("m2", by="t", now=T0 + 13)
    lesson.remove("c9", T0 + 14)
    record = json.loads(json.dumps(lesson.record(T0 + 70)))
    assert record["settings"] == {"locked": False, "chat_classrooms": True}
    assert record["stage_timeline"] == [{"participant": "c1", "name": "一小", "on_at": T0 + 10, "off_at": None}]
    assert [m["id"] for m in record["chat"]] == ["m1", "m2"] and record["chat"][1]["deleted_by"] == "t"
    (row,) = record["attendance"]
    assert row["present_s"] == 70.0 and row["stage_s"] == 60.0 and row["loss_avg"] == 0.02
    assert record["removed"] == ["c9"]

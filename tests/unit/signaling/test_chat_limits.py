"""Chat is bounded (issue 11): at most CHAT_PER_SENDER messages per participant and CHAT_PER_LESSON from the
lesson's classrooms together in any CHAT_WINDOW_S, refused with `rate_limited` (and the message's ref); the
teacher is never crowded out by the classrooms. Rules as pure units, then against a real `ketang serve`."""

from __future__ import annotations

import asyncio

import pytest

from signaling.lesson.interaction import (
    CHAT_PER_LESSON,
    CHAT_PER_SENDER,
    CHAT_WINDOW_S,
    ChatRejected,
    LessonInteraction,
)
from tests.support import WsClient, token

T0 = 1_700_000_000.0


def test_one_writer_gets_a_few_messages_per_window_and_then_rate_limited():
    inter = LessonInteraction()
    for i in range(CHAT_PER_SENDER):
        inter.write_chat("c1", "一小", "classroom", f"m{i}", T0 + i * 0.1)
    with pytest.raises(ChatRejected) as err:
        inter.write_chat("c1", "一小", "classroom", "one too many", T0 + 1)
    assert err.value.code == "rate_limited" and "wait" in err.value.message
    assert len(inter.chat) == CHAT_PER_SENDER  # the refused one is not in the chat
    # another classroom is not affected, and once the window has passed the first may write again
    inter.write_chat("c2", "二小", "classroom", "hello", T0 + 1)
    inter.write_chat("c1", "一小", "classroom", "again", T0 + CHAT_WINDOW_S + 0.1)


def test_the_classrooms_together_are_capped_but_the_teacher_is_not_crowded_out():
    inter = LessonInteraction()
    writers = [f"c{i}" for i in range(CHAT_PER_LESSON)]
    for n, pid in enumerate(writers):
        inter.write_chat(pid, pid, "classroom", "hi", T0 + n * 0.01)
    with pytest.raises(ChatRejected) as err:
        inter.write_chat("late", "late", "classroom", "hi", T0 + 1)
    assert err.value.code == "rate_limited" and "classrooms wrote" in err.value.message
    inter.write_chat("t", "李老师", "teacher", "请安静", T0 + 1)  # the teacher still speaks
    inter.write_chat("late", "late", "classroom", "hi", T0 + CHAT_WINDOW_S + 0.5)


def test_refused_messages_do_not_count():
    inter = LessonInteraction()
    inter.chat_classrooms = False
    for _ in range(CHAT_PER_SENDER * 3):
        with pytest.raises(ChatRejected) as err:
            inter.write_chat("c1", "一小", "classroom", "x", T0)
        assert err.value.code == "chat_off"
    inter.chat_classrooms = True
    inter.write_chat("c1", "一小", "classroom", "now I may", T0)


async def test_a_chat_flood_through_the_server_is_bounded(server):
    """Today's main let every message through: 10 classrooms wrote 5,570 messages in 30 s (61,270 events)."""
    lesson = "chat-flood"
    teacher = await WsClient().connect(server.ws_url)
    rooms = [await WsClient().connect(server.ws_url) for _ in range(CHAT_PER_LESSON // CHAT_PER_SENDER + 1)]
    try:
        assert (await teacher.request({"type": "join", "token": token("teacher", lesson, "李老师")}))["type"] == "joined"
        for i, room in enumerate(rooms):
            reply = await room.request({"type": "join", "token": token("classroom", lesson, f"第{i}小学")})
            assert reply["type"] == "joined"
        start = len(teacher.messages)
        replies = await asyncio.gather(*[room.request({"type": "chat", "text": f"{i}-{n}"})
                                         for i, room in enumerate(rooms) for n in range(CHAT_PER_SENDER + 3)])
        accepted = [r for r in replies if r["type"] == "chat"]
        refused = [r for r in replies if r["type"] == "error"]
        assert len(accepted) == CHAT_PER_LESSON  # the lesson's cap, though each classroom kept to its own
        assert {r["code"] for r in refused} == {"rate_limited"} and all("ref" in r for r in refused)
        assert len(refused) == len(replies) - CHAT_PER_LESSON
        # the teacher still writes, and heard exactly the accepted messages
        assert (await teacher.request({"type": "chat", "text": "请安静"}))["type"] == "chat"
        await asyncio.sleep(0.3)
        events = [m for m in teacher.messages[start:] if m.get("event") == "chat"]
        assert len(events) == CHAT_PER_LESSON + 1
    finally:
        for client in [teacher, *rooms]:
            await client.close()

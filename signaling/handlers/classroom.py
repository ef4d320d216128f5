"""What a classroom (and the teacher, for chat) says in the lesson: a raised hand, a chat message. Each handler
checks who sends it, asks the Lesson to decide, and applies what it decided."""

from __future__ import annotations

import time

from signaling.connection import Connection
from signaling.handlers.common import Reply, applied, joined_as, refused
from signaling.hub import Hub
from signaling.lesson.interaction import InteractionError
from signaling.messages import Message


async def handle_hand(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson = joined_as(hub, conn, msg, "classroom")
    name = conn.claims.name if conn.claims else ""
    outcome = lesson.hand(conn.participant_id or "", name, msg.fields["up"], time.time())
    return applied(lesson, outcome, "hand", msg)


async def handle_chat(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson = joined_as(hub, conn, msg, "teacher", "classroom")
    name = conn.claims.name if conn.claims else ""
    try:
        outcome = lesson.chat(conn.participant_id or "", name, conn.role or "", msg.fields["text"], time.time())
    except InteractionError as exc:
        raise refused(exc, msg) from exc
    return applied(lesson, outcome, "chat", msg)

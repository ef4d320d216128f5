"""The teacher's moderation (docs/protocol.md): stage, hard mute, removal, lock, chat mode and deleting a chat
message. Each handler checks who sends it, asks the Lesson to decide, and applies what it decided; what flows
where is then the SFU's, so a page that ignores a mute changes nothing."""

from __future__ import annotations

import time

from signaling.connection import Connection
from signaling.handlers.common import Reply, applied, joined_as, refused
from signaling.hub import Hub
from signaling.lesson.interaction import InteractionError
from signaling.lesson.live import Lesson
from signaling.messages import Message, ProtocolError

# close code for a classroom the teacher removed (4001 is "replaced by a new connection")
CLOSE_REMOVED = 4003


def _classroom(lesson: Lesson, participant: str, msg: Message) -> str:
    """The name of a classroom of this lesson (connected now, or one that has been in it)."""
    name = lesson.classroom_name(participant)
    if name is None:
        raise ProtocolError("not_found", f"no classroom {participant[:32]!r} in this lesson", msg.id)
    return name


async def handle_stage(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson = joined_as(hub, conn, msg, "teacher")
    pid = msg.fields["participant"]
    name = _classroom(lesson, pid, msg)
    try:
        outcome = lesson.stage(pid, name, msg.fields["on"], time.time())
    except InteractionError as exc:
        raise refused(exc, msg) from exc
    return applied(lesson, outcome, "stage", msg)


async def handle_mute(hub: Hub, conn: Connection, msg: Message) -> Reply:
    """Hard mute (enforced in the SFU) of one classroom, or of all of them (absent `participant`)."""
    lesson = joined_as(hub, conn, msg, "teacher")
    target = msg.fields.get("participant")
    if target is not None:
        _classroom(lesson, target, msg)
    return applied(lesson, lesson.mute(target, msg.fields["muted"]), "muted", msg)


async def handle_remove(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson = joined_as(hub, conn, msg, "teacher")
    pid = msg.fields["participant"]
    _classroom(lesson, pid, msg)
    reply = applied(lesson, lesson.remove(pid, time.time()), "removed", msg)
    target = lesson.classrooms().get(pid)
    if target is not None:
        target.send({"type": "event", "event": "removed", "participant": pid})
        await hub.leave(target)
        await target.drain()
        await target.close(code=CLOSE_REMOVED, reason="removed by the teacher")
    return reply


async def handle_lock(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson = joined_as(hub, conn, msg, "teacher")
    return applied(lesson, lesson.lock(msg.fields["locked"]), "settings", msg)


async def handle_chat_mode(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson = joined_as(hub, conn, msg, "teacher")
    return applied(lesson, lesson.chat_mode(msg.fields["classrooms"]), "settings", msg)


async def handle_chat_delete(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson = joined_as(hub, conn, msg, "teacher")
    try:
        outcome = lesson.delete_chat(msg.fields["message"], conn.participant_id or "", time.time())
    except InteractionError as exc:
        raise refused(exc, msg) from exc
    return applied(lesson, outcome, "chat_deleted", msg)

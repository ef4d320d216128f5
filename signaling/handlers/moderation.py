"""The interactive classroom's messages (docs/protocol.md): a classroom's hand, the teacher's wall, stage,
hard mute, removal, lock and chat. The rules live in signaling.interaction; what flows where is the SFU's
(Router.set_visible / set_stage / set_muted) — a page that ignores a mute changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from signaling.connection import Connection
from signaling.hub import Hub
from signaling.interaction import InteractionError
from signaling.messages import Message, ProtocolError

Reply = dict[str, Any] | None

# close code for a classroom the teacher removed (4001 is "replaced by a new connection")
CLOSE_REMOVED = 4003


def _joined_as(conn: Connection, msg: Message, *roles: str) -> str:
    """The connection's lesson id, when it has joined in one of `roles`; else the protocol error."""
    if conn.claims is None or conn.lesson_id is None:
        raise ProtocolError("not_joined", "send join with a token first", msg.id)
    if conn.role not in roles:
        who = " or ".join(roles)
        raise ProtocolError("forbidden", f"only the lesson's {who} can send {msg.type}", msg.id)
    return conn.lesson_id


def _classroom(hub: Hub, lesson_id: str, participant: str, msg: Message) -> str:
    """The name of a classroom of this lesson (connected now, or one that has been in it)."""
    conn = hub.classrooms(lesson_id).get(participant)
    if conn is not None and conn.claims is not None:
        return conn.claims.name
    if participant in hub.seen.get(lesson_id, ()):
        return participant
    raise ProtocolError("not_found", f"no classroom {participant[:32]!r} in this lesson", msg.id)


def _refused(exc: InteractionError, msg: Message) -> ProtocolError:
    return ProtocolError(exc.code, exc.message, msg.id)


async def handle_hand(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson_id = _joined_as(conn, msg, "classroom")
    inter, pid = hub.interaction(lesson_id), conn.participant_id or ""
    if msg.fields["up"] and inter.stage.is_on(pid):
        return {"type": "hand", "ref": msg.id, "up": False, "position": None}  # on stage already: nothing to ask
    if msg.fields["up"]:
        position: int | None = inter.hands.raise_hand(pid, conn.claims.name if conn.claims else "", time.time())
    else:
        inter.hands.lower(pid)
        position = None
    hub.broadcast_hands(lesson_id)
    hub.classroom_state(lesson_id, pid)
    return {"type": "hand", "ref": msg.id, "up": position is not None, "position": position}


async def handle_wall(hub: Hub, conn: Connection, msg: Message) -> Reply:
    """The classroom tiles on the teacher's (or an observer's) screen: only theirs flow to it. The first wall
    also opens the teacher's receiving connection (the server's offer)."""
    lesson_id = _joined_as(conn, msg, "teacher", "observer")
    from signaling.handlers import _subscribe  # the same path as a classroom's

    classrooms = hub.classrooms(lesson_id)
    visible = [pid for pid in dict.fromkeys(msg.fields["visible"]) if pid in classrooms]
    router = hub.router(lesson_id)
    pid = conn.participant_id or ""
    router.set_visible(pid, visible)
    if pid not in router.subscribers:
        await _subscribe(hub, conn)
    return {"type": "wall", "ref": msg.id, "visible": visible}


async def handle_stage(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson_id = _joined_as(conn, msg, "teacher")
    inter, now = hub.interaction(lesson_id), time.time()
    pid = msg.fields["participant"]
    name = _classroom(hub, lesson_id, pid, msg)
    if msg.fields["on"]:
        was_muted = inter.is_muted(pid)
        try:
            inter.put_on_stage(pid, name, now)
        except InteractionError as exc:
            raise _refused(exc, msg) from exc
        if was_muted and not inter.is_muted(pid):
            hub.router(lesson_id).set_muted(pid, False)
    else:
        inter.take_off_stage(pid, now)
    on = inter.stage.on()
    router = hub.router(lesson_id)
    recorder = hub.recorders.get(lesson_id)
    if recorder is not None:
        recorder.stage_names.update({s["id"]: s["name"] for s in on})
    router.set_stage([s["id"] for s in on])
    hub.broadcast(lesson_id, {"type": "event", "event": "stage", "participants": on})
    hub.broadcast_hands(lesson_id)
    hub.classroom_state(lesson_id, pid)
    return {"type": "stage", "ref": msg.id, "participants": on}


async def handle_mute(hub: Hub, conn: Connection, msg: Message) -> Reply:
    """Hard mute (enforced in the SFU) of one classroom, or of all of them (absent `participant`)."""
    lesson_id = _joined_as(conn, msg, "teacher")
    inter, muted = hub.interaction(lesson_id), msg.fields["muted"]
    target = msg.fields.get("participant")
    if target is not None:
        _classroom(hub, lesson_id, target, msg)
        changed = [target] if (inter.mute(target) if muted else inter.unmute(target)) else []
    elif muted:
        changed = inter.mute_all(hub.classrooms(lesson_id))
    else:
        changed = inter.unmute_all()
    router = hub.router(lesson_id)
    for pid in changed:
        router.set_muted(pid, muted)
        hub.classroom_state(lesson_id, pid)
    return {"type": "muted", "ref": msg.id, "participants": changed, "muted": muted}


async def handle_remove(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson_id = _joined_as(conn, msg, "teacher")
    pid = msg.fields["participant"]
    _classroom(hub, lesson_id, pid, msg)
    inter = hub.interaction(lesson_id)
    was_on = inter.stage.is_on(pid)
    inter.remove(pid, time.time())
    if was_on:
        on = inter.stage.on()
        hub.router(lesson_id).set_stage([s["id"] for s in on])
        hub.broadcast(lesson_id, {"type": "event", "event": "stage", "participants": on})
    hub.broadcast_hands(lesson_id)
    target = hub.classrooms(lesson_id).get(pid)
    if target is not None:
        target.send({"type": "event", "event": "removed", "participant": pid})
        await hub.leave(target)
        await target.drain()
        await target.close(code=CLOSE_REMOVED, reason="removed by the teacher")
    return {"type": "removed", "ref": msg.id, "participant": pid}


def _settings_changed(hub: Hub, lesson_id: str, msg: Message) -> Reply:
    settings = hub.interaction(lesson_id).settings_dict()
    hub.broadcast(lesson_id, {"type": "event", "event": "settings", "settings": settings})
    return {"type": "settings", "ref": msg.id, "settings": settings}


async def handle_lock(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson_id = _joined_as(conn, msg, "teacher")
    hub.interaction(lesson_id).locked = msg.fields["locked"]
    return _settings_changed(hub, lesson_id, msg)


async def handle_chat_mode(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson_id = _joined_as(conn, msg, "teacher")
    hub.interaction(lesson_id).chat_classrooms = msg.fields["classrooms"]
    return _settings_changed(hub, lesson_id, msg)


async def handle_chat(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson_id = _joined_as(conn, msg, "teacher", "classroom")
    name = conn.claims.name if conn.claims else ""
    try:
        message = hub.interaction(lesson_id).write_chat(conn.participant_id or "", name, conn.role or "",
                                                        msg.fields["text"], time.time())
    except InteractionError as exc:
        raise _refused(exc, msg) from exc
    hub.broadcast(lesson_id, {"type": "event", "event": "chat", "message": message})
    return {"type": "chat", "ref": msg.id, "message": message}


async def handle_chat_delete(hub: Hub, conn: Connection, msg: Message) -> Reply:
    lesson_id = _joined_as(conn, msg, "teacher")
    message_id = msg.fields["message"]
    if not hub.interaction(lesson_id).chat.delete(message_id, conn.participant_id or "", time.time()):
        raise ProtocolError("not_found", f"no chat message {message_id[:32]!r}", msg.id)
    hub.broadcast(lesson_id, {"type": "event", "event": "chat-deleted", "message": message_id})
    return {"type": "chat_deleted", "ref": msg.id, "message": message_id}


MODERATION_HANDLERS: dict[str, Callable[[Hub, Connection, Message], Awaitable[Reply]]] = {
    "hand": handle_hand,
    "wall": handle_wall,
    "stage": handle_stage,
    "mute": handle_mute,
    "remove": handle_remove,
    "lock": handle_lock,
    "chat": handle_chat,
    "chat_delete": handle_chat_delete,
    "chat_mode": handle_chat_mode,
}

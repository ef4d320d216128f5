"""A connection's life in a lesson: join (token checked, room state, the `joined` reply), leave, the teacher's
end of the lesson, and ping."""

from __future__ import annotations

from signaling.connection import Connection
from signaling.handlers.common import Reply, require_joined, subscribe
from signaling.hub import (
    DRAINING_MESSAGE,
    OVERLOADED_MESSAGE,
    UNAVAILABLE_MESSAGE,
    Hub,
    JoinRefused,
    LessonElsewhere,
    LessonEnded,
    NodeDraining,
    NodeOverloaded,
)
from signaling.messages import Message, ProtocolError, error_reply
from signaling.metrics import count_join, count_refusal
from signaling.state import StoreUnavailable
from signaling.tokens import LESSON_ROLES, TokenError, verify_token
from signaling.turn import ice_servers_for


async def handle_join(hub: Hub, conn: Connection, msg: Message) -> Reply:
    if conn.claims is not None:
        raise ProtocolError("already_joined", "this connection has already joined a lesson", msg.id)
    try:
        claims = verify_token(hub.config.secret, msg.fields["token"], lesson=msg.fields.get("lesson"))
    except TokenError as exc:
        count_refusal(exc.code)
        raise ProtocolError(exc.code, str(exc), msg.id) from exc
    if claims.role not in LESSON_ROLES:
        count_refusal("forbidden_role")
        raise ProtocolError("forbidden", f"a {claims.role} token is for the library, not for joining lessons", msg.id)
    conn.claims, conn.participant_id, conn.lesson_id = claims, claims.sub, claims.lesson
    try:
        state = await hub.join(conn)
    except LessonEnded as exc:
        conn.claims = conn.participant_id = conn.lesson_id = None
        raise ProtocolError("lesson_ended", "this lesson has ended", msg.id) from exc
    except LessonElsewhere as exc:
        conn.claims = conn.participant_id = conn.lesson_id = None
        reply = error_reply("lesson_elsewhere", "this lesson is carried by another server: join it there", msg.id)
        conn.send({**reply, "url": exc.url})
        return None
    except NodeDraining as exc:  # (a restart under way, no other node: the page tries again)
        conn.claims = conn.participant_id = conn.lesson_id = None
        raise ProtocolError("draining", DRAINING_MESSAGE, msg.id) from exc
    except NodeOverloaded as exc:  # (short of CPU: no new lesson or classroom here now; the page tries again)
        conn.claims = conn.participant_id = conn.lesson_id = None
        count_refusal("overloaded")
        raise ProtocolError("overloaded", OVERLOADED_MESSAGE, msg.id) from exc
    except StoreUnavailable as exc:  # (the room state cannot be reached: the page tries again)
        conn.claims = conn.participant_id = conn.lesson_id = None
        hub.store_failed(exc, "a participant joined")
        raise ProtocolError("unavailable", UNAVAILABLE_MESSAGE, msg.id) from exc
    except JoinRefused as exc:
        count_refusal(exc.code)
        conn.claims = conn.participant_id = conn.lesson_id = None
        why = {"removed": "the teacher removed this classroom from the lesson",
               "lesson_locked": "the teacher has locked the lesson to new classrooms"}.get(exc.code, exc.code)
        raise ProtocolError(exc.code, why, msg.id) from exc
    cfg = hub.config  # TURN credentials minted for this participant (firewalled schools; docs/weak-networks.md)
    ice = ice_servers_for(cfg.turn_urls, cfg.turn_secret, claims.sub, cfg.turn_ttl_s)
    conn.send({"type": "joined", "ref": msg.id, **state, "ice_servers": ice})
    count_join(claims.role)
    if claims.role in ("classroom", "observer"):
        await subscribe(hub, conn)
    return None


async def handle_end_lesson(hub: Hub, conn: Connection, msg: Message) -> Reply:
    require_joined(conn, msg)
    if conn.role != "teacher":
        raise ProtocolError("forbidden", "only the lesson's teacher can end it", msg.id)
    await hub.end_lesson(conn.lesson_id or "")
    return None


async def handle_leave(hub: Hub, conn: Connection, msg: Message) -> Reply:
    await hub.leave(conn)
    conn.send({"type": "left", "ref": msg.id})
    await conn.drain()
    await conn.close()
    return None


async def handle_ping(hub: Hub, conn: Connection, msg: Message) -> Reply:
    return {"type": "pong", "ref": msg.id}

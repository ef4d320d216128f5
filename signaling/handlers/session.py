"""One handler per client message type. Each returns the reply (or None) or raises a ProtocolError."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sfu.peers.sdp import SdpError
from sfu.peers.subscriber import Subscriber
from signaling.connection import Connection
from signaling.hub import (
    UNAVAILABLE_MESSAGE,
    Hub,
    JoinRefused,
    LessonElsewhere,
    LessonEnded,
)
from signaling.messages import Message, ProtocolError, error_reply
from signaling.state import StoreUnavailable
from signaling.tokens import LESSON_ROLES, TokenError, verify_token
from signaling.turn import ice_servers_for

log = logging.getLogger("ketang.signaling")

Reply = dict[str, Any] | None
Handler = Callable[[Hub, Connection, Message], Awaitable[Reply]]


def _require_joined(conn: Connection, msg: Message) -> None:
    if conn.claims is None:
        raise ProtocolError("not_joined", "send join with a token first", msg.id)


async def handle_join(hub: Hub, conn: Connection, msg: Message) -> Reply:
    if conn.claims is not None:
        raise ProtocolError("already_joined", "this connection has already joined a lesson", msg.id)
    try:
        claims = verify_token(hub.config.secret, msg.fields["token"], lesson=msg.fields.get("lesson"))
    except TokenError as exc:
        raise ProtocolError(exc.code, str(exc), msg.id) from exc
    if claims.role not in LESSON_ROLES:
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
    except StoreUnavailable as exc:  # (the room state cannot be reached: the page tries again)
        conn.claims = conn.participant_id = conn.lesson_id = None
        hub.store_failed(exc, "a participant joined")
        raise ProtocolError("unavailable", UNAVAILABLE_MESSAGE, msg.id) from exc
    except JoinRefused as exc:
        conn.claims = conn.participant_id = conn.lesson_id = None
        why = {"removed": "the teacher removed this classroom from the lesson",
               "lesson_locked": "the teacher has locked the lesson to new classrooms"}.get(exc.code, exc.code)
        raise ProtocolError(exc.code, why, msg.id) from exc
    cfg = hub.config  # TURN credentials minted for this participant (firewalled schools; docs/weak-networks.md)
    ice = ice_servers_for(cfg.turn_urls, cfg.turn_secret, claims.sub, cfg.turn_ttl_s)
    conn.send({"type": "joined", "ref": msg.id, **state, "ice_servers": ice})
    if claims.role in ("classroom", "observer"):
        await _subscribe(hub, conn)
    return None


class _ClientSignals:
    """The SFU's messages to one subscriber: offers, and which mid carries which lesson track."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def send_offer(self, sdp: str, tracks: list[dict]) -> None:
        self.conn.send({"type": "offer", "sdp": sdp, "tracks": tracks})

    def send_tracks(self, tracks: list[dict]) -> None:
        self.conn.send({"type": "tracks", "tracks": tracks})


def _current(hub: Hub, conn: Connection) -> bool:
    """Whether `conn` is still its participant's connection (the same link opened again replaces it)."""
    return not conn.closed and hub.connections.get(conn.lesson_id or "", {}).get(conn.participant_id or "") is conn


async def _subscribe(hub: Hub, conn: Connection) -> None:
    assert conn.lesson_id is not None and conn.participant_id is not None
    if not _current(hub, conn):
        return  # replaced while it was joining: the newer connection subscribes
    router = hub.router(conn.lesson_id)
    sub = await router.subscribe(conn.participant_id, _ClientSignals(conn), conn.role or "classroom")
    if not _current(hub, conn):  # replaced or gone while its media was being set up: nobody else will close it
        await router.remove_subscriber(conn.participant_id, sub)


async def handle_publish(hub: Hub, conn: Connection, msg: Message) -> Reply:
    _require_joined(conn, msg)
    if conn.role not in ("teacher", "classroom"):
        raise ProtocolError("forbidden", "only the teacher and classrooms publish", msg.id)
    assert conn.lesson_id is not None and conn.participant_id is not None
    if conn.role == "classroom" and "screen" in (msg.fields.get("sources") or {}).values():
        raise ProtocolError("forbidden", "a classroom publishes its camera and microphone, not courseware", msg.id)
    if "record" in msg.fields and conn.role == "teacher":
        hub.set_recording(conn.lesson_id, msg.fields["record"])
    try:
        router = hub.router(conn.lesson_id)
        sdp = await router.publish(conn.participant_id, msg.fields["sdp"], msg.fields.get("sources"), conn.role)
    except SdpError as exc:
        raise ProtocolError(exc.code, str(exc), msg.id) from exc
    if conn.role == "classroom":  # whether anyone receives its camera / microphone now (then `demand` events)
        video, audio = router.demand_of(conn.participant_id)
        return {"type": "answer", "ref": msg.id, "sdp": sdp, "demand": {"video": video, "audio": audio}}
    return {"type": "answer", "ref": msg.id, "sdp": sdp}


def _subscriber(hub: Hub, conn: Connection, msg: Message, code: str, why: str) -> Subscriber:
    """The SFU side of a classroom's (or observer's) connection, or the protocol error `code`."""
    _require_joined(conn, msg)
    router = hub.routers.get(conn.lesson_id or "")
    sub = router.subscribers.get(conn.participant_id or "") if router else None
    if sub is None:
        raise ProtocolError(code, why, msg.id)
    return sub


async def handle_answer(hub: Hub, conn: Connection, msg: Message) -> Reply:
    sub = _subscriber(hub, conn, msg, "unexpected_answer", "no offer was sent to this participant")
    try:
        await sub.accept_answer(msg.fields["sdp"])
    except SdpError as exc:
        raise ProtocolError(exc.code, str(exc), msg.id) from exc
    return None


async def handle_prefer(hub: Hub, conn: Connection, msg: Message) -> Reply:
    sub = _subscriber(hub, conn, msg, "not_subscribed", "only a classroom or observer receiving the lesson can choose")
    if msg.fields["video"] != sub.video:
        sub.set_video(msg.fields["video"])
    if "layer" in msg.fields:
        sub.pin_layer(0 if msg.fields["layer"] == "low" else None)
    return {"type": "preferred", "ref": msg.id, "video": sub.video,
            "layer": "low" if sub.pinned_layer == 0 else "auto"}


async def handle_unpublish(hub: Hub, conn: Connection, msg: Message) -> Reply:
    _require_joined(conn, msg)
    if conn.role not in ("teacher", "classroom"):
        raise ProtocolError("forbidden", "only the teacher and classrooms publish", msg.id)
    router = hub.routers.get(conn.lesson_id or "")
    removed = await router.unpublish(conn.participant_id or "", msg.fields.get("track")) if router else 0
    return {"type": "unpublished", "ref": msg.id, "removed": removed}


async def handle_end_lesson(hub: Hub, conn: Connection, msg: Message) -> Reply:
    _require_joined(conn, msg)
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


from signaling.moderation import MODERATION_HANDLERS  # noqa: E402 - they use _subscribe and _require_joined above

HANDLERS: dict[str, Handler] = {
    **MODERATION_HANDLERS,
    "join": handle_join,
    "publish": handle_publish,
    "answer": handle_answer,
    "unpublish": handle_unpublish,
    "prefer": handle_prefer,
    "end_lesson": handle_end_lesson,
    "leave": handle_leave,
    "ping": handle_ping,
}

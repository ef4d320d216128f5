"""The media messages: publishing and unpublishing (teacher, classrooms), a subscriber's answer and preferences,
and the wall (which classroom tiles flow to the teacher's or an observer's screen)."""

from __future__ import annotations

from sfu.peers.sdp import SdpError
from sfu.peers.subscriber import Subscriber
from signaling.connection import Connection
from signaling.handlers.common import Reply, joined_as, require_joined, subscribe
from signaling.hub import Hub
from signaling.messages import Message, ProtocolError


async def handle_publish(hub: Hub, conn: Connection, msg: Message) -> Reply:
    require_joined(conn, msg)
    if conn.role not in ("teacher", "classroom"):
        raise ProtocolError("forbidden", "only the teacher and classrooms publish", msg.id)
    assert conn.lesson_id is not None and conn.participant_id is not None
    if conn.role == "classroom" and "screen" in (msg.fields.get("sources") or {}).values():
        raise ProtocolError("forbidden", "a classroom publishes its camera and microphone, not courseware", msg.id)
    lesson = hub.lesson(conn.lesson_id)
    if "record" in msg.fields and conn.role == "teacher":
        lesson.set_recording(msg.fields["record"])
    try:
        router = lesson.media()
        sdp = await router.publish(conn.participant_id, msg.fields["sdp"], msg.fields.get("sources"), conn.role)
    except SdpError as exc:
        raise ProtocolError(exc.code, str(exc), msg.id) from exc
    if conn.role == "classroom":  # whether anyone receives its camera / microphone now (then `demand` events)
        video, audio = router.demand_of(conn.participant_id)
        return {"type": "answer", "ref": msg.id, "sdp": sdp, "demand": {"video": video, "audio": audio}}
    return {"type": "answer", "ref": msg.id, "sdp": sdp}


def _subscriber(hub: Hub, conn: Connection, msg: Message, code: str, why: str) -> Subscriber:
    """The SFU side of a classroom's (or observer's) connection, or the protocol error `code`."""
    require_joined(conn, msg)
    lesson = hub.lessons.get(conn.lesson_id or "")
    router = lesson.router if lesson is not None else None
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
    if "camera" in msg.fields and msg.fields["camera"] != sub.camera:
        sub.set_camera(msg.fields["camera"])
    return {"type": "preferred", "ref": msg.id, "video": sub.video,
            "layer": "low" if sub.pinned_layer == 0 else "auto", "camera": sub.camera}


async def handle_unpublish(hub: Hub, conn: Connection, msg: Message) -> Reply:
    require_joined(conn, msg)
    if conn.role not in ("teacher", "classroom"):
        raise ProtocolError("forbidden", "only the teacher and classrooms publish", msg.id)
    lesson = hub.lessons.get(conn.lesson_id or "")
    router = lesson.router if lesson is not None else None
    removed = await router.unpublish(conn.participant_id or "", msg.fields.get("track")) if router else 0
    return {"type": "unpublished", "ref": msg.id, "removed": removed}


async def handle_wall(hub: Hub, conn: Connection, msg: Message) -> Reply:
    """The classroom tiles on the teacher's (or an observer's) screen: only theirs flow to it. The first wall
    also opens the teacher's receiving connection (the server's offer)."""
    lesson = joined_as(hub, conn, msg, "teacher", "observer")
    classrooms = lesson.classrooms()
    visible = [pid for pid in dict.fromkeys(msg.fields["visible"]) if pid in classrooms]
    router = lesson.media()
    pid = conn.participant_id or ""
    router.set_visible(pid, visible)
    if pid not in router.subscribers:
        await subscribe(hub, conn)  # the same path as a classroom's
    return {"type": "wall", "ref": msg.id, "visible": visible}

"""What every handler module shares: the handler's signature, the checks of who may send what, the lesson of a
connection, and subscribing a connection to its lesson's media (a classroom on joining, the teacher on its
first wall)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from signaling.connection import Connection
from signaling.hub import Hub
from signaling.lesson.interaction import InteractionError
from signaling.lesson.live import Lesson
from signaling.lesson.outcome import Outcome
from signaling.messages import Message, ProtocolError

Reply = dict[str, Any] | None
Handler = Callable[[Hub, Connection, Message], Awaitable[Reply]]


def require_joined(conn: Connection, msg: Message) -> None:
    if conn.claims is None:
        raise ProtocolError("not_joined", "send join with a token first", msg.id)


def joined_as(hub: Hub, conn: Connection, msg: Message, *roles: str) -> Lesson:
    """The connection's lesson, when it has joined in one of `roles`; else the protocol error."""
    if conn.claims is None or conn.lesson_id is None:
        raise ProtocolError("not_joined", "send join with a token first", msg.id)
    if conn.role not in roles:
        who = " or ".join(roles)
        raise ProtocolError("forbidden", f"only the lesson's {who} can send {msg.type}", msg.id)
    return hub.lesson(conn.lesson_id)


def refused(exc: InteractionError, msg: Message) -> ProtocolError:
    return ProtocolError(exc.code, exc.message, msg.id)


def applied(lesson: Lesson, outcome: Outcome, reply_type: str, msg: Message) -> Reply:
    """Carry a lesson's decision out; the reply to send."""
    lesson.apply(outcome)
    return {"type": reply_type, "ref": msg.id, **outcome.reply}


class ClientSignals:
    """The SFU's messages to one subscriber: offers, and which mid carries which lesson track."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def send_offer(self, sdp: str, tracks: list[dict]) -> None:
        self.conn.send({"type": "offer", "sdp": sdp, "tracks": tracks})

    def send_tracks(self, tracks: list[dict]) -> None:
        self.conn.send({"type": "tracks", "tracks": tracks})


async def subscribe(hub: Hub, conn: Connection) -> None:
    """Open the connection's receiving side in its lesson's SFU (the server's offer)."""
    assert conn.lesson_id is not None and conn.participant_id is not None
    if not hub.current(conn):
        return  # replaced while it was joining: the newer connection subscribes
    router = hub.lesson(conn.lesson_id).media()
    sub = await router.subscribe(conn.participant_id, ClientSignals(conn), conn.role or "classroom")
    if not hub.current(conn):  # replaced or gone while its media was being set up: nobody else will close it
        await router.remove_subscriber(conn.participant_id, sub)

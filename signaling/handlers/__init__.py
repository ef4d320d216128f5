"""One handler per client message type (the dispatch table). Each validates the message and who sends it, asks
the Lesson (signaling.lesson.live) for one decision, and applies it; it returns the reply (or None) or raises a
ProtocolError."""

from __future__ import annotations

from signaling.handlers import classroom, media, moderation, probe, session
from signaling.handlers.common import Handler

HANDLERS: dict[str, Handler] = {
    "join": session.handle_join,
    "publish": media.handle_publish,
    "answer": media.handle_answer,
    "unpublish": media.handle_unpublish,
    "prefer": media.handle_prefer,
    "end_lesson": session.handle_end_lesson,
    "leave": session.handle_leave,
    "ping": session.handle_ping,
    "hand": classroom.handle_hand,
    "wall": media.handle_wall,
    "stage": moderation.handle_stage,
    "mute": moderation.handle_mute,
    "remove": moderation.handle_remove,
    "lock": moderation.handle_lock,
    "chat": classroom.handle_chat,
    "chat_delete": moderation.handle_chat_delete,
    "chat_mode": moderation.handle_chat_mode,
    "probe": probe.handle_probe,
    "probe_answer": probe.handle_probe_answer,
    "probe_report": probe.handle_probe_report,
}

__all__ = ["HANDLERS", "Handler"]

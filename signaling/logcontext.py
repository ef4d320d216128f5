"""Which lesson and participant a log line is about: set by the websocket handler once a connection has joined (a
context variable, so every line logged while handling that connection's messages carries them) and read by the log
formatter the composition root installs (`ketang serve --log-format json`)."""

from __future__ import annotations

import contextvars
import logging

LOG_CONTEXT: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("ketang_log_context",
                                                                                   default=None)


def set_participant(lesson: str | None, participant: str | None, role: str | None) -> None:
    LOG_CONTEXT.set({k: v for k, v in (("lesson", lesson), ("participant", participant), ("role", role)) if v})


class ContextFilter(logging.Filter):
    """Puts the current lesson, participant and role (when known) on every record as `ketang_context`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.ketang_context = LOG_CONTEXT.get() or {}
        return True

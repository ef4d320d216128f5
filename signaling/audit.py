"""The audit log: an append-only record of who did what, when and from where (joins and why one was refused,
moderation, the end of a lesson, library reviews and exports, refused library tokens), as the schools' security
rules ask. One JSON object per line in `<data dir>/audit/audit.log`, rotated by size and kept across restarts;
`ketang audit` reads it (docs/config.md, "Audit log")."""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

AUDIT_FILE = "audit.log"
MAX_BYTES = 10 * 1024 * 1024  # a file this large is rotated: audit.log.1 ... audit.log.<BACKUPS>
BACKUPS = 20  # 200 MB in all: several terms of lessons at a few hundred lines a lesson
TEXT_MAX_CHARS = 200  # a field's text is cut to this: one hostile value must not make a huge line

# the websocket messages whose effect is recorded (a join is recorded refused or not)
AUDITED_MESSAGES = frozenset({"join", "end_lesson", "stage", "mute", "remove", "lock", "chat_mode", "chat_delete"})
# what of an audited message's fields is kept (never the token, the SDP or the text of a chat)
KEPT_FIELDS = ("participant", "on", "muted", "locked", "classrooms", "message")


def audit_path(data_dir: Path) -> Path:
    return data_dir / "audit" / AUDIT_FILE


def _short(value: Any) -> Any:
    if isinstance(value, str):
        return value[:TEXT_MAX_CHARS]
    if isinstance(value, list):
        return [_short(v) for v in value[:50]]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return str(value)[:TEXT_MAX_CHARS]


class AuditLog:
    """Appends audit records; a write that fails (a full disk) is reported on stderr by logging and never reaches
    the caller: an audit line must not cost a lesson."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS,
                 clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clock = clock
        self._handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                             encoding="utf-8", delay=True)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._log = logging.getLogger(f"ketang.audit.{id(self)}")
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        self._log.addHandler(self._handler)

    def record(self, action: str, *, actor: dict[str, Any] | None, address: str | None, outcome: str = "ok",
               lesson: str | None = None, **detail: Any) -> None:
        entry = {"at": datetime.fromtimestamp(self._clock(), timezone.utc).isoformat(timespec="milliseconds"),
                 "action": action, "outcome": _short(outcome), "actor": actor, "address": address,
                 "lesson": _short(lesson)}
        entry.update({k: _short(v) for k, v in detail.items() if v is not None})
        self._log.info(json.dumps(entry, ensure_ascii=False))

    def close(self) -> None:
        self._log.removeHandler(self._handler)
        self._handler.close()


def actor_of(claims: Any) -> dict[str, Any] | None:
    """Who: the token's role, participant id and name (a library viewer or a lesson's claims alike)."""
    if claims is None or getattr(claims, "role", None) is None:
        return None
    return {"role": claims.role, "sub": claims.sub, "name": getattr(claims, "name", None)}


def message_detail(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: fields[k] for k in KEPT_FIELDS if k in fields}


def read(path: Path, *, lesson: str | None = None, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """The records, oldest first, across the rotated files; a line that is not a record (cut by a crash) is
    skipped."""
    files = sorted(path.parent.glob(AUDIT_FILE + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit()
                   else 0)
    for file in [*files, path]:
        if not file.is_file():
            continue
        with open(file, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(entry, dict):
                    continue
                if lesson is not None and entry.get("lesson") != lesson:
                    continue
                if since is not None:
                    try:
                        at = datetime.fromisoformat(entry.get("at", ""))
                    except (TypeError, ValueError):
                        continue
                    if at < since:
                        continue
                yield entry

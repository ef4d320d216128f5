"""The store's tables, declared once (SQLAlchemy 2 declarative): the migrations create them, the code above
queries them. Times are ISO 8601 UTC strings ("2025-03-01T08:00:00Z"), as the catalog has always kept them.

The resource library (资源库):
- ``recordings``: one row per recorded file, its state in the review workflow and its metadata;
  ``search_text`` is the row's text as search tokens (store.search), matched on PostgreSQL through a trigram
  index. On SQLite the full-text index is the FTS5 table ``recordings_fts`` (rowid = recordings.rowid), made
  by the migration, outside these models.
- ``recording_history``: who did what to a recording, in order.

One library item per lesson (migration 0002): the row with ``item_id`` NULL is the lesson's item (its review state,
its metadata, what search lists); the lesson's other files (courseware shares, turns on stage, later parts of the
teacher's camera) are its *sources*: rows whose ``item_id`` is the item's id. ``role`` says what a file is
(``teacher``, ``courseware``, ``stage``), ``label`` names it (课件 1, the class on stage).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Recording(Base):
    __tablename__ = "recordings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    lesson_id: Mapped[str] = mapped_column(Text, index=True)
    file: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))
    teacher_sub: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text, server_default="")
    description: Mapped[str] = mapped_column(Text, server_default="")
    teacher: Mapped[str] = mapped_column(Text, server_default="")
    school: Mapped[str] = mapped_column(Text, server_default="")
    language: Mapped[str] = mapped_column(Text, server_default="")
    date: Mapped[str] = mapped_column(Text, server_default="")
    license: Mapped[str] = mapped_column(Text, server_default="")
    stage: Mapped[str] = mapped_column(Text, server_default="")
    subject: Mapped[str] = mapped_column(Text, server_default="")
    grade: Mapped[str] = mapped_column(Text, server_default="")
    edition: Mapped[str] = mapped_column(Text, server_default="")
    volume: Mapped[str] = mapped_column(Text, server_default="")
    unit: Mapped[str] = mapped_column(Text, server_default="")
    chapter: Mapped[str] = mapped_column(Text, server_default="")
    duration_s: Mapped[float | None] = mapped_column(Float)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    poster: Mapped[str | None] = mapped_column(Text)
    mp4: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str | None] = mapped_column(Text)
    review_note: Mapped[str | None] = mapped_column(Text)
    reviewed_at: Mapped[str | None] = mapped_column(String(32))
    incomplete: Mapped[str | None] = mapped_column(Text)
    search_text: Mapped[str] = mapped_column(Text, server_default="")
    # the base URL of the node that wrote the recording (it keeps the files made from it), and the folder of its
    # HLS renditions on that node (relative to its data dir): migration 0003_recording_node
    node: Mapped[str | None] = mapped_column(Text)
    hls: Mapped[str | None] = mapped_column(Text)
    item_id: Mapped[str | None] = mapped_column(String(32))  # (no foreign key: see migration 0002)
    role: Mapped[str] = mapped_column(String(16), server_default="teacher")
    label: Mapped[str] = mapped_column(Text, server_default="")

    __table_args__ = (Index("recordings_state", "state", "created_at"), Index("recordings_item", "item_id"))


class History(Base):
    __tablename__ = "recording_history"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rec_id: Mapped[str] = mapped_column(String(32), ForeignKey("recordings.id", ondelete="CASCADE"))
    at: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("recording_history_rec", "rec_id", "seq"),)


recordings = Recording.__table__
history = History.__table__


# --- recordings catalogued before roles were kept (migration 0002, and an old library.db imported later) ---------

_COURSEWARE_TITLE = re.compile(r"（课件 (\d+)）$")
_STAGE_TITLE = re.compile(r"（上台 (.+)）$")
_COURSEWARE_FILE = re.compile(r"-screen(\d+)\.webm$")
_STAGE_FILE = re.compile(r"-stage(\d+)\.webm$")


def role_of(file: str, title: str, teacher: str = "") -> tuple[str, str]:
    """(role, label) of a recording catalogued before roles were kept, from what the recorder has always written:
    a courseware share's title ends in 「（课件 N）」 and its file in ``-screenN.webm``, a turn on stage 「（上台 name）」
    and ``-stageN.webm``; anything else is the teacher's camera."""
    if m := _COURSEWARE_TITLE.search(title):
        return "courseware", f"课件 {m.group(1)}"
    if m := _STAGE_TITLE.search(title):
        return "stage", m.group(1)
    if m := _COURSEWARE_FILE.search(file):
        return "courseware", f"课件 {m.group(1)}"
    if m := _STAGE_FILE.search(file):
        return "stage", f"上台 {m.group(1)}"
    return "teacher", teacher


def group_by_lesson(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows (id, lesson_id, file, title, teacher; oldest first) grouped into one item per lesson: the lesson's first
    teacher recording (its first recording when it has none) is the item, the others its sources. Returns the
    ``{id, role, label, item_id}`` of every row."""
    lessons: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        role, label = role_of(row["file"], row["title"], row["teacher"] or "")
        lessons.setdefault(row["lesson_id"], []).append({"id": row["id"], "role": role, "label": label})
    out = []
    for group in lessons.values():
        item = next((r for r in group if r["role"] == "teacher"), group[0])
        out.extend({**r, "item_id": None if r is item else item["id"]} for r in group)
    return out

"""The store's tables, declared once (SQLAlchemy 2 declarative): the migrations create them, the code above
queries them. Times are ISO 8601 UTC strings ("2025-03-01T08:00:00Z"), as the catalog has always kept them.

The resource library (资源库):
- ``recordings``: one row per recorded file, its state in the review workflow and its metadata;
  ``search_text`` is the row's text as search tokens (store.search), matched on PostgreSQL through a trigram
  index. On SQLite the full-text index is the FTS5 table ``recordings_fts`` (rowid = recordings.rowid), made
  by the migration, outside these models.
- ``recording_history``: who did what to a recording, in order.
"""

from __future__ import annotations

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
    # HLS renditions on that node (relative to its data dir): migration 0002_recording_node
    node: Mapped[str | None] = mapped_column(Text)
    hls: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("recordings_state", "state", "created_at"),)


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

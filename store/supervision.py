"""The tables of the supervision dashboard (督导) and of webhooks (migration 0005_supervision; ``signaling/supervision/``
queries them). Times are ISO 8601 UTC strings like the rest of the store.

- ``lesson_runs``: a lesson that was held, written when its teacher ended it: its live lesson id (for a timetable
  lesson ``<entry>-<YYYYMMDD>``, so a report tells which scheduled lesson it was), when it started and ended.
- ``lesson_run_classrooms``: each classroom's attendance in a held lesson, from the same rows as its attendance.csv:
  minutes present, minutes with video, average loss and round-trip time.
- ``webhooks``: a URL an administrator registered, its HMAC secret and the events it wants.
- ``webhook_deliveries``: one event for one webhook: its JSON body, attempts, when it is next due; ``dedup`` keeps
  an event that several nodes notice (a classroom absent) to one delivery.
"""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from store.models import Base


class LessonRun(Base):
    __tablename__ = "lesson_runs"

    lesson_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    entry_id: Mapped[str | None] = mapped_column(String(32), index=True)  # None: not a lesson of the timetable
    date: Mapped[str] = mapped_column(String(10), index=True)  # the school's date it was held on
    title: Mapped[str] = mapped_column(Text, server_default="")
    teacher: Mapped[str] = mapped_column(Text, server_default="")
    started_at: Mapped[str | None] = mapped_column(String(32))
    ended_at: Mapped[str] = mapped_column(String(32))


class LessonRunClassroom(Base):
    __tablename__ = "lesson_run_classrooms"

    lesson_id: Mapped[str] = mapped_column(String(160), ForeignKey("lesson_runs.lesson_id", ondelete="CASCADE"),
                                           primary_key=True)
    participant: Mapped[str] = mapped_column(String(160), primary_key=True)  # the classroom account's id
    name: Mapped[str] = mapped_column(Text, server_default="")
    present_s: Mapped[float] = mapped_column(Float)
    video_s: Mapped[float] = mapped_column(Float)
    sessions: Mapped[int] = mapped_column(Integer)
    loss_avg: Mapped[float | None] = mapped_column(Float)
    rtt_ms_avg: Mapped[float | None] = mapped_column(Float)
    kbps_avg: Mapped[float | None] = mapped_column(Float)


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(100))
    events: Mapped[str] = mapped_column(Text)  # space-separated
    created_at: Mapped[str] = mapped_column(String(32))
    disabled: Mapped[int] = mapped_column(Integer, server_default="0")


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(32), ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(40))
    dedup: Mapped[str] = mapped_column(String(300), unique=True)
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(12))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_at: Mapped[float] = mapped_column(Float)  # epoch seconds: when it is due (or claimed until)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[str] = mapped_column(String(32))
    delivered_at: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (Index("webhook_deliveries_due", "state", "next_at"),)


lesson_runs = LessonRun.__table__
lesson_run_classrooms = LessonRunClassroom.__table__
webhooks = Webhook.__table__
webhook_deliveries = WebhookDelivery.__table__

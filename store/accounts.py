"""The tables of accounts, sessions and the timetable (课表), declared on the store's one Base (the migration
0004_accounts creates them; ``signaling/accounts/`` queries them). Times are ISO 8601 UTC strings like the catalog's;
dates are ``YYYY-MM-DD`` and times of day ``HH:MM`` (the school's local time, as a timetable is written).

- ``users``: one row per account: an administrator (district), a teacher, a reviewer, or a classroom (a receiving
  classroom, 接收教室: it has no password, its screens sign in with a device credential).
- ``devices``: a classroom screen's credential (a classroom PC or smart board): revocable, never expires by itself;
  only the SHA-256 of its secret is kept.
- ``sessions``: a signed-in browser: the SHA-256 of its cookie, its CSRF token, when it expires or was revoked.
- ``login_throttle``: failed sign-ins counted per account and per address (``account:<id>``, ``address:<ip>``),
  and until when each is locked out.
- ``terms``: a school term: its first day and how many weeks it has.
- ``timetable_entries``: a lesson of the timetable: one-off (a date) or weekly (a weekday and weeks of a term), its
  time, title, teacher and the curriculum fields the library files the recording under.
- ``timetable_classrooms``: the receiving classrooms of each entry.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from store.models import Base


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16), index=True)
    school: Mapped[str] = mapped_column(Text, server_default="")
    password_hash: Mapped[str | None] = mapped_column(Text)
    disabled: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    classroom_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(Text, server_default="")
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    revoked_at: Mapped[str | None] = mapped_column(String(32))
    last_seen_at: Mapped[str | None] = mapped_column(String(32))


class Session(Base):
    __tablename__ = "sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    seen_at: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[str] = mapped_column(String(32))
    revoked_at: Mapped[str | None] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(Text, server_default="")


class LoginThrottle(Base):
    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, server_default="0")
    window_start: Mapped[str] = mapped_column(String(32))
    locked_until: Mapped[str | None] = mapped_column(String(32))


class Term(Base):
    __tablename__ = "terms"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    start_date: Mapped[str] = mapped_column(String(10))
    weeks: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[str] = mapped_column(String(32))


class TimetableEntry(Base):
    __tablename__ = "timetable_entries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    term_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("terms.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(Text)
    teacher_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "once" | "weekly"
    date: Mapped[str | None] = mapped_column(String(10))  # once
    weekday: Mapped[int | None] = mapped_column(Integer)  # weekly: 1 = Monday ... 7 = Sunday
    weeks: Mapped[str | None] = mapped_column(Text)  # weekly: the term's weeks, e.g. "1-16" or "1,3,5-9"
    period: Mapped[int | None] = mapped_column(Integer)  # 第几节, as the school numbers it (shown only)
    start_time: Mapped[str] = mapped_column(String(5))
    end_time: Mapped[str] = mapped_column(String(5))
    stage: Mapped[str] = mapped_column(Text, server_default="")
    subject: Mapped[str] = mapped_column(Text, server_default="")
    grade: Mapped[str] = mapped_column(Text, server_default="")
    edition: Mapped[str] = mapped_column(Text, server_default="")
    chapter: Mapped[str] = mapped_column(Text, server_default="")
    created_by: Mapped[str] = mapped_column(String(32), server_default="")
    created_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))

    __table_args__ = (Index("timetable_entries_term", "term_id"),)


class TimetableClassroom(Base):
    __tablename__ = "timetable_classrooms"

    entry_id: Mapped[str] = mapped_column(String(32), ForeignKey("timetable_entries.id", ondelete="CASCADE"),
                                          primary_key=True)
    classroom_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id"), primary_key=True, index=True)


users = User.__table__
devices = Device.__table__
sessions = Session.__table__
login_throttle = LoginThrottle.__table__
terms = Term.__table__
timetable_entries = TimetableEntry.__table__
timetable_classrooms = TimetableClassroom.__table__

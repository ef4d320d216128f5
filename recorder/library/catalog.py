"""The resource library (资源库): a catalog of recorded lessons, their review workflow and search.

The catalog lives in the durable store (the ``store`` package: SQLAlchemy 2, async): by default a SQLite file in
the data directory, or one PostgreSQL database shared by every node (``--database-url``). The recordings
themselves are files in ``<data_dir>/recordings/``. Every catalog call is a short async transaction. A catalog
kept by an older ketang (``<data_dir>/library.db``, plain sqlite3) is imported at the first start, once per item,
and left untouched.

One item per lesson: the lesson's first recording (the teacher's camera) is its library item, which search lists,
reviewers review and people play (its composite 课例 once composed: recorder/compose); the lesson's other files
(courseware shares, turns on stage, a later part of the camera) are the item's *sources*, rows pointing to it
(``item_id``), seen, played and downloaded by whoever may see the item.

States (a table, not scattered ifs: see TRANSITIONS)::

    recording ──finish──► processing ──processed──► awaiting_review (待审核) ──publish──► published (已发布)
                                                          ▲      │                      take_down │ ▲ republish
                                                  resubmit│      └──reject──► rejected          ▼ │
                                                          └────────────────────┘          taken_down (已下架)

Who may act: the system (the live recorder, and start-up repair), the teacher who owns the lesson,
a reviewer (审核员; a token with role "reviewer", or the operator at the command line).

Search in Chinese and Latin scripts, the same meaning on both engines (store.search): SQLite FTS5 with each CJK
character a token, PostgreSQL token phrases through a pg_trgm index. Best match first (title hits count most).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

from recorder.library import curriculum
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from store import Store, database_url_from, fts_query, history, like_patterns, migrate, recordings, search_text
from store.models import group_by_lesson
from store import segment as segment
from store.search import MAX_QUERY_CHARS as MAX_QUERY_CHARS
from store.search import MAX_QUERY_TERMS as MAX_QUERY_TERMS

log = logging.getLogger("ketang.recorder.library")

# the catalog of ketang before the store (sqlite3, one file): imported at the first start, left as it was
LEGACY_DB_FILE_NAME: Final[str] = "library.db"
RECORDINGS_DIR_NAME: Final[str] = "recordings"
POSTERS_DIR_NAME: Final[str] = "posters"
EXPORTS_DIR_NAME: Final[str] = "exports"
DEFAULT_PER_PAGE: Final[int] = 20
MAX_PER_PAGE: Final[int] = 100
DEFAULT_LANGUAGE: Final[str] = "zh-CN"
ID_BYTES: Final[int] = 8  # 16 hex characters: safe in URLs and file names

# --- states and the workflow ------------------------------------------------------------------------

RECORDING: Final[str] = "recording"
PROCESSING: Final[str] = "processing"
AWAITING_REVIEW: Final[str] = "awaiting_review"
PUBLISHED: Final[str] = "published"
REJECTED: Final[str] = "rejected"
TAKEN_DOWN: Final[str] = "taken_down"
STATES: Final[tuple[str, ...]] = (RECORDING, PROCESSING, AWAITING_REVIEW, PUBLISHED, REJECTED, TAKEN_DOWN)
# an item still open to the lesson's new files (its review has not happened yet)
OPEN_STATES: Final[tuple[str, ...]] = (RECORDING, PROCESSING, AWAITING_REVIEW)
# what a lesson's file is (the recorder says): the teacher's camera and microphone, a courseware share, a turn on stage
ROLES: Final[tuple[str, ...]] = ("teacher", "courseware", "stage")

# Who acts: "system" is the server itself; "owner" the lesson's teacher; "reviewer" a reviewer.
SYSTEM: Final[str] = "system"
OWNER: Final[str] = "owner"
REVIEWER: Final[str] = "reviewer"

# (state, action) -> (next state, actors allowed)
TRANSITIONS: Final[dict[tuple[str, str], tuple[str, frozenset[str]]]] = {
    (RECORDING, "finish"): (PROCESSING, frozenset({SYSTEM})),
    (PROCESSING, "processed"): (AWAITING_REVIEW, frozenset({SYSTEM})),
    (AWAITING_REVIEW, "publish"): (PUBLISHED, frozenset({REVIEWER})),
    (AWAITING_REVIEW, "reject"): (REJECTED, frozenset({REVIEWER})),
    # a published lesson found wrong afterwards is taken down (下架, a note says why), and put back (重新上架)
    (PUBLISHED, "take_down"): (TAKEN_DOWN, frozenset({REVIEWER})),
    (TAKEN_DOWN, "republish"): (PUBLISHED, frozenset({REVIEWER})),
    # after edits, its teacher (or a reviewer) sends a rejected lesson back for review
    (REJECTED, "resubmit"): (AWAITING_REVIEW, frozenset({OWNER, REVIEWER})),
}
REVIEW_DECISIONS: Final[tuple[str, ...]] = ("publish", "reject")

# --- metadata -----------------------------------------------------------------------------------------

# Editable fields and their length caps (characters). Dublin-Core-like, plus the curriculum fields that
# teachers search by: 学段 stage, 学科 subject, 年级 grade, 教材版本 edition, 册 volume, 单元 unit, 章节 chapter.
METADATA_FIELDS: Final[dict[str, int]] = {
    "title": 200,
    "description": 4000,
    "teacher": 100,
    "school": 200,
    "language": 35,  # a BCP 47 tag: zh-CN, en, bo (藏语)…
    "date": 10,  # YYYY-MM-DD, the day of the lesson
    "license": 100,
    "stage": 50,
    "subject": 50,
    "grade": 50,
    "edition": 100,
    "volume": 50,
    "unit": 200,
    "chapter": 200,
}
CURRICULUM_FIELDS: Final[tuple[str, ...]] = ("stage", "subject", "grade", "edition", "volume", "unit", "chapter")
# Fields a search may filter on by exact value.
FILTER_FIELDS: Final[tuple[str, ...]] = CURRICULUM_FIELDS + ("teacher", "school", "language", "state", "lesson_id")
# The displayed teacher name is part of how a teacher proves ownership (see Viewer.owns), so only a
# reviewer may change it.
REVIEWER_ONLY_FIELDS: Final[frozenset[str]] = frozenset({"teacher"})
REQUIRED_FIELDS: Final[frozenset[str]] = frozenset({"title"})
MAX_NOTE_CHARS: Final[int] = 2000
_LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")


class LibraryError(Exception):
    """A refused library operation. ``code`` is machine-readable (not_found, forbidden, invalid_transition,
    invalid_field, bad_request); ``message`` explains it to a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Viewer:
    """Who is asking: built from a verified token's claims (role, sub, name, lesson), or anonymous."""

    role: str | None = None  # None: anonymous
    sub: str = ""
    name: str = ""
    lesson: str = ""

    @classmethod
    def anonymous(cls) -> Viewer:
        return cls()

    @classmethod
    def operator(cls, name: str = "operator") -> Viewer:
        """Whoever runs `ketang library` on the server's data directory: a reviewer."""
        return cls(role="reviewer", sub="operator", name=name)

    @classmethod
    def from_claims(cls, claims: Any) -> Viewer:
        return cls(role=claims.role, sub=claims.sub, name=claims.name, lesson=claims.lesson)

    @property
    def is_reviewer(self) -> bool:
        return self.role == "reviewer"

    def owns(self, rec: Recording) -> bool:
        """The lesson's teacher: the same participant id that started the recording, or a teacher token
        for the same lesson under the same name (tokens get fresh ids; lesson + name is the identity)."""
        if self.role != "teacher":
            return False
        if self.sub and self.sub == rec.teacher_sub:
            return True
        return bool(self.lesson) and self.lesson == rec.lesson_id and self.name == rec.teacher

    def can_see(self, rec: Recording) -> bool:
        return rec.state == PUBLISHED or self.is_reviewer or self.owns(rec)

    def actors(self, rec: Recording) -> frozenset[str]:
        roles = set()
        if self.is_reviewer:
            roles.add(REVIEWER)
        if self.owns(rec):
            roles.add(OWNER)
        return frozenset(roles)


SYSTEM_VIEWER: Final[Viewer] = Viewer(role=SYSTEM, sub=SYSTEM, name=SYSTEM)


@dataclass(frozen=True)
class Recording:
    id: str
    lesson_id: str
    file: str  # relative to the data dir
    state: str
    created_at: str
    updated_at: str
    teacher_sub: str
    title: str = ""
    description: str = ""
    teacher: str = ""
    school: str = ""
    language: str = DEFAULT_LANGUAGE
    date: str = ""
    license: str = ""
    stage: str = ""
    subject: str = ""
    grade: str = ""
    edition: str = ""
    volume: str = ""
    unit: str = ""
    chapter: str = ""
    duration_s: float | None = None
    size_bytes: int | None = None
    poster: str | None = None  # relative to the data dir
    mp4: str | None = None  # relative to the data dir
    reviewer: str | None = None
    review_note: str | None = None
    reviewed_at: str | None = None
    # None: the whole lesson is in the file. Otherwise why it is not (the recorder stopped writing: a full disk,
    # a write error), in words for the reviewer; the file holds what was written before
    incomplete: str | None = None
    node: str | None = None  # the base URL of the node that wrote it (None: before nodes were recorded)
    hls: str | None = None  # its HLS renditions' folder on that node, relative to its data dir
    # None: a lesson's item. Otherwise the item this file is a source of
    item_id: str | None = None
    role: str = "teacher"  # ROLES
    label: str = ""  # 课件 1, the class on stage, the teacher's name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS: Final[tuple[str, ...]] = tuple(f.name for f in fields(Recording))
# The search text of each recording by FTS column (SQLite) / search_text part (PostgreSQL), in this order.
_SEARCH_PARTS: Final[tuple[str, ...]] = ("title", "description", "people", "curriculum")
# bm25 weights per FTS column, and the same weights of a hit per part on PostgreSQL: a hit in the title counts most
_SEARCH_WEIGHTS: Final[tuple[float, ...]] = (10.0, 1.0, 3.0, 5.0)
_FTS_WEIGHTS: Final[str] = ", ".join(str(w) for w in _SEARCH_WEIGHTS)
_FTS = sa.table("recordings_fts", sa.column("rowid"))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _search_parts(row: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (row["title"], row["description"], " ".join([row["teacher"], row["school"]]),
            " ".join(row[f] for f in CURRICULUM_FIELDS))


class Library:
    """The catalog, on the store at ``database_url`` (None: KETANG_DATABASE_URL, else the SQLite file in the data
    directory). Async: every method that reads or writes the catalog is awaited. The store is opened (migrated to
    the newest schema, an old library.db imported) by ``open()``, or by the first call that needs it; a store that
    cannot be opened (a full disk, PostgreSQL down) is tried again by each later call."""

    def __init__(self, data_dir: Path, *, database_url: str | None = None, clock: Callable[[], float] = time.time,
                 poster_maker: Callable[[Path, Path], Any] | None = None, node_url: str | None = None,
                 media_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        # where recordings are written: data_dir/recordings, or --media-dir (e.g. a mount every node shares);
        # stored paths keep the "recordings/" prefix, so each node finds them under its own media dir
        self.recordings_dir = Path(media_dir) if media_dir else self.data_dir / RECORDINGS_DIR_NAME
        # each lesson's folder (its record files, composite 课例 and HLS renditions): in the media dir when there is
        # one, so that any node sharing it can compose and serve the lesson (recorder/compose/shared.py)
        self.lessons_dir = (Path(media_dir) if media_dir else self.data_dir) / "lessons"
        # this node's base URL, written on each recording it starts (another node proxies its files from there)
        self.node_url = node_url
        self.posters_dir = self.data_dir / POSTERS_DIR_NAME
        self.exports_dir = self.data_dir / EXPORTS_DIR_NAME
        for d in (self.data_dir, self.recordings_dir, self.posters_dir, self.exports_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.store = Store(database_url_from(database_url, self.data_dir))
        self.legacy_db_path = self.data_dir / LEGACY_DB_FILE_NAME
        self._clock = clock
        if poster_maker is None:
            # imported here: the catalog alone (CLI list/search) needs no PyAV
            from recorder.library.export import make_poster as poster_maker
        self._make_poster = poster_maker
        self._opened = False
        self._open_lock = asyncio.Lock()
        # lesson records that could not be written (a full disk): lesson id -> (record, attendance, chat),
        # written again at the next chance (see save_lesson_record)
        self._pending_records: dict[str, tuple[dict[str, Any], str, str]] = {}
        self._pending_lock = threading.Lock()

    @property
    def sqlite(self) -> bool:
        return self.store.dialect == "sqlite"

    # --- opening and closing -------------------------------------------------------------------------

    async def open(self) -> Library:
        """Migrate the store to the newest schema and import an old catalog (library.db); idempotent."""
        if self._opened:
            return self
        async with self._open_lock:
            if not self._opened:
                await migrate(self.store)
                if self.legacy_db_path.exists():
                    await self.import_legacy(self.legacy_db_path)
                self._opened = True
        return self

    async def close(self) -> None:
        await self.store.close()
        self._opened = False

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        await self.open()
        async with self.store.read() as db:
            yield db

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        await self.open()
        async with self.store.write() as db:
            yield db

    # --- paths ---------------------------------------------------------------------------------------

    def path_of(self, relative: str) -> Path:
        """An absolute path for a stored relative one, refusing anything that escapes the data dir (or, for a
        recording, the media dir)."""
        root = self.data_dir.resolve()
        head, _, rest = relative.partition("/")
        if head == RECORDINGS_DIR_NAME and rest:
            root = self.recordings_dir.resolve()
            relative = rest
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise LibraryError("bad_request", "path outside the data directory")
        return path

    def relative(self, file: Path) -> str:
        """How the catalog stores a path of the data (or media) directory; path_of reads it back."""
        return self._relative(file)

    def _relative(self, file: Path) -> str:
        file = Path(file)
        if not file.is_absolute():
            file = self.data_dir / file
        try:
            return f"{RECORDINGS_DIR_NAME}/{file.resolve().relative_to(self.recordings_dir.resolve()).as_posix()}"
        except ValueError:
            pass
        try:
            return file.resolve().relative_to(self.data_dir.resolve()).as_posix()
        except ValueError:
            raise LibraryError("bad_request", f"{file} is not inside the data directory {self.data_dir}") from None

    # --- a lesson's record: attendance, chat, who was on stage when ----------------------------------

    LESSON_RECORD_FILES = ("record.json", "attendance.csv", "chat.csv")

    def save_lesson_record(self, lesson_id: str, record: dict[str, Any], attendance_csv: str, chat_csv: str) -> None:
        """Kept next to the lesson's recordings (written again if the lesson goes on after everyone left).

        When it cannot be written (a full disk) this says so in one log line and raises nothing: the record is
        kept in memory and written at the next chance this process has (the next lesson record, recording start
        or finish; `retry_pending`). It is lost if the server stops before there is room again."""
        with self._pending_lock:
            self._pending_records.pop(lesson_id, None)  # this one is newer
        self.retry_pending()
        try:
            self._write_lesson_record(lesson_id, record, attendance_csv, chat_csv)
        except OSError as exc:
            with self._pending_lock:
                self._pending_records[lesson_id] = (record, attendance_csv, chat_csv)
            log.error("lesson %s: its record (attendance, chat, stage timeline) could not be written to %s: %s. "
                      "It is kept in memory and written again when there is room (lost if the server stops "
                      "first): free space in %s", lesson_id, self._record_dir(lesson_id), _os_reason(exc),
                      self.data_dir)

    def _write_lesson_record(self, lesson_id: str, record: dict[str, Any], attendance_csv: str,
                             chat_csv: str) -> None:
        folder = self._record_dir(lesson_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (("record.json", json.dumps(record, ensure_ascii=False, indent=1)),
                           ("attendance.csv", attendance_csv), ("chat.csv", chat_csv)):
            _write_atomic(folder / name, text)

    def pending_records(self) -> list[str]:
        """The lessons whose record is waiting in memory for room on the disk."""
        with self._pending_lock:
            return list(self._pending_records)

    def retry_pending(self) -> int:
        """Write the lesson records a full disk kept in memory; returns how many are still waiting."""
        with self._pending_lock:
            pending = list(self._pending_records.items())
        for lesson_id, (record, attendance_csv, chat_csv) in pending:
            try:
                self._write_lesson_record(lesson_id, record, attendance_csv, chat_csv)
            except OSError:
                break  # still no room: no point trying the others now
            with self._pending_lock:
                if self._pending_records.get(lesson_id, (None,))[0] is record:
                    del self._pending_records[lesson_id]
            log.info("lesson %s: its record was written after all", lesson_id)
        with self._pending_lock:
            return len(self._pending_records)

    def lesson_record_file(self, lesson_id: str, name: str) -> Path | None:
        if name not in self.LESSON_RECORD_FILES:
            return None
        path = self._record_dir(lesson_id) / name
        return path if path.exists() else None

    def lesson_record_dir(self, lesson_id: str) -> Path:
        """The lesson's folder: its record files, and its composite 课例 (recorder/compose)."""
        return self._record_dir(lesson_id)

    def _record_dir(self, lesson_id: str) -> Path:
        safe = "".join(ch for ch in lesson_id if ch.isalnum() or ch in "-_")
        if not safe:
            raise LibraryError("bad_request", "no such lesson")
        folder = self.lessons_dir / safe
        if not folder.exists() and (old := self.data_dir / "lessons" / safe).exists():
            return old  # (a lesson recorded before the node had a media dir)
        return folder

    # --- the recorder's API --------------------------------------------------------------------------

    async def start_recording(self, lesson_id: str, title: str, teacher: str, teacher_sub: str, file: Path, *,
                              role: str | None = None, label: str = "") -> str:
        """Catalogue a recording that is starting now; returns its id. State "recording".

        ``role`` (ROLES) is given by the live recorder for each file of a lesson: the file joins the lesson's item
        still open (not yet reviewed) as one of its sources, or, when there is none, becomes the lesson's item.
        Without a role (an import) the file is an item of its own."""
        if not lesson_id or not teacher_sub:
            raise LibraryError("bad_request", "lesson_id and teacher_sub are required")
        if role is not None and role not in ROLES:
            raise LibraryError("bad_request", f"role must be one of {', '.join(ROLES)}")
        if self._pending_records:
            self.retry_pending()
        now = self._clock()
        rec_id = secrets.token_hex(ID_BYTES)
        row = {
            "id": rec_id, "lesson_id": lesson_id, "file": self._relative(file), "state": RECORDING,
            "created_at": _iso(now), "updated_at": _iso(now), "teacher_sub": teacher_sub,
            "title": (title or lesson_id)[: METADATA_FIELDS["title"]],
            "teacher": (teacher or "")[: METADATA_FIELDS["teacher"]],
            "language": DEFAULT_LANGUAGE, "date": datetime.fromtimestamp(now).date().isoformat(),
            "node": self.node_url,
            "role": role or "teacher", "label": (label or (teacher if (role or "teacher") == "teacher" else ""))[:200],
        }
        async with self._write() as db:
            if role is not None:
                row["item_id"] = await self._open_item(db, lesson_id)
            await db.execute(sa.insert(recordings).values(row))
            await self._reindex(db, rec_id)
            await self._log(db, rec_id, SYSTEM_VIEWER, "start", None, RECORDING, None)
        log.info("recording %s started for lesson %s", rec_id, lesson_id)
        return rec_id

    async def finish_recording(self, rec_id: str, duration_s: float, size_bytes: int,
                               incomplete: str | None = None) -> None:
        """The recording's file is written: "recording" -> "processing", make the poster (in a thread: one
        keyframe decode), then "awaiting_review".

        ``incomplete``: why the file does not hold the whole lesson (the recorder stopped writing it), kept on the
        item for the reviewer; None when it does. A catalog that cannot be written (a full disk) raises before
        the poster is made; a recording left "processing" (stopped between the steps) is taken on from there by
        a later call."""
        if self._pending_records:
            self.retry_pending()
        lines: list[tuple[Any, ...]] = []
        async with self._write() as db:
            rec = await self._get(db, rec_id, lock=True)
            if rec.state != PROCESSING:
                extra: dict[str, Any] = {"duration_s": float(duration_s), "size_bytes": int(size_bytes)}
                if incomplete:
                    extra["incomplete"] = incomplete[:MAX_NOTE_CHARS]
                await self._transition(db, rec, "finish", SYSTEM_VIEWER,
                                       f"incomplete: {incomplete}"[:MAX_NOTE_CHARS] if incomplete else None, extra,
                                       lines)
        _log_lines(lines)
        poster = await asyncio.to_thread(self._poster_for, rec)
        async with self._write() as db:
            rec = await self._get(db, rec_id, lock=True)
            await self._transition(db, rec, "processed", SYSTEM_VIEWER, None, {"poster": poster}, lines)
        _log_lines(lines)

    async def _open_item(self, db: AsyncConnection, lesson_id: str) -> str | None:
        """The lesson's newest item not yet reviewed, which a new file of the lesson joins; None: none."""
        r = recordings.c
        return (await db.execute(sa.select(r.id).where(r.lesson_id == lesson_id, r.item_id.is_(None),
                                                       r.state.in_(OPEN_STATES))
                                 .order_by(r.created_at.desc(), r.id.desc()).limit(1))).scalar()

    async def item_for_lesson(self, lesson_id: str, viewer: Viewer) -> Recording:
        """The lesson's newest item visible to ``viewer`` (the teacher page's link at the lesson's end)."""
        r = recordings.alias("r")
        async with self._read() as db:
            row = (await db.execute(sa.select(r).where(r.c.lesson_id == lesson_id, r.c.item_id.is_(None),
                                                       *self._visible(r, viewer))
                                    .order_by(r.c.created_at.desc(), r.c.id.desc()).limit(1))).mappings().first()
        if row is None:
            raise LibraryError("not_found", f"no library item of lesson {lesson_id!r} visible to you")
        return _recording(row)

    async def newest_item_id(self, lesson_id: str) -> str | None:
        """The id of the lesson's newest item, whoever asks (the server tells the teacher at the lesson's end)."""
        r = recordings.c
        async with self._read() as db:
            return (await db.execute(sa.select(r.id).where(r.lesson_id == lesson_id, r.item_id.is_(None))
                                     .order_by(r.created_at.desc(), r.id.desc()).limit(1))).scalar()

    async def sources(self, item: Recording) -> list[Recording]:
        """The item's files: itself first, then its sources as they started."""
        if item.item_id is not None:
            raise LibraryError("bad_request", f"{item.id} is a source, not a lesson item")
        async with self._read() as db:
            rows = await db.execute(sa.select(recordings).where(recordings.c.item_id == item.id)
                                    .order_by(recordings.c.created_at, recordings.c.id))
            return [item, *(_recording(r) for r in rows.mappings())]

    async def unfinished(self) -> list[Recording]:
        """Recordings not yet finished: "recording" (after a crash, or when the catalog could not be written at
        the lesson's end) or "processing" (stopped between the two steps). Start-up repair finishes them."""
        async with self._read() as db:
            rows = await db.execute(sa.select(recordings).where(recordings.c.state.in_((RECORDING, PROCESSING)))
                                    .order_by(recordings.c.created_at))
            return [_recording(r) for r in rows.mappings()]

    async def get(self, rec_id: str) -> Recording | None:
        async with self._read() as db:
            row = (await db.execute(sa.select(recordings).where(recordings.c.id == rec_id))).mappings().first()
            return _recording(row) if row else None

    # --- people's API --------------------------------------------------------------------------------

    async def get_for(self, rec_id: str, viewer: Viewer) -> Recording:
        """The recording if ``viewer`` may see it (a source: if they may see its item); otherwise not_found (never
        reveal unpublished ones)."""
        rec = await self.get(rec_id)
        item = await self.item_of(rec) if rec is not None else None
        if rec is None or item is None or not viewer.can_see(item):
            raise LibraryError("not_found", f"no recording {rec_id!r} visible to you")
        return rec

    async def item_of(self, rec: Recording) -> Recording | None:
        """The lesson item ``rec`` belongs to: itself when it is one."""
        return rec if rec.item_id is None else await self.get(rec.item_id)

    async def search(self, query: str = "", filters: Mapping[str, str] | None = None, page: int = 1,
                     per_page: int = DEFAULT_PER_PAGE, viewer: Viewer = Viewer()) -> tuple[list[Recording], int]:
        """Lesson items visible to ``viewer`` matching ``query`` (store.search) and every exact-value
        filter (FILTER_FIELDS); best match first when there is a query, newest first otherwise. A query term or a
        curriculum filter finds its synonyms too (curriculum: 初一 finds 七年级 and the other way round).
        Returns (one page, total number of matches)."""
        filters = dict(filters or {})
        unknown = set(filters) - set(FILTER_FIELDS)
        if unknown:
            raise LibraryError("invalid_field", f"cannot filter on {', '.join(sorted(unknown))}")
        if not isinstance(page, int) or page < 1:
            raise LibraryError("bad_request", "page must be a positive integer")
        if not isinstance(per_page, int) or not 1 <= per_page <= MAX_PER_PAGE:
            raise LibraryError("bad_request", f"per_page must be between 1 and {MAX_PER_PAGE}")

        r = recordings.alias("r")
        where = [r.c.item_id.is_(None), *self._visible(r, viewer)]
        for name, value in filters.items():
            if value not in (None, ""):
                where.append(r.c[name].in_(curriculum.same_as(curriculum.canonical(name, str(value)))))
        terms = [curriculum.expand_term(t) for t in (query or "")[:MAX_QUERY_CHARS].split()[:MAX_QUERY_TERMS]]
        order: list[Any] = [r.c.created_at.desc(), r.c.id]
        source: Any = r
        if self.sqlite:
            match = _fts_match(terms)
            if match is not None:
                # the matches first (one FTS5 query, materialized), then joined to their rows: a plain join lets
                # SQLite walk the rows and ask the index about each (~100 times slower on 10,000 items)
                hits = (sa.select(_FTS.c.rowid.label("fid"),
                                  sa.literal_column(f"bm25(recordings_fts, {_FTS_WEIGHTS})").label("rank"))
                        .select_from(_FTS).where(sa.text("recordings_fts MATCH :match").bindparams(match=match))
                        .cte("hits").prefix_with("MATERIALIZED"))
                source = r.join(hits, hits.c.fid == sa.literal_column("r.rowid"))
                order.insert(0, hits.c.rank)
        else:
            alternatives = [[p for alt in term for p in like_patterns(alt)] for term in terms]
            alternatives = [a for a in alternatives if a]
            where.extend(sa.or_(*(r.c.search_text.like(p) for p in alt)) for alt in alternatives)
            patterns = [p for alt in alternatives for p in alt]
            if patterns:
                score = sum((sa.case((sa.func.split_part(r.c.search_text, "~", i + 1).like(p), w), else_=0)
                             for p in patterns for i, w in enumerate(_SEARCH_WEIGHTS)), sa.literal(0))
                order.insert(0, sa.desc(score))
        async with self._read() as db:
            total = (await db.execute(sa.select(sa.func.count()).select_from(source).where(*where))).scalar_one()
            rows = await db.execute(sa.select(r).select_from(source).where(*where).order_by(*order)
                                    .limit(per_page).offset((page - 1) * per_page))
            return [_recording(row) for row in rows.mappings()], int(total)

    async def update_metadata(self, rec_id: str, fields: Mapping[str, Any], viewer: Viewer) -> Recording:
        """Change metadata. The owning teacher edits until publication; a reviewer edits any time."""
        async with self._write() as db:
            rec = await self._item(db, rec_id, viewer)
            actors = viewer.actors(rec)
            if not actors:
                raise LibraryError("forbidden", "only the lesson's teacher or a reviewer may edit it")
            if REVIEWER not in actors and rec.state in (PUBLISHED, TAKEN_DOWN):
                raise LibraryError("forbidden", "a published (or taken down) lesson is edited by a reviewer only")
            clean = validate_metadata(fields, reviewer=REVIEWER in actors)
            if clean:
                await db.execute(sa.update(recordings).where(recordings.c.id == rec_id)
                                 .values(**clean, updated_at=_iso(self._clock())))
                await self._reindex(db, rec_id)
                await self._log(db, rec_id, viewer, "edit", rec.state, rec.state, ", ".join(sorted(clean)))
            return await self._get(db, rec_id)

    async def review(self, rec_id: str, decision: str, note: str, viewer: Viewer) -> Recording:
        """A reviewer publishes or rejects (a rejection says why in ``note``)."""
        if decision not in REVIEW_DECISIONS:
            raise LibraryError("bad_request", f"decision must be one of {', '.join(REVIEW_DECISIONS)}")
        note = (note or "").strip()
        lines: list[tuple[Any, ...]] = []
        async with self._write() as db:
            rec = await self._item(db, rec_id, viewer)
            who = _actors_for(decision)
            if not viewer.actors(rec) & who:  # who may decide comes before what the note says
                raise LibraryError("forbidden", f"only {' or '.join(sorted(who))} may {decision} a recording")
            if len(note) > MAX_NOTE_CHARS:
                raise LibraryError("invalid_field", f"note is longer than {MAX_NOTE_CHARS} characters")
            if decision == "reject" and not note:
                raise LibraryError("invalid_field", "a rejection needs a note telling the teacher what to fix")
            extra = {"reviewer": viewer.name or viewer.sub, "review_note": note, "reviewed_at": _iso(self._clock())}
            await self._transition(db, rec, decision, viewer, note, extra, lines)
            rec = await self._get(db, rec_id)
        _log_lines(lines)
        return rec

    async def resubmit(self, rec_id: str, viewer: Viewer) -> Recording:
        """A rejected lesson goes back to 待审核 after its teacher's edits."""
        lines: list[tuple[Any, ...]] = []
        async with self._write() as db:
            rec = await self._item(db, rec_id, viewer)
            await self._transition(db, rec, "resubmit", viewer, None, {}, lines)
            rec = await self._get(db, rec_id)
        _log_lines(lines)
        return rec

    async def take_down(self, rec_id: str, note: str, viewer: Viewer) -> Recording:
        """下架: a reviewer takes a published lesson down, saying why (the teacher sees the note)."""
        return await self._reviewer_step(rec_id, "take_down", note, viewer, note_required=True)

    async def republish(self, rec_id: str, note: str, viewer: Viewer) -> Recording:
        """重新上架: a reviewer puts a lesson taken down back up."""
        return await self._reviewer_step(rec_id, "republish", note, viewer, note_required=False)

    async def _reviewer_step(self, rec_id: str, action: str, note: str, viewer: Viewer, *,
                             note_required: bool) -> Recording:
        note = (note or "").strip()
        lines: list[tuple[Any, ...]] = []
        async with self._write() as db:
            rec = await self._item(db, rec_id, viewer)
            if not viewer.actors(rec) & _actors_for(action):
                raise LibraryError("forbidden", f"only a reviewer may {action.replace('_', ' ')} a lesson")
            if len(note) > MAX_NOTE_CHARS:
                raise LibraryError("invalid_field", f"note is longer than {MAX_NOTE_CHARS} characters")
            if note_required and not note:
                raise LibraryError("invalid_field", "taking a lesson down needs a note saying why (its teacher "
                                                    "reads it)")
            extra: dict[str, Any] = {"reviewer": viewer.name or viewer.sub, "reviewed_at": _iso(self._clock())}
            if note or note_required:
                extra["review_note"] = note
            await self._transition(db, rec, action, viewer, note or None, extra, lines)
            rec = await self._get(db, rec_id)
        _log_lines(lines)
        return rec

    async def set_mp4(self, rec_id: str, mp4: Path | None) -> None:
        """Record (or clear) the exported MP4 of a recording; system-only, no state change."""
        async with self._write() as db:
            await self._get(db, rec_id)
            await db.execute(sa.update(recordings).where(recordings.c.id == rec_id).values(
                mp4=self._relative(mp4) if mp4 else None, updated_at=_iso(self._clock())))

    async def set_hls(self, rec_id: str, folder: Path | None) -> None:
        """Record (or clear) the folder of a recording's HLS renditions; system-only, no state change."""
        async with self._write() as db:
            await self._get(db, rec_id)
            await db.execute(sa.update(recordings).where(recordings.c.id == rec_id).values(
                hls=self._relative(folder) if folder else None, updated_at=_iso(self._clock())))

    async def published_without_hls(self, node_url: str | None, limit: int = 100) -> list[Recording]:
        """Published recordings written by ``node_url`` (or before nodes were recorded) with no renditions yet."""
        r = recordings.c
        async with self._read() as db:
            rows = await db.execute(sa.select(recordings).where(
                r.state == PUBLISHED, r.hls.is_(None), sa.or_(r.node.is_(None), r.node == node_url))
                .order_by(r.updated_at).limit(limit))
            return [_recording(row) for row in rows.mappings()]

    async def history(self, rec_id: str) -> list[dict[str, Any]]:
        h = history.c
        async with self._read() as db:
            rows = await db.execute(sa.select(h.at, h.actor, h.action, h.from_state, h.to_state, h.note)
                                    .where(h.rec_id == rec_id).order_by(h.seq))
            return [dict(r) for r in rows.mappings()]

    async def import_file(self, file: Path, *, lesson_id: str, teacher: str, teacher_sub: str,
                          metadata: Mapping[str, Any], duration_s: float, size_bytes: int) -> str:
        """Catalogue an existing, complete recording (already inside the data dir) and take it to
        awaiting_review, as if it had been recorded live."""
        clean = validate_metadata(metadata, reviewer=True)
        rec_id = await self.start_recording(lesson_id, str(metadata.get("title") or Path(file).stem), teacher,
                                            teacher_sub, file)
        if clean:
            async with self._write() as db:
                await db.execute(sa.update(recordings).where(recordings.c.id == rec_id).values(**clean))
                await self._reindex(db, rec_id)
        await self.finish_recording(rec_id, duration_s, size_bytes)
        return rec_id

    async def import_legacy(self, path: Path) -> int:
        """Bring the items of an old catalog (sqlite3 ``library.db``) into the store, with their history: every
        item the store does not hold yet (idempotent: run at every start while the file is there). The file is
        opened read-only and left as it was. Returns how many items were imported."""
        items, events = await asyncio.to_thread(_read_legacy, path)
        if not items:
            return 0
        async with self.store.write() as db:
            have = set((await db.execute(sa.select(recordings.c.id)
                                         .where(recordings.c.id.in_([i["id"] for i in items])))).scalars())
            new = [i for i in items if i["id"] not in have]
            # one item per lesson, as migration 0002 groups what the store held (store.models.group_by_lesson)
            groups = {g["id"]: g for g in group_by_lesson(sorted(new, key=lambda i: (i["created_at"], i["id"])))}
            for item in sorted(new, key=lambda i: groups[i["id"]]["item_id"] is not None):
                await db.execute(sa.insert(recordings).values({**item, **groups[item["id"]]}))
                await self._reindex(db, item["id"])
            ids = {i["id"] for i in new}
            rows = [e for e in events if e["rec_id"] in ids]
            if rows:
                await db.execute(sa.insert(history), rows)
        if new:
            log.info("library: %d item(s) imported from the old catalog %s (left as it was)", len(new), path)
        return len(new)

    # --- internals -----------------------------------------------------------------------------------

    def _visible(self, r: Any, viewer: Viewer) -> list[Any]:
        if viewer.is_reviewer:
            return []
        if viewer.role == "teacher":
            mine = [r.c.state == PUBLISHED, r.c.teacher_sub == viewer.sub]
            if viewer.lesson:
                mine.append(sa.and_(r.c.lesson_id == viewer.lesson, r.c.teacher == viewer.name))
            return [sa.or_(*mine)]
        return [r.c.state == PUBLISHED]

    async def _item(self, db: AsyncConnection, rec_id: str, viewer: Viewer) -> Recording:
        """The lesson item ``rec_id``, locked, for a person's change: not_found when ``viewer`` may not see it, and
        a source (reviewed, edited, taken down with its item) refused saying which item to act on."""
        rec = await self._get(db, rec_id, lock=True)
        if rec.item_id is not None:
            item = await self._get(db, rec.item_id)
            if not viewer.can_see(item):
                raise LibraryError("not_found", f"no recording {rec_id!r} visible to you")
            raise LibraryError("bad_request", f"{rec_id} is a source of the lesson item {rec.item_id}: "
                                              f"act on the item")
        if not viewer.can_see(rec):
            raise LibraryError("not_found", f"no recording {rec_id!r} visible to you")
        return rec

    async def _get(self, db: AsyncConnection, rec_id: str, *, lock: bool = False) -> Recording:
        """The row, locked for this transaction on PostgreSQL when ``lock`` (SQLite's write transaction holds
        the whole database already)."""
        query = sa.select(recordings).where(recordings.c.id == rec_id)
        if lock and not self.sqlite:
            query = query.with_for_update()
        row = (await db.execute(query)).mappings().first()
        if row is None:
            raise LibraryError("not_found", f"no recording {rec_id!r}")
        return _recording(row)

    async def _transition(self, db: AsyncConnection, rec: Recording, action: str, viewer: Viewer,
                          note: str | None, extra: Mapping[str, Any], lines: list[tuple[Any, ...]]) -> None:
        """Take ``rec`` through ``action``; the log line goes to ``lines``, logged once committed."""
        step = TRANSITIONS.get((rec.state, action))
        if step is None:
            allowed = sorted(a for (s, a) in TRANSITIONS if s == rec.state)
            raise LibraryError("invalid_transition",
                               f"cannot {action} a recording that is {rec.state} "
                               f"(possible: {', '.join(allowed) or 'nothing'})")
        to_state, who = step
        actors = {SYSTEM} if viewer is SYSTEM_VIEWER else viewer.actors(rec)
        if not actors & who:
            raise LibraryError("forbidden", f"only {' or '.join(sorted(who))} may {action} a recording")
        await db.execute(sa.update(recordings)
                         .where(recordings.c.id == rec.id, recordings.c.state == rec.state)
                         .values(state=to_state, updated_at=_iso(self._clock()), **extra))
        await self._log(db, rec.id, viewer, action, rec.state, to_state, note)
        lines.append(("recording %s: %s -> %s (%s by %s)", rec.id, rec.state, to_state, action,
                      viewer.name or viewer.role))

    async def _log(self, db: AsyncConnection, rec_id: str, viewer: Viewer, action: str, from_state: str | None,
                   to_state: str | None, note: str | None) -> None:
        await db.execute(sa.insert(history).values(
            rec_id=rec_id, at=_iso(self._clock()), actor=f"{viewer.role}:{viewer.name or viewer.sub}",
            action=action, from_state=from_state, to_state=to_state, note=note))

    async def _reindex(self, db: AsyncConnection, rec_id: str) -> None:
        """The item's search text, from its columns: the FTS5 row on SQLite, search_text on PostgreSQL."""
        if self.sqlite:
            row = (await db.execute(sa.text("SELECT rowid, * FROM recordings WHERE id = :id"),
                                    {"id": rec_id})).mappings().one()
            parts = [segment(p) for p in _search_parts(row)]
            await db.execute(sa.text("DELETE FROM recordings_fts WHERE rowid = :rowid"), {"rowid": row["rowid"]})
            await db.execute(sa.text("INSERT INTO recordings_fts (rowid, title, description, people, curriculum) "
                                     "VALUES (:rowid, :p0, :p1, :p2, :p3)"),
                             {"rowid": row["rowid"], **{f"p{i}": p for i, p in enumerate(parts)}})
        else:
            row = (await db.execute(sa.select(recordings).where(recordings.c.id == rec_id))).mappings().one()
            await db.execute(sa.update(recordings).where(recordings.c.id == rec_id)
                             .values(search_text=search_text(_search_parts(row))))

    def _poster_for(self, rec: Recording) -> str | None:
        dst = self.posters_dir / f"{rec.id}.jpg"
        try:
            self._make_poster(self.path_of(rec.file), dst)
        except Exception as exc:  # noqa: BLE001 - an audio-only or damaged file still goes to review
            log.warning("no poster for recording %s: %s", rec.id, exc)
            return None
        return self._relative(dst)


def _log_lines(lines: list[tuple[Any, ...]]) -> None:
    """The state changes of a committed transaction, logged (and forgotten)."""
    for args in lines:
        log.info(*args)
    lines.clear()


_LEGACY_HISTORY_COLUMNS: Final[tuple[str, ...]] = ("rec_id", "at", "actor", "action", "from_state", "to_state",
                                                   "note")


def _read_legacy(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The items and history of an old catalog (read-only: the file is not changed, not even its journal)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "recordings" not in tables:
            return [], []
        items = []
        for row in db.execute("SELECT * FROM recordings ORDER BY rowid"):
            item = {k: row[k] for k in _COLUMNS if k in row.keys()}  # (an older catalog lacks `incomplete`)
            items.append(item)
        events = []
        if "history" in tables:
            events = [{k: row[k] for k in _LEGACY_HISTORY_COLUMNS}
                      for row in db.execute("SELECT * FROM history ORDER BY rowid")]
        return items, events
    finally:
        db.close()


def validate_metadata(fields: Mapping[str, Any], *, reviewer: bool) -> dict[str, str]:
    """Known fields only, strings only, within their caps; dates and language tags well formed.
    Raises LibraryError("invalid_field", ...) naming the first bad field."""
    if not isinstance(fields, Mapping):
        raise LibraryError("invalid_field", "metadata must be an object")
    clean: dict[str, str] = {}
    for name, value in fields.items():
        if name not in METADATA_FIELDS:
            raise LibraryError("invalid_field", f"unknown field {name!r}")
        if name in REVIEWER_ONLY_FIELDS and not reviewer:
            raise LibraryError("forbidden", f"only a reviewer may change {name!r}")
        if not isinstance(value, str):
            raise LibraryError("invalid_field", f"{name} must be a string")
        value = value.strip()
        if len(value) > METADATA_FIELDS[name]:
            raise LibraryError("invalid_field", f"{name} is longer than {METADATA_FIELDS[name]} characters")
        if any(ord(c) < 32 and c not in "\n\t" for c in value):
            raise LibraryError("invalid_field", f"{name} contains control characters")
        if name in REQUIRED_FIELDS and not value:
            raise LibraryError("invalid_field", f"{name} must not be empty")
        if name == "date" and value:
            try:
                date.fromisoformat(value)
            except ValueError:
                raise LibraryError("invalid_field", "date must be YYYY-MM-DD") from None
            if len(value) != 10:
                raise LibraryError("invalid_field", "date must be YYYY-MM-DD")
        if name in curriculum.CONTROLLED_FIELDS or name == "edition":
            try:
                value = curriculum.check(name, value)
            except ValueError as exc:
                raise LibraryError("invalid_field", str(exc)) from None
        if name == "language" and value and not _LANGUAGE_RE.match(value):
            raise LibraryError("invalid_field", "language must be a language tag such as zh-CN")
        clean[name] = value
    return clean


def _fts_match(terms: list[tuple[str, ...]]) -> str | None:
    """An FTS5 expression: each term (with its synonyms: ORed) a quoted phrase (store.fts_query), the terms ANDed."""
    groups = []
    for alternatives in terms:
        phrases = [p for p in (fts_query(a) for a in alternatives) if p]
        if phrases:
            groups.append(phrases[0] if len(phrases) == 1 else "(" + " OR ".join(phrases) + ")")
    # (an explicit AND: FTS5 allows an implicit one between phrases only, not after a parenthesised group)
    return " AND ".join(groups) if groups else None


def _actors_for(action: str) -> frozenset[str]:
    return frozenset().union(*(who for (_, a), (_, who) in TRANSITIONS.items() if a == action))


def _recording(row: Mapping[str, Any]) -> Recording:
    return Recording(**{k: row[k] for k in _COLUMNS})


def is_disk_full(exc: BaseException) -> bool:
    """A write that failed for lack of room: ENOSPC/EDQUOT/EFBIG, or SQLite's "database or disk is full" (and
    its "disk I/O error" when it cannot even size its shared-memory file on a full disk), also as the store raises
    them (SQLAlchemy's wrapper around the driver's error)."""
    if isinstance(exc, SQLAlchemyError) and getattr(exc, "orig", None) is not None:
        exc = exc.orig  # type: ignore[attr-defined]
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return isinstance(exc, sqlite3.Error) and ("full" in str(exc) or "disk I/O" in str(exc))


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{os.strerror(exc.errno)} (errno {errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file; on failure the temporary file is removed (a full
    disk must not be left fuller by half-written files) and the error raised."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise

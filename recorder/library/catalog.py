"""The resource library (资源库): a catalog of recorded lessons, their review workflow and search.

One SQLite file, ``<data_dir>/library.db``, beside the recordings in ``<data_dir>/recordings/``. Every call
is a short synchronous transaction; the web layer calls through ``asyncio.to_thread``.

States (a table, not scattered ifs: see TRANSITIONS)::

    recording ──finish──► processing ──processed──► awaiting_review (待审核) ──publish──► published
                                                          ▲      │                         │
                                                  resubmit│      └──reject──► rejected ◄───┘ reject (take down)
                                                          └────────────────────┘

Who may act: the system (the live recorder, and start-up repair), the teacher who owns the lesson,
a reviewer (审核员; a token with role "reviewer", or the operator at the command line).

Search: SQLite FTS5. Its unicode61 tokenizer keeps a run of Chinese characters as ONE token ("勾股定理"),
so "勾股" would never match; the trigram tokenizer needs three characters per query term. So we index
every CJK character as its own token and query a CJK term as a phrase of its characters: "勾股" becomes
the phrase "勾 股", which matches exactly where those characters stand side by side — substring search
for Chinese, word/prefix search for Latin text.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("ketang.recorder.library")

DB_FILE_NAME: Final[str] = "library.db"
RECORDINGS_DIR_NAME: Final[str] = "recordings"
POSTERS_DIR_NAME: Final[str] = "posters"
EXPORTS_DIR_NAME: Final[str] = "exports"
# Another thread holding the write lock (an export finishing) makes us wait, not fail.
BUSY_TIMEOUT_S: Final[float] = 5.0
DEFAULT_PER_PAGE: Final[int] = 20
MAX_PER_PAGE: Final[int] = 100
MAX_QUERY_CHARS: Final[int] = 200
MAX_QUERY_TERMS: Final[int] = 16
DEFAULT_LANGUAGE: Final[str] = "zh-CN"
ID_BYTES: Final[int] = 8  # 16 hex characters: safe in URLs and file names

# --- states and the workflow ------------------------------------------------------------------------

RECORDING: Final[str] = "recording"
PROCESSING: Final[str] = "processing"
AWAITING_REVIEW: Final[str] = "awaiting_review"
PUBLISHED: Final[str] = "published"
REJECTED: Final[str] = "rejected"
STATES: Final[tuple[str, ...]] = (RECORDING, PROCESSING, AWAITING_REVIEW, PUBLISHED, REJECTED)

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
    # a published lesson found wrong afterwards is taken down the same way
    (PUBLISHED, "reject"): (REJECTED, frozenset({REVIEWER})),
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS: Final[tuple[str, ...]] = tuple(f.name for f in fields(Recording))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    lesson_id TEXT NOT NULL,
    file TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    teacher_sub TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    teacher TEXT NOT NULL DEFAULT '',
    school TEXT NOT NULL DEFAULT '',
    language TEXT NOT NULL DEFAULT '',
    date TEXT NOT NULL DEFAULT '',
    license TEXT NOT NULL DEFAULT '',
    stage TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL DEFAULT '',
    grade TEXT NOT NULL DEFAULT '',
    edition TEXT NOT NULL DEFAULT '',
    volume TEXT NOT NULL DEFAULT '',
    unit TEXT NOT NULL DEFAULT '',
    chapter TEXT NOT NULL DEFAULT '',
    duration_s REAL,
    size_bytes INTEGER,
    poster TEXT,
    mp4 TEXT,
    reviewer TEXT,
    review_note TEXT,
    reviewed_at TEXT,
    incomplete TEXT
);
CREATE INDEX IF NOT EXISTS recordings_state ON recordings(state, created_at);
CREATE INDEX IF NOT EXISTS recordings_lesson ON recordings(lesson_id);
CREATE TABLE IF NOT EXISTS history (
    rec_id TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT,
    note TEXT
);
CREATE INDEX IF NOT EXISTS history_rec ON history(rec_id, at);
"""
# columns added since a catalog may have been created: (name, SQL type)
_ADDED_COLUMNS: Final[tuple[tuple[str, str], ...]] = (("incomplete", "TEXT"),)
# The search text of each recording, segmented (see module docstring); rowid = recordings.rowid.
_FTS_COLUMNS: Final[tuple[str, ...]] = ("title", "description", "people", "curriculum")
_FTS_SCHEMA = ("CREATE VIRTUAL TABLE IF NOT EXISTS recordings_fts USING fts5("
               "title, description, people, curriculum, tokenize = 'unicode61 remove_diacritics 2')")
# bm25 weights per FTS column: a hit in the title counts most.
_FTS_WEIGHTS: Final[str] = "10.0, 1.0, 3.0, 5.0"

# CJK ideographs (with extensions and compatibility), kana, hangul, bopomofo: one token per character.
_CJK = (r"\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
        r"\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f")
_CJK_CHAR_RE = re.compile(f"([{_CJK}])")
_CJK_ONLY_RE = re.compile(f"^[{_CJK}]+$")


def segment(text: str) -> str:
    """Text as FTS5 input: each CJK character set apart by spaces; everything else left to unicode61."""
    return _CJK_CHAR_RE.sub(r" \1 ", text)


def fts_query(query: str) -> str | None:
    """A user's search box text as a safe FTS5 MATCH expression, or None when there is nothing to match.

    Every whitespace-separated term becomes a quoted phrase (so no FTS5 operator or column syntax from
    the user is ever interpreted) and terms are ANDed. A term ending in Latin letters or digits matches as
    a prefix ("Pythag" finds "Pythagoras"); a Chinese term matches as a substring (see module docstring).
    """
    phrases = []
    for term in query[:MAX_QUERY_CHARS].split()[:MAX_QUERY_TERMS]:
        tokens = re.findall(r"\w+", segment(term))
        if not tokens:
            continue
        phrase = '"' + " ".join(tokens).replace('"', '""') + '"'
        if not _CJK_ONLY_RE.match(tokens[-1]):
            phrase += "*"
        phrases.append(phrase)
    return " ".join(phrases) if phrases else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Library:
    """The catalog. Thread-safe: one connection per thread, WAL journal so readers never wait for writers."""

    def __init__(self, data_dir: Path, *, clock: Callable[[], float] = time.time,
                 poster_maker: Callable[[Path, Path], Any] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.recordings_dir = self.data_dir / RECORDINGS_DIR_NAME
        self.posters_dir = self.data_dir / POSTERS_DIR_NAME
        self.exports_dir = self.data_dir / EXPORTS_DIR_NAME
        for d in (self.data_dir, self.recordings_dir, self.posters_dir, self.exports_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / DB_FILE_NAME
        self._clock = clock
        if poster_maker is None:
            # imported here: the catalog alone (CLI list/search) needs no PyAV
            from recorder.library.export import make_poster as poster_maker
        self._make_poster = poster_maker
        self._local = threading.local()
        self._schema_ready = False
        # lesson records that could not be written (a full disk): lesson id -> (record, attendance, chat),
        # written again at the next chance (see save_lesson_record)
        self._pending_records: dict[str, tuple[dict[str, Any], str, str]] = {}
        self._pending_lock = threading.Lock()
        # Two processes opening one new catalog at once (one creating it while the other switches it to WAL)
        # get "database is locked" without SQLite's busy wait: tried again until BUSY_TIMEOUT_S
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._db()
                break
            except sqlite3.OperationalError as exc:
                self.close()
                if "locked" in str(exc) and time.monotonic() <= deadline:
                    time.sleep(0.05)
                    continue
                if not (is_disk_full(exc) and self.db_path.exists()):
                    raise
                # An existing catalog on a full disk (SQLite cannot even make its shared-memory file): the server
                # starts all the same; each library call tries again and fails on its own until there is room
                log.error("the library's catalog %s cannot be opened (%s): the disk is full. The server runs "
                          "without the library until space is freed in %s", self.db_path, exc, self.data_dir)
                break

    # --- connection handling -------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            db.row_factory = sqlite3.Row
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA foreign_keys=ON")
                if not self._schema_ready:
                    self._ensure_schema(db)
            except sqlite3.Error:
                db.close()
                raise
            self._local.db = db
        return db

    def _ensure_schema(self, db: sqlite3.Connection) -> None:
        """Create the tables (idempotent: CREATE … IF NOT EXISTS) and add the columns an older catalog lacks."""
        db.executescript(f"BEGIN; {_SCHEMA} {_FTS_SCHEMA}; COMMIT;")
        have = {row[1] for row in db.execute("PRAGMA table_info(recordings)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE recordings ADD COLUMN {name} {kind}")
        self._schema_ready = True

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. What it logs (state changes) is logged once it is committed. A write or a
        COMMIT that fails (a full disk) leaves no transaction open on the connection: it is rolled back."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        self._local.after_commit = []
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # (SQLite may have rolled it back itself)
            raise
        finally:
            lines, self._local.after_commit = self._local.after_commit, None
        for args in lines:
            log.info(*args)

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # --- paths ---------------------------------------------------------------------------------------

    def path_of(self, relative: str) -> Path:
        """An absolute path for a stored relative one, refusing anything that escapes the data dir."""
        root = self.data_dir.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise LibraryError("bad_request", "path outside the data directory")
        return path

    def _relative(self, file: Path) -> str:
        file = Path(file)
        if not file.is_absolute():
            file = self.data_dir / file
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

    def _record_dir(self, lesson_id: str) -> Path:
        safe = "".join(ch for ch in lesson_id if ch.isalnum() or ch in "-_")
        if not safe:
            raise LibraryError("bad_request", "no such lesson")
        return self.data_dir / "lessons" / safe

    # --- the recorder's API --------------------------------------------------------------------------

    def start_recording(self, lesson_id: str, title: str, teacher: str, teacher_sub: str, file: Path) -> str:
        """Catalogue a recording that is starting now; returns its id. State "recording"."""
        if not lesson_id or not teacher_sub:
            raise LibraryError("bad_request", "lesson_id and teacher_sub are required")
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
        }
        with self._tx() as db:
            db.execute(f"INSERT INTO recordings ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       tuple(row.values()))
            self._reindex(db, rec_id)
            self._log(db, rec_id, SYSTEM_VIEWER, "start", None, RECORDING, None)
        log.info("recording %s started for lesson %s", rec_id, lesson_id)
        return rec_id

    def finish_recording(self, rec_id: str, duration_s: float, size_bytes: int, incomplete: str | None = None) -> None:
        """The recording's file is written: "recording" -> "processing", make the poster, then
        "awaiting_review". Blocking (one keyframe decode, tens of ms): call via asyncio.to_thread.

        ``incomplete``: why the file does not hold the whole lesson (the recorder stopped writing it), kept on the
        item for the reviewer; None when it does. A catalog that cannot be written (a full disk: SQLite's
        "database or disk is full") raises sqlite3.OperationalError before the poster is made; a recording left
        "processing" (stopped between the steps) is taken on from there by a later call."""
        if self._pending_records:
            self.retry_pending()
        with self._tx() as db:
            rec = self._get(db, rec_id)
            if rec.state != PROCESSING:
                extra: dict[str, Any] = {"duration_s": float(duration_s), "size_bytes": int(size_bytes)}
                if incomplete:
                    extra["incomplete"] = incomplete[:MAX_NOTE_CHARS]
                self._transition(db, rec, "finish", SYSTEM_VIEWER,
                                 f"incomplete: {incomplete}"[:MAX_NOTE_CHARS] if incomplete else None, extra)
        poster = self._poster_for(rec)
        with self._tx() as db:
            rec = self._get(db, rec_id)
            self._transition(db, rec, "processed", SYSTEM_VIEWER, None, {"poster": poster})

    def unfinished(self) -> list[Recording]:
        """Recordings not yet finished: "recording" (after a crash, or when the catalog could not be written at
        the lesson's end) or "processing" (stopped between the two steps). Start-up repair finishes them."""
        rows = self._db().execute("SELECT * FROM recordings WHERE state IN (?, ?) ORDER BY created_at",
                                  (RECORDING, PROCESSING)).fetchall()
        return [_recording(r) for r in rows]

    def get(self, rec_id: str) -> Recording | None:
        row = self._db().execute("SELECT * FROM recordings WHERE id = ?", (rec_id,)).fetchone()
        return _recording(row) if row else None

    # --- people's API --------------------------------------------------------------------------------

    def get_for(self, rec_id: str, viewer: Viewer) -> Recording:
        """The recording if ``viewer`` may see it; otherwise not_found (never reveal unpublished ones)."""
        rec = self.get(rec_id)
        if rec is None or not viewer.can_see(rec):
            raise LibraryError("not_found", f"no recording {rec_id!r} visible to you")
        return rec

    def search(self, query: str = "", filters: Mapping[str, str] | None = None, page: int = 1,
               per_page: int = DEFAULT_PER_PAGE, viewer: Viewer = Viewer()) -> tuple[list[Recording], int]:
        """Recordings visible to ``viewer`` matching ``query`` (see fts_query) and every exact-value
        filter (FILTER_FIELDS); best match first when there is a query, newest first otherwise.
        Returns (one page, total number of matches)."""
        filters = dict(filters or {})
        unknown = set(filters) - set(FILTER_FIELDS)
        if unknown:
            raise LibraryError("invalid_field", f"cannot filter on {', '.join(sorted(unknown))}")
        if not isinstance(page, int) or page < 1:
            raise LibraryError("bad_request", "page must be a positive integer")
        if not isinstance(per_page, int) or not 1 <= per_page <= MAX_PER_PAGE:
            raise LibraryError("bad_request", f"per_page must be between 1 and {MAX_PER_PAGE}")

        where, args = self._visible(viewer)
        for name, value in filters.items():
            if value not in (None, ""):
                where.append(f"r.{name} = ?")
                args.append(str(value))
        match = fts_query(query or "")
        joins, order = "", "r.created_at DESC, r.id"
        if match is not None:
            joins = "JOIN recordings_fts f ON f.rowid = r.rowid"
            where.append("recordings_fts MATCH ?")
            args.append(match)
            order = f"bm25(recordings_fts, {_FTS_WEIGHTS}), r.created_at DESC, r.id"
        clause = " AND ".join(where) or "1"
        db = self._db()
        total = db.execute(f"SELECT count(*) FROM recordings r {joins} WHERE {clause}", args).fetchone()[0]
        rows = db.execute(f"SELECT r.* FROM recordings r {joins} WHERE {clause} ORDER BY {order} "
                          "LIMIT ? OFFSET ?", [*args, per_page, (page - 1) * per_page]).fetchall()
        return [_recording(r) for r in rows], int(total)

    def update_metadata(self, rec_id: str, fields: Mapping[str, Any], viewer: Viewer) -> Recording:
        """Change metadata. The owning teacher edits until publication; a reviewer edits any time."""
        with self._tx() as db:
            rec = self._get(db, rec_id)
            if not viewer.can_see(rec):
                raise LibraryError("not_found", f"no recording {rec_id!r} visible to you")
            actors = viewer.actors(rec)
            if not actors:
                raise LibraryError("forbidden", "only the lesson's teacher or a reviewer may edit it")
            if REVIEWER not in actors and rec.state == PUBLISHED:
                raise LibraryError("forbidden", "a published lesson is edited by a reviewer; ask one to take it "
                                                "down (reject) first")
            clean = validate_metadata(fields, reviewer=REVIEWER in actors)
            if clean:
                sets = ", ".join(f"{k} = ?" for k in clean)
                db.execute(f"UPDATE recordings SET {sets}, updated_at = ? WHERE id = ?",
                           (*clean.values(), _iso(self._clock()), rec_id))
                self._reindex(db, rec_id)
                self._log(db, rec_id, viewer, "edit", rec.state, rec.state, ", ".join(sorted(clean)))
            return self._get(db, rec_id)

    def review(self, rec_id: str, decision: str, note: str, viewer: Viewer) -> Recording:
        """A reviewer publishes or rejects (a rejection says why in ``note``)."""
        if decision not in REVIEW_DECISIONS:
            raise LibraryError("bad_request", f"decision must be one of {', '.join(REVIEW_DECISIONS)}")
        note = (note or "").strip()
        with self._tx() as db:
            rec = self._get(db, rec_id)
            if not viewer.can_see(rec):
                raise LibraryError("not_found", f"no recording {rec_id!r} visible to you")
            who = _actors_for(decision)
            if not viewer.actors(rec) & who:  # who may decide comes before what the note says
                raise LibraryError("forbidden", f"only {' or '.join(sorted(who))} may {decision} a recording")
            if len(note) > MAX_NOTE_CHARS:
                raise LibraryError("invalid_field", f"note is longer than {MAX_NOTE_CHARS} characters")
            if decision == "reject" and not note:
                raise LibraryError("invalid_field", "a rejection needs a note telling the teacher what to fix")
            extra = {"reviewer": viewer.name or viewer.sub, "review_note": note, "reviewed_at": _iso(self._clock())}
            self._transition(db, rec, decision, viewer, note, extra)
            return self._get(db, rec_id)

    def resubmit(self, rec_id: str, viewer: Viewer) -> Recording:
        """A rejected lesson goes back to 待审核 after its teacher's edits."""
        with self._tx() as db:
            rec = self._get(db, rec_id)
            if not viewer.can_see(rec):
                raise LibraryError("not_found", f"no recording {rec_id!r} visible to you")
            self._transition(db, rec, "resubmit", viewer, None, {})
            return self._get(db, rec_id)

    def set_mp4(self, rec_id: str, mp4: Path | None) -> None:
        """Record (or clear) the exported MP4 of a recording; system-only, no state change."""
        with self._tx() as db:
            self._get(db, rec_id)
            db.execute("UPDATE recordings SET mp4 = ?, updated_at = ? WHERE id = ?",
                       (self._relative(mp4) if mp4 else None, _iso(self._clock()), rec_id))

    def history(self, rec_id: str) -> list[dict[str, Any]]:
        rows = self._db().execute("SELECT at, actor, action, from_state, to_state, note FROM history "
                                  "WHERE rec_id = ? ORDER BY rowid", (rec_id,)).fetchall()
        return [dict(r) for r in rows]

    def import_file(self, file: Path, *, lesson_id: str, teacher: str, teacher_sub: str,
                    metadata: Mapping[str, Any], duration_s: float, size_bytes: int) -> str:
        """Catalogue an existing, complete recording (already inside the data dir) and take it to
        awaiting_review, as if it had been recorded live."""
        rec_id = self.start_recording(lesson_id, str(metadata.get("title") or Path(file).stem), teacher,
                                      teacher_sub, file)
        clean = validate_metadata(metadata, reviewer=True)
        if clean:
            with self._tx() as db:
                db.execute(f"UPDATE recordings SET {', '.join(f'{k} = ?' for k in clean)} WHERE id = ?",
                           (*clean.values(), rec_id))
                self._reindex(db, rec_id)
        self.finish_recording(rec_id, duration_s, size_bytes)
        return rec_id

    # --- internals -----------------------------------------------------------------------------------

    def _visible(self, viewer: Viewer) -> tuple[list[str], list[Any]]:
        if viewer.is_reviewer:
            return [], []
        if viewer.role == "teacher":
            clause = "(r.state = ? OR r.teacher_sub = ?"
            args: list[Any] = [PUBLISHED, viewer.sub]
            if viewer.lesson:
                clause += " OR (r.lesson_id = ? AND r.teacher = ?)"
                args += [viewer.lesson, viewer.name]
            return [clause + ")"], args
        return ["r.state = ?"], [PUBLISHED]

    def _get(self, db: sqlite3.Connection, rec_id: str) -> Recording:
        row = db.execute("SELECT * FROM recordings WHERE id = ?", (rec_id,)).fetchone()
        if row is None:
            raise LibraryError("not_found", f"no recording {rec_id!r}")
        return _recording(row)

    def _transition(self, db: sqlite3.Connection, rec: Recording, action: str, viewer: Viewer,
                    note: str | None, extra: Mapping[str, Any]) -> None:
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
        values = {"state": to_state, "updated_at": _iso(self._clock()), **extra}
        db.execute(f"UPDATE recordings SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ? AND state = ?",
                   (*values.values(), rec.id, rec.state))
        self._log(db, rec.id, viewer, action, rec.state, to_state, note)
        line = ("recording %s: %s -> %s (%s by %s)", rec.id, rec.state, to_state, action, viewer.name or viewer.role)
        pending = getattr(self._local, "after_commit", None)
        if pending is None:
            log.info(*line)
        else:
            pending.append(line)

    def _log(self, db: sqlite3.Connection, rec_id: str, viewer: Viewer, action: str, from_state: str | None,
             to_state: str | None, note: str | None) -> None:
        actor = f"{viewer.role}:{viewer.name or viewer.sub}"
        db.execute("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (rec_id, _iso(self._clock()), actor, action, from_state, to_state, note))

    def _reindex(self, db: sqlite3.Connection, rec_id: str) -> None:
        row = db.execute("SELECT rowid, * FROM recordings WHERE id = ?", (rec_id,)).fetchone()
        people = " ".join([row["teacher"], row["school"]])
        curriculum = " ".join(row[f] for f in CURRICULUM_FIELDS)
        db.execute("DELETE FROM recordings_fts WHERE rowid = ?", (row["rowid"],))
        db.execute("INSERT INTO recordings_fts (rowid, title, description, people, curriculum) VALUES (?, ?, ?, ?, ?)",
                   (row["rowid"], segment(row["title"]), segment(row["description"]), segment(people),
                    segment(curriculum)))

    def _poster_for(self, rec: Recording) -> str | None:
        dst = self.posters_dir / f"{rec.id}.jpg"
        try:
            self._make_poster(self.path_of(rec.file), dst)
        except Exception as exc:  # noqa: BLE001 - an audio-only or damaged file still goes to review
            log.warning("no poster for recording %s: %s", rec.id, exc)
            return None
        return self._relative(dst)


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
        if name == "language" and value and not _LANGUAGE_RE.match(value):
            raise LibraryError("invalid_field", "language must be a language tag such as zh-CN")
        clean[name] = value
    return clean


def _actors_for(action: str) -> frozenset[str]:
    return frozenset().union(*(who for (_, a), (_, who) in TRANSITIONS.items() if a == action))


def _recording(row: sqlite3.Row) -> Recording:
    keys = row.keys()  # (a catalog the disk was too full to add a new column to lacks it)
    return Recording(**{k: row[k] for k in _COLUMNS if k in keys})


def is_disk_full(exc: BaseException) -> bool:
    """A write that failed for lack of room: ENOSPC/EDQUOT/EFBIG, or SQLite's "database or disk is full" (and
    its "disk I/O error" when it cannot even size its shared-memory file on a full disk)."""
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

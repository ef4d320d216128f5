"""The store: URLs, migrations on both engines, the import of an old catalog (library.db), and the throwaway
PostgreSQL the test command starts when none runs."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from recorder.library.catalog import AWAITING_REVIEW, PUBLISHED, Library, Viewer
from store import HEAD, Store, database_url_from, migrate, sqlite_url
from tests.throwaway_postgres import ThrowawayPostgres, create_database, drop_database

# the catalog as ketang kept it before the store (recorder/library/catalog.py's sqlite3 schema), without the
# `incomplete` column a later version added: an import must take an old file as it is
OLD_SCHEMA = """
CREATE TABLE recordings (id TEXT PRIMARY KEY, lesson_id TEXT NOT NULL, file TEXT NOT NULL, state TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, teacher_sub TEXT NOT NULL, title TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '', teacher TEXT NOT NULL DEFAULT '', school TEXT NOT NULL DEFAULT '',
    language TEXT NOT NULL DEFAULT '', date TEXT NOT NULL DEFAULT '', license TEXT NOT NULL DEFAULT '',
    stage TEXT NOT NULL DEFAULT '', subject TEXT NOT NULL DEFAULT '', grade TEXT NOT NULL DEFAULT '',
    edition TEXT NOT NULL DEFAULT '', volume TEXT NOT NULL DEFAULT '', unit TEXT NOT NULL DEFAULT '',
    chapter TEXT NOT NULL DEFAULT '', duration_s REAL, size_bytes INTEGER, poster TEXT, mp4 TEXT, reviewer TEXT,
    review_note TEXT, reviewed_at TEXT);
CREATE TABLE history (rec_id TEXT NOT NULL, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    from_state TEXT, to_state TEXT, note TEXT);
CREATE VIRTUAL TABLE recordings_fts USING fts5(title, description, people, curriculum);
"""


def old_catalog(data: Path) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    path = data / "library.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    rows = [("a1", "math-7a", "recordings/a1.webm", PUBLISHED, "七年级数学 · 一元一次方程", "王老师", "数学", "七年级"),
            ("a2", "chem-9b", "recordings/a2.webm", AWAITING_REVIEW, "化学反应速率", "李老师", "化学", "九年级")]
    for rid, lesson, file, state, title, teacher, subject, grade in rows:
        db.execute("INSERT INTO recordings (id, lesson_id, file, state, created_at, updated_at, teacher_sub, title, "
                   "teacher, subject, grade, language, duration_s) VALUES (?, ?, ?, ?, '2025-03-01T08:00:00Z', "
                   "'2025-03-01T09:00:00Z', 't', ?, ?, ?, ?, 'zh-CN', 2400.0)",
                   (rid, lesson, file, state, title, teacher, subject, grade))
        for action, to in (("start", "recording"), ("finish", "processing"), ("processed", AWAITING_REVIEW)):
            db.execute("INSERT INTO history VALUES (?, '2025-03-01T08:00:00Z', 'system:system', ?, NULL, ?, NULL)",
                       (rid, action, to))
    db.execute("INSERT INTO history VALUES ('a1', '2025-03-02T08:00:00Z', 'reviewer:张审核', 'publish', "
               "'awaiting_review', 'published', '很好')")
    db.commit()
    db.close()
    return path


@pytest.mark.parametrize(
    ("flag", "env", "want"),
    [
        pytest.param(None, {}, "sqlite", id="default-the-sqlite-file-in-the-data-dir"),
        pytest.param("postgresql://k@db/ketang", {}, "postgresql+asyncpg://k@db/ketang", id="plain-postgres-url"),
        pytest.param(None, {"KETANG_DATABASE_URL": "postgresql+asyncpg://k@db/x"}, "postgresql+asyncpg://k@db/x",
                     id="from-the-environment"),
        pytest.param("mysql://k@db/x", {}, ValueError, id="an-engine-the-store-does-not-support"),
        pytest.param("not a url", {}, ValueError, id="not-a-url"),
    ],
)
def test_the_database_url_from_flag_environment_or_data_dir(tmp_path: Path, flag: str | None, env: dict, want) -> None:
    if want is ValueError:
        with pytest.raises(ValueError, match="--database-url"):
            database_url_from(flag, tmp_path, env)
        return
    url = database_url_from(flag, tmp_path, env)
    assert url == (sqlite_url(tmp_path) if want == "sqlite" else want)


async def test_migrating_twice_is_a_no_op_and_lands_on_head(database_url: str) -> None:
    store = Store(database_url)
    try:
        await migrate(store)
        await migrate(store)
        async with store.read() as db:
            assert (await db.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars().all() == [HEAD]
    finally:
        await store.close()


async def test_an_old_library_db_is_imported_once_searchable_with_its_history_and_left_untouched(
        tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "data"
    old = old_catalog(data)
    before = hashlib.sha256(old.read_bytes()).hexdigest()
    lib = Library(data, database_url=database_url)
    try:
        found, total = await lib.search("方程", viewer=Viewer.anonymous())
        assert ([r.id for r in found], total) == (["a1"], 1)
        assert (await lib.search("李老师", viewer=Viewer.operator()))[0][0].id == "a2"
        assert (await lib.search("", {"grade": "九年级"}, viewer=Viewer.operator()))[1] == 1
        rec = await lib.get("a1")
        assert rec is not None and (rec.title, rec.state, rec.incomplete, rec.duration_s) == (
            "七年级数学 · 一元一次方程", PUBLISHED, None, 2400.0)
        assert [h["action"] for h in await lib.history("a1")] == ["start", "finish", "processed", "publish"]
        # the catalog goes on from there: a review of an imported item, then a restart imports nothing twice
        await lib.review("a2", "publish", "", Viewer.operator())
    finally:
        await lib.close()
    again = Library(data, database_url=database_url)
    try:
        assert await again.import_legacy(old) == 0
        assert (await again.search("", viewer=Viewer.operator()))[1] == 2
        assert (await again.get("a2")).state == PUBLISHED  # type: ignore[union-attr]
        assert len(await again.history("a1")) == 4
    finally:
        await again.close()
    assert hashlib.sha256(old.read_bytes()).hexdigest() == before
    assert not Path(f"{old}-wal").exists() or Path(f"{old}-wal").stat().st_size == 0


@pytest.mark.slow
async def test_the_throwaway_postgres_starts_as_an_unprivileged_user_serves_chinese_search_and_goes() -> None:
    server = await asyncio.to_thread(ThrowawayPostgres().start)  # (it waits with an event loop of its own)
    workdir = server.workdir
    try:
        url = await create_database(server.url)
        lib = Library(workdir / "lib", database_url=url, poster_maker=lambda src, dst: None)
        try:
            file = lib.recordings_dir / "a.webm"
            await lib.import_file(file, lesson_id="l", teacher="王老师", teacher_sub="t", metadata={
                "title": "勾股定理的证明"}, duration_s=1.0, size_bytes=1)
            assert (await lib.search("股定", viewer=Viewer.operator()))[1] == 1
        finally:
            await lib.close()
        await drop_database(server.url, url)
    finally:
        server.stop()
    assert not workdir.exists()

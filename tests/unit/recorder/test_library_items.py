"""The library for people, on both engines of the store (SQLite, a real PostgreSQL): one item per lesson with its
sources, the grouping of recordings catalogued before (migration 0002), the curriculum vocabulary (validation,
synonyms in search both ways), and 下架 / 重新上架 as their own steps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from recorder.library import curriculum
from recorder.library.catalog import (
    AWAITING_REVIEW,
    PUBLISHED,
    TAKEN_DOWN,
    Library,
    LibraryError,
    Viewer,
)
from store import HEAD, Store, migrate
from store.migrate import alembic_config

T0 = 1_760_000_000.0
TEACHER = Viewer(role="teacher", sub="t-li", name="李老师", lesson="math-7a")
REVIEWER = Viewer(role="reviewer", sub="r-1", name="张审核")
ANONYMOUS = Viewer.anonymous()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
async def library(tmp_path: Path, database_url: str) -> AsyncIterator[Library]:
    lib = Library(tmp_path / "data", database_url=database_url, clock=Clock(), poster_maker=lambda src, dst: None)
    yield lib
    await lib.close()


async def record_lesson(lib: Library, lesson: str = "math-7a", title: str = "一元一次方程") -> tuple[str, list[str]]:
    """A lesson as the live recorder catalogues it: the teacher's camera, a courseware share, a class on stage."""
    ids = []
    for role, label, suffix in (("teacher", "", ""), ("courseware", "课件 1", "-screen1"),
                                ("stage", "第三小学", "-stage1")):
        file = lib.recordings_dir / f"{lesson}-20250301-080000{suffix}.webm"
        file.write_bytes(b"webm")
        ids.append(await lib.start_recording(lesson, title if role == "teacher" else f"{title}（{label}）", "李老师",
                                             "t-li", file, role=role, label=label))
    for rec_id in ids:
        await lib.finish_recording(rec_id, 60.0, 4)
    return ids[0], ids


async def test_a_recorded_lesson_is_one_item_with_its_sources(library: Library) -> None:
    item_id, ids = await record_lesson(library)
    found, total = await library.search("", viewer=REVIEWER)
    assert total == 1 and [r.id for r in found] == [item_id]  # lists count lessons, not files
    item = found[0]
    sources = await library.sources(item)
    assert [(s.id, s.role, s.label) for s in sources] == [
        (ids[0], "teacher", "李老师"), (ids[1], "courseware", "课件 1"), (ids[2], "stage", "第三小学")]
    assert all(s.item_id == item_id for s in sources[1:])
    assert (await library.item_for_lesson("math-7a", TEACHER)).id == item_id
    assert await library.newest_item_id("math-7a") == item_id
    # a source is seen as its item is: its teacher and reviewers now, nobody else until it is published
    assert (await library.get_for(ids[1], TEACHER)).id == ids[1]
    with pytest.raises(LibraryError) as info:
        await library.get_for(ids[1], ANONYMOUS)
    assert info.value.code == "not_found"
    await library.review(item_id, "publish", "", REVIEWER)
    assert (await library.get_for(ids[2], ANONYMOUS)).role == "stage"
    assert (await library.search("", viewer=ANONYMOUS))[1] == 1


async def test_a_source_is_reviewed_and_edited_only_through_its_item(library: Library) -> None:
    item_id, ids = await record_lesson(library)
    for act in (library.review(ids[1], "publish", "", REVIEWER), library.update_metadata(ids[1], {"title": "x"},
                                                                                          REVIEWER),
                library.take_down(ids[1], "why", REVIEWER)):
        with pytest.raises(LibraryError) as info:
            await act
        assert info.value.code == "bad_request" and item_id in info.value.message
    with pytest.raises(LibraryError) as info:  # someone who may not see the item learns nothing more
        await library.review(ids[1], "publish", "", ANONYMOUS)
    assert info.value.code == "not_found"


async def test_a_lesson_recorded_again_after_its_review_is_a_new_item(library: Library) -> None:
    first, _ = await record_lesson(library)
    await library.review(first, "publish", "", REVIEWER)
    second, _ = await record_lesson(library, title="一元一次方程（第二课时）")
    assert second != first
    assert (await library.get(second)).state == AWAITING_REVIEW  # type: ignore[union-attr]
    assert (await library.search("", viewer=REVIEWER))[1] == 2
    assert (await library.item_for_lesson("math-7a", TEACHER)).id == second


async def test_an_import_is_an_item_of_its_own(library: Library) -> None:
    await record_lesson(library)
    file = library.recordings_dir / "imported.webm"
    file.write_bytes(b"webm")
    await library.import_file(file, lesson_id="math-7a", teacher="李老师", teacher_sub="t-li",
                              metadata={"title": "导入"}, duration_s=1.0, size_bytes=4)
    assert (await library.search("", viewer=REVIEWER))[1] == 2


async def test_take_down_and_republish_are_their_own_steps_with_their_history(library: Library) -> None:
    item_id, ids = await record_lesson(library)
    await library.review(item_id, "publish", "", REVIEWER)
    for viewer, code in ((TEACHER, "forbidden"), (ANONYMOUS, "forbidden")):
        with pytest.raises(LibraryError) as info:
            await library.take_down(item_id, "版权问题", viewer)
        assert info.value.code == code
    with pytest.raises(LibraryError) as info:
        await library.take_down(item_id, "  ", REVIEWER)
    assert info.value.code == "invalid_field"
    assert (await library.get(item_id)).state == PUBLISHED  # type: ignore[union-attr]

    down = await library.take_down(item_id, "版权问题", REVIEWER)
    assert (down.state, down.review_note, down.reviewer) == (TAKEN_DOWN, "版权问题", "张审核")
    assert (await library.search("", viewer=ANONYMOUS))[1] == 0
    with pytest.raises(LibraryError):
        await library.get_for(ids[2], ANONYMOUS)  # its sources went down with it
    assert (await library.search("", viewer=TEACHER))[1] == 1  # its teacher still sees it, and why
    with pytest.raises(LibraryError) as info:
        await library.update_metadata(item_id, {"title": "改"}, TEACHER)
    assert info.value.code == "forbidden"
    with pytest.raises(LibraryError) as info:
        await library.review(item_id, "publish", "", REVIEWER)
    assert info.value.code == "invalid_transition" and "republish" in info.value.message

    up = await library.republish(item_id, "", REVIEWER)
    assert up.state == PUBLISHED
    assert (await library.search("", viewer=ANONYMOUS))[1] == 1
    steps = [(h["action"], h["from_state"], h["to_state"], h["note"]) for h in await library.history(item_id)][-3:]
    assert steps == [("publish", AWAITING_REVIEW, PUBLISHED, ""),
                     ("take_down", PUBLISHED, TAKEN_DOWN, "版权问题"), ("republish", TAKEN_DOWN, PUBLISHED, None)]


# --- the curriculum vocabulary -------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "stored"), [
    pytest.param({"grade": "初一"}, {"grade": "七年级"}, id="初一-is-filed-as-七年级"),
    pytest.param({"grade": "十年级"}, {"grade": "高一"}, id="十年级-is-filed-as-高一"),
    pytest.param({"stage": "初中", "subject": "数学", "grade": "七年级"}, {"subject": "数学"}, id="canonical-names"),
    pytest.param({"subject": "生物"}, {"subject": "生物学"}, id="a-subject-synonym"),
    pytest.param({"edition": "人教"}, {"edition": "人教版"}, id="an-edition-synonym"),
    pytest.param({"edition": "某某出版社地方版"}, {"edition": "某某出版社地方版"}, id="an-edition-in-free-text"),
    pytest.param({"grade": ""}, {"grade": ""}, id="a-grade-cleared"),
])
async def test_curriculum_fields_are_stored_under_their_canonical_names(library: Library, fields: dict[str, str],
                                                                       stored: dict[str, str]) -> None:
    item_id, _ = await record_lesson(library)
    rec = await library.update_metadata(item_id, fields, TEACHER)
    assert {k: getattr(rec, k) for k in stored} == stored


@pytest.mark.parametrize(("fields", "words"), [
    pytest.param({"grade": "初四"}, ["年级 (grade)", "初四", "七年级"], id="an-unknown-grade"),
    pytest.param({"stage": "大学"}, ["学段 (stage)", "小学"], id="an-unknown-stage"),
    pytest.param({"subject": "炼丹"}, ["学科 (subject)", "数学"], id="an-unknown-subject"),
])
async def test_unknown_stage_subject_or_grade_is_refused_naming_the_list(library: Library, fields: dict[str, str],
                                                                        words: list[str]) -> None:
    item_id, _ = await record_lesson(library)
    with pytest.raises(LibraryError) as info:
        await library.update_metadata(item_id, fields, REVIEWER)
    assert info.value.code == "invalid_field"
    for word in words:
        assert word in info.value.message
    assert (await library.get(item_id)).grade == ""  # type: ignore[union-attr]


@pytest.mark.parametrize(("query", "filters", "titles"), [
    pytest.param("初一", {}, {"一元一次方程", "初一数学 复习"}, id="初一-finds-七年级-items"),
    pytest.param("七年级", {}, {"一元一次方程", "初一数学 复习"}, id="七年级-finds-初一-in-a-title"),
    pytest.param("初一数学", {}, {"初一数学 复习"}, id="a-term-holding-a-synonym"),
    pytest.param("", {"grade": "初一"}, {"一元一次方程"}, id="a-grade-filter-by-synonym"),
    pytest.param("", {"grade": "十年级"}, {"函数的概念"}, id="十年级-finds-高一"),
    pytest.param("高一 函数", {}, {"函数的概念"}, id="terms-still-anded"),
    pytest.param("八年级", {}, set(), id="no-false-friends"),
])
async def test_search_finds_synonyms_both_ways(library: Library, query: str, filters: dict[str, str],
                                               titles: set[str]) -> None:
    for lesson, title, grade in (("m1", "一元一次方程", "七年级"), ("m2", "初一数学 复习", ""),
                                 ("m3", "函数的概念", "高一")):
        item_id, _ = await record_lesson(library, lesson, title)
        if grade:
            await library.update_metadata(item_id, {"grade": grade}, REVIEWER)
        await library.review(item_id, "publish", "", REVIEWER)
    found, total = await library.search(query, filters, viewer=ANONYMOUS)
    assert {r.title for r in found} == titles and total == len(titles)


def test_the_vocabulary_lists_every_canonical_name_once_and_synonyms_point_to_them() -> None:
    words = curriculum.vocabulary()
    assert words["grades"]["初中"] == ["七年级", "八年级", "九年级"]
    for field, table in curriculum.SYNONYMS.items():
        allowed = {"stage": curriculum.STAGES, "subject": curriculum.SUBJECTS, "grade": curriculum.ALL_GRADES,
                   "edition": curriculum.EDITIONS}[field]
        assert set(table.values()) <= set(allowed), field
        assert not set(table) & set(allowed), field
    assert curriculum.same_as("七年级")[0] == "七年级" and "初一" in curriculum.same_as("七年级")
    assert curriculum.same_as("初一")[0] == "初一" and "七年级" in curriculum.same_as("初一")


# --- migration 0002: recordings catalogued before are grouped by lesson ----------------------------------------


async def test_the_migration_groups_existing_recordings_by_lesson(tmp_path: Path, database_url: str) -> None:
    store = Store(database_url)
    try:
        await migrate(store)
        async with store.engine.connect() as conn:  # back to the schema before items had sources
            await conn.run_sync(lambda c: command.downgrade(_config(c), "0001_library"))
            await conn.commit()
        row = {"state": PUBLISHED, "updated_at": "2025-03-01T08:00:00Z", "teacher_sub": "t-li", "teacher": "李老师"}
        rows = [
            {"id": "a-main", "lesson_id": "math-7a", "file": "recordings/math-7a-20250301-080000.webm",
             "title": "一元一次方程", "created_at": "2025-03-01T08:00:00Z"},
            {"id": "a-share", "lesson_id": "math-7a", "file": "recordings/math-7a-20250301-080000-screen1.webm",
             "title": "一元一次方程（课件 1）", "created_at": "2025-03-01T08:05:00Z"},
            {"id": "a-stage", "lesson_id": "math-7a", "file": "recordings/math-7a-20250301-080000-stage1.webm",
             "title": "一元一次方程（上台 第三小学）", "created_at": "2025-03-01T08:01:00Z"},
            {"id": "b-main", "lesson_id": "chem-9b", "file": "recordings/chem-9b-20250302-080000.webm",
             "title": "化学反应速率", "created_at": "2025-03-02T08:00:00Z"},
        ]
        async with store.write() as db:
            await db.execute(sa.text("INSERT INTO recordings (id, lesson_id, file, state, created_at, updated_at, "
                                     "teacher_sub, teacher, title) VALUES (:id, :lesson_id, :file, :state, "
                                     ":created_at, :updated_at, :teacher_sub, :teacher, :title)"),
                             [{**row, **r} for r in rows])
        await migrate(store)
        async with store.read() as db:
            assert (await db.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar() == HEAD
            got = {r.id: (r.item_id, r.role, r.label, r.state) for r in await db.execute(
                sa.text("SELECT id, item_id, role, label, state FROM recordings"))}
    finally:
        await store.close()
    assert got == {"a-main": (None, "teacher", "李老师", PUBLISHED),
                   "a-share": ("a-main", "courseware", "课件 1", PUBLISHED),
                   "a-stage": ("a-main", "stage", "第三小学", PUBLISHED),
                   "b-main": (None, "teacher", "李老师", PUBLISHED)}
    lib = Library(tmp_path / "data", database_url=database_url, poster_maker=lambda src, dst: None)
    try:
        found, total = await lib.search("", viewer=ANONYMOUS)
        assert total == 2 and {r.id for r in found} == {"a-main", "b-main"}
        assert [s.id for s in await lib.sources(found[-1] if found[-1].id == "a-main" else found[0])] == [
            "a-main", "a-stage", "a-share"]
    finally:
        await lib.close()


def _config(sync_conn):  # type: ignore[no-untyped-def]
    config = alembic_config()
    config.attributes["connection"] = sync_conn
    return config

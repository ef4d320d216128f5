"""The resource library catalog: search (Chinese and English), filters, paging, visibility, the review
workflow, metadata validation, crash repair, the offline media work, and the `ketang library` CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import av
import pytest

from recorder.library import cli
from recorder.library import export as media
from recorder.library.catalog import (
    AWAITING_REVIEW,
    PROCESSING,
    PUBLISHED,
    RECORDING,
    REJECTED,
    Library,
    LibraryError,
    Viewer,
    fts_query,
)
from tests.webm import (
    VIDEO_SIZE,
    WEBM_SECONDS,
)

T0 = 1_760_000_000.0

TEACHER = Viewer(role="teacher", sub="t-li", name="李老师", lesson="math-8a")
TEACHER_NEW_TOKEN = Viewer(role="teacher", sub="another-random-sub", name="李老师", lesson="math-8a")
OTHER_TEACHER = Viewer(role="teacher", sub="t-wang", name="王老师", lesson="chem-9b")
SAME_NAME_OTHER_LESSON = Viewer(role="teacher", sub="t-li-2", name="李老师", lesson="chem-9b")
REVIEWER = Viewer(role="reviewer", sub="r-1", name="张审核")
CLASSROOM = Viewer(role="classroom", sub="c-1", name="第三小学", lesson="math-8a")
ANONYMOUS = Viewer.anonymous()




class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 1.0  # every event a second later: "newest first" is well defined
        return self.now


@pytest.fixture
async def library(tmp_path: Path, database_url: str) -> AsyncIterator[Library]:
    """The catalog, once on each engine of the store (SQLite, PostgreSQL): the contract is the same."""
    lib = Library(tmp_path / "data", database_url=database_url, clock=Clock())
    yield lib
    await lib.close()


async def add_lesson(lib: Library, master: Path | None = None, *, teacher: Viewer = TEACHER, title: str = "勾股定理",
               publish: bool = False, **meta: str) -> str:
    """A finished recording (fake bytes unless a real master WebM is given), optionally published."""
    file = lib.recordings_dir / f"{teacher.lesson}-{title}.webm"
    if master is not None:
        shutil.copy(master, file)
    else:
        file.write_bytes(b"not really a webm")
    rec_id = await lib.start_recording(teacher.lesson, title, teacher.name, teacher.sub, file)
    await lib.finish_recording(rec_id, 2400.0, file.stat().st_size)
    if meta:
        await lib.update_metadata(rec_id, meta, REVIEWER)
    if publish:
        await lib.review(rec_id, "publish", "", REVIEWER)
    return rec_id


# --- recording lifecycle (the recorder's API) ---------------------------------------------------------


async def test_a_new_recording_is_in_state_recording_with_its_file_relative_to_the_data_dir(library: Library) -> None:
    rec_id = await library.start_recording("math-8a", "勾股定理", "李老师", "t-li", library.recordings_dir / "a.webm")
    rec = await library.get(rec_id)
    assert rec is not None
    assert (rec.state, rec.file, rec.teacher, rec.teacher_sub, rec.title) == (
        RECORDING, "recordings/a.webm", "李老师", "t-li", "勾股定理")
    assert not (library.data_dir / "library.db").exists()  # (the old catalog's file: only ever read)


async def test_a_recording_file_outside_the_data_dir_is_refused(library: Library, tmp_path: Path) -> None:
    with pytest.raises(LibraryError) as info:
        await library.start_recording("math-8a", "x", "李老师", "t-li", tmp_path / "elsewhere.webm")
    assert info.value.code == "bad_request"


async def test_finishing_a_recording_makes_a_poster_and_awaits_review(library: Library, webm_master: Path) -> None:
    file = library.recordings_dir / "a.webm"
    shutil.copy(webm_master, file)
    rec_id = await library.start_recording("math-8a", "勾股定理", "李老师", "t-li", file)
    await library.finish_recording(rec_id, 3.0, file.stat().st_size)
    rec = await library.get(rec_id)
    assert rec is not None and rec.state == AWAITING_REVIEW
    assert (rec.duration_s, rec.size_bytes) == (3.0, file.stat().st_size)
    assert rec.poster == f"posters/{rec_id}.jpg"
    assert [h["to_state"] for h in await library.history(rec_id)] == [RECORDING, PROCESSING, AWAITING_REVIEW]


async def test_a_recording_without_decodable_video_still_reaches_review_without_a_poster(library: Library) -> None:
    rec_id = await add_lesson(library)
    rec = await library.get(rec_id)
    assert rec is not None and (rec.state, rec.poster) == (AWAITING_REVIEW, None)


async def test_unfinished_lists_only_recordings_still_recording(library: Library) -> None:
    done = await add_lesson(library)
    live = await library.start_recording("math-8a", "第二课", "李老师", "t-li", library.recordings_dir / "b.webm")
    assert [r.id for r in await library.unfinished()] == [live]
    assert done not in [r.id for r in await library.unfinished()]


async def test_finishing_twice_is_an_invalid_transition(library: Library) -> None:
    rec_id = await add_lesson(library)
    with pytest.raises(LibraryError) as info:
        await library.finish_recording(rec_id, 1.0, 1)
    assert info.value.code == "invalid_transition"
    assert "awaiting_review" in info.value.message


async def test_the_catalog_survives_reopening(library: Library) -> None:
    rec_id = await add_lesson(library, subject="数学")
    again = Library(library.data_dir, database_url=library.store.url)
    assert await again.get(rec_id) == await library.get(rec_id)
    assert (await again.search("勾股", viewer=REVIEWER))[1] == 1
    await again.close()


async def test_two_nodes_opening_one_new_store_at_once_both_start_and_share_it(tmp_path: Path,
                                                                             database_url: str) -> None:
    """Two server processes starting at once on one store: one migrates (the other waits on the lock: an advisory
    lock on PostgreSQL, the write lock on SQLite) and both see the same catalog."""
    one = Library(tmp_path / "one", database_url=database_url.replace("/data/", "/shared/"))
    two = Library(tmp_path / "two", database_url=one.store.url)
    try:
        await asyncio.gather(one.open(), two.open())
        rec_id = await add_lesson(one, publish=True)
        assert [r.id for r in (await two.search("勾股", viewer=ANONYMOUS))[0]] == [rec_id]
    finally:
        await one.close()
        await two.close()


# --- search --------------------------------------------------------------------------------------------


@pytest.fixture
async def catalog(library: Library) -> Library:
    await add_lesson(library, title="勾股定理", publish=True, subject="数学", grade="八年级", stage="初中",
               edition="人教版", chapter="第十七章 勾股定理", description="Pythagorean theorem, 直角三角形")
    await add_lesson(library, title="一元一次方程", publish=True, subject="数学", grade="七年级", stage="初中",
               edition="北师大版", school="第三中学")
    await add_lesson(library, teacher=OTHER_TEACHER, title="化学反应速率", publish=True, subject="化学", grade="九年级",
               stage="初中", description="reaction rates and catalysts")
    await add_lesson(library, teacher=OTHER_TEACHER, title="氧化还原 (待审核)", subject="化学", grade="九年级")
    return library


@pytest.mark.parametrize(
    ("query", "filters", "titles"),
    [
        pytest.param("勾股", {}, ["勾股定理"], id="two-chinese-characters-find-a-longer-title"),
        pytest.param("勾股定理", {}, ["勾股定理"], id="the-whole-chinese-title"),
        pytest.param("三角", {}, ["勾股定理"], id="chinese-inside-the-description"),
        pytest.param("股勾", {}, [], id="chinese-characters-out-of-order-do-not-match"),
        pytest.param("pythag", {}, ["勾股定理"], id="an-english-prefix-case-insensitive"),
        pytest.param("Catalysts", {}, ["化学反应速率"], id="an-english-word"),
        pytest.param("王老师", {}, ["化学反应速率"], id="the-teacher-name"),
        pytest.param("第三中学", {}, ["一元一次方程"], id="the-school"),
        pytest.param("人教", {}, ["勾股定理"], id="the-textbook-edition"),
        pytest.param("方程 一元", {}, ["一元一次方程"], id="two-terms-both-required"),
        pytest.param("方程 化学", {}, [], id="two-terms-never-together"),
        pytest.param("", {"subject": "数学"}, ["一元一次方程", "勾股定理"], id="subject-filter-newest-first"),
        pytest.param("", {"subject": "数学", "grade": "八年级"}, ["勾股定理"], id="subject-and-grade"),
        pytest.param("", {"stage": "初中"}, ["化学反应速率", "一元一次方程", "勾股定理"], id="stage"),
        pytest.param("数学", {"grade": "七年级"}, ["一元一次方程"], id="keyword-and-filter"),
        pytest.param('"勾股" OR 化学', {}, [], id="fts-operators-are-plain-words"),
        pytest.param("NEAR(勾股 定理) title:x *", {}, [], id="fts-syntax-is-never-interpreted"),
        pytest.param("氧化", {}, [], id="an-unpublished-lesson-is-not-found-by-the-public"),
    ],
)
async def test_the_public_search_finds_published_lessons(catalog: Library, query: str, filters: dict[str, str],
                                                   titles: list[str]) -> None:
    found, total = await catalog.search(query, filters, viewer=ANONYMOUS)
    assert [r.title for r in found] == titles
    assert total == len(titles)


async def test_a_title_hit_ranks_above_a_description_hit(library: Library) -> None:
    await add_lesson(library, title="复习课", publish=True, description="回顾勾股定理的证明")
    await add_lesson(library, title="勾股定理的证明", publish=True)
    found, _ = await library.search("勾股", viewer=ANONYMOUS)
    assert [r.title for r in found] == ["勾股定理的证明", "复习课"]


async def test_an_edit_is_searchable_at_once_and_the_old_words_are_gone(catalog: Library) -> None:
    (rec,), _ = await catalog.search("勾股", viewer=REVIEWER)
    await catalog.update_metadata(rec.id, {"title": "毕达哥拉斯定理", "description": "", "chapter": ""}, REVIEWER)
    assert (await catalog.search("勾股", viewer=REVIEWER))[1] == 0
    assert [r.id for r in (await catalog.search("毕达", viewer=REVIEWER))[0]] == [rec.id]


@pytest.mark.parametrize(
    ("page", "per_page", "expected_titles"),
    [
        pytest.param(1, 2, ["第6课", "第5课"], id="first-page"),
        pytest.param(2, 2, ["第4课", "第3课"], id="second-page"),
        pytest.param(3, 2, ["第2课", "第1课"], id="last-full-page"),
        pytest.param(4, 2, [], id="past-the-end-is-empty"),
        pytest.param(2, 4, ["第2课", "第1课"], id="a-short-last-page"),
    ],
)
async def test_paging_walks_the_results_newest_first_with_the_total(library: Library, page: int, per_page: int,
                                                               expected_titles: list[str]) -> None:
    for i in range(1, 7):
        await add_lesson(library, title=f"第{i}课", publish=True)
    found, total = await library.search("", page=page, per_page=per_page, viewer=ANONYMOUS)
    assert [r.title for r in found] == expected_titles
    assert total == 6


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        pytest.param({"page": 0}, "bad_request", id="page-zero"),
        pytest.param({"per_page": 0}, "bad_request", id="per-page-zero"),
        pytest.param({"per_page": 101}, "bad_request", id="per-page-over-100"),
        pytest.param({"filters": {"file": "x"}}, "invalid_field", id="filter-on-an-unknown-field"),
    ],
)
async def test_bad_search_arguments_are_refused(library: Library, kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(LibraryError) as info:
        await library.search(**kwargs)
    assert info.value.code == code


def test_fts_query_quotes_every_term() -> None:
    assert fts_query('勾股 Pythag "x') == '"勾 股" "Pythag"* "x"*'
    assert fts_query(" ，。 ") is None


# --- visibility ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("viewer", "sees_unpublished"),
    [
        pytest.param(TEACHER, True, id="its-teacher-by-participant-id"),
        pytest.param(TEACHER_NEW_TOKEN, True, id="its-teacher-with-a-new-token-for-the-same-lesson"),
        pytest.param(REVIEWER, True, id="a-reviewer"),
        pytest.param(OTHER_TEACHER, False, id="another-teacher"),
        pytest.param(SAME_NAME_OTHER_LESSON, False, id="a-teacher-of-the-same-name-in-another-lesson"),
        pytest.param(CLASSROOM, False, id="a-classroom-of-the-lesson"),
        pytest.param(ANONYMOUS, False, id="anonymous"),
    ],
)
async def test_an_unpublished_lesson_is_visible_only_to_its_teacher_and_reviewers(
    library: Library, viewer: Viewer, sees_unpublished: bool
) -> None:
    hidden = await add_lesson(library, title="勾股定理")
    public = await add_lesson(library, title="勾股定理 复习", publish=True)
    found, total = await library.search("勾股", viewer=viewer)
    assert ({r.id for r in found}, total) == (({hidden, public}, 2) if sees_unpublished else ({public}, 1))
    if sees_unpublished:
        assert (await library.get_for(hidden, viewer)).id == hidden
    else:
        with pytest.raises(LibraryError) as info:
            await library.get_for(hidden, viewer)
        assert info.value.code == "not_found"
    assert (await library.get_for(public, viewer)).id == public


# --- the review workflow -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("viewer", "decision", "code"),
    [
        pytest.param(TEACHER, "publish", "forbidden", id="its-teacher-cannot-publish"),
        pytest.param(TEACHER, "reject", "forbidden", id="its-teacher-cannot-reject"),
        pytest.param(OTHER_TEACHER, "publish", "not_found", id="another-teacher-does-not-even-see-it"),
        pytest.param(CLASSROOM, "publish", "not_found", id="a-classroom-cannot-publish"),
        pytest.param(ANONYMOUS, "publish", "not_found", id="anonymous-cannot-publish"),
        pytest.param(REVIEWER, "approve", "bad_request", id="an-unknown-decision"),
        pytest.param(REVIEWER, "reject", "invalid_field", id="a-rejection-without-a-note"),
    ],
)
async def test_only_a_reviewer_decides_and_a_refusal_changes_nothing(library: Library, viewer: Viewer, decision: str,
                                                                code: str) -> None:
    rec_id = await add_lesson(library)
    with pytest.raises(LibraryError) as info:
        await library.review(rec_id, decision, "", viewer)
    assert info.value.code == code
    assert info.value.message
    assert (await library.get(rec_id)).state == AWAITING_REVIEW  # type: ignore[union-attr]


async def test_a_reviewer_publishes_and_the_lesson_becomes_public(library: Library) -> None:
    rec_id = await add_lesson(library)
    rec = await library.review(rec_id, "publish", "很好", REVIEWER)
    assert (rec.state, rec.reviewer, rec.review_note) == (PUBLISHED, "张审核", "很好")
    assert (await library.get_for(rec_id, ANONYMOUS)).state == PUBLISHED


async def test_rejected_then_edited_and_resubmitted_by_its_teacher_then_published(library: Library) -> None:
    rec_id = await add_lesson(library)
    assert (await library.review(rec_id, "reject", "请补充章节", REVIEWER)).state == REJECTED
    await library.update_metadata(rec_id, {"chapter": "第十七章"}, TEACHER)
    with pytest.raises(LibraryError) as info:
        await library.resubmit(rec_id, OTHER_TEACHER)
    assert info.value.code == "not_found"
    assert (await library.resubmit(rec_id, TEACHER_NEW_TOKEN)).state == AWAITING_REVIEW
    assert (await library.review(rec_id, "publish", "", REVIEWER)).state == PUBLISHED
    assert [h["action"] for h in await library.history(rec_id)] == [
        "start", "finish", "processed", "reject", "edit", "resubmit", "publish"]


@pytest.mark.parametrize(
    ("state_path", "action", "allowed_hint"),
    [
        pytest.param([], "resubmit", "publish, reject", id="resubmit-what-is-already-awaiting-review"),
        pytest.param(["publish"], "publish", "take_down", id="publish-twice"),
        pytest.param(["reject"], "publish", "resubmit", id="publish-a-rejected-lesson-without-resubmitting"),
        pytest.param(["reject"], "reject", "resubmit", id="reject-twice"),
    ],
)
async def test_illegal_transitions_are_refused_with_a_clear_error(library: Library, state_path: list[str], action: str,
                                                            allowed_hint: str) -> None:
    rec_id = await add_lesson(library)
    for step in state_path:
        await library.review(rec_id, step, "说明", REVIEWER)
    before = await library.get(rec_id)
    with pytest.raises(LibraryError) as info:
        if action == "resubmit":
            await library.resubmit(rec_id, REVIEWER)
        else:
            await library.review(rec_id, action, "说明", REVIEWER)
    assert info.value.code == "invalid_transition"
    assert f"cannot {action} a recording that is {before.state}" in info.value.message  # type: ignore[union-attr]
    assert allowed_hint in info.value.message
    assert await library.get(rec_id) == before


async def test_a_recording_still_recording_cannot_be_published(library: Library) -> None:
    rec_id = await library.start_recording("math-8a", "直播中", "李老师", "t-li", library.recordings_dir / "live.webm")
    with pytest.raises(LibraryError) as info:
        await library.review(rec_id, "publish", "", REVIEWER)
    assert info.value.code == "invalid_transition"


async def test_a_published_lesson_is_not_rejected_but_taken_down(library: Library) -> None:
    rec_id = await add_lesson(library, publish=True)
    with pytest.raises(LibraryError) as info:
        await library.review(rec_id, "reject", "版权问题", REVIEWER)
    assert info.value.code == "invalid_transition" and "take_down" in info.value.message


# --- metadata ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        pytest.param({"file": "../../etc/passwd"}, "invalid_field", "unknown field", id="an-unknown-field"),
        pytest.param({"state": "published"}, "invalid_field", "unknown field", id="the-state-is-not-metadata"),
        pytest.param({"title": "x" * 201}, "invalid_field", "longer than 200", id="a-title-over-200-chars"),
        pytest.param({"description": "x" * 4001}, "invalid_field", "longer than 4000", id="a-long-description"),
        pytest.param({"title": ""}, "invalid_field", "empty", id="an-empty-title"),
        pytest.param({"title": 7}, "invalid_field", "string", id="a-number"),
        pytest.param({"subject": None}, "invalid_field", "string", id="a-null"),
        pytest.param({"date": "2025-13-01"}, "invalid_field", "YYYY-MM-DD", id="a-bad-month"),
        pytest.param({"date": "20250101"}, "invalid_field", "YYYY-MM-DD", id="a-compact-date"),
        pytest.param({"language": "中文"}, "invalid_field", "language", id="a-language-that-is-no-tag"),
        pytest.param({"title": "a\x00b"}, "invalid_field", "control", id="a-control-character"),
        pytest.param({"teacher": "别人"}, "forbidden", "reviewer", id="the-teacher-renaming-the-owner"),
    ],
)
async def test_invalid_metadata_is_refused_and_nothing_changes(library: Library, fields: dict[str, Any], code: str,
                                                         words: str) -> None:
    rec_id = await add_lesson(library)
    before = await library.get(rec_id)
    with pytest.raises(LibraryError) as info:
        await library.update_metadata(rec_id, fields, TEACHER)
    assert info.value.code == code
    assert words in info.value.message
    assert await library.get(rec_id) == before


async def test_its_teacher_edits_every_curriculum_field_trimmed(library: Library) -> None:
    rec_id = await add_lesson(library)
    fields = {"stage": "初中", "subject": "数学", "grade": "八年级", "edition": "人教版", "volume": "下册",
              "unit": "第十七章", "chapter": "17.1 勾股定理 ", "date": "2025-03-14", "language": "zh-CN",
              "license": "CC BY-NC-SA 4.0", "school": "县第一中学", "description": "证明与应用"}
    rec = await library.update_metadata(rec_id, fields, TEACHER)
    assert {k: getattr(rec, k) for k in fields} == {**fields, "chapter": "17.1 勾股定理"}


@pytest.mark.parametrize(
    ("viewer", "published", "code"),
    [
        pytest.param(OTHER_TEACHER, False, "not_found", id="another-teacher"),
        pytest.param(CLASSROOM, True, "forbidden", id="a-classroom-on-a-published-lesson"),
        pytest.param(ANONYMOUS, True, "forbidden", id="anonymous-on-a-published-lesson"),
        pytest.param(TEACHER, True, "forbidden", id="its-teacher-once-published"),
    ],
)
async def test_who_may_not_edit(library: Library, viewer: Viewer, published: bool, code: str) -> None:
    rec_id = await add_lesson(library, publish=published)
    with pytest.raises(LibraryError) as info:
        await library.update_metadata(rec_id, {"title": "改名"}, viewer)
    assert info.value.code == code


async def test_a_reviewer_may_edit_a_published_lesson_and_rename_its_teacher(library: Library) -> None:
    rec_id = await add_lesson(library, publish=True)
    rec = await library.update_metadata(rec_id, {"title": "勾股定理（修订）", "teacher": "李明"}, REVIEWER)
    assert (rec.title, rec.teacher, rec.state) == ("勾股定理（修订）", "李明", PUBLISHED)


# --- media -----------------------------------------------------------------------------------------------------


def test_probe_reports_duration_and_both_streams(webm_master: Path) -> None:
    info = media.probe(webm_master)
    assert info["duration_s"] == pytest.approx(WEBM_SECONDS, abs=0.1)
    assert [(s["type"], s["codec"]) for s in info["streams"]] == [("video", "vp8"), ("audio", "opus")]


def test_probe_of_a_file_that_is_not_media_is_a_media_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(media.MediaError):
        media.probe(junk)


def test_the_poster_is_a_decodable_jpeg_of_the_video_size(webm_master: Path, tmp_path: Path) -> None:
    poster = media.make_poster(webm_master, tmp_path / "p.jpg")
    assert poster.read_bytes()[:2] == b"\xff\xd8"
    with av.open(str(poster)) as c:
        frame = next(c.decode(video=0))
    assert (frame.width, frame.height) == VIDEO_SIZE


def test_the_export_encoder_is_h264() -> None:
    assert media.video_encoder() in ("libx264", "libopenh264", "h264")


# --- the command line ----------------------------------------------------------------------------------------------


def run_cli(data_dir: Path, *args: str, capsys: pytest.CaptureFixture[str],
            database_url: str | None = None) -> tuple[int, str]:
    url = ["--database-url", database_url] if database_url else []
    code = cli.main(["--data-dir", str(data_dir), *url, *args])
    return code, capsys.readouterr().out


def get(data: Path, database_url: str, rec_id: str) -> Any:
    """One item as the store holds it, read by a Library of its own (the CLI runs its own event loop)."""
    async def read() -> Any:
        lib = Library(data, database_url=database_url)
        try:
            return await lib.get(rec_id)
        finally:
            await lib.close()
    return asyncio.run(read())


def test_the_cli_imports_lists_reviews_and_exports(tmp_path: Path, webm_master: Path, database_url: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"

    def run(*args: str) -> tuple[int, str]:
        return run_cli(data, *args, capsys=capsys, database_url=database_url)

    code, out = run("import", str(webm_master), "--title", "勾股定理", "--teacher", "李老师",
                    "--subject", "数学", "--grade", "八年级", "--lesson", "math-8a")
    assert code == 0
    rec_id = out.strip().split()[-1]
    lib = Library(data, database_url=database_url)
    rec = get(data, database_url, rec_id)
    assert rec is not None and rec.state == AWAITING_REVIEW and rec.subject == "数学"
    assert rec.duration_s == pytest.approx(WEBM_SECONDS, abs=0.1)
    assert lib.path_of(rec.file).read_bytes() == webm_master.read_bytes()

    code, out = run("list", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)["items"]] == [rec_id]

    code, out = run("search", "勾股", "--grade", "八年级")
    assert code == 0 and rec_id in out and "勾股定理" in out

    code, out = run("review", rec_id, "publish", "--note", "好")
    assert code == 0 and get(data, database_url, rec_id).state == PUBLISHED  # type: ignore[union-attr]

    code, out = run("review", rec_id, "publish")
    assert code == 2  # publishing twice is refused

    code, out = run("export", rec_id)
    assert code == 0
    mp4 = lib.path_of(get(data, database_url, rec_id).mp4)  # type: ignore[arg-type, union-attr]
    assert [s["codec"] for s in media.probe(mp4)["streams"]] == ["h264", "aac"]

    code, out = run("show", rec_id)
    assert code == 0 and json.loads(out)["state"] == PUBLISHED


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["show", "nope"], id="show-an-unknown-id"),
        pytest.param(["review", "nope", "publish"], id="review-an-unknown-id"),
        pytest.param(["import", "/no/such/file.webm", "--title", "x"], id="import-a-missing-file"),
    ],
)
def test_the_cli_reports_errors_with_exit_code_2(tmp_path: Path, args: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--data-dir", str(tmp_path / "data"), *args]) == 2
    assert capsys.readouterr().err.strip()

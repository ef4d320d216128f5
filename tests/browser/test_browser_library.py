"""The library pages (client_web/library/) in real headless Chromium against the library's routes: an item whose
recording stopped early (`incomplete`, e.g. a full disk) carries a 「不完整」/"Incomplete" badge next to its state
on the list and the player page, and the player page says in one line what that means for the viewer; a complete
item shows neither. Screenshots at phone (390×844) and laptop (1366×768) sizes go to docs/screenshots/
(library-incomplete-*.png)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from recorder.library.catalog import Library, Viewer
from recorder.library.web import add_routes
from signaling.app import token_viewer
from signaling.tokens import issue_token
from tests.chromium import SCREENSHOTS
from tests.chromium import open_page as browser_page

pytestmark = pytest.mark.slow

SECRET = "library-browser-test-secret-0123456789"
REASON = "the disk is full (No space left on device) at 4.0 s into the recording"
REVIEWER = Viewer(role="reviewer", sub="r-1", name="张审核")
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1366, "height": 768}
PAGE_TIMEOUT_MS = 10000

# what each language shows: the badge, and words the one-line explanation must hold
BADGE = {"zh": "不完整", "en": "Incomplete"}
EXPLANATION = {"zh": ("磁盘已满", "提前结束", "拖动进度条可能较慢"),
               "en": ("disk", "stops early", "seeking may be slow")}


@dataclass
class Site:
    url: str
    token: str
    complete_id: str
    incomplete_id: str


@pytest.fixture
async def site(tmp_path: Path, webm_master: Path) -> AsyncIterator[Site]:
    library = Library(tmp_path / "data")
    ids = {}
    lessons = [("勾股定理", None, True), ("一元一次方程的解法", REASON, False), ("平行四边形的性质", None, False)]
    for title, incomplete, publish in lessons:
        file = library.recordings_dir / f"{title}.webm"
        shutil.copy(webm_master, file)
        rec_id = await library.start_recording("math-8a", title, "李老师", "t-li", file)
        await library.finish_recording(rec_id, 3.0, file.stat().st_size, incomplete=incomplete)
        await library.update_metadata(rec_id, {"school": "第三小学", "stage": "初中", "subject": "数学",
                                               "grade": "八年级"}, REVIEWER)
        if publish:
            await library.review(rec_id, "publish", "", REVIEWER)
        ids[title] = rec_id
    app = web.Application()
    add_routes(app, library, SECRET, token_viewer(SECRET), export_on_publish=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        # a reviewer sees every item, awaiting review or published
        yield Site(str(server.make_url("")).rstrip("/"), issue_token(SECRET, "reviewer", "library", name="张审核"),
                   ids["勾股定理"], ids["一元一次方程的解法"])
    finally:
        await server.close()
        await library.close()


async def open_page(browser, url: str, viewport: dict[str, int]):  # type: ignore[no-untyped-def]
    return await browser_page(browser, url, viewport, bypass_csp=False)


def page_url(site: Site, path: str, lang: str) -> str:
    return f"{site.url}{path}{'?lang=en' if lang == 'en' else ''}#token={site.token}"


async def list_cards(page) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Each card's title -> the texts of its badges."""
    await page.wait_for_function("document.querySelectorAll('#results .card').length === 3", timeout=PAGE_TIMEOUT_MS)
    return await page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#results .card')].map(
        (c) => [c.querySelector('.title').textContent,
                [...c.querySelectorAll('.badge')].map((b) => b.textContent)]))""")


async def player(page) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """The player page once its item is shown: the state row's badges and the explanation (if shown)."""
    await page.wait_for_function("document.querySelectorAll('#fields dt').length > 0", timeout=PAGE_TIMEOUT_MS)
    return await page.evaluate("""() => {
        const note = document.getElementById('incomplete');
        return {badges: [...document.querySelectorAll('#fields .badge')].map((b) => b.textContent),
                note: note && !note.hidden ? note.textContent : null};
    }""")


@pytest.mark.parametrize("lang", ["zh", "en"])
async def test_an_incomplete_item_shows_the_badge_and_the_explanation_and_a_complete_one_neither(
        site: Site, browser, lang: str) -> None:
    page = await open_page(browser, page_url(site, "/library", lang), LAPTOP)
    cards = await list_cards(page)
    assert BADGE[lang] in cards["一元一次方程的解法"], cards
    assert BADGE[lang] not in cards["勾股定理"] and BADGE[lang] not in cards["平行四边形的性质"], cards
    assert not page.ketang_errors, page.ketang_errors  # type: ignore[attr-defined]
    await page.context.close()

    page = await open_page(browser, page_url(site, f"/library/play/{site.incomplete_id}", lang), LAPTOP)
    shown = await player(page)
    assert BADGE[lang] in shown["badges"], shown
    note = shown["note"]
    assert isinstance(note, str), shown
    for words in EXPLANATION[lang]:
        assert words in note, note
    other = "en" if lang == "zh" else "zh"
    assert BADGE[other] not in note and not any(w in note for w in EXPLANATION[other]), note  # one language only
    assert not page.ketang_errors, page.ketang_errors  # type: ignore[attr-defined]
    await page.context.close()

    page = await open_page(browser, page_url(site, f"/library/play/{site.complete_id}", lang), LAPTOP)
    shown = await player(page)
    assert BADGE[lang] not in shown["badges"], shown
    assert shown["note"] is None, shown
    assert not page.ketang_errors, page.ketang_errors  # type: ignore[attr-defined]
    await page.context.close()


@pytest.mark.parametrize(("size", "viewport"), [("phone", PHONE), ("laptop", LAPTOP)])
async def test_screenshots_of_an_incomplete_item(
        site: Site, browser, size: str, viewport: dict[str, int]) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = await open_page(browser, page_url(site, "/library", "zh"), viewport)
    await list_cards(page)
    await page.wait_for_function("[...document.images].every((i) => i.complete)", timeout=PAGE_TIMEOUT_MS)
    # nothing sticks out sideways on a phone
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), size
    # on a phone the incomplete card is below the first screen: the picture shows it, badge in view
    assert await page.evaluate("""() => {
        const badge = document.querySelector('#results .badge.incomplete');
        badge.closest('.card').scrollIntoView({block: 'end'});
        const r = badge.getBoundingClientRect();
        return r.top >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth;
    }"""), size
    await page.screenshot(path=str(SCREENSHOTS / f"library-incomplete-list-{size}.png"))
    await page.context.close()

    page = await open_page(browser, page_url(site, f"/library/play/{site.incomplete_id}", "zh"), viewport)
    shown = await player(page)
    assert shown["note"], shown
    await page.wait_for_function("document.getElementById('video').readyState >= 1", timeout=PAGE_TIMEOUT_MS)
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), size
    # the explanation is seen before the video, without scrolling
    assert await page.evaluate(
        "document.getElementById('incomplete').getBoundingClientRect().bottom <= window.innerHeight"), size
    await page.screenshot(path=str(SCREENSHOTS / f"library-incomplete-play-{size}.png"))
    await page.context.close()


# --- one card per lesson, the 待审核 filter, 下架 ----------------------------------------------------------------


@pytest.fixture
async def lessons_site(tmp_path: Path, webm_master: Path) -> AsyncIterator[Site]:
    """Two lessons as the live recorder catalogues them: 勾股定理 (camera, courseware, a class on stage; published)
    and 一元一次方程 (camera only; awaiting review)."""
    library = Library(tmp_path / "data")
    ids = {}
    for lesson, title, files, publish in (
            ("math-8a", "勾股定理", [("teacher", "李老师", ""), ("courseware", "课件 1", "-screen1"),
                                     ("stage", "第三小学", "-stage1")], True),
            ("math-7a", "一元一次方程", [("teacher", "李老师", "")], False)):
        for role, label, suffix in files:
            file = library.recordings_dir / f"{lesson}-20250301-080000{suffix}.webm"
            shutil.copy(webm_master, file)
            rec_id = await library.start_recording(lesson, title, "李老师", "t-li", file, role=role, label=label)
            await library.finish_recording(rec_id, 3.0, file.stat().st_size)
            ids.setdefault(title, rec_id)
        await library.update_metadata(ids[title], {"date": "2025-03-01", "stage": "初中", "subject": "数学",
                                                   "grade": "八年级"}, REVIEWER)
        if publish:
            await library.review(ids[title], "publish", "", REVIEWER)
    app = web.Application()
    add_routes(app, library, SECRET, token_viewer(SECRET), export_on_publish=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Site(str(server.make_url("")).rstrip("/"), issue_token(SECRET, "reviewer", "library", name="张审核"),
                   ids["勾股定理"], ids["一元一次方程"])
    finally:
        await server.close()
        await library.close()


async def card_titles(page, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    await page.wait_for_function(f"document.querySelectorAll('#results .card').length === {n}",
                                 timeout=PAGE_TIMEOUT_MS)
    return await page.evaluate("[...document.querySelectorAll('#results .card .title')].map((e) => e.textContent)")


async def test_one_card_per_lesson_with_its_date_the_pending_filter_and_take_down(lessons_site: Site,
                                                                                  browser) -> None:
    site = lessons_site
    page = await open_page(browser, page_url(site, "/library", "zh"), LAPTOP)
    assert sorted(await card_titles(page, 2)) == ["一元一次方程", "勾股定理"]  # 4 files, 2 lessons
    assert await page.text_content("#status") == "共 2 节课"
    dates = await page.evaluate("[...document.querySelectorAll('#results .card .date')].map((e) => e.textContent)")
    assert dates == ["上课日期 2025-03-01"] * 2
    await page.click("#pending")  # reviewers only: 只看待审核
    assert await card_titles(page, 1) == ["一元一次方程"]
    assert "state=awaiting_review" in page.url
    assert not page.ketang_errors, page.ketang_errors  # type: ignore[attr-defined]
    await page.context.close()

    page = await open_page(browser, page_url(site, f"/library/play/{site.complete_id}", "zh"), LAPTOP)
    await page.wait_for_function("document.querySelectorAll('#sources li').length === 3", timeout=PAGE_TIMEOUT_MS)
    roles = await page.evaluate("[...document.querySelectorAll('#sources li')].map((e) => e.dataset.role)")
    assert sorted(roles) == ["courseware", "stage", "teacher"]
    assert "中文" in await page.text_content("#fields")  # 语言 shown as 中文, not zh-CN
    await page.wait_for_selector("#takedown-go", state="visible", timeout=PAGE_TIMEOUT_MS)
    await page.fill("#takedown textarea[name=note]", "教材版本有误")
    await page.click("#takedown-go")
    await page.wait_for_function("document.getElementById('fields').textContent.includes('已下架')",
                                 timeout=PAGE_TIMEOUT_MS)
    assert "教材版本有误" in await page.text_content("#reviewnote")
    await page.wait_for_selector("#republish-go", state="visible", timeout=PAGE_TIMEOUT_MS)
    await page.click("#republish-go")
    await page.wait_for_function("document.getElementById('fields').textContent.includes('已发布')",
                                 timeout=PAGE_TIMEOUT_MS)
    assert not page.ketang_errors, page.ketang_errors  # type: ignore[attr-defined]
    await page.context.close()

    # anonymous: one published lesson, and no reviewer's filter nor note
    page = await open_page(browser, f"{site.url}/library", LAPTOP)
    assert await card_titles(page, 1) == ["勾股定理"]
    assert await page.is_hidden("#states")
    await page.context.close()

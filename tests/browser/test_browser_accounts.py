"""The account pages in real headless Chromium against the real app (make_app over HTTP): the district's first
administrator (made with `ketang admin create-user`) signs in at /login, creates a term, a teacher (and sets a new password for them) and a receiving
classroom with a screen (its screen URL shown once), imports a weekly timetable CSV with one bad row — reported with
its row, column and reason in Chinese, nothing imported until the good rows are accepted —, sees the lesson in the
week view; then the teacher signs in, finds it in 我的课程 today and starts it (the teacher page opens with a lesson
token for that lesson). Screenshots at 1366×768 and 768×1024 go to docs/screenshots/ (login.png, admin-import.png,
admin-timetable.png, admin-timetable-tablet.png, admin-screens.png, me.png, me-tablet.png, me-en.png)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, timedelta
from pathlib import Path

import pytest

from signaling.tokens import verify_token
from tests.chromium import SCREENSHOTS, open_page
from tests.district import ADMIN_PASSWORD, Site, district_site

pytestmark = pytest.mark.slow

SECRET = "accounts-browser-secret-0123456789abcdef"
LAPTOP = {"width": 1366, "height": 768}
TABLET = {"width": 768, "height": 1024}
TIMEOUT_MS = 15000
WEEKDAYS = "一二三四五六日"


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with district_site(tmp_path / "data", SECRET, record=False) as site:
        yield site


async def sign_in(page, login: str, password: str) -> None:  # type: ignore[no-untyped-def]
    await page.fill("#login-name", login)
    await page.fill("#login-password", password)
    await page.click("#login-submit")


async def test_an_administrator_sets_up_a_term_and_imports_a_timetable_and_the_teacher_finds_the_lesson(
        site: Site, browser) -> None:  # type: ignore[no-untyped-def]
    today = date.today()
    monday = today - timedelta(days=today.weekday())
    page = await open_page(browser, f"{site.url}/login", viewport=LAPTOP)
    page.set_default_timeout(TIMEOUT_MS)
    await page.wait_for_selector("#login-submit:text('登录')")
    # a wrong password first: said in Chinese, with what happens after more
    await sign_in(page, "admin", "wrong-password")
    await page.wait_for_selector("#login-error:not([hidden])")
    assert "登录名或密码不正确" in await page.text_content("#login-error")
    await page.screenshot(path=str(SCREENSHOTS / "login.png"))
    await sign_in(page, "admin", ADMIN_PASSWORD)
    await page.wait_for_url("**/admin**")
    await page.wait_for_selector("body[data-ready]")
    assert "王主任" in await page.text_content("#who")

    # a term beginning this week
    await page.click("[data-tab=terms]")
    await page.fill("#term-form [name=name]", "2025—2026 学年 第一学期")
    await page.fill("#term-form [name=start_date]", monday.isoformat())
    await page.fill("#term-form [name=weeks]", "20")
    await page.click("#term-form button[type=submit]")
    await page.wait_for_selector("#terms td:text('2025—2026 学年 第一学期')")
    # a teacher
    await page.click("[data-tab=users]")
    await page.fill("#user-form [name=name]", "李老师")
    await page.fill("#user-form [name=login]", "li")
    await page.select_option("#user-form [name=role]", "teacher")
    await page.fill("#user-form [name=school]", "县第一中学")
    await page.fill("#user-form [name=password]", "teacher-pw-1234")
    await page.click("#user-form button[type=submit]")
    await page.wait_for_selector("#users td:text('李老师')")
    # the teacher forgot the first password: the administrator sets another (the teacher signs in with it below)
    row = page.locator("#users tr", has_text="李老师")
    await row.locator("button", has_text="重置密码").click()
    await row.locator("input.new-password").fill("teacher-pw-5678")
    await row.locator("button", has_text="保存").click()
    await page.wait_for_selector("#status:text('已为 李老师 设置新密码')")
    # a receiving classroom and its screen: the URL is shown once
    await page.click("[data-tab=screens]")
    await page.fill("#room-form [name=name]", "第三小学 三(2)班")
    await page.fill("#room-form [name=login]", "sanxiao-3-2")
    await page.fill("#room-form [name=school]", "第三小学")
    await page.click("#room-form button[type=submit]")
    await page.click("#rooms button.add-screen")
    await page.wait_for_selector("#screen-url")
    screen_url = await page.input_value("#screen-url")
    assert screen_url.startswith(f"{site.url}/screen#device=")
    # and as a QR code to scan (an SVG the server made, shown under the page's policy as a blob: image)
    await page.wait_for_function("document.getElementById('screen-qr')?.naturalWidth > 100")
    await page.screenshot(path=str(SCREENSHOTS / "admin-screens.png"))

    # the timetable sheet: a weekly lesson today, and a row with a teacher nobody created
    csv = ("课程名称,主讲教师,接收教室,星期,节次,开始时间,结束时间,周次,学段,学科,年级,教材版本,章节\n"
           f"七年级数学 · 一元一次方程,李老师,第三小学 三(2)班,{WEEKDAYS[today.weekday()]},2,09:00,09:45,1-20,初中,数学,"
           "七年级,人教版,3.1 一元一次方程\n"
           f"九年级化学,赵老师,第三小学 三(2)班,{WEEKDAYS[today.weekday()]},3,10:00,10:45,1-20,初中,化学,九年级,"
           "人教版,燃烧\n")
    await page.click("[data-tab=import]")
    await page.set_input_files("#import-file", files=[{"name": "课表.csv", "mimeType": "text/csv",
                                                       "buffer": csv.encode("utf-8")}])
    await page.click("#import-check")
    await page.wait_for_selector("#import-report:not([hidden])")
    rows = await page.eval_on_selector_all("#import-errors tbody tr",
                                           "trs => trs.map(tr => [...tr.cells].map(td => td.textContent))")
    assert len(rows) == 1 and rows[0][:2] == ["3", "主讲教师"] and "找不到教师「赵老师」" in rows[0][2]
    assert "尚未导入" in await page.text_content("#import-summary")
    assert await page.is_hidden("#import-all")
    await page.screenshot(path=str(SCREENSHOTS / "admin-import.png"))
    await page.click("#import-valid")
    await page.wait_for_selector("#import-summary:text('已导入 1 行')")

    # the week view holds it today; the list under it with its curriculum fields
    await page.click("[data-tab=timetable]")
    await page.wait_for_selector(".week .day.today .lesson .title:text('七年级数学 · 一元一次方程')")
    assert "3.1 一元一次方程" in await page.text_content("#tt-list")
    await page.screenshot(path=str(SCREENSHOTS / "admin-timetable.png"))
    await page.set_viewport_size(TABLET)
    await page.screenshot(path=str(SCREENSHOTS / "admin-timetable-tablet.png"), full_page=True)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= TABLET["width"], width  # (the week scrolls inside its box, the page does not)
    await page.context.close()

    # the teacher: 我的课程 today, then 开始上课 opens the teacher page with a token for this lesson
    teacher = await open_page(browser, f"{site.url}/login", viewport=LAPTOP)
    teacher.set_default_timeout(TIMEOUT_MS)
    await sign_in(teacher, "li", "teacher-pw-5678")
    await teacher.wait_for_url("**/me**")
    await teacher.wait_for_selector("#today .lesson-card h3:text('七年级数学 · 一元一次方程')")
    assert "第三小学 三(2)班" in await teacher.text_content("#today")
    assert "初中 · 数学 · 七年级 · 人教版 · 3.1 一元一次方程" in await teacher.text_content("#today")
    await teacher.screenshot(path=str(SCREENSHOTS / "me.png"))
    await teacher.set_viewport_size(TABLET)
    await teacher.screenshot(path=str(SCREENSHOTS / "me-tablet.png"))
    await teacher.goto(f"{site.url}/me?lang=en")
    await teacher.wait_for_selector("#today button.start:text('Start the lesson')")
    await teacher.screenshot(path=str(SCREENSHOTS / "me-en.png"))
    await teacher.click("#today button.start")
    await teacher.wait_for_url("**/teacher**")
    fragment = teacher.url.split("#", 1)[1]
    claims = verify_token(SECRET, fragment.split("token=", 1)[1].split("&", 1)[0])
    assert (claims.role, claims.name, claims.title) == ("teacher", "李老师", "七年级数学 · 一元一次方程")
    assert claims.lesson.endswith(today.strftime("-%Y%m%d"))
    assert teacher.ketang_errors == []
    await teacher.context.close()


async def test_the_account_pages_work_under_the_content_security_policy(site: Site, browser) -> None:  # type: ignore[no-untyped-def]
    from tests.browser.test_browser_csp import WATCH_VIOLATIONS

    context = await browser.new_context(viewport=LAPTOP)  # the policy enforced
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.add_init_script(WATCH_VIOLATIONS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{site.url}/login?lang=en")
    await page.wait_for_selector("#login-submit:text('Sign in')")
    await sign_in(page, "admin", ADMIN_PASSWORD)
    await page.wait_for_url("**/admin?lang=en**")
    await page.wait_for_selector("body[data-ready] [data-tab=timetable]:text('Timetable')")
    assert await page.evaluate("window.__csp") == [] and errors == []
    await context.close()

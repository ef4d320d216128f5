"""Standing classroom screens in real headless Chromium against the real app (make_app over HTTP, recording on): an
administrator's timetable holds a lesson starting within two minutes and a later one; two receiving classrooms'
screens, opened once with their screen URL (one of them reopened without it, as after a reboot), show 今日课表 with the
countdown, enter the lesson by themselves at its start (the classroom page framed in /screen) and decode the teacher,
who started it with one click in 我的课程; the teacher page is reloaded mid-lesson and goes on by itself while the
screens keep the lesson; the library then holds one item for it; after the teacher ends it, both screens are back on
the timetable showing the next lesson. A revoked screen gets no token and says so. Screenshots of /screen at 1366×768
and 1920×1080 go to docs/screenshots/ (screen.png, screen-1080.png, screen-lesson.png)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.browser.test_browser_csp import WATCH_VIOLATIONS
from tests.chromium import SCREENSHOTS, open_page, wait_decoding
from tests.district import ADMIN_PASSWORD, Site, district_site

pytestmark = pytest.mark.slow

SECRET = "screens-browser-secret-0123456789abcdef"
LAPTOP = {"width": 1366, "height": 768}
BOARD = {"width": 1920, "height": 1080}
TIMEOUT_MS = 15000


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with district_site(tmp_path / "data", SECRET, record=True) as site:
        yield site


class Admin:
    """The administrator's REST calls (what the /admin page does)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url, self.csrf = http, url, ""

    async def sign_in(self) -> None:
        async with self.http.post(f"{self.url}/api/login", json={"login": "admin", "password": ADMIN_PASSWORD}) as r:
            self.csrf = (await r.json())["csrf"]

    async def post(self, path: str, body: dict | None = None) -> dict:
        async with self.http.post(f"{self.url}{path}", json=body, headers={"X-CSRF-Token": self.csrf}) as r:
            assert r.status in (200, 201), (r.status, await r.text())
            return await r.json()


async def in_state(page, state: str, timeout_ms: int = TIMEOUT_MS) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_selector(f"body[data-state={state}]", state="attached", timeout=timeout_ms)


async def open_screen(browser, url: str):  # type: ignore[no-untyped-def]
    """A screen page under the server's Content-Security-Policy (enforced: a kiosk browser has no test switches),
    its violations and the framed classroom page's collected in `window.__csp`."""
    context = await browser.new_context(viewport=LAPTOP)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.add_init_script(WATCH_VIOLATIONS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.ketang_errors = errors
    await page.goto(url)
    return page


def lesson_frame(page):  # type: ignore[no-untyped-def]
    frames = [f for f in page.frames if "/classroom" in f.url]
    assert len(frames) == 1, [f.url for f in page.frames]
    return frames[0]


async def test_two_classroom_screens_enter_their_lesson_by_themselves_and_return_to_the_timetable(
        site: Site, browser) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now()
    start = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (start - now).total_seconds() < 30:  # time to set up before it starts
        start += timedelta(minutes=1)
    later = start + timedelta(minutes=40)
    if later.date() != now.date():
        pytest.skip("too close to midnight for a lesson and a later one today")
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # (cookies for 127.0.0.1)
    admin = Admin(http, site.url)
    await admin.sign_in()
    li = await admin.post("/api/admin/users", {"login": "li", "name": "李老师", "role": "teacher",
                                               "school": "县第一中学", "password": "teacher-pw-1234"})
    rooms = [await admin.post("/api/admin/users", {"login": f"room{i}", "name": name, "role": "classroom",
                                                   "school": name.split(" ")[0]})
             for i, name in enumerate(["第三小学 三(2)班", "第五小学 七(1)班"])]
    screens = [await admin.post("/api/admin/devices", {"classroom_id": r["id"], "label": "一体机"}) for r in rooms]
    ids = [r["id"] for r in rooms]
    first = await admin.post("/api/admin/timetable", {
        "title": "七年级数学 · 一元一次方程", "teacher_id": li["id"], "classroom_ids": ids, "kind": "once",
        "date": now.date().isoformat(), "start_time": f"{start:%H:%M}",
        "end_time": f"{start + timedelta(minutes=30):%H:%M}", "stage": "初中", "subject": "数学", "grade": "七年级"})
    second = await admin.post("/api/admin/timetable", {
        "title": "七年级语文 · 春", "teacher_id": li["id"], "classroom_ids": ids, "kind": "once",
        "date": now.date().isoformat(), "start_time": f"{later:%H:%M}",
        "end_time": f"{later + timedelta(minutes=30):%H:%M}"})
    lesson = f"{first['id']}-{now:%Y%m%d}"
    next_lesson = f"{second['id']}-{now:%Y%m%d}"

    pages = []
    try:
        # each screen opened once with its URL; the first reopened without it (a reboot): the credential was kept
        for made in screens:
            page = await open_screen(browser, f"{site.url}{made['screen_path']}")
            await page.wait_for_selector("body[data-ready]", state="attached")
            assert "#device=" not in page.url  # (the secret is not left on the address bar)
            pages.append(page)
        await pages[0].goto(f"{site.url}/screen")
        await pages[0].wait_for_selector("body[data-ready]", state="attached")
        for page, room in zip(pages, rooms, strict=True):
            assert await page.text_content("#room") == room["name"]
            await in_state(page, "board")
            assert await page.get_attribute("#next", "data-lesson") == lesson
            assert await page.text_content("#next-title") == "七年级数学 · 一元一次方程"
            assert (await page.text_content("#countdown")).startswith("距上课还有")
            titles = await page.eval_on_selector_all("#lessons li .title", "els => els.map(e => e.textContent)")
            assert titles == ["七年级数学 · 一元一次方程", "七年级语文 · 春"]
        await pages[0].screenshot(path=str(SCREENSHOTS / "screen.png"))
        await pages[1].set_viewport_size(BOARD)
        await pages[1].screenshot(path=str(SCREENSHOTS / "screen-1080.png"))
        # the network goes (a school's link drops): the screen says so with a countdown, and is back when it returns
        await pages[1].context.set_offline(True)
        await pages[1].evaluate("window.dispatchEvent(new Event('online'))")  # (asks now, not in 5 minutes)
        await pages[1].wait_for_selector("#status.warn:text('秒后自动重试')")
        await pages[1].context.set_offline(False)
        await pages[1].wait_for_selector("#status", state="hidden")
        assert await pages[1].get_attribute("#next", "data-lesson") == lesson
        # the later lesson's window is not open yet (it opens 5 minutes before its start): no token
        async with http.post(f"{site.url}/api/screen/lessons/{next_lesson}/token",
                             headers={"Authorization": f"Device {screens[0]['credential']}"}) as r:
            assert r.status == 409 and (await r.json())["code"] == "not_now"

        # the teacher: 开始上课 in 我的课程 is the one click; the teacher page starts the lesson by itself
        teacher = await open_page(browser, f"{site.url}/login", viewport=LAPTOP)
        teacher.set_default_timeout(TIMEOUT_MS)
        pages.append(teacher)
        await teacher.fill("#login-name", "li")
        await teacher.fill("#login-password", "teacher-pw-1234")
        await teacher.click("#login-submit")
        await teacher.wait_for_url("**/me**")
        await teacher.click(f"#today .lesson-card:has(h3:text('七年级数学 · 一元一次方程')) button.start")
        await teacher.wait_for_url("**/teacher**")
        await teacher.wait_for_function("document.getElementById('status').classList.contains('live')",
                                        timeout=TIMEOUT_MS)
        assert "start=1" not in teacher.url  # (a reload after the lesson ends does not start it again)
        token = teacher.url.split("token=", 1)[1].split("&", 1)[0]

        # the screens enter by themselves at the start time
        wait_ms = int((start - datetime.now()).total_seconds() * 1000) + 20000
        for page in pages[:2]:
            await in_state(page, "lesson", timeout_ms=wait_ms)
            assert await page.get_attribute("body", "data-lesson") == lesson
        entered = datetime.now()
        assert entered >= start - timedelta(seconds=2), (entered, start)  # not before its time
        for page in pages[:2]:
            # headless Chromium blocks sound until a click, as a classroom PC does: 「点击开启声音」 is the one click
            await page.wait_for_selector("#sound:text('点击开启声音')")
            await page.click("#sound")
            assert await page.is_hidden("#sound")
            frame = lesson_frame(page)
            await wait_decoding(frame, videos=1, timeout_s=20)
            # the teacher is heard in the framed classroom page (its audio element plays after the screen's click)
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            while not await frame.evaluate("(() => { const a = document.getElementById('audio'); "
                                           "return Boolean(a.srcObject) && !a.paused; })()"):
                assert time.monotonic() < deadline, "the framed classroom page's sound did not start"
                await asyncio.sleep(0.2)
            assert await frame.evaluate("window.__csp") == []  # (framing it broke no rule of the policy)
        await pages[0].screenshot(path=str(SCREENSHOTS / "screen-lesson.png"))

        # the teacher page reloads mid-lesson: it goes on by itself, the screens keep the lesson and see the teacher
        await teacher.reload()
        await teacher.wait_for_function("document.getElementById('status').classList.contains('live')",
                                        timeout=TIMEOUT_MS)
        for page in pages[:2]:
            assert await page.get_attribute("body", "data-state") == "lesson"
            frame = lesson_frame(page)
            assert await frame.evaluate("window.ketang.session && !window.ketang.session.ended")
            await wait_decoding(frame, videos=1, timeout_s=20)

        # the teacher ends it: both screens are back on the timetable, showing the next lesson
        await teacher.click("#end")
        await teacher.click(".end-yes")
        for page in pages[:2]:
            await in_state(page, "board")
            await page.wait_for_selector(f"#next[data-lesson='{next_lesson}']", state="attached")
            assert await page.text_content("#next-title") == "七年级语文 · 春"
            assert await page.get_attribute(f"#lessons li[data-lesson='{lesson}']", "class") == "done"
        # a reboot after the lesson does not enter it again (its window is still open)
        await pages[1].reload()
        await pages[1].wait_for_selector("body[data-ready]", state="attached")
        await asyncio.sleep(2)
        await in_state(pages[1], "board")

        # one library item for the lesson, the reload notwithstanding
        deadline = time.monotonic() + 20
        while True:
            async with http.get(f"{site.url}/api/library", params={"lesson_id": lesson},
                                headers={"Authorization": f"Bearer {token}"}) as r:
                items = (await r.json())["items"]
            if items or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert len(items) == 1, items

        # a revoked screen: no token, and the page says so
        await admin.post(f"/api/admin/devices/{screens[1]['device']['id']}/revoke")
        async with http.post(f"{site.url}/api/screen/lessons/{next_lesson}/token",
                             headers={"Authorization": f"Device {screens[1]['credential']}"}) as r:
            assert r.status == 401 and (await r.json())["code"] == "device_revoked"
        await pages[1].reload()
        await in_state(pages[1], "blocked")
        assert "已被吊销" in await pages[1].text_content("#status")
        for page in pages:
            assert page.ketang_errors == [], page.ketang_errors
        for page in pages[:2]:  # under the policy: the screen and the classroom page it framed
            assert await page.evaluate("window.__csp") == []
    finally:
        await http.close()
        for page in pages:
            await page.context.close()

"""The supervision dashboard (督导) in real headless Chromium against the real app (make_app over HTTP) with real aiortc
peers: a timetable lesson with two receiving classrooms is live with its teacher and one classroom; the administrator
signs in and /admin/supervision shows that lesson with 1 of 2 classrooms connected and names the missing one, today's
figures (an earlier lesson today was not held: 开课率 0 of 1 so far) with the per-school chart drawn as SVG, and the
same in English with ?lang=en. Screenshots at 1366×768 and 768×1024 go to docs/screenshots/ (supervision.png,
supervision-tablet.png), under the server's CSP (no inline styles, no eval)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import aiohttp
import pytest

from signaling.tokens import issue_token
from tests.chromium import SCREENSHOTS, open_page
from tests.district import ADMIN_PASSWORD, Site, district_site
from tests.support import Classroom, Teacher, WsClient

pytestmark = pytest.mark.slow

SECRET = "supervision-browser-secret-0123456789abcdef"
LAPTOP = {"width": 1366, "height": 768}
TABLET = {"width": 768, "height": 1024}
TIMEOUT_MS = 15000


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with district_site(tmp_path / "data", SECRET, record=False) as site:
        yield site


async def _join(url: str, role: str, lesson: str, name: str, sub: str) -> WsClient:
    ws = await WsClient().connect(url.replace("http", "ws", 1) + "/ws")
    reply = await ws.request({"type": "join", "lesson": lesson,
                              "token": issue_token(SECRET, role, lesson, name=name, sub=sub, title="七年级数学")})
    assert reply["type"] == "joined", reply
    return ws


async def test_the_dashboard_shows_the_live_lesson_with_one_of_two_classrooms(
        site: Site, browser) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # (an IP host)
        resp = await http.post(f"{site.url}/api/login", json={"login": "admin", "password": ADMIN_PASSWORD})
        csrf = {"X-CSRF-Token": (await resp.json())["csrf"]}

        async def post(path: str, body: dict) -> dict:
            async with http.post(site.url + path, json=body, headers=csrf) as r:
                assert r.status == 201, await r.text()
                return await r.json()
        li = await post("/api/admin/users", {"login": "li", "name": "李老师", "role": "teacher", "school": "实验中学",
                                             "password": "teacher-pw-1234"})
        here = await post("/api/admin/users", {"login": "a", "name": "第三小学 三(2)班", "role": "classroom",
                                               "school": "第三小学"})
        away = await post("/api/admin/users", {"login": "b", "name": "第五小学 七(1)班", "role": "classroom",
                                               "school": "第五小学"})
        today = date.today()
        rooms = [here["id"], away["id"]]
        await post("/api/admin/timetable", {"title": "早读", "teacher_id": li["id"], "classroom_ids": rooms,
                                            "kind": "once", "date": today.isoformat(), "start_time": "00:00",
                                            "end_time": "00:01"})
        entry = await post("/api/admin/timetable", {"title": "七年级数学 · 一元一次方程", "teacher_id": li["id"],
                                                    "classroom_ids": rooms, "kind": "once",
                                                    "date": today.isoformat(), "start_time": "00:02",
                                                    "end_time": "23:59"})
    lesson = f"{entry['id']}-{today:%Y%m%d}"
    teacher = Teacher(await _join(site.url, "teacher", lesson, "李老师", li["id"]))
    assert (await teacher.publish())["type"] == "answer"
    room = Classroom(await _join(site.url, "classroom", lesson, here["name"], here["id"]))
    try:
        await room.wait_frames(20)
        page = await open_page(browser, f"{site.url}/login", viewport=LAPTOP, bypass_csp=False)
        page.set_default_timeout(TIMEOUT_MS)
        await page.fill("#login-name", "admin")
        await page.fill("#login-password", ADMIN_PASSWORD)
        await page.click("#login-submit")
        await page.wait_for_url("**/admin**")
        await page.goto(f"{site.url}/admin/supervision")
        await page.wait_for_selector("body[data-ready]")
        card = page.locator(f".live-card[data-lesson='{lesson}']")
        await card.wait_for()
        assert (await card.locator("[data-count]").text_content()) == "已接入 1 / 2 个教室"
        assert "未接入：第五小学 七(1)班" in await card.text_content()
        assert "视频" in await card.text_content()  # (its rung)
        # today's figures: 早读 was due and not held; the live lesson is not due yet
        held = page.locator("[data-tile='sup.heldRate']")
        assert "0/1" in await held.text_content()
        assert await page.locator("#school-chart svg rect.held:not(.legend)").count() == 2  # (a bar per school)
        await asyncio.sleep(2.5)  # (a reception sample for the quality band)
        await page.screenshot(path=str(SCREENSHOTS / "supervision.png"))
        await page.set_viewport_size(TABLET)
        await page.screenshot(path=str(SCREENSHOTS / "supervision-tablet.png"), full_page=True)
        # in English
        await page.goto(f"{site.url}/admin/supervision?lang=en")
        await page.wait_for_selector("body[data-ready]")
        assert (await page.locator(f".live-card[data-lesson='{lesson}'] [data-count]").text_content()) == \
            "1 of 2 classrooms connected"
        assert await page.text_content("h1") == "ketang · Supervision"
        assert page.ketang_errors == []
    finally:
        await room.close()
        await room.ws.close()
        await teacher.close()
        await teacher.ws.close()

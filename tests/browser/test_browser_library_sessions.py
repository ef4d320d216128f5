"""The library for a signed-in reviewer in real headless Chromium against the real app (make_app over HTTP), no token
pasted anywhere: the library page says 未登录 with a link to sign in, the sign-in page comes back to the library, which
then says who is signed in and offers the 待审核 filter; the reviewer opens the waiting lesson and publishes it (the
page sends the session's CSRF token), and a signed-out browser then finds it. Screenshot: library-signed-in.png
(phone size)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from recorder.library.catalog import PUBLISHED, Library
from tests.chromium import SCREENSHOTS, open_page
from tests.district import ADMIN_LOGIN, ADMIN_PASSWORD, Site, district_site
from tests.webm import webm_master  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow

SECRET = "library-sessions-browser-secret-0123456789"
PASSWORD = "reviewer-pw-2468"
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15000


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with district_site(tmp_path / "data", SECRET, record=False) as site:
        # the administrator makes a reviewer's account (unsafe: the jar keeps cookies of an IP address)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            resp = await http.post(f"{site.url}/api/login", json={"login": ADMIN_LOGIN, "password": ADMIN_PASSWORD})
            csrf = (await resp.json())["csrf"]
            resp = await http.post(f"{site.url}/api/admin/users", headers={"X-CSRF-Token": csrf}, json={
                "login": "zhang", "name": "张审核", "role": "reviewer", "password": PASSWORD})
            assert resp.status in (200, 201), await resp.text()
        yield site


async def test_a_reviewer_signs_in_from_the_library_and_publishes_a_waiting_lesson(
        site: Site, browser, webm_master: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    library = Library(site.data)
    try:
        file = library.recordings_dir / "math-7a.webm"
        shutil.copy(webm_master, file)
        rec_id = await library.start_recording("math-7a", "勾股定理", "李老师", "t-li", file)
        await library.finish_recording(rec_id, 3.0, file.stat().st_size)

        page = await open_page(browser, f"{site.url}/library", viewport=PHONE)
        status = page.locator("#status")
        await page.wait_for_function("document.querySelector('#status a') !== null", timeout=TIMEOUT_MS)
        assert "未登录" in await status.inner_text()
        assert await page.locator(".card").count() == 0, "nothing is published yet"
        await page.click("#status a")
        await page.wait_for_url("**/login?next=*", timeout=TIMEOUT_MS)
        await page.fill("#login-name", "zhang")
        await page.fill("#login-password", PASSWORD)
        await page.click("#login-submit")
        await page.wait_for_url("**/library", timeout=TIMEOUT_MS)
        await page.wait_for_selector(".card", timeout=TIMEOUT_MS)
        text = await status.inner_text()
        assert "已登录：张审核（审核员）" in text, text
        assert await page.locator("#states").is_visible(), "a reviewer gets the 待审核 filter"
        await page.screenshot(path=str(SCREENSHOTS / "library-signed-in.png"), full_page=True)

        await page.click(".card a")
        await page.wait_for_selector("#reviewbox:not([hidden])", timeout=TIMEOUT_MS)
        await page.click("#review button[value=publish]")
        await page.wait_for_function("document.querySelector('#reviewstatus').textContent === '已发布'",
                                     timeout=TIMEOUT_MS)
        assert (await library.get(rec_id)).state == PUBLISHED
        assert page.ketang_errors == []

        anyone = await open_page(browser, f"{site.url}/library?lang=en", viewport=PHONE)
        await anyone.wait_for_selector(".card", timeout=TIMEOUT_MS)
        assert "Not signed in" in await anyone.locator("#status").inner_text()
        assert await anyone.locator(".card .title").all_inner_texts() == ["勾股定理"]
    finally:
        await library.close()

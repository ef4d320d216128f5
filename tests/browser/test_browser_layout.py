"""The pages' layout at phone, tablet and laptop sizes, in Chinese and English, during a real lesson: no element's
content spills out of its box, no two visible controls overlap or cover each other, a destructive button (移出,
结束课程) stands apart from the others, no word (a Chinese phrase or an English word) of a table cell, button or
heading breaks across lines, and the lesson video takes a fair share of the screen. The layout is measured with JS
in the page (getBoundingClientRect, scrollWidth, Range.getClientRects). A WeChat-like phone (its user agent, touch,
portrait, no autoplay before a tap) enters a lesson with a tap. Screenshots
go to docs/screenshots/layout-<page>-<viewport>[-en].png."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from ketang.lesson_cmd import create_lesson
from tests import chromium
from tests.chromium import SCREENSHOTS, TEACHER_QUERY, open_page, wait_decoding
from tests.support import TEST_SECRET, token

pytestmark = pytest.mark.slow

VIEWPORTS = {
    "phone": {"width": 390, "height": 844},
    "phone-landscape": {"width": 844, "height": 390},
    "tablet": {"width": 768, "height": 1024},
    "tablet-landscape": {"width": 1024, "height": 768},
    "laptop": {"width": 1366, "height": 768},
    "desktop": {"width": 1920, "height": 1080},
}
TIMEOUT_MS = 15000
# the least share of the largest 16:9 picture that fits the viewport which the main video must show (the teacher's
# own preview stays small on purpose: the wall of classrooms matters more to the teacher)
MIN_VIDEO_SHARE = {"classroom": 0.5, "teacher": 0.08, "teacher-confirm": 0.08, "library-play": 0.3}
WECHAT_UA = ("Mozilla/5.0 (Linux; Android 12; V2055A Build/SP1A.210812.003; wv) AppleWebKit/537.36 (KHTML, like "
             "Gecko) Version/4.0 Chrome/107.0.5304.141 Mobile Safari/537.36 XWEB/5023 MMWEBSDK/20221206 "
             "MMWEBID/1571 MicroMessenger/8.0.32.2300(0x2800205D) WeChat/arm64 Weixin NetType/WIFI "
             "Language/zh_CN ABI/arm64")

# Every layout fault on the page, as short readable strings. `video` is the selector of the main video or null.
LAYOUT_JS = """([video, minShare]) => {
  const problems = [];
  const vw = document.documentElement.clientWidth, vh = window.innerHeight;
  const name = (el) => el.id ? '#' + el.id : el.tagName.toLowerCase() +
      (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\\s+/).join('.') : '') +
      (el.textContent.trim() ? '「' + el.textContent.trim().slice(0, 12) + '」' : '');
  const shown = (el) => el.checkVisibility({checkOpacity: false, checkVisibilityCSS: true}) &&
      el.getBoundingClientRect().width > 0 && el.getBoundingClientRect().height > 0;
  if (document.documentElement.scrollWidth > vw + 1)
    problems.push(`page scrolls sideways: ${document.documentElement.scrollWidth} px wide in ${vw} px`);
  // content wider than its box (boxes that scroll or clip on purpose are left alone)
  for (const el of document.body.querySelectorAll('*')) {
    if (!shown(el)) continue;
    const cs = getComputedStyle(el);
    if (cs.display.startsWith('inline') && !['inline-block', 'inline-flex', 'inline-grid'].includes(cs.display))
      continue;
    if (cs.overflowX !== 'visible' || el.clientWidth === 0) continue;
    if (['VIDEO', 'SELECT', 'INPUT', 'TEXTAREA'].includes(el.tagName)) continue;
    if (el.scrollWidth > el.clientWidth + 1)
      problems.push(`${name(el)} overflows: content ${el.scrollWidth} px in ${el.clientWidth} px`);
  }
  // controls: no two overlap, none is covered by something else
  const controls = [...document.body.querySelectorAll(
      'button, select, textarea, input:not([type=hidden]), a[href]')].filter(shown);
  const rects = controls.map((c) => c.getBoundingClientRect());
  for (let i = 0; i < controls.length; i++) {
    for (let j = i + 1; j < controls.length; j++) {
      if (controls[i].contains(controls[j]) || controls[j].contains(controls[i])) continue;
      const a = rects[i], b = rects[j];
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 1 && h > 1) problems.push(`${name(controls[i])} overlaps ${name(controls[j])}`);
    }
    const r = rects[i], x = r.left + r.width / 2, y = r.top + r.height / 2;
    if (x < 0 || y < 0 || x >= vw || y >= vh) continue;
    const top = document.elementFromPoint(x, y);
    if (top && !controls[i].contains(top) && !top.contains(controls[i]) && !(top.control === controls[i]))
      problems.push(`${name(controls[i])} is covered by ${name(top)}`);
  }
  // a destructive button (移出, 结束课程) stands apart: at least 12 px from every other control of its group
  for (const danger of controls.filter((c) => c.matches('button.danger'))) {
    const d = danger.getBoundingClientRect();
    for (const other of controls) {
      if (other === danger || other.parentElement !== danger.parentElement) continue;
      const o = other.getBoundingClientRect();
      const gap = Math.max(o.left - d.right, d.left - o.right, o.top - d.bottom, d.top - o.bottom);
      if (gap < 12) problems.push(`${name(danger)} is ${Math.round(gap)} px from ${name(other)}`);
    }
  }
  // a word (whitespace-separated; a Chinese phrase is one word) broken across two lines
  const boxes = document.body.querySelectorAll('td, th, button, header h1, a.button, label, .status, .quality');
  for (const box of boxes) {
    if (!shown(box)) continue;
    const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const re = /\\S+/g;
      for (let m = re.exec(node.data); m; m = re.exec(node.data)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const lines = [...range.getClientRects()].filter((q) => q.width > 0);
        if (lines.length > 1 && lines.some((q) => q.top >= lines[0].bottom - 2))
          problems.push(`「${m[0]}」 breaks across lines in ${name(box)}`);
      }
    }
  }
  // the main video: the picture it shows (object-fit: contain) against the largest 16:9 picture the viewport holds
  let share = null;
  if (video) {
    const v = document.querySelector(video);
    const r = v.getBoundingClientRect();
    const ratio = v.videoWidth && v.videoHeight ? v.videoWidth / v.videoHeight : 16 / 9;
    const pw = Math.min(r.width, r.height * ratio), ph = Math.min(r.height, r.width / ratio);
    const best = Math.min(vw, vh * 16 / 9) * Math.min(vh, vw * 9 / 16);
    share = (pw * ph) / best;
    if (share < minShare)
      problems.push(`${video} shows ${Math.round(pw)}×${Math.round(ph)} px: ${Math.round(share * 100)}% of the ` +
                    `largest 16:9 picture that fits, under ${Math.round(minShare * 100)}%`);
  }
  return {problems, share};
}"""


def with_lang(url: str, lang: str) -> str:
    """`url` with ?lang=en (before the #fragment that carries the token) for English."""
    if lang != "en":
        return url
    base, sep, fragment = url.partition("#")
    return f"{base}{'&' if '?' in base else '?'}lang=en{sep}{fragment}"


async def settle(page) -> None:  # type: ignore[no-untyped-def]
    """Let a resize reach layout and paint (two animation frames, then a little for late reflows)."""
    await page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    await asyncio.sleep(0.3)


async def check(page, name: str, size: str, lang: str,  # type: ignore[no-untyped-def]
                video: str | None = None) -> list[str]:
    """Resize `page` to `size`, write its screenshot, and return its layout faults (prefixed with where)."""
    await page.set_viewport_size(VIEWPORTS[size])
    await settle(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"layout-{name}-{size}{'-en' if lang == 'en' else ''}.png"))
    result = await page.evaluate(LAYOUT_JS, [video, MIN_VIDEO_SHARE.get(name, 0)])
    return [f"{name} {size} {lang}: {p}" for p in result["problems"]]


@asynccontextmanager
async def lesson_in(server, browser, lang: str, classrooms: int = 2):  # type: ignore[no-untyped-def]
    """A started lesson with `classrooms` entered classroom pages, every page in `lang`."""
    links = create_lesson(TEST_SECRET, "七年级数学 · 一元一次方程", server.url, teacher_name="李老师",
                          classroom_names=[f"青山乡第{i + 1}中心小学" for i in range(classrooms)])
    teacher = await open_page(browser, with_lang(links.teacher.replace("/teacher#", f"/teacher{TEACHER_QUERY}#"),
                                                 lang))
    await teacher.wait_for_function("!document.getElementById('start').disabled", timeout=TIMEOUT_MS)
    await teacher.click("#start")
    await teacher.wait_for_function("document.getElementById('status').classList.contains('live')",
                                    timeout=TIMEOUT_MS)
    rooms = []
    for _, url in links.classrooms:
        room = await open_page(browser, with_lang(url, lang))
        await room.click("#enter")
        rooms.append(room)
    try:
        yield links, teacher, rooms
    finally:
        for page in [teacher, *rooms]:
            assert not page.ketang_errors, page.ketang_errors
            await page.context.close()


@pytest.mark.parametrize("lang", ["zh", "en"])
async def test_the_lesson_pages_fit_every_viewport(server, browser, lang: str) -> None:  # type: ignore[no-untyped-def]
    async with lesson_in(server, browser, lang) as (_, teacher, rooms):
        for room in rooms:
            await wait_decoding(room, timeout_s=20)
        # the reception table's rows and the wall's tiles, with their real texts (信号良好 and the like)
        await teacher.wait_for_function("document.querySelectorAll('#classrooms tbody tr').length === 2 && "
                                        "document.querySelectorAll('#wall .tile').length === 2", timeout=TIMEOUT_MS)
        await asyncio.sleep(3)  # a stats round: bitrates and quality words in the table
        # a chat line on every page, so the chat lists are not empty
        await rooms[0].fill("#chat-input", "老师，第二题的答案是 x = 3 吗？" if lang == "zh" else "Is x = 3 the answer?")
        await rooms[0].click("#chat-send")
        problems: list[str] = []
        for size in VIEWPORTS:
            problems += await check(teacher, "teacher", size, lang, "#preview")
            problems += await check(rooms[0], "classroom", size, lang, "#main-video")
        # the confirmations of 结束课程 and 移出, shown in place (each disarms itself after a few seconds: armed
        # again before each size, never pressed twice, so the lesson goes on)
        for size in VIEWPORTS:
            await arm(teacher, "#end", ".end-confirm")
            await arm(teacher, "#wall .tile button.danger", "#wall .tile button.remove-cancel")
            problems += await check(teacher, "teacher-confirm", size, lang, "#preview")
        assert not problems, "\n".join(problems)


async def arm(page, button: str, armed: str) -> None:  # type: ignore[no-untyped-def]
    """Press a destructive `button` once, unless its confirmation (`armed`) is already shown."""
    if not await page.query_selector(armed):
        await page.click(button)
        await page.wait_for_selector(armed, timeout=TIMEOUT_MS)


@pytest.mark.parametrize("lang", ["zh", "en"])
async def test_the_landing_page_fits_every_viewport(server, browser, lang: str) -> None:  # type: ignore[no-untyped-def]
    page = await open_page(browser, with_lang(server.url + "/", lang))
    problems: list[str] = []
    for size in VIEWPORTS:
        problems += await check(page, "landing", size, lang)
    assert not page.ketang_errors
    await page.context.close()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", ["/", "/teacher", "/classroom", "/library", "/library/play/none"])
def test_every_page_links_a_favicon_that_the_server_serves(server, path: str) -> None:  # type: ignore[no-untyped-def]
    with urllib.request.urlopen(server.url + path, timeout=5) as resp:
        html = resp.read().decode()
    found = re.search(r'<link rel="icon" href="([^"]+)"', html)
    assert found, f"{path} links no icon: the browser asks for /favicon.ico and gets a 404"
    with urllib.request.urlopen(server.url + found.group(1), timeout=5) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("image/svg")
        assert b"<svg" in resp.read()


def library_items(server, viewer: str) -> list[dict]:  # type: ignore[no-untyped-def]
    req = urllib.request.Request(server.url + "/api/library", headers={"Authorization": f"Bearer {viewer}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())["items"]


async def test_the_library_pages_fit_every_viewport(server, browser) -> None:  # type: ignore[no-untyped-def]
    """The list and the player of a lesson recorded by the server itself (a reviewer sees it before review)."""
    viewer = token("reviewer", "library", name="张审核")
    async with lesson_in(server, browser, "zh", classrooms=1) as (_, teacher, rooms):
        await wait_decoding(rooms[0], timeout_s=20)
        await asyncio.sleep(3)  # a few seconds of lesson to record
        await teacher.click("#end")
        await teacher.click("#end")  # the second press confirms
        await teacher.wait_for_function("document.getElementById('status').classList.contains('ended')",
                                        timeout=TIMEOUT_MS)
    for _ in range(100):
        items = await asyncio.to_thread(library_items, server, viewer)
        if items:
            break
        await asyncio.sleep(0.2)
    assert items, "the recorded lesson did not reach the library"
    problems: list[str] = []
    for lang in ("zh", "en"):
        listing = await open_page(browser, with_lang(f"{server.url}/library#token={viewer}", lang))
        await listing.wait_for_selector("#results .card", timeout=TIMEOUT_MS)
        for size in VIEWPORTS:
            problems += await check(listing, "library-list", size, lang)
        player = await open_page(browser, with_lang(f"{server.url}/library/play/{items[0]['id']}#token={viewer}",
                                                    lang))
        await player.wait_for_function("document.querySelectorAll('#fields dt').length > 0 && "
                                       "document.getElementById('video').readyState >= 1", timeout=TIMEOUT_MS)
        for size in VIEWPORTS:
            problems += await check(player, "library-play", size, lang, "#video")
        for page in (listing, player):
            assert not page.ketang_errors, page.ketang_errors
            await page.context.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
async def wechat() -> AsyncIterator[object]:
    """A browser that, like WeChat's in-app one, plays media only after a tap."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium.CHROMIUM, headless=True,
                                     args=[*chromium.CHROMIUM_ARGS, "--autoplay-policy=user-gesture-required"])
        try:
            yield b
        finally:
            await b.close()


async def test_a_classroom_in_wechat_on_a_phone_enters_with_a_tap_and_fits(  # type: ignore[no-untyped-def]
        server, browser, wechat) -> None:
    async with lesson_in(server, browser, "zh", classrooms=1) as (links, _, rooms):
        await rooms[0].context.close()  # this classroom joins from WeChat instead
        rooms.clear()
        context = await wechat.new_context(user_agent=WECHAT_UA, viewport=VIEWPORTS["phone"], is_mobile=True,
                                           has_touch=True, device_scale_factor=2, bypass_csp=True)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(links.classrooms[0][1])
        assert await page.evaluate("navigator.userAgent.includes('MicroMessenger')")
        await page.tap("#enter")
        await wait_decoding(page, timeout_s=20)
        await page.wait_for_function("!document.getElementById('main-video').paused", timeout=TIMEOUT_MS)
        await settle(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "layout-classroom-wechat.png"))
        result = await page.evaluate(LAYOUT_JS, ["#main-video", MIN_VIDEO_SHARE["classroom"]])
        assert not errors, errors
        await context.close()
        assert not result["problems"], "\n".join(result["problems"])


def test_the_default_favicon_address_is_served_too(server) -> None:  # type: ignore[no-untyped-def]
    """/favicon.ico: what a browser asks for when it ignores the pages' icon link (some in-app browsers)."""
    with urllib.request.urlopen(server.url + "/favicon.ico", timeout=5) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("image/svg")
        assert b"<svg" in resp.read()

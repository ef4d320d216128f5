"""Headless Chromium (Debian's, through Playwright's executable_path) with a fake camera, and the helpers the
browser tests share: open a page, run a lesson of pages, read what a page decodes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ketang.lesson_cmd import create_lesson
from tests.support import TEST_SECRET

CHROMIUM = os.environ.get("KETANG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--no-sandbox", "--disable-gpu",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 720}
# the teacher's camera at a small size: three pages encode/decode on two cores
TEACHER_QUERY = "?video=640x360"
RECOVERY_S = 5.0
CAMERA_LAYERS = {(160, 90), (320, 180), (640, 360)}  # the teacher's simulcast layers at ?video=640x360

INBOUND_JS = """async () => {
  const pc = window.ketang && window.ketang.pc;
  if (!pc) return [];
  const out = [];
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp") out.push({kind: s.kind, mid: s.mid, framesDecoded: s.framesDecoded || 0,
      frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0, packetsReceived: s.packetsReceived || 0,
      totalSamplesReceived: s.totalSamplesReceived || 0});
  });
  return out;
}"""


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: the browser tests need it. "
                    "`bash scripts/test.sh` installs it (Debian's chromium + CJK fonts).")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: `bash scripts/test.sh` installs the test dependencies")

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def open_page(browser, url: str, viewport: dict[str, int] | None = None,  # type: ignore[no-untyped-def]
                    bypass_csp: bool = True):
    """A page at `url` that collects its JS errors. `bypass_csp`: wait_for_function evals its predicate, which the
    server's CSP forbids (test_browser_csp.py checks the pages under the policy)."""
    context = await browser.new_context(viewport=viewport or VIEWPORT, bypass_csp=bypass_csp)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.ketang_errors = errors  # type: ignore[attr-defined]
    await page.goto(url)
    return page


@asynccontextmanager
async def lesson(server, browser, classrooms: int = 1, query: str = TEACHER_QUERY,  # type: ignore[no-untyped-def]
                 title: str = "七年级数学 · 一元一次方程"):
    """A teacher page that has started the lesson and classroom pages that have entered it."""
    links = create_lesson(TEST_SECRET, title, server.url,
                          teacher_name="李老师", classroom_names=[f"第{i + 1}小学" for i in range(classrooms)])
    teacher_url = links.teacher.replace("/teacher#", f"/teacher{query}#")
    teacher = await open_page(browser, teacher_url)
    await teacher.wait_for_function("!document.getElementById('start').disabled", timeout=10000)
    await teacher.click("#start")
    await teacher.wait_for_function("document.getElementById('status').classList.contains('live')", timeout=10000)
    rooms = []
    for _, url in links.classrooms:
        room = await open_page(browser, url)
        room.ketang_stats = lambda: server.stats(links.lesson)  # type: ignore[attr-defined]
        await room.click("#enter")
        rooms.append(room)
    try:
        yield teacher, rooms
    finally:
        for page in [teacher, *rooms]:
            assert not page.ketang_errors, page.ketang_errors
            await page.context.close()


async def inbound(page) -> list[dict]:  # type: ignore[no-untyped-def]
    return await page.evaluate(INBOUND_JS)


async def wait_decoding(page, videos: int = 1, timeout_s: float = 10.0, audio: bool = True) -> list[dict]:  # type: ignore[no-untyped-def]
    """Wait until `videos` video streams decode (framesDecoded rising, frameWidth > 0) and audio arrives."""
    deadline = time.monotonic() + timeout_s
    first: dict[str, int] = {}
    while True:
        stats = await inbound(page)
        video = [s for s in stats if s["kind"] == "video" and s["frameWidth"] > 0]
        rising = [s for s in video if s["framesDecoded"] > first.setdefault(s["mid"], s["framesDecoded"])]
        sound = [s for s in stats if s["kind"] == "audio" and s["packetsReceived"] > 0 and s["totalSamplesReceived"] > 0]
        if len(rising) >= videos and (sound or not audio):
            return stats
        if time.monotonic() > deadline:
            # what the server thought of this classroom's link (ladder state and reason) tells why video stopped
            server_view = await page.ketang_stats() if hasattr(page, "ketang_stats") else None
            raise AssertionError(f"not decoding {videos} video(s){' and audio' if audio else ''} in {timeout_s} s: "
                                 f"{stats}; server: {server_view}")
        await asyncio.sleep(0.25)

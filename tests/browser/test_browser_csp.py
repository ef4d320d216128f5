"""The pages under the server's Content-Security-Policy, enforced, in headless Chromium: a teacher page starts a
lesson with its fake camera, a classroom page decodes it, the landing and library pages run their scripts — and
no page reports a single CSP violation.

The other browser tests open their pages with Playwright's `bypass_csp`: its `wait_for_function` evaluates its
predicate with `eval`, which the policy forbids ('unsafe-eval' is not allowed). This test waits by polling with
`page.evaluate` instead (the DevTools protocol, which the page's policy does not govern)."""

from __future__ import annotations

import asyncio
import time

import pytest

from ketang.lesson_cmd import create_lesson
from tests.chromium import TEACHER_QUERY, VIEWPORT, wait_decoding
from tests.support import TEST_SECRET

pytestmark = pytest.mark.slow

# every violation the page sees, reported by the browser itself (an init script is not subject to the policy)
WATCH_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile}:${e.lineNumber})`);
});
"""


async def _open(browser, url: str):  # type: ignore[no-untyped-def]
    context = await browser.new_context(viewport=VIEWPORT)  # the policy enforced
    page = await context.new_page()
    await page.add_init_script(WATCH_VIOLATIONS)
    page.problems = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.problems.append(f"error: {exc}"))
    page.on("console", lambda m: page.problems.append(f"console: {m.text}")
            if "Content Security Policy" in m.text or "Content-Security-Policy" in m.text else None)
    await page.goto(url)
    return page


async def _until(page, expression: str, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {expression}")
        await asyncio.sleep(0.1)


async def _clean(page) -> None:  # type: ignore[no-untyped-def]
    violations = await page.evaluate("window.__csp || []")
    assert not violations and not page.problems, (page.url, violations, page.problems)


async def test_the_pages_work_under_the_content_security_policy(server, browser):
    links = create_lesson(TEST_SECRET, "CSP 课", server.url, teacher_name="李老师", classroom_names=["第一小学"])
    teacher = await _open(browser, links.teacher.replace("/teacher#", f"/teacher{TEACHER_QUERY}#"))
    room = None
    try:
        await _until(teacher, "() => !document.getElementById('start').disabled")
        await teacher.click("#start")
        await _until(teacher, "() => document.getElementById('status').classList.contains('live')")
        room = await _open(browser, links.classrooms[0][1])
        await room.click("#enter")
        await wait_decoding(room, videos=1, timeout_s=15)  # websocket, peer connection and media all allowed
        await asyncio.sleep(2.5)  # the teacher page fetches the lesson's stats every 2 s (connect-src)
        await _clean(teacher)
        await _clean(room)
    finally:
        for page in (teacher, room):
            if page is not None:
                await page.context.close()

    for path, ready in (("/?lang=en", "() => document.getElementById('lang').textContent.length > 0"),
                        ("/library", "() => document.querySelector('main') !== null && document.readyState === 'complete'")):
        page = await _open(browser, server.url + path)
        try:
            await _until(page, ready)
            await asyncio.sleep(0.5)  # the library's list is fetched after load
            await _clean(page)
        finally:
            await page.context.close()

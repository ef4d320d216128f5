"""Several server processes on one Redis, in real headless Chromium: pages opened from the node that does not
carry their lesson follow it to the node that does (`lesson_elsewhere`), and play the lesson there."""

from __future__ import annotations

import pytest

from ketang.lesson_cmd import create_lesson
from tests.chromium import TEACHER_QUERY, open_page, wait_decoding
from tests.support import TEST_SECRET, Server, node_dir

pytestmark = pytest.mark.slow


async def test_pages_opened_at_another_node_follow_their_lesson_and_play_it(tmp_path, redis_url, redis_prefix,
                                                                           browser):
    a = Server(node_dir(tmp_path, "a"), redis_url, redis_prefix)
    b = Server(node_dir(tmp_path, "b"), redis_url, redis_prefix)
    pages = []
    try:
        a.wait_ready()
        b.wait_ready()
        links = create_lesson(TEST_SECRET, "七年级数学 · 两台服务器", b.url, teacher_name="李老师",
                              classroom_names=["第一小学", "第二小学"])
        (_, first), (_, second) = links.classrooms
        # the first classroom enters through node a: the lesson is placed there
        early = await open_page(browser, first.replace(b.url, a.url))
        pages.append(early)
        await early.click("#enter")
        await early.wait_for_function("window.ketang.session && window.ketang.session.me", timeout=10000)
        # the teacher's page and the second classroom's come from node b (the links' server) and follow to a
        teacher = await open_page(browser, links.teacher.replace("/teacher#", f"/teacher{TEACHER_QUERY}#"))
        pages.append(teacher)
        await teacher.wait_for_function("!document.getElementById('start').disabled", timeout=10000)
        await teacher.click("#start")
        await teacher.wait_for_function("document.getElementById('status').classList.contains('live')",
                                        timeout=10000)
        late = await open_page(browser, second)
        pages.append(late)
        await late.click("#enter")
        for page in (early, late):
            await wait_decoding(page)
        for page in (teacher, late):
            assert await page.evaluate("window.ketang.session.url") == a.ws_url
            assert await page.evaluate("window.ketang.session.homeUrl") == b.ws_url
        # node a forwards the lesson; node b carries nothing of it
        stats = await a.stats(links.lesson)
        assert len(stats["subscribers"]) >= 2 and stats["producers"], stats
        assert (await b.stats(links.lesson))["producers"] == []
        # the teacher's page (served by b) reads the lesson's figures from node a, across origins
        figures = await teacher.evaluate("window.ketang.session.fetchStats()")
        assert figures["lesson"] == links.lesson and figures["producers"], figures
        for page in pages:
            assert not page.ketang_errors, page.ketang_errors
    finally:
        for page in pages:
            await page.context.close()
        a.stop()
        b.stop()

"""Privacy and a truthful state, in real Chromium against a real server: when the lesson ends every camera and
microphone track the teacher's and the classrooms' pages opened is `ended` (window.ketang.tracks, the registry of
media.js) and nothing on screen still claims a live lesson; a page replaced by the same link opened elsewhere keeps
no live track and offers 「在此处继续」, which takes the lesson back."""

from __future__ import annotations

import pytest

from tests.chromium import lesson, open_page, wait_decoding

pytestmark = pytest.mark.slow

TRACK_STATES_JS = "window.ketang.tracks.map(t => `${t.kind}:${t.readyState}`)"


async def offers_to_continue(page, where: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until the page (replaced by the same link elsewhere) offers 在此处继续 in `where` (its overlay or
    notice)."""
    await page.wait_for_function(
        f"document.querySelector('#{where} .{where}-action')?.textContent === '在此处继续'", timeout=8000)


async def track_states(page) -> list[str]:  # type: ignore[no-untyped-def]
    return await page.evaluate(TRACK_STATES_JS)


async def test_ending_the_lesson_stops_every_track_and_resets_what_the_pages_show(server, browser):
    async with lesson(server, browser, query="?video=640x360&fakescreen=1") as (teacher, [room]):
        await wait_decoding(room, audio=False)
        await teacher.click("#share")  # the courseware is a track of the teacher's page too
        await teacher.wait_for_function("window.ketang.session.screenTrack !== null", timeout=5000)
        await room.wait_for_function("document.querySelector('.live-indicator')?.textContent.includes('摄像头')",
                                     timeout=5000)
        await room.wait_for_function("document.getElementById('quality').className !== 'quality none'", timeout=8000)
        teacher_before = await track_states(teacher)
        room_before = await track_states(room)
        assert {"audio:live", "video:live"} <= set(teacher_before), teacher_before
        assert "video:live" in room_before, room_before
        await teacher.wait_for_function(
            "document.querySelectorAll('#classrooms tbody tr').length === 1", timeout=5000)

        await teacher.click("#end")
        await teacher.click(".end-confirm .end-yes")  # the inline confirmation
        await room.wait_for_function("document.getElementById('message').textContent === '课程已结束'", timeout=5000)
        await teacher.wait_for_function("document.getElementById('status').textContent === '课程已结束'", timeout=5000)

        for page, before in ((teacher, teacher_before), (room, room_before)):
            states = await track_states(page)
            assert len(states) >= len(before) and all(s.endswith(":ended") for s in states), states
        # the classroom claims nothing live any more
        assert await room.get_attribute("#quality", "class") == "quality none"
        assert await room.text_content("#quality-text") == "暂无画面"
        assert await room.is_hidden(".live-indicator")
        assert await room.is_hidden("#hand-status")
        assert "正在看" not in (await room.text_content("#self-box figcaption") or "")
        assert await room.text_content("#mic") == "麦克风已关闭"
        # the teacher's page: no reception figures, 开始上课 again, the end explained
        assert await teacher.evaluate("document.querySelectorAll('#classrooms tbody tr').length") == 0
        assert await teacher.evaluate("document.querySelectorAll('#wall .tile').length") == 0
        assert await teacher.text_content("#start") == "开始上课"
        assert "摄像头和麦克风已关闭" in (await teacher.text_content("#notice") or "")


async def test_a_replaced_classroom_page_lets_go_of_everything_and_can_continue_here(server, browser):
    async with lesson(server, browser) as (teacher, [room]):
        await wait_decoding(room, audio=False)
        await room.click("#mic")  # the microphone on: the replaced page must not keep it
        assert "audio:live" in await track_states(room)
        url = room.url
        other = await open_page(browser, url)
        try:
            await other.click("#enter")
            await wait_decoding(other, audio=False)
            await offers_to_continue(room, "overlay")
            states = await track_states(room)
            assert states and all(s.endswith(":ended") for s in states), states
            assert await room.is_hidden(".live-indicator")
            assert await room.evaluate("document.getElementById('hand').disabled")
            assert await room.evaluate("document.getElementById('mic').disabled")
            assert await room.evaluate("document.getElementById('chat-input').disabled")
            assert "另一个窗口" in (await room.text_content("#overlay .overlay-note") or "")
            # 在此处继续: this page takes the lesson back; the other one is replaced in turn
            await room.click("#overlay .overlay-action")
            await wait_decoding(room, audio=False)
            await offers_to_continue(other, "overlay")
            other_states = await track_states(other)
            assert other_states and all(s.endswith(":ended") for s in other_states), other_states
            assert "video:live" in await track_states(room)
            assert not other.ketang_errors, other.ketang_errors
        finally:
            await other.context.close()


async def test_a_replaced_teacher_page_lets_go_of_its_camera_and_can_continue_here(server, browser):
    async with lesson(server, browser, query="?video=320x180") as (teacher, [room]):
        await wait_decoding(room, audio=False)
        other = await open_page(browser, teacher.url)
        try:
            await other.wait_for_function("!document.getElementById('start').disabled", timeout=10000)
            await other.click("#start")
            await other.wait_for_function("document.getElementById('status').classList.contains('live')",
                                          timeout=10000)
            await offers_to_continue(teacher, "notice")
            states = await track_states(teacher)
            assert states and all(s.endswith(":ended") for s in states), states
            assert "另一个窗口" in (await teacher.text_content("#notice") or "")
            assert await teacher.evaluate("document.getElementById('end').disabled")
            assert await teacher.evaluate("document.querySelectorAll('#classrooms tbody tr').length") == 0
            await teacher.click("#notice .notice-action")  # take it back: the other page is replaced in turn
            await teacher.wait_for_function("document.getElementById('status').classList.contains('live')",
                                            timeout=10000)
            await offers_to_continue(other, "notice")
            assert {"audio:live", "video:live"} <= set(await track_states(teacher))
            await wait_decoding(room, audio=False, timeout_s=15)  # the classroom sees the teacher again
            assert not other.ketang_errors, other.ketang_errors
        finally:
            await other.context.close()


async def test_a_muted_classroom_on_stage_is_told_so_and_removing_asks_first(server, browser):
    async with lesson(server, browser, query="?video=320x180") as (teacher, [room]):
        await wait_decoding(room, audio=False)
        assert await teacher.text_content("#mute") == "静音（我的麦克风）"
        room_id = await room.evaluate("window.ketang.session.me.id")
        buttons = teacher.locator(f'#wall .tile[data-participant="{room_id}"] .actions button')
        await teacher.wait_for_function("document.querySelectorAll('#wall .tile').length === 1", timeout=5000)
        await buttons.nth(0).click()  # on stage
        await room.wait_for_function("document.getElementById('hand-status').textContent.includes('正在台上')",
                                     timeout=5000)
        await buttons.nth(1).click()  # muted
        await room.wait_for_function("document.getElementById('hand-status').textContent.includes('静音')",
                                     timeout=5000)
        text = await room.text_content("#hand-status") or ""
        assert "正在台上" in text and "打开麦克风" not in text, text
        # 移出 asks first: 取消 keeps the classroom
        await buttons.nth(2).click()
        assert await buttons.nth(2).text_content() == "确认移出？"
        await teacher.click(f'#wall .tile[data-participant="{room_id}"] .remove-cancel')
        assert await buttons.nth(2).text_content() == "移出"
        assert await teacher.locator(".remove-cancel").count() == 0
        assert not await room.evaluate("window.ketang.session.removed")

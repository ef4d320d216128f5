"""The interactive classroom in real headless Chromium against a real `ketang serve`: a teacher page and three
classroom pages that publish their small camera views and microphones (docs/protocol.md, "The interactive
classroom").

What a page shows is read from its DOM; what it receives from its own receiving RTCPeerConnection
(`window.ketang.pc.getStats()`, each inbound stream attributed to a participant through the session's mid map);
what the server forwards from `GET /api/lessons/{lesson}/stats` (producers' packets_in, each subscriber's
consumers' packets_out). Screenshots of the teacher's wall and of a classroom watching another one on stage go
to docs/screenshots/.

The fixtures and helpers (`server`, `browser`, `lesson()`, `wait_decoding()`, `open_page()`) are those of
tests/browser/test_browser.py; the classrooms' cameras are Chromium's fake 320×180 device, the teacher's 640×360.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from pathlib import Path

import pytest

from signaling.tokens import issue_token
from tests.chromium import (
    SCREENSHOTS,
    TEACHER_QUERY,
    lesson,
    open_page,
    wait_decoding,
)
from tests.support import TEST_SECRET

pytestmark = pytest.mark.slow

# Each inbound stream of the page's receiving peer connection, with whose track its mid carries now.
RECEIVED_JS = """async () => {
  const s = window.ketang && window.ketang.session;
  const pc = window.ketang && window.ketang.pc;
  if (!s || !pc || !s.receiving) return [];
  const mids = s.receiving.mids;
  const out = [];
  (await pc.getStats()).forEach((r) => {
    if (r.type !== "inbound-rtp") return;
    const m = mids.get(r.mid) || {};
    out.push({mid: r.mid, kind: r.kind, participant: m.track ? m.participant || null : null,
              packets: r.packetsReceived || 0, frames: r.framesDecoded || 0, width: r.frameWidth || 0,
              samples: r.totalSamplesReceived || 0});
  });
  return out;
}"""

STEP_S = 0.25


async def received(page, participant: str, kind: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """What `page` has received of `participant`'s `kind` track, by mid: {mid: {packets, frames, width, samples}}."""
    return {s["mid"]: s for s in await page.evaluate(RECEIVED_JS)
            if s["participant"] == participant and s["kind"] == kind}


async def wait_receiving(page, participant: str, kind: str = "video", timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Until `page` decodes `participant`'s video (frames rising, a frame size) or plays its audio (packets and
    samples rising)."""
    first: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for mid, s in (await received(page, participant, kind)).items():
            start = first.setdefault(mid, s)
            if kind == "video" and s["width"] > 0 and s["frames"] > start["frames"]:
                return
            if kind == "audio" and s["packets"] > start["packets"] and s["samples"] > start["samples"]:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{page.url[:40]}… receives no {kind} of {participant} in {timeout_s} s: "
                                 f"{await page.evaluate(RECEIVED_JS)}")
        await asyncio.sleep(STEP_S)


async def ids_of(rooms) -> list[str]:  # type: ignore[no-untyped-def]
    return [await room.evaluate("window.ketang.session.me.id") for room in rooms]


async def server_stats(teacher) -> dict:  # type: ignore[no-untyped-def]
    """The lesson's forwarding figures, asked with the teacher's token, as the teacher page asks for them."""
    return await teacher.evaluate("window.ketang.session.fetchStats()")


async def producer_id(teacher, participant: str, kind: str) -> str:  # type: ignore[no-untyped-def]
    """The id of a classroom's track (the teacher is told of every track: `track-added`); the server's stats
    name producers by track id."""
    tracks = await teacher.evaluate("[...window.ketang.session.lessonTracks.values()]")
    found = [t["id"] for t in tracks if t["participant"] == participant and t["kind"] == kind]
    assert found, f"no {kind} track of {participant} among {tracks}"
    return found[-1]


def packets_in(stats: dict, producer: str) -> int:
    found = [p for p in stats["producers"] if p["id"] == producer]
    assert found, f"producer {producer} not in the server's stats: {[p['id'] for p in stats['producers']]}"
    return found[0]["packets_in"]


def packets_out(stats: dict, producer: str, subscriber: str | None = None) -> int:
    """Packets the server sent of `producer` to `subscriber` (None: to anybody)."""
    return sum(c["packets_out"] for pid, consumers in stats["subscribers"].items()
               if subscriber is None or pid == subscriber
               for c in consumers if c["producer"] == producer)


async def forwarding(teacher, producer: str, subscriber: str | None = None, window_s: float = 2.0) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(packets the server received of `producer`, packets it sent of it to `subscriber`) over `window_s`."""
    before = await server_stats(teacher)
    await asyncio.sleep(window_s)
    after = await server_stats(teacher)
    return (packets_in(after, producer) - packets_in(before, producer),
            packets_out(after, producer, subscriber) - packets_out(before, producer, subscriber))


async def wait_forwarding(teacher, producer: str, subscriber: str | None, rising: bool, timeout_s: float = 8.0) -> None:  # type: ignore[no-untyped-def]
    """Until the server's sending of `producer` to `subscriber` rises (or stays flat, rising=False) over 1.5 s."""
    deadline = time.monotonic() + timeout_s
    while True:
        got, sent = await forwarding(teacher, producer, subscriber, window_s=1.5)
        if (sent > 0) == rising:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"server sent {sent} packets of {producer} to {subscriber or 'anybody'} in 1.5 s "
                                 f"(received {got}); expected {'some' if rising else 'none'}")


async def wait_publishing(teacher, participant: str, kind: str, timeout_s: float = 8.0) -> None:  # type: ignore[no-untyped-def]
    """Until the server receives packets of `participant`'s current `kind` track (a rebuilt page publishes anew)."""
    deadline = time.monotonic() + timeout_s
    while True:
        tracks = await teacher.evaluate("[...window.ketang.session.lessonTracks.values()]")
        mine = [t["id"] for t in tracks if t["participant"] == participant and t["kind"] == kind]
        if len(mine) == 1:
            got, _ = await forwarding(teacher, mine[0], window_s=1.0)
            if got > 0:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"the server receives no {kind} of {participant}: tracks {tracks}")
        await asyncio.sleep(STEP_S)


def tile_button(teacher, participant: str, index: int):  # type: ignore[no-untyped-def]
    """A wall tile's button: 0 stage, 1 mute, 2 remove."""
    return teacher.locator(f'#wall .tile[data-participant="{participant}"] .actions button').nth(index)


async def test_wall_pages_hands_in_order_and_a_classroom_on_stage_seen_and_heard_by_the_others(server, browser):
    # two tiles per wall page: three classrooms make two pages
    async with lesson(server, browser, classrooms=3, query=TEACHER_QUERY + "&wall=2") as (teacher, rooms):
        for room in rooms:
            await wait_decoding(room)
        ids = await ids_of(rooms)
        teacher_id = await teacher.evaluate("window.ketang.session.me.id")

        # the wall: page 1 shows two classrooms and only those reach the teacher's page
        await teacher.wait_for_function(
            "window.ketang.wallVisible.length === 2 && document.querySelectorAll('#wall .tile').length === 2 && "
            "document.querySelectorAll('#pager button.page').length === 2", timeout=10000)
        page1 = await teacher.evaluate("window.ketang.wallVisible")
        [page2] = [pid for pid in ids if pid not in page1]
        for pid in page1:
            await wait_receiving(teacher, pid, "video")
        page2_video = await producer_id(teacher, page2, "video")
        page2_room = rooms[ids.index(page2)]
        # nobody receives the page-2 classroom's camera and microphone: the server tells its page, which stops
        # sending them (its school's uplink, the server's intake) and says so under its own picture
        await page2_room.wait_for_function("document.getElementById('self-box').dataset.seen === 'no'", timeout=5000)
        assert "暂未在看" in await page2_room.text_content("#self-box figcaption")
        await asyncio.sleep(0.5)  # packets in flight
        got, sent = await forwarding(teacher, page2_video, teacher_id)
        got_audio, _ = await forwarding(teacher, await producer_id(teacher, page2, "audio"), None)
        seen_video, _ = await forwarding(teacher, await producer_id(teacher, page1[0], "video"), None)
        print(f"camera packets in 2 s: {got} of the classroom nobody watches, {seen_video} of one on the wall; "
              f"microphone {got_audio}")
        assert got <= 2 and got_audio <= 2, f"a classroom nobody receives kept sending ({got} video, {got_audio} audio)"
        assert seen_video > 20, f"a classroom on the wall sent only {seen_video} camera packets in 2 s"
        assert sent == 0, f"the server sent the teacher {sent} video packets of a classroom not on screen"
        assert sum(s["packets"] for s in (await received(teacher, page2, "video")).values()) == 0

        await teacher.click('#pager button[data-page="2"]')
        await teacher.wait_for_function("ids => JSON.stringify(window.ketang.wallVisible) === JSON.stringify(ids)",
                                        arg=[page2], timeout=5000)
        await wait_receiving(teacher, page2, "video")  # its page sends again at once
        await page2_room.wait_for_function("document.getElementById('self-box').dataset.seen === 'yes'", timeout=5000)
        for pid in page1:  # off screen now: no more video of them
            await wait_forwarding(teacher, await producer_id(teacher, pid, "video"), teacher_id, rising=False)
        await teacher.click('#pager button[data-page="1"]')
        for pid in page1:
            await wait_receiving(teacher, pid, "video")

        # hands: B then A, in that order on the teacher page, with a chime each
        a, b, c = rooms
        id_a, id_b, id_c = ids
        await b.click("#hand")
        await b.wait_for_function("document.getElementById('hand-status').textContent.includes('第 1 位')", timeout=5000)
        await a.click("#hand")
        await a.wait_for_function("document.getElementById('hand-status').textContent.includes('第 2 位')", timeout=5000)
        await teacher.wait_for_function("document.querySelectorAll('#hands li').length === 2", timeout=5000)
        order = await teacher.eval_on_selector_all("#hands li", "lis => lis.map(li => li.dataset.participant)")
        assert order == [id_b, id_a]
        names = await teacher.eval_on_selector_all("#hands li .name", "els => els.map(e => e.textContent)")
        assert names == ["第2小学", "第1小学"]
        assert await teacher.evaluate("window.ketang.chimes") == 2
        assert "hand" in (await teacher.locator(f'#wall .tile[data-participant="{id_a}"]').get_attribute("class")).split()
        assert await a.text_content("#hand") == "放下"

        # B on stage (from the hand queue): A and C see and hear B; B's hand goes down
        await b.click("#mic")  # B speaks
        assert await b.evaluate("window.ketang.stream.getAudioTracks()[0].enabled") is True
        await teacher.click(f'#hands li[data-participant="{id_b}"] button')
        await b.wait_for_function("document.getElementById('hand-status').textContent.includes('正在台上')", timeout=5000)
        await teacher.wait_for_function(f"document.querySelectorAll('#hands li').length === 1 && "
                                        f"document.querySelector('#stage-videos figure[data-participant=\"{id_b}\"]')",
                                        timeout=5000)
        for room in (a, c):
            await wait_receiving(room, id_b, "video")
            await wait_receiving(room, id_b, "audio")
            await room.wait_for_function("document.querySelector('#guests figcaption')?.textContent === '台上：第2小学'",
                                         timeout=5000)
            await wait_decoding(room)  # the teacher plays on
        await wait_receiving(teacher, id_b, "video")  # large on the teacher page
        await asyncio.sleep(1)  # a few more frames, for sharp pictures
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await teacher.screenshot(path=str(SCREENSHOTS / "teacher-wall.png"), full_page=True)
        await a.screenshot(path=str(SCREENSHOTS / "classroom-stage.png"))

        # off stage: A and C no longer receive B
        await teacher.click(f'#stage-videos figure[data-participant="{id_b}"] button')
        for room in (a, c):
            await room.wait_for_function("document.querySelectorAll('#guests figure').length === 0", timeout=5000)
        b_audio = await producer_id(teacher, id_b, "audio")
        b_video = await producer_id(teacher, id_b, "video")
        for subscriber in (id_a, id_c):
            await wait_forwarding(teacher, b_audio, subscriber, rising=False)
            await wait_forwarding(teacher, b_video, subscriber, rising=False)
        # the teacher still hears B while its tile is on screen (classroom audio follows the wall), and the
        # classrooms still play the teacher
        await wait_forwarding(teacher, b_audio, teacher_id, rising=id_b in page1)
        await wait_decoding(a)

        # A's link drops (websocket and both peer connections): it comes back by itself, publishes again and
        # finds its hand still up
        await a.evaluate("() => { const s = window.ketang.session; s.sig.ws.close(); s.pc.close(); s.sendPc.close(); }")
        await a.wait_for_function("window.ketang.session.reconnects === 1 && "
                                  "document.getElementById('hand').textContent === '放下'", timeout=8000)
        await wait_decoding(a)
        if id_a in page1:  # on the wall shown: it publishes again and the teacher sees it
            await wait_publishing(teacher, id_a, "video")
            await wait_publishing(teacher, id_a, "audio")
            await wait_receiving(teacher, id_a, "video")
        else:  # nobody watches it: the new connection is told so in the answer and sends nothing
            await a.wait_for_function("document.getElementById('self-box').dataset.seen === 'no'", timeout=8000)
        # the teacher's link drops: its wall page is asked for again and its tiles play on
        await teacher.evaluate("() => { const s = window.ketang.session; s.sig.ws.close(); s.pc.close(); }")
        await teacher.wait_for_function("window.ketang.session.reconnects === 1 && "
                                        "document.getElementById('status').classList.contains('live')", timeout=8000)
        for pid in page1:
            await wait_receiving(teacher, pid, "video")
        assert await teacher.eval_on_selector_all("#hands li", "lis => lis.map(li => li.dataset.participant)") == [id_a]
        await wait_decoding(c)


async def test_mute_chat_lock_remove_and_attendance(server, browser):
    started = time.monotonic()
    async with lesson(server, browser, classrooms=3) as (teacher, rooms):
        for room in rooms:
            await wait_decoding(room)
        a, b, c = rooms
        id_a, id_b, id_c = await ids_of(rooms)
        teacher_id = await teacher.evaluate("window.ketang.session.me.id")
        await teacher.wait_for_function("document.querySelectorAll('#wall .tile').length === 3", timeout=10000)

        # A's microphone is muted by default: silence, which the server asked Opus to send with DTX — a
        # handful of packets in 2 s instead of 100 (what 400 classrooms' intake would otherwise be)
        a_audio = await producer_id(teacher, id_a, "audio")
        quiet, _ = await forwarding(teacher, a_audio, None, window_s=2.0)
        # hard mute: A's microphone reaches nobody, even while its browser sends it
        await a.click("#mic")
        await wait_forwarding(teacher, a_audio, teacher_id, rising=True)  # heard before
        loud, _ = await forwarding(teacher, a_audio, None, window_s=2.0)
        print(f"A's microphone: {quiet} packets in 2 s muted (DTX), {loud} speaking")
        assert quiet < 20 and loud > 60, (quiet, loud)
        await tile_button(teacher, id_a, 1).click()
        await a.wait_for_function("document.getElementById('mic').disabled && "
                                  "document.getElementById('mic').textContent === '已被老师静音'", timeout=5000)
        assert await a.evaluate("window.ketang.stream.getAudioTracks()[0].enabled") is False
        await teacher.wait_for_function(f"document.querySelector('#wall .tile[data-participant=\"{id_a}\"] .mark.muted')",
                                        timeout=5000)
        # a hard-muted microphone goes to nobody, so the server tells the page not to send it at all
        await a.wait_for_function("!window.ketang.session.demand.audio && window.ketang.session.demand.video",
                                  timeout=5000)
        # a page that disobeys: microphone on, and sent
        await a.evaluate("window.ketang.stream.getAudioTracks()[0].enabled = true")
        await a.evaluate("window.ketang.session.publishing.setActive('microphone', true)")
        await asyncio.sleep(1)  # packets in flight
        got, sent = await forwarding(teacher, a_audio, None, window_s=2.5)
        assert got > 50, f"A's browser should still be sending its audio ({got} packets in 2.5 s)"
        assert sent == 0, f"the server forwarded {sent} packets of a hard-muted classroom's audio"
        await tile_button(teacher, id_a, 1).click()  # unmute
        await a.wait_for_function("!document.getElementById('mic').disabled", timeout=5000)
        await wait_forwarding(teacher, a_audio, teacher_id, rising=True)

        # mute all / unmute all
        await teacher.click("#mute-all")
        for room in rooms:
            await room.wait_for_function("document.getElementById('mic').textContent === '已被老师静音'", timeout=5000)
        await teacher.wait_for_function("document.querySelectorAll('#wall .tile.muted').length === 3", timeout=5000)
        await teacher.click("#unmute-all")
        for room in rooms:
            await room.wait_for_function("!document.getElementById('mic').disabled", timeout=5000)

        # chat: A's question reaches the teacher (and C); the teacher deletes it and it disappears everywhere
        await a.fill("#chat-input", "老师，第二步为什么要减 5？")
        await a.press("#chat-input", "Enter")
        await teacher.wait_for_function(
            "[...document.querySelectorAll('#chat-list li')].some(li => li.textContent.includes('为什么要减 5'))", timeout=5000)
        await c.wait_for_function(
            "[...document.querySelectorAll('#chat-list li')].some(li => li.textContent.includes('为什么要减 5'))", timeout=5000)
        await teacher.fill("#chat-input", "大家先想一想")
        await teacher.click("#chat-send")
        await a.wait_for_function("[...document.querySelectorAll('#chat-list li.from-teacher')]"
                                  ".some(li => li.textContent.includes('大家先想一想'))", timeout=5000)
        message_id = await a.evaluate("window.ketang.session.messages.find(m => m.text.includes('为什么')).id")
        await teacher.click(f'#chat-list li[data-message="{message_id}"] button')
        for page in (a, c, teacher):
            await page.wait_for_function(f"!document.querySelector('#chat-list li[data-message=\"{message_id}\"]')",
                                         timeout=5000)
        # classroom chat off: a classroom cannot send (the page says so; the server refuses anyway)
        await teacher.click("#chat-mode")
        await b.wait_for_function("document.getElementById('chat-input').disabled && "
                                  "!document.getElementById('chat-off').hidden", timeout=5000)
        refused = await b.evaluate("window.ketang.session.chat('还能发吗').then(() => 'sent', e => e.code)")
        assert refused == "chat_off"
        await teacher.click("#chat-mode")
        await b.wait_for_function("!document.getElementById('chat-input').disabled", timeout=5000)

        # lock: a classroom that was not in the lesson is turned away, and told so
        lesson_id = await teacher.evaluate("window.ketang.session.claims.lesson")
        late_token = issue_token(TEST_SECRET, "classroom", lesson_id, name="第9小学")
        await teacher.click("#lock")
        await teacher.wait_for_function("!document.getElementById('settings-note').hidden", timeout=5000)
        late = await open_page(browser, f"{server.url}/classroom#token={late_token}")
        try:
            await late.click("#enter")
            await late.wait_for_function("document.getElementById('message').textContent.includes('课堂已锁定')",
                                         timeout=8000)
            assert await late.is_visible("#enter"), "the page should offer to enter again"
            assert not late.ketang_errors, late.ketang_errors
        finally:
            await late.context.close()
        await teacher.click("#lock")  # unlocked
        await teacher.wait_for_function("document.getElementById('settings-note').hidden", timeout=5000)

        # remove C: its page says so and does not reconnect; its link cannot join again
        await tile_button(teacher, id_c, 2).click()
        assert await tile_button(teacher, id_c, 2).text_content() == "确认移出？"
        await tile_button(teacher, id_c, 2).click()
        await c.wait_for_function("document.getElementById('message').textContent.includes('移出')", timeout=5000)
        await teacher.wait_for_function("document.querySelectorAll('#wall .tile').length === 2", timeout=5000)
        await asyncio.sleep(1.5)
        assert await c.evaluate("window.ketang.session.reconnects") == 0, "a removed classroom must not reconnect"
        again = await open_page(browser, c.url)
        try:
            await again.click("#enter")
            await again.wait_for_function("window.ketang.session && window.ketang.session.removed", timeout=8000)
            assert await again.evaluate("window.ketang.session.refusal") == "removed"
            assert "移出" in await again.text_content("#message")
            assert not again.ketang_errors, again.ketang_errors
        finally:
            await again.context.close()

        # attendance: the live table, and the CSV saved from the page's link (fetched with the teacher's token)
        await teacher.wait_for_function("document.querySelectorAll('#attendance tbody tr').length === 3", timeout=8000)
        async with teacher.expect_download() as download_info:
            await teacher.click("#attendance-csv")
        download = await download_info.value
        text = Path(await download.path()).read_bytes().decode("utf-8")
        assert text.startswith("\ufeff"), "a spreadsheet program reads the CSV as UTF-8 only with a BOM"
        rows = {r["participant"]: r for r in csv.DictReader(io.StringIO(text[1:]))}
        assert set(rows) == {id_a, id_b, id_c}, rows
        elapsed_min = (time.monotonic() - started) / 60
        for pid, name in ((id_a, "第1小学"), (id_b, "第2小学"), (id_c, "第3小学")):
            row = rows[pid]
            assert row["name"] == name
            assert 0 < float(row["present_min"]) <= elapsed_min + 0.1, (row, elapsed_min)
            assert int(row["sessions"]) == 1, row
            assert 0 <= float(row["loss_pct"]) <= 5, row  # a local link
            assert float(row["kbps_avg"]) > 50, row  # the teacher's 640×360 video and audio
            assert float(row["video_pct"]) > 50, row
        assert rows[id_c]["left_at"], "the removed classroom left"
        assert not rows[id_a]["left_at"]

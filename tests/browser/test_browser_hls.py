"""The library's player (client_web/library/play.js) with HLS renditions, in real headless Chromium behind an
emulated weak school link for HTTP (tests/tcpshaper.py: 250 kbit/s shared downstream, 300 ms round trip): the
page starts playing, stays on (or switches down to) a low rendition, and keeps playing without long stalls.
Prints the start times (cold: a first visit, nothing cached; warm: the page's files and the first segments
cached) —
docs/benchmarks.md, "HLS replay on a weak link"."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from recorder.hls.jobs import LocalHlsQueue
from recorder.hls.web import add_routes as add_hls_routes
from recorder.library.catalog import Library, Viewer
from recorder.library.web import add_routes
from signaling.app import token_viewer
from tests.hls_media import SECONDS, busy_hls, busy_mp4  # noqa: F401 - fixtures
from tests.tcpshaper import TcpShaper

pytestmark = pytest.mark.slow

SECRET = "hls-browser-test-secret-0123456789"
REVIEWER = Viewer(role="reviewer", sub="r-1", name="张审核")
LINK_BPS = 250_000
RTT_S = 0.3
MAX_STALL_S = 3.0
WATCH_S = 12.0

# recorded from the first navigation on: when the video first plays, each rendition switch, each stall
INIT_SCRIPT = """
window.__hls = {playingAt: null, movingAt: null, waits: [], switches: []};
document.addEventListener('playing', () => { window.__hls.playingAt ??= performance.now(); }, true);
// the picture moving: the first position past the start (a browser may say 'playing' and wait for more data)
document.addEventListener('timeupdate', (e) => {
  if (e.target.currentTime > 0.1) window.__hls.movingAt ??= performance.now(); }, true);
document.addEventListener('waiting', () => { window.__hls.waits.push(performance.now()); }, true);
document.addEventListener('DOMContentLoaded', () => {
  const v = document.getElementById('video'); v.muted = true; v.autoplay = true;  // a viewer who presses play
});
"""


@pytest.fixture
async def site(tmp_path: Path, busy_mp4: Path, busy_hls: Path) -> AsyncIterator[tuple[str, str, str, Path]]:  # noqa: F811
    """(the page's origin through the weak link, the item, the origin directly, the item's renditions)"""
    library = Library(tmp_path / "data")
    file = library.recordings_dir / "lesson.mp4"
    shutil.copy(busy_mp4, file)
    rec_id = await library.start_recording("math-8a", "勾股定理", "李老师", "t-li", file)
    await library.finish_recording(rec_id, SECONDS, file.stat().st_size)
    await library.review(rec_id, "publish", "", REVIEWER)
    app = web.Application()
    routes = add_routes(app, library, SECRET, token_viewer(SECRET), export_on_publish=False)
    hls = add_hls_routes(app, routes, LocalHlsQueue(library.data_dir), start=False)
    rec = await library.get(rec_id)
    assert rec is not None
    shutil.copytree(busy_hls, hls.folder(rec))  # (the renditions the job makes: made once per session)
    await library.set_hls(rec_id, hls.folder(rec))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    shaper = await TcpShaper(("127.0.0.1", server.port), LINK_BPS, RTT_S).start()  # type: ignore[arg-type]
    try:
        yield shaper.url, rec_id, str(server.make_url("")).rstrip("/"), hls.folder(rec)
    finally:
        await shaper.close()
        await server.close()
        await library.close()


async def _watch(page) -> dict:  # type: ignore[no-untyped-def]
    await page.wait_for_function("window.__hls.movingAt !== null", timeout=30000)
    start = await page.evaluate("[window.__hls.playingAt, window.__hls.movingAt]")
    times, heights = [], []
    began = time.monotonic()
    while time.monotonic() - began < WATCH_S:
        # the rendition shown: hls.js's level where it plays (Firefox), else the picture the browser's own HLS
        # player decodes (Chromium)
        state = await page.evaluate("""() => { const v = document.getElementById('video'); const h = window.ketangHls;
            return {t: v.currentTime, height: h ? (h.currentLevel >= 0 ? h.levels[h.currentLevel].height : null)
                                                : (v.videoHeight || null)}; }""")
        times.append((time.monotonic() - began, state["t"]))
        heights.append(state["height"])
        await asyncio.sleep(0.5)
    return {"start_ms": start, "times": times, "heights": heights}


async def _player(browser):  # type: ignore[no-untyped-def]
    """A laptop-sized page with the test's watcher script, and the JS errors it collects."""
    context = await browser.new_context(viewport={"width": 1366, "height": 768})
    await context.add_init_script(INIT_SCRIPT)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return context, page, errors


async def test_the_player_starts_on_a_low_rendition_on_a_250_kbit_s_link_and_keeps_playing(site, browser) -> None:
    url, rec_id, _, _ = site
    context, page, errors = await _player(browser)
    figures = {}
    for run in ("cold", "warm"):  # warm: the same browser again, the page's files in its cache
        response = await page.goto(f"{url}/library/play/{rec_id}")
        # the page names the start rendition and preloads its first second; Chromium plays it with its own HLS
        # player from the page's first script, before any module or hls.js
        assert response is not None and "start/seg00000.m4s>; rel=preload" in response.headers.get("link", "")
        watched = await _watch(page)
        figures[run] = watched["start_ms"]
        if run == "cold":
            assert (await page.evaluate("document.getElementById('video').currentSrc")).endswith("/start.m3u8")
            assert await page.evaluate("window.ketangHls === undefined")  # (a weak link: no hand-over)
        times = watched["times"]
        # it keeps playing: the position advances over the watch, never stuck longer than MAX_STALL_S
        assert times[-1][1] - times[0][1] > WATCH_S * 0.6, (run, times)
        stuck, last_t, last_at = 0.0, times[0][1], times[0][0]
        for at, t in times[1:]:
            if t > last_t + 0.01:
                last_t, last_at = t, at
            stuck = max(stuck, at - last_at)
            if t >= SECONDS - 0.5:
                break  # (the end of the recording)
        assert stuck <= MAX_STALL_S, times
        # on 250 kbit/s the player plays a low rendition (180p; 360p would not fit the link)
        heights = [h for h in watched["heights"] if h is not None]
        assert heights and heights[-1] <= 180 and max(heights) <= 360, watched["heights"]
    assert not errors, errors
    print(f"\nFIGURES HLS at {LINK_BPS // 1000} kbit/s, {RTT_S * 1000:.0f} ms RTT, ms after navigation to the "
          f"first 'playing' / the picture moving: first visit {figures['cold'][0]:.0f} / {figures['cold'][1]:.0f}, "
          f"later visit {figures['warm'][0]:.0f} / {figures['warm'][1]:.0f}")
    await context.close()


async def test_on_a_good_link_the_started_video_goes_over_to_hls_js_and_every_rendition(site, browser) -> None:
    """No shaper: the page's own downloads measure a fast link, so play.js hands the video (started in Chromium's
    own HLS player on the start playlist) over to hls.js with the master playlist, at the same place, and it
    climbs above 180p."""
    _, rec_id, direct, _ = site
    context, page, errors = await _player(browser)
    await page.goto(f"{direct}/library/play/{rec_id}")
    await page.wait_for_function("window.ketangHls !== undefined", timeout=20000)
    handed_at = await page.evaluate("document.getElementById('video').currentTime")
    await page.wait_for_function("""() => { const h = window.ketangHls;
        return h.currentLevel >= 0 && h.levels[h.currentLevel].height > 180; }""", timeout=20000)
    state = await page.evaluate("""() => { const v = document.getElementById('video');
        return {t: v.currentTime, src: v.currentSrc, paused: v.paused}; }""")
    # it went on from where it was (not from the start) and plays; hls.js feeds it (Media Source: a blob: URL)
    assert state["t"] >= handed_at and not state["paused"] and state["src"].startswith("blob:"), (handed_at, state)
    assert not errors, errors
    await context.close()


async def test_when_the_browsers_own_player_fails_on_the_start_hls_js_plays_the_renditions(site, browser) -> None:
    """The start rendition broken (its init segment gone): Chromium's own player fails, the page's modules come at
    once and play the master playlist with hls.js instead."""
    _, rec_id, direct, renditions = site
    (renditions / "start" / "init.mp4").unlink()
    context, page, _ = await _player(browser)
    await page.goto(f"{direct}/library/play/{rec_id}")
    await page.wait_for_function("window.ketangHls !== undefined && window.__hls.movingAt !== null", timeout=20000)
    assert (await page.evaluate("document.getElementById('video').currentSrc")).startswith("blob:")
    await context.close()


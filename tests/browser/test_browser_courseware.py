"""Courseware with sound, in real headless Chromium against a real `ketang serve`.

The teacher page shares its drawn slide (`?fakescreen=1`) with a steady 3 kHz tone as the slide's sound
(`?screenaudio=3000`: a stand-in for a shared tab's audio, which headless Chromium cannot capture). The page mixes
it with the fake microphone into the one audio track it sends (client_web/mixer.js), so the test listens for
3 kHz in what a classroom receives (an AnalyserNode on the received track) and in the lesson's recording (PyAV).
A classroom then chooses 只看课件 (no camera, courseware and sound), swaps and hides the small picture, and chooses
只听声音: a note replaces the picture instead of a frozen frame.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import numpy as np
import pytest

from tests.chromium import SCREENSHOTS, TEACHER_QUERY, inbound, lesson, wait_decoding

pytestmark = pytest.mark.slow

TONE_HZ = 3000

# the share of the received sound's energy within ±150 Hz of the tone, from an AnalyserNode on the page
TONE_SHARE_JS = """async (hz) => {
  const el = document.getElementById('audio');
  const track = el.srcObject && el.srcObject.getAudioTracks()[0];
  if (!track) return null;
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 4096;
  ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const bins = new Float32Array(analyser.frequencyBinCount);
  let near = 0, all = 0;
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 100));
    analyser.getFloatFrequencyData(bins);
    bins.forEach((db, k) => {
      const power = Math.pow(10, db / 10);
      const f = k * ctx.sampleRate / analyser.fftSize;
      all += power;
      if (Math.abs(f - hz) < 150) near += power;
    });
  }
  ctx.close();
  return all > 0 ? near / all : 0;
}"""


async def tone_share(page) -> float:  # type: ignore[no-untyped-def]
    share = await page.evaluate(TONE_SHARE_JS, TONE_HZ)
    assert share is not None, "no audio track is played"
    return float(share)


def recorded_tone_shares(data_dir: Path, since: float) -> list[list[float]]:
    """Per recorded file with audio (written since `since`): the tone's share of the energy in each second."""
    shares = []
    for path in sorted(data_dir.rglob("*.webm")):
        if path.stat().st_mtime < since:
            continue
        with av.open(str(path)) as c:
            if not c.streams.audio:
                continue
            samples = np.concatenate([f.to_ndarray().astype(np.float64).mean(axis=0)
                                      for f in c.decode(audio=0)])
        per_second = []
        for start in range(0, len(samples) - 48000 + 1, 48000):
            spectrum = np.abs(np.fft.rfft(samples[start:start + 48000])) ** 2
            freqs = np.fft.rfftfreq(48000, 1 / 48000)
            total = spectrum[freqs > 50].sum()
            per_second.append(float(spectrum[np.abs(freqs - TONE_HZ) < 150].sum() / total) if total else 0.0)
        shares.append(per_second)
    return shares


async def test_a_shared_slides_sound_reaches_the_classroom_and_the_recording_and_mute_keeps_it(server, browser):
    started = time.time()
    query = TEACHER_QUERY + f"&fakescreen=1&screenaudio={TONE_HZ}"
    async with lesson(server, browser, query=query) as (teacher, [room]):
        await wait_decoding(room)
        before = await tone_share(room)
        await teacher.click("#share")
        await room.wait_for_function("window.ketang.layout === 'screen'", timeout=10000)
        caption = await teacher.text_content("#screen-box figcaption") or ""
        assert "含声音" in caption, caption
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await teacher.screenshot(path=str(SCREENSHOTS / "teacher-sharing-sound.png"))
        await asyncio.sleep(1.5)  # the mixed track replaced the microphone's: a few packets of it
        during = await tone_share(room)
        print(f"3 kHz share of the classroom's sound: {before:.3f} before the share, {during:.3f} during")
        assert during > 0.3 and during > 5 * before, (before, during)

        # 静音 silences the teacher's microphone, not the courseware's sound
        await teacher.click("#mute")
        await asyncio.sleep(1)
        muted = await tone_share(room)
        assert muted > 0.3, muted
        await teacher.click("#mute")

        await teacher.click("#share")  # stop sharing: the microphone alone again
        await room.wait_for_function("window.ketang.layout === 'camera'", timeout=10000)
        await asyncio.sleep(1.5)
        after = await tone_share(room)
        assert after < during / 5, (during, after)
        # the stopped share's sound is released, the microphone is still live
        tracks = await teacher.evaluate("window.ketang.tracks.map(t => [t.kind, t.readyState])")
        assert ["audio", "live"] in tracks and tracks.count(["audio", "ended"]) >= 1, tracks

        await teacher.click("#end")
        await teacher.click("#end")  # the second press confirms
        await room.wait_for_function("document.getElementById('message').textContent === '课程已结束'", timeout=5000)

    data_dir = Path(server.log.name).parent
    deadline = time.monotonic() + 10
    while True:  # the recording is closed a moment after the lesson ends
        shares = recorded_tone_shares(data_dir, started)
        if any(max(s, default=0) > 0.3 for s in shares) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert any(max(s, default=0) > 0.3 for s in shares), "the courseware's sound is not in the recording"
    # ... and not all along: the lesson had seconds of microphone alone before and after the share
    assert any(min(s, default=1) < 0.1 for s in shares if max(s, default=0) > 0.3), shares


async def test_a_classroom_chooses_slides_only_swaps_and_hides_the_small_picture_and_sees_a_note_for_audio_only(
        server, browser):
    async with lesson(server, browser, query=TEACHER_QUERY + "&fakescreen=1") as (teacher, [room]):
        await wait_decoding(room)
        await teacher.click("#share")
        await room.wait_for_function("window.ketang.layout === 'screen'", timeout=10000)
        await wait_decoding(room, videos=2)
        assert await room.is_visible("#pip-video") and await room.is_visible("#pip-controls")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await asyncio.sleep(1)  # a few more frames of the slide, for a sharp picture
        await room.screenshot(path=str(SCREENSHOTS / "classroom-pip.png"))
        await room.set_viewport_size({"width": 390, "height": 844})
        await room.screenshot(path=str(SCREENSHOTS / "classroom-pip-phone.png"))
        await room.set_viewport_size({"width": 1280, "height": 720})

        # swap: the teacher large, the slide small; hide the small one; show it again
        main_track = "document.getElementById('main-video').srcObject.getVideoTracks()[0].id"
        slide = await room.evaluate(main_track)
        await room.click("#pip-swap")
        assert await room.evaluate(main_track) != slide
        assert await room.evaluate("window.ketang.swapped") is True
        await room.click("#pip-hide")
        assert not await room.is_visible("#pip-video") and await room.is_visible("#pip-show")
        await room.click("#pip-show")
        assert await room.is_visible("#pip-video")
        await room.click("#pip-swap")
        assert await room.evaluate(main_track) == slide

        # 只看课件: the server stops the camera for this classroom; the slide and the sound go on
        await room.click("#slides-only")
        await room.wait_for_function("window.ketang.session.camera === false", timeout=5000)
        assert not await room.is_visible("#pip-video")

        async def decoded() -> dict[str, int]:
            return {s["mid"]: s["framesDecoded"] for s in await inbound(room) if s["kind"] == "video"}

        await asyncio.sleep(1)  # frames in flight
        first = await decoded()
        await asyncio.sleep(2)
        later = await decoded()
        rising = [mid for mid in later if later[mid] > first.get(mid, 0)]
        assert len(rising) == 1, (first, later)  # the slide only
        assert await room.evaluate("document.getElementById('main-video').title") == "课件"
        assert not await room.is_visible("#no-video")
        await room.click("#slides-only")
        await room.wait_for_function("window.ketang.session.camera === true", timeout=5000)
        await room.wait_for_function("!document.getElementById('pip-video').hidden", timeout=5000)

        # 只听声音: a note says why there is no picture, instead of the last frame frozen
        await room.click("#audio-only")
        await room.wait_for_function("!document.getElementById('no-video').hidden", timeout=5000)
        note = await room.text_content("#no-video-text") or ""
        assert "只听声音" in note and "声音照常" in note, note
        await room.screenshot(path=str(SCREENSHOTS / "classroom-audio-only.png"))
        await room.click("#audio-only")
        await room.wait_for_function("document.getElementById('no-video').hidden", timeout=8000)

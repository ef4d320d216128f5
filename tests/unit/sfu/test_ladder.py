"""The audio-first ladder over recorded traces of a classroom's link (clock injected, no sleeps)."""

from __future__ import annotations

import pytest

from sfu.adapt.ladder import (
    AUDIO,
    COURSEWARE,
    DOWN_HOLD_S,
    LOSS_DOWN,
    REMB_SETTLE_S,
    RETRY_AFTER_MAX_S,
    RETRY_AFTER_S,
    TRIAL_S,
    VIDEO,
    LinkReport,
    VideoLadder,
)

VIDEO_BPS = 500_000
TICK = 0.25


def run(trace, seconds: float, start: float = 0.0):
    """Feed a ladder one report per tick from trace(t) -> (remb_bps or None, loss); returns [(t, video?)]."""
    ladder = VideoLadder(start)
    out = []
    t = start
    while t < start + seconds:
        remb, loss = trace(t)
        out.append((t, ladder.update(LinkReport(remb, t if remb is not None else None, loss, VIDEO_BPS), t)))
        t = round(t + TICK, 6)
    return ladder, out


def first_change(out, after: float = -1.0, to: bool | None = None):
    prev = None
    for t, video in out:
        if prev is not None and video != prev and t > after and (to is None or video == to):
            return t
        prev = video
    return None


@pytest.mark.parametrize(
    ("trace", "expect_video_throughout"),
    [
        pytest.param(lambda t: (2_000_000, 0.0), True, id="a good link keeps video"),
        pytest.param(lambda t: (None, 0.0), True, id="no REMB and no loss keeps video"),
        pytest.param(lambda t: (450_000, 0.02), True, id="a little short and a little loss is not enough to drop"),
        pytest.param(lambda t: (100_000 if 3 <= t < 4 else 2_000_000, 0.0), True,
                     id="a dip shorter than the hold time is ridden out"),
    ],
)
def test_links_that_can_carry_the_video_keep_it(trace, expect_video_throughout):
    _, out = run(trace, 30)
    assert all(video for _, video in out) is expect_video_throughout


@pytest.mark.parametrize(
    ("trace", "down_after"),
    [
        pytest.param(lambda t: (None, 0.3), DOWN_HOLD_S, id="30 % loss: down after the hold time"),
        pytest.param(lambda t: (80_000, 0.0), REMB_SETTLE_S + DOWN_HOLD_S,
                     id="an 80 kbit/s estimate: counted once the estimator has settled"),
    ],
)
def test_a_link_that_cannot_carry_video_falls_to_audio_only(trace, down_after):
    ladder, out = run(trace, down_after + 2)
    t_down = first_change(out, to=False)
    assert t_down is not None and down_after <= t_down <= down_after + TICK
    assert ladder.state == "audio" and ladder.reason


def test_while_the_link_stays_bad_each_try_fails_and_the_next_waits_twice_as_long():
    ladder, out = run(lambda t: (None, 0.3), 200)
    ups = []
    prev = None
    for t, video in out:
        if prev is False and video:
            ups.append(t)
        prev = video
    gaps = [b - a for a, b in zip(ups, ups[1:])]
    assert len(ups) >= 3
    # each try fails at once (one bad report), then waits RETRY_AFTER_S, 2x, 4x ... up to the maximum
    assert gaps[0] == pytest.approx(2 * RETRY_AFTER_S + TICK, abs=2 * TICK)
    assert gaps[1] == pytest.approx(4 * RETRY_AFTER_S + TICK, abs=2 * TICK)
    assert max(gaps) <= RETRY_AFTER_MAX_S + 2 * TICK
    assert ladder.downs == len(ups) + 1


def test_when_the_link_recovers_the_next_try_keeps_video_and_the_wait_resets():
    # bad for 10 s, then good: down at ~2 s, try at ~10 s, probation passes, video stays
    ladder, out = run(lambda t: (None, 0.3) if t < 10 else (2_000_000, 0.0), 40)
    t_down = first_change(out, to=False)
    t_up = first_change(out, after=t_down, to=True)
    assert t_up == pytest.approx(t_down + RETRY_AFTER_S, abs=TICK)
    assert all(video for t, video in out if t >= t_up)
    assert ladder.state == "video"
    assert ladder._retry_after == RETRY_AFTER_S


def test_a_low_estimate_right_after_video_comes_back_does_not_take_it_away_again():
    """The classroom's estimator still remembers the audio-only stretch and climbs slowly: only loss counts on a
    try and for REMB_SETTLE_S after it; then a still-low estimate does count."""
    ladder = VideoLadder(0.0)
    ladder.level, ladder._since = AUDIO, 0.0
    t = RETRY_AFTER_S
    assert ladder.update(LinkReport(None, None, 0.0, VIDEO_BPS), t) is True  # the try starts
    low = 40_000
    for step in range(int((TRIAL_S + REMB_SETTLE_S) / TICK)):
        now = t + step * TICK
        assert ladder.update(LinkReport(low, now, 0.0, VIDEO_BPS), now) is True, now
    now = t + TRIAL_S + REMB_SETTLE_S + DOWN_HOLD_S + TICK
    for extra in (0.0, DOWN_HOLD_S + TICK):
        ladder.update(LinkReport(low, now + extra, 0.0, VIDEO_BPS), now + extra)
    assert ladder.state == "audio"


def test_a_try_passes_only_after_the_whole_trial_without_trouble():
    ladder = VideoLadder(0.0)
    ladder.level, ladder._since = AUDIO, 0.0
    t = RETRY_AFTER_S
    good = LinkReport(2_000_000, t, 0.0, VIDEO_BPS)
    ladder.update(good, t)
    ladder.update(good, t + TRIAL_S - TICK)
    assert ladder.state == "trial"
    ladder.update(good, t + TRIAL_S)
    assert ladder.state == "video"
    bad = LinkReport(None, None, LOSS_DOWN + 0.05, VIDEO_BPS)
    assert ladder.update(bad, t + TRIAL_S + TICK) is True  # steady video again: the hold time applies


def test_on_a_try_the_loss_reported_from_before_the_pause_does_not_count_but_new_loss_does():
    from sfu.adapt.ladder import TRIAL_LOSS_GRACE_S

    ladder = VideoLadder(0.0)
    ladder.level, ladder._since = AUDIO, 0.0
    t = RETRY_AFTER_S
    ladder.update(LinkReport(None, None, 0.0, VIDEO_BPS, None), t)
    assert ladder.state == "trial"
    # the first report after resuming counts the packets lost before the pause
    assert ladder.update(LinkReport(None, None, 0.16, VIDEO_BPS, t + 0.5), t + 0.5) is True
    # a report well into the try shows the link still losing: back to audio
    later = t + TRIAL_LOSS_GRACE_S + 0.5
    assert ladder.update(LinkReport(None, None, 0.16, VIDEO_BPS, later), later) is False


# -- the courseware rung: camera paused, slides kept ------------------------------------------------------------

SCREEN_BPS = 150_000  # slides at 5 fps: far less than camera + slides (VIDEO_BPS)


def run_levels(trace, seconds: float, screen_bps: float = SCREEN_BPS):
    """As run(), with courseware shared; returns the ladder and [(t, level)]."""
    ladder = VideoLadder(0.0)
    out = []
    t = 0.0
    while t < seconds:
        remb, loss = trace(t)
        ladder.update(LinkReport(remb, t if remb is not None else None, loss, VIDEO_BPS, None, screen_bps), t)
        out.append((t, ladder.level))
        t = round(t + TICK, 6)
    return ladder, out


def test_a_link_that_carries_the_slides_but_not_the_camera_keeps_the_slides():
    # after the REMB settles, 300 kbit/s: short of camera + slides (500k), enough for the slides (150k)
    ladder, out = run_levels(lambda t: (300_000, 0.0), 90)
    levels = [level for _, level in out]
    assert levels[0] == VIDEO
    assert AUDIO not in levels, "the slides fit: audio only is never needed"
    t_down = next(t for t, level in out if level == COURSEWARE)
    assert REMB_SETTLE_S <= t_down <= REMB_SETTLE_S + DOWN_HOLD_S + TICK
    # the camera is tried again later (a REMB never shows room to go up); it comes back down to the slides
    assert ladder.level in (COURSEWARE, VIDEO) and ladder.downs >= 1


def test_a_link_too_weak_even_for_the_slides_goes_down_rung_by_rung_to_audio_only():
    ladder, out = run_levels(lambda t: (None, 0.3), 10)
    levels = [level for _, level in out]
    first_courseware = levels.index(COURSEWARE)
    first_audio = levels.index(AUDIO)
    assert first_courseware < first_audio  # video -> courseware -> audio, never straight past the slides
    assert out[first_audio][0] - out[first_courseware][0] == pytest.approx(DOWN_HOLD_S, abs=2 * TICK)
    assert ladder.state == "audio"


def test_from_audio_only_the_slides_come_back_first_then_the_camera():
    ladder, out = run_levels(lambda t: (None, 0.3) if t < 6 else (2_000_000, 0.0), 60)
    levels = [level for _, level in out]
    back = levels.index(AUDIO)
    after = levels[back:]
    assert COURSEWARE in after and after.index(COURSEWARE) < after.index(VIDEO, after.index(COURSEWARE))
    assert ladder.level == VIDEO and ladder.state == "video"


def test_without_courseware_the_ladder_skips_that_rung():
    _, out = run_levels(lambda t: (None, 0.3), 10, screen_bps=0.0)
    assert COURSEWARE not in [level for _, level in out]

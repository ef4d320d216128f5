"""The audio-first ladder of one classroom: may its link carry the lesson's video, or audio only?

Audio is never touched: when the link is short of bandwidth, video goes first. The decision is pure and takes
the clock as an argument. Going down is quick (the classroom is losing the lesson now); going up cannot be
read from the classroom's reports — a REMB only ever reflects what it receives, and while video is paused it
receives audio only — so the ladder tries video again after a while and falls back at once if the link still
cannot carry it, waiting twice as long before the next try.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfu.adapt.link import (
    LOSS_DOWN,
    REMB_DOWN_RATIO,
    STALE_S,
    congested,
    fresh,
    remb_short,
    send_side_short,
)

__all__ = ["AUDIO", "COURSEWARE", "DOWN_HOLD_S", "LEVEL_NAMES", "LOSS_DOWN", "REMB_DOWN_RATIO", "REMB_SETTLE_S",
           "RETRY_AFTER_MAX_S", "RETRY_AFTER_S", "SEND_SIDE_SETTLE_S", "STALE_S", "TRIAL_LOSS_GRACE_S", "TRIAL_S", "UP_FIT_RATIO", "UP_HOLD_S", "VIDEO", "LinkReport",
           "VideoLadder"]

# down a rung when, for DOWN_HOLD_S, the classroom's estimate is short of what the rung needs or its receiver
# reports show congestion (the thresholds: sfu/adapt/link.py)
DOWN_HOLD_S = 2.0
# first try of video again after this long on audio only; doubled after each failed try, up to the maximum
RETRY_AFTER_S = 8.0
RETRY_AFTER_MAX_S = 64.0
# a try succeeds when the link carries video this long without a down condition
TRIAL_S = 5.0
# a receiver's estimate climbs slowly from wherever it was (aiortc's ~8 %/s): at the start and after video comes
# back it says more about the past than about the link, so it counts only after this long; loss always counts
REMB_SETTLE_S = 20.0
# the server's own send-side estimate (transport-cc, sfu/adapt/gcc.py) reacts to a queue within a second and is
# not held back by a receiver's slow climb: it counts after this long
SEND_SIDE_SETTLE_S = 2.0
# the first receiver reports after video comes back still count the packets lost before it was paused (the
# receiver learns of that gap only when video resumes): on a try, loss counts from reports this much later
TRIAL_LOSS_GRACE_S = 1.5
# with probing (send-side estimate): a rung up when UP_FIT_RATIO of the estimate carries what it needs (the
# opposite of REMB_DOWN_RATIO: 1.56x of hysteresis), after at least UP_HOLD_S on the rung below
UP_FIT_RATIO = 0.8
UP_HOLD_S = 2.0


@dataclass(frozen=True)
class LinkReport:
    """What the server knows of one classroom's link at one moment."""

    remb_bps: int | None  # the classroom's own receive estimate (REMB), if it sends one
    remb_at: float | None
    loss: float  # fraction lost in its latest receiver report, 0..1
    video_bps: float  # what the lesson's video needs (the teacher's video tracks, measured)
    loss_at: float | None = None  # when that receiver report came (None: unknown, counts)
    screen_bps: float = 0.0  # what the courseware alone needs (0: no courseware shared now)
    send_side: bool = False  # the estimate is the server's own (transport-cc feedback), not the classroom's REMB
    # the server probes this link before a step up (sfu/adapt/probe.py): up is by the estimate, no timed tries
    probe: bool = False
    # what the audio sent to the classroom takes: a send-side estimate is of the whole link, so with it a rung
    # needs its video and this (REMB rules, tuned on the video alone, leave it out)
    audio_bps: float = 0.0


# what flows at each rung, top to bottom: the lesson's video, the courseware only (camera paused), audio only
VIDEO, COURSEWARE, AUDIO = 0, 1, 2
LEVEL_NAMES = ("video", "courseware", "audio")


class VideoLadder:
    """Rungs: all video, courseware only (when it is shared: slides say more than the teacher's face), audio
    only. `state` is the rung's name, or "trial" while a rung above is on probation."""

    def __init__(self, now: float) -> None:
        self.level = VIDEO
        self.trial = False
        self._trial_from = VIDEO  # where a failed try goes back to
        self.reason = ""
        self._bad_since: float | None = None
        self._since = now
        self._retry_after = RETRY_AFTER_S
        self._remb_from = now + REMB_SETTLE_S
        self.downs = 0

    @property
    def state(self) -> str:
        return "trial" if self.trial else LEVEL_NAMES[self.level]

    @property
    def video(self) -> bool:
        """Whether any video flows (the courseware counts)."""
        return self.level != AUDIO

    def _short(self, report: LinkReport, now: float, need_bps: float) -> str:
        """Why the link cannot carry this rung now ("" when it can)."""
        # with the send-side estimate, loss speaks through it (its loss bound cuts on congestion loss, holds on
        # random loss): the ladder does not read it twice
        if not report.send_side and congested(report.loss) and not (self.trial and report.loss_at is not None
                                           and report.loss_at < self._since + TRIAL_LOSS_GRACE_S):
            return f"loss {report.loss:.0%}"
        settle_from = self._remb_from if not report.send_side else self._remb_from - REMB_SETTLE_S + SEND_SIDE_SETTLE_S
        settled = fresh(report.remb_at, now) and not self.trial and (report.remb_at or 0.0) >= settle_from
        # with the send-side estimate its own ratio (link.SEND_SIDE_DOWN_RATIO: the need counts the audio there, and
        # 0.8 left a 54 kbit/s layer with 32 kbit/s of audio (payload) on an 80 kbit/s link whose estimate said 65)
        short = send_side_short if report.send_side else remb_short
        if settled and short(report.remb_bps, need_bps):
            return f"bandwidth {(report.remb_bps or 0) // 1000} kbit/s < video {int(need_bps) // 1000} kbit/s"
        return ""

    def _go(self, level: int, now: float, trial: bool = False) -> None:
        if trial:
            self._trial_from = self.level
        self.level, self.trial, self._since, self._bad_since = level, trial, now, None

    def _up_need(self, report: LinkReport) -> float | None:
        """What the rung above needs (None: at the top, or on probation)."""
        if self.trial or self.level == VIDEO:
            return None
        extra = report.audio_bps if report.send_side else 0.0
        if self.level == AUDIO and report.screen_bps > 0:
            return report.screen_bps + extra
        return report.video_bps + extra

    def wanted_bps(self, report: LinkReport) -> float | None:
        """The estimate that takes this classroom a rung up (`UP_FIT_RATIO` of it carries the rung's need)."""
        need = self._up_need(report)
        return need / UP_FIT_RATIO if need else None

    def _up_by_estimate(self, report: LinkReport, now: float) -> None:
        """With probing, a rung up is taken when the send-side estimate carries it, never on a timer."""
        need = self._up_need(report)
        if need is None or now - self._since < UP_HOLD_S or not fresh(report.remb_at, now) \
                or (report.remb_bps or 0) * UP_FIT_RATIO < need:
            return
        self._go(COURSEWARE if self.level == AUDIO and report.screen_bps > 0 else VIDEO, now)
        self._remb_from = now + REMB_SETTLE_S
        self._retry_after = RETRY_AFTER_S
        self.reason = f"estimate {(report.remb_bps or 0) // 1000} kbit/s carries {int(need) // 1000} kbit/s"

    def update(self, report: LinkReport, now: float) -> bool:
        """Feed the latest report; returns whether video (the lesson's, or its courseware) should flow."""
        screen = report.screen_bps > 0
        if self.level == COURSEWARE and not screen:
            self.level = AUDIO  # the courseware was stopped: nothing but the paused camera is left
        if report.send_side and report.probe and not self.trial and self.level != VIDEO:
            level = self.level
            self._up_by_estimate(report, now)
            if self.level != level or self.level == AUDIO:
                return self.video
        if self.level == AUDIO and not self.trial:
            if now - self._since >= self._retry_after:
                self._go(COURSEWARE if screen else VIDEO, now, trial=True)
                self.reason = "trying video again"
            return self.video
        why = self._short(report, now, (report.video_bps if self.level == VIDEO else report.screen_bps)
                          + (report.audio_bps if report.send_side else 0.0))
        if not why:
            self._bad_since = None
            if self.trial and now - self._since >= TRIAL_S:
                self.trial, self._retry_after, self.reason = False, RETRY_AFTER_S, ""
                self._remb_from = now + REMB_SETTLE_S
            elif self.level == COURSEWARE and not self.trial and now - self._since >= self._retry_after \
                    and not (report.send_side and report.probe):
                self._go(VIDEO, now, trial=True)  # courseware is fine: try the camera again
                self.reason = "trying video again"
            return self.video
        if self._bad_since is None:
            self._bad_since = now
        # on probation, one bad report is enough; in steady state the trouble must last DOWN_HOLD_S
        if self.trial or now - self._bad_since >= DOWN_HOLD_S:
            if self.trial:
                self._retry_after = min(self._retry_after * 2, RETRY_AFTER_MAX_S)
                self._go(self._trial_from, now)
            else:
                self._go(COURSEWARE if self.level == VIDEO and screen else AUDIO, now)
            self.reason = why
            self.downs += 1
        return self.video

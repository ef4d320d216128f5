"""Which simulcast layer one classroom should receive, from its bandwidth estimate (REMB) and receiver reports.

Pure, with the clock passed in, like ``sfu.adapt.ladder.VideoLadder`` (which still decides video or audio only: this
chooses among the layers while video flows; the ladder's ``video_bps`` is then the smallest layer's rate).

- Down is quick: when the classroom's REMB stays below what the current layer needs for DOWN_HOLD_S, or two
  receiver reports in a row show heavy loss, it goes straight to the largest layer the REMB can carry (one
  layer down when only loss speaks).
- Up cannot be read from REMB: a receiver's estimate stays within ~1.5x of what it receives (DESIGN.md), so a
  classroom on 180p never reports room for 720p. After a trouble-free stretch it *tries* the next layer up
  for a while and falls back at the first sign of trouble, waiting twice as long before the next try.
- Layers the teacher's browser is not sending (rate 0) are never chosen; when the chosen one stops, the
  selector moves to the nearest one still arriving.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from sfu.adapt.link import (
    LOSS_DOWN,
    REMB_DOWN_RATIO,
    SEND_SIDE_DOWN_RATIO,
    STALE_S,
    congested,
    fresh,
    remb_short,
)

__all__ = ["DOWN_HOLD_S", "LOSS_DOWN", "LOSS_DOWN_REPORTS", "LOSS_UP_MAX", "REMB_DOWN_RATIO", "REMB_FIT_RATIO", "SEND_SIDE_COLLAPSE_RATIO", "SEND_SIDE_DOWN_RATIO",
           "SEND_SIDE_UP_HOLD_S",
           "STALE_S", "TRIAL_JUDGE_FROM_S", "TRIAL_LOSS_FAIL", "TRIAL_LOSS_GRACE_S", "TRIAL_MAX_S",
           "TRIAL_MIN_GROWTH", "TRIAL_REMB_DROP", "TRIAL_S", "UP_AFTER_MAX_S", "UP_AFTER_S", "LayerReport",
           "LayerSelector", "rates_of"]

# a REMB short of what the current layer needs (sfu/adapt/link.py: the thresholds the ladder uses too)...
# ...for this long (REMB comes every 200-250 ms from Chromium: four or five reports that agree)
DOWN_HOLD_S = 1.0
# when going down by REMB: the largest layer whose rate is at most this share of the REMB, so the
# down condition above cannot hold on the new layer at once (0.8 x REMB < REMB / 0.8)
REMB_FIT_RATIO = 0.8
# congestion in a receiver report (link.congested)...
# ...in this many reports in a row (reports come about once a second: one burst alone is not a trend)
LOSS_DOWN_REPORTS = 2
# a try of the next layer starts only when the latest loss is at most this (GCC's "increase" zone: < 2 %)
LOSS_UP_MAX = 0.02
# first try of the next layer after this long on the current one without trouble; doubled after each failed
# try, up to the maximum, and back to the start after a try succeeds
UP_AFTER_S = 6.0
UP_AFTER_MAX_S = 120.0
# a try lasts at least this long; it succeeds then if the REMB (when the classroom sends one) has grown to
# carry the new layer (REMB_DOWN_RATIO of its rate, so the down rule will not fire at once)...
TRIAL_S = 4.0
# ...while it has not, the try goes on only as long as the REMB keeps growing by this factor a second
# (Chromium's estimate climbs ~8 %/s towards 1.5x of what arrives while the link keeps up; on a link that
# cannot carry the layer it stalls near 0.85x of what gets through), judged from TRIAL_JUDGE_FROM_S on,
# and never beyond TRIAL_MAX_S (180p -> 360p needs ~7.5 s of growth at 8 %/s)
TRIAL_MIN_GROWTH = 1.03
TRIAL_JUDGE_FROM_S = 1.5
TRIAL_MAX_S = 12.0
# on a try, any of these ends it at once: a receiver report with more loss than this (a link that just
# carries the layer shows some; one that cannot shows much more)...
TRIAL_LOSS_FAIL = 0.05
# ...counted from reports this long after the switch (an earlier report covers time before it)...
TRIAL_LOSS_GRACE_S = 1.0
# ...or a REMB this far below the highest REMB of the try (the delay-based detector saw overuse: it sets
# its estimate to 0.85x of what arrives)
TRIAL_REMB_DROP = 0.85
# with probing: at least this long on a layer before going up by the estimate
SEND_SIDE_UP_HOLD_S = 1.0
# with the send-side estimate (of the whole link), down when it stays below SEND_SIDE_DOWN_RATIO (link.py, 0.85)
# of what the classroom receives with the layer (the layer plus `LayerReport.others_bps`) for DOWN_HOLD_S.
# (REMB_DOWN_RATIO = 0.8 of the layer alone, the REMB-era rule, let a layer stay that overfilled the link by up to
# 6 % with the audio: a 265-310 kbit/s layer plus 50 kbit/s of audio on a 300 kbit/s link, the estimate at
# 230-260 kbit/s, kept "start" for good.)
# ...and at once (no DOWN_HOLD_S) when it is below this share: the link collapsed. GoogCC's estimate cannot fall
# below BETA x what arrives on delay alone, so half the need means what arrives fell too; every second on a layer
# that overfills the link by 2x fills a school router's queue and drops the switch's keyframe behind it
SEND_SIDE_COLLAPSE_RATIO = 0.5


@dataclass(frozen=True)
class LayerReport:
    """What the server knows of one classroom's link, and of the teacher's layers, at one moment."""

    remb_bps: int | None  # the classroom's receive estimate, if it sends REMB
    remb_at: float | None
    loss: float  # fraction lost in its latest receiver report, 0..1
    loss_at: float | None  # when that report came (None: unknown; every update then counts as a new report)
    rates: Sequence[float]  # each layer's measured rate from the teacher, smallest first; 0 = not arriving
    # the estimate is the server's own from transport-cc feedback (sfu/adapt/gcc.py), and the loss what that feedback
    # measured: the estimate already holds on random loss and falls on congestion loss (its loss bound), so loss
    # alone moves no layer down, and a try is refused or ended only by loss above LOSS_DOWN
    send_side: bool = False
    # the server probes before an up-switch (sfu/adapt/probe.py): up is by the estimate alone, no timed tries
    probe: bool = False
    # what the classroom receives besides this track (audio, courseware): a send-side estimate is of the whole
    # link, so with it a layer needs its rate plus this (REMB rules, tuned on the video alone, leave it out)
    others_bps: float = 0.0


class LayerSelector:
    """States: "steady" on ``layer``, or "trial" of ``layer`` (``fallback`` is where a failed try returns)."""

    def __init__(self, now: float, start_layer: int = 0) -> None:
        self.layer = start_layer
        self.state = "steady"
        self.reason = "start"
        self.fallback = start_layer
        self.changes = 0
        self.failed_trials = 0
        # the latest move was down on a collapsed estimate (SEND_SIDE_COLLAPSE_RATIO): the layer above is not worth
        # forwarding until the new one's keyframe (SimulcastConsumer.set_layer's hold)
        self.collapsed = False
        self._since = now  # when the current layer (or try) began
        self._up_after = UP_AFTER_S
        self._remb_bad_since: float | None = None
        self._bad_loss_reports = 0
        self._last_loss_at: float | None = None
        self._trial_remb_peak = 0  # the highest REMB of the try (including the one when it started)
        self._trial_rembs: deque[tuple[float, int]] = deque()  # (time, REMB) during the try

    # -- helpers ---------------------------------------------------------------------------------------------

    @staticmethod
    def _available(rates: Sequence[float]) -> list[int]:
        return [i for i, r in enumerate(rates) if r > 0]

    def _fresh_remb(self, report: LayerReport, now: float) -> int | None:
        return report.remb_bps if fresh(report.remb_at, now) else None

    def _new_loss_report(self, report: LayerReport, now: float) -> bool:
        """True once per receiver report (by its time): loss is judged per report, not per update."""
        if report.loss_at is None:
            return True
        if not fresh(report.loss_at, now) or report.loss_at == self._last_loss_at:
            return False
        self._last_loss_at = report.loss_at
        return True

    def _go(self, layer: int, now: float, reason: str, state: str = "steady") -> None:
        if layer != self.layer:
            self.changes += 1
        self.layer, self.state, self.reason, self._since = layer, state, reason, now
        self.collapsed = False
        self._remb_bad_since = None
        self._bad_loss_reports = 0

    def _fail_trial(self, now: float, why: str) -> None:
        self.failed_trials += 1
        self._up_after = min(self._up_after * 2, UP_AFTER_MAX_S)
        self._go(self.fallback, now, f"try failed: {why}")

    # -- the decision ----------------------------------------------------------------------------------------

    def update(self, report: LayerReport, now: float) -> int:
        """Feed the latest figures; returns the layer this classroom should receive."""
        rates = report.rates
        available = self._available(rates)
        if not available:
            return self.layer  # no video arriving from the teacher: nothing to choose
        if self.layer not in available:
            below = [i for i in available if i < self.layer]
            self._go(below[-1] if below else available[0], now, "layer stopped by the teacher")
            return self.layer
        remb = self._fresh_remb(report, now)
        new_report = self._new_loss_report(report, now)
        if self.state == "trial":
            self._judge_trial(report, remb, new_report, available, now)
        else:
            self._judge_steady(report, remb, new_report, available, now)
        return self.layer

    def _judge_trial(self, report: LayerReport, remb: int | None, new_report: bool, available: list[int],
                     now: float) -> None:
        elapsed = now - self._since
        if new_report and report.loss > (LOSS_DOWN if report.send_side else TRIAL_LOSS_FAIL) and (
                report.loss_at is None or report.loss_at >= self._since + TRIAL_LOSS_GRACE_S):
            self._fail_trial(now, f"loss {report.loss:.0%}")
            return
        history = self._trial_rembs
        if remb is not None and report.remb_at is not None and report.remb_at > self._since \
                and (not history or report.remb_at > history[-1][0]):
            history.append((report.remb_at, remb))
            if remb < TRIAL_REMB_DROP * self._trial_remb_peak:
                self._fail_trial(now, f"bandwidth fell to {remb // 1000} kbit/s")
                return
            self._trial_remb_peak = max(self._trial_remb_peak, remb)
        need = rates_of(report, self.layer)
        if not remb_short(remb, need):
            if elapsed >= TRIAL_S:
                self._up_after = UP_AFTER_S
                self._go(self.layer, now, "try succeeded")
            return
        if elapsed >= TRIAL_MAX_S:
            self._fail_trial(now, f"bandwidth {remb // 1000} kbit/s < {int(need) // 1000} kbit/s")
            return
        if elapsed >= TRIAL_JUDGE_FROM_S and history:
            # growth over the last second of REMBs: the oldest one at least a second before the newest
            newest_at, newest = history[-1]
            while len(history) > 2 and history[1][0] <= newest_at - 1.0:
                history.popleft()
            old_at, old = history[0]
            if newest_at - old_at >= 1.0 and old > 0 and newest / old < TRIAL_MIN_GROWTH ** (newest_at - old_at):
                self._fail_trial(now, f"bandwidth {remb // 1000} kbit/s not growing towards "
                                      f"{int(need) // 1000} kbit/s")

    def _judge_steady(self, report: LayerReport, remb: int | None, new_report: bool, available: list[int],
                      now: float) -> None:
        rate = rates_of(report, self.layer)
        # down: REMB short for DOWN_HOLD_S, or LOSS_DOWN_REPORTS lossy reports in a row
        collapsed = False
        if report.send_side:
            short = remb is not None and rate > 0 and remb < SEND_SIDE_DOWN_RATIO * (rate + report.others_bps)
            collapsed = short and remb is not None and remb < SEND_SIDE_COLLAPSE_RATIO * (rate + report.others_bps)
        else:
            short = remb_short(remb, rate)
        if short:
            if self._remb_bad_since is None:
                self._remb_bad_since = now
        else:
            self._remb_bad_since = None
        if new_report and not report.send_side:
            self._bad_loss_reports = self._bad_loss_reports + 1 if congested(report.loss) else 0
        by_remb = self._remb_bad_since is not None and (collapsed or now - self._remb_bad_since >= DOWN_HOLD_S)
        by_loss = self._bad_loss_reports >= LOSS_DOWN_REPORTS
        below = [i for i in available if i < self.layer]
        if (by_remb or by_loss) and below:
            target = below[-1]  # loss: one layer down
            if by_remb and remb is not None:
                fitting = [i for i in below if _fits(report, i, remb)]
                target = min(target, fitting[-1] if fitting else below[0])
            why = (f"bandwidth {remb // 1000} kbit/s < {int(_need(report, self.layer)) // 1000} kbit/s"
                   if by_remb and remb is not None
                   else f"loss {report.loss:.0%}")
            self._go(target, now, why)
            self.collapsed = collapsed and by_remb
            return
        if short or self._bad_loss_reports:
            return  # trouble building up: no try now
        above = [i for i in available if i > self.layer]
        if report.send_side and report.probe:
            # up to the largest layer the estimate carries (REMB_FIT_RATIO of it, and all of it with what the
            # classroom receives besides), after SEND_SIDE_UP_HOLD_S
            fitting = [i for i in above if remb is not None and _fits(report, i, remb)]
            if fitting and now - self._since >= SEND_SIDE_UP_HOLD_S and not congested(report.loss):
                self._go(fitting[-1], now, f"estimate {remb // 1000} kbit/s carries layer {fitting[-1]}")
            return
        if not above or now - self._since < self._up_after:
            return
        if fresh(report.loss_at, now) and report.loss > (LOSS_DOWN if report.send_side else LOSS_UP_MAX):
            return
        self.fallback = self.layer
        self._trial_remb_peak = remb or 0
        self._trial_rembs.clear()
        self._go(above[0], now, f"trying layer {above[0]}", state="trial")


def _fits(report: LayerReport, layer: int, estimate: int) -> bool:
    """Whether the estimate carries `layer`: its rate is at most REMB_FIT_RATIO of it, and with the send-side
    estimate the layer plus the rest the classroom receives at most all of it (1 / SEND_SIDE_DOWN_RATIO = 1.18x
    from the down rule). The probe that earns a layer aims at the larger of the two (Subscriber._wanted_bps)."""
    rate = rates_of(report, layer)
    return rate <= REMB_FIT_RATIO * estimate and (not report.send_side or rate + report.others_bps <= estimate)


def _need(report: LayerReport, layer: int) -> float:
    """What the classroom's link carries with `layer`: with the send-side estimate the rest it receives too."""
    return rates_of(report, layer) + (report.others_bps if report.send_side else 0.0)


def rates_of(report: LayerReport, layer: int) -> float:
    rates = report.rates
    return rates[layer] if 0 <= layer < len(rates) else 0.0

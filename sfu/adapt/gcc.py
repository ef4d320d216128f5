"""A send-side bandwidth estimate for one classroom, from its transport-cc feedback (draft-ietf-rmcat-gcc-02).

Pure: fed per-packet results (when sent, by the server's clock; when arrived, by the receiver's; size) with the
clock passed in. Two bounds, the estimate is the smaller:

- **delay-based** (section 5 of the draft): packets are grouped by send time (a burst of 5 ms is one group); the
  change in one-way delay between groups is accumulated, smoothed, and the slope of its trend over the last
  `TREND_WINDOW` groups (least squares) compared with an adaptive threshold. Above it for a while: overuse,
  the rate drops to `BETA` of what the receiver acknowledged; below its negative: underuse, the rate holds
  (queues drain); in between: it grows, 8 % a second while far from the last known capacity, additively near
  it. It never grows above 1.5x what is acknowledged (+10 kbit/s): an estimate is only as good as the traffic
  that tested it.
- **loss-based** (section 6): loss over the last `LOSS_WINDOW_S` of feedback. Above `LOSS_HIGH` (10 %) for
  `LOSS_HIGH_HOLD_S` the bound drops by half the loss (not below `BETA` of what arrives); between `LOSS_LOW` and `LOSS_HIGH` it holds; below it grows 8 % a second, and once it
  is above the delay-based estimate it no longer binds. Random loss of a few percent therefore never lowers the
  estimate; the loss is reported (`loss`) for the server's stats.

A delay step (a route change adding 50 ms) is one group's jump in delay: the trend rises while the step is in
the window, perhaps one decrease to BETA of the acknowledged rate, then growth again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Protocol

__all__ = ["BETA", "LOSS_HIGH", "LOSS_LOW", "LOSS_WINDOW_S", "MAX_BPS", "MIN_BPS", "START_BPS", "PacketReport",
           "SendSideEstimator"]

START_BPS = 600_000  # before any feedback: a classroom starts on the middle layer (~500 kbit/s) with audio
MIN_BPS = 30_000  # audio alone must stay possible
MAX_BPS = 20_000_000
BURST_S = 0.005  # packets sent within this of a group's first are one group
TREND_WINDOW = 20  # groups in the trendline's least-squares fit
TREND_SMOOTHING = 0.9
TREND_GAIN = 4.0
TREND_MAX_DELTAS = 60
THRESHOLD_START_MS = 12.5
THRESHOLD_MIN_MS, THRESHOLD_MAX_MS = 6.0, 600.0
THRESHOLD_K_UP, THRESHOLD_K_DOWN = 0.0087, 0.039
OVERUSE_TIME_S = 0.010  # the trend above the threshold this long (and in two deltas) is overuse
BETA = 0.85
INCREASE_PER_S = 1.08  # multiplicative growth, per second
MAX_TO_ACKED = 1.5
MAX_TO_ACKED_ADD_BPS = 10_000
DECREASE_EVERY_S = 0.3  # at most one decrease in this long (plus the round trip), delay or loss
ACKED_WINDOW_S = 1.0
LOSS_WINDOW_S = 2.0
LOSS_MIN_PACKETS = 100  # fewer in the window: loss is not judged
# loss above LOSS_HIGH lowers the bound only when it lasts this long (a window of random loss a few points above
# its mean is not congestion; the delay-based bound reacts to a queue long before this)
LOSS_HIGH_HOLD_S = 0.5
LOSS_HIGH = 0.10
LOSS_LOW = 0.02
DEFAULT_RTT_S = 0.1


class PacketReport(Protocol):
    """What the estimator reads of one packet's feedback (sfu/rtp/twcc.py: PacketResult)."""

    @property
    def sent_at(self) -> float: ...

    @property
    def arrived_at(self) -> float | None: ...

    @property
    def size(self) -> int: ...


class SendSideEstimator:
    """States (`signal`): "normal", "overuse", "underuse"; `estimate_bps` the smaller of the two bounds."""

    def __init__(self, now: float, start_bps: float = START_BPS, min_bps: float = MIN_BPS,
                 max_bps: float = MAX_BPS) -> None:
        self.min_bps, self.max_bps = min_bps, max_bps
        self.delay_bps = float(start_bps)
        self.loss_bps: float | None = None  # None: loss does not bind
        self.signal = "normal"
        self.rate_state = "increase"  # increase, hold, decrease (the AIMD controller's)
        self.loss = 0.0
        self.acked_bps: float | None = None
        self.updated_at: float | None = None
        self.rtt_s = DEFAULT_RTT_S
        self.decreases = 0
        self._last_update = now
        self._last_decrease = -1e9
        # groups: (first send, last send, last arrival) of the group being filled and the previous complete one
        self._group: list[float] | None = None
        self._prev_group: list[float] | None = None
        # trendline
        self._acc_delay_ms = 0.0
        self._smoothed_ms = 0.0
        self._first_arrival: float | None = None
        self._trend_points: deque[tuple[float, float]] = deque(maxlen=TREND_WINDOW)
        self._deltas = 0
        self._trend = 0.0
        self._prev_trend = 0.0
        self._threshold_ms = THRESHOLD_START_MS
        self._last_threshold_update: float | None = None
        self._over_s = -1.0
        self._over_count = 0
        # what arrived (arrival, bytes), and every result (feedback time, lost)
        self._acked: deque[tuple[float, int]] = deque()
        self._acked_bytes = 0
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._lost_in_window = 0
        self._loss_high_since: float | None = None
        # the capacity seen at decreases (kbit/s), averaged, and its variance: near it, growth is additive
        self._avg_max_kbps: float | None = None
        self._var_max_kbps = 0.4

    @property
    def estimate_bps(self) -> int:
        bound = self.delay_bps if self.loss_bps is None else min(self.delay_bps, self.loss_bps)
        return int(max(self.min_bps, min(self.max_bps, bound)))

    # -- feedback --------------------------------------------------------------------------------------------

    def on_feedback(self, results: Iterable[PacketReport], now: float, rtt_s: float | None = None) -> None:
        """One feedback packet's results, in send order."""
        if rtt_s is not None and 0 < rtt_s < 10:
            self.rtt_s = rtt_s
        for r in results:
            lost = r.arrived_at is None
            self._outcomes.append((now, lost))
            self._lost_in_window += lost
            if lost:
                continue
            self._on_arrival(r.sent_at, r.arrived_at, r.size)  # type: ignore[arg-type]
        outcomes = self._outcomes
        while outcomes and outcomes[0][0] < now - LOSS_WINDOW_S:
            self._lost_in_window -= outcomes.popleft()[1]
        self.loss = self._lost_in_window / len(outcomes) if outcomes else 0.0
        self._update_rate(now)
        self._update_loss_bound(now, len(outcomes))
        self._last_update = now
        self.updated_at = now

    def _on_arrival(self, sent: float, arrived: float, size: int) -> None:
        acked = self._acked
        acked.append((arrived, size))
        self._acked_bytes += size
        newest = acked[-1][0]
        while acked and acked[0][0] < newest - ACKED_WINDOW_S:
            self._acked_bytes -= acked.popleft()[1]
        span = max(newest - acked[0][0], 0.25) if len(acked) > 1 else 0.0
        if span >= 0.25:
            self.acked_bps = self._acked_bytes * 8 / max(span, ACKED_WINDOW_S * 0.5)
        group = self._group
        if group is None:
            self._group = [sent, sent, arrived]
            return
        if sent < group[0]:
            return  # sent before the current group began: reordered, ignored
        if sent - group[0] <= BURST_S:
            group[1] = max(group[1], sent)
            group[2] = max(group[2], arrived)
            return
        prev = self._prev_group
        if prev is not None:
            send_delta = group[1] - prev[1]
            arrival_delta = group[2] - prev[2]
            if arrival_delta >= 0:
                self._on_delta(send_delta, arrival_delta, group[2])
        self._prev_group = group
        self._group = [sent, sent, arrived]

    def _on_delta(self, send_delta: float, arrival_delta: float, arrival: float) -> None:
        """Trendline and overuse detector, per pair of groups."""
        self._deltas = min(self._deltas + 1, TREND_MAX_DELTAS)
        if self._first_arrival is None:
            self._first_arrival = arrival
        self._acc_delay_ms += (arrival_delta - send_delta) * 1000
        self._smoothed_ms = TREND_SMOOTHING * self._smoothed_ms + (1 - TREND_SMOOTHING) * self._acc_delay_ms
        points = self._trend_points
        points.append(((arrival - self._first_arrival) * 1000, self._smoothed_ms))
        if len(points) == TREND_WINDOW:
            slope = _slope(points)
            if slope is not None:
                self._trend = slope
        modified = min(self._deltas, TREND_MAX_DELTAS) * self._trend * TREND_GAIN
        self._detect(modified, send_delta, arrival)

    def _detect(self, modified: float, send_delta: float, arrival: float) -> None:
        threshold = self._threshold_ms
        if modified > threshold:
            if self._over_s < 0:
                self._over_s = send_delta / 2
            else:
                self._over_s += send_delta
            self._over_count += 1
            if self._over_s > OVERUSE_TIME_S and self._over_count > 1 and modified >= self._prev_trend:
                self._over_s, self._over_count = 0.0, 0
                self.signal = "overuse"
        elif modified < -threshold:
            self._over_s, self._over_count = -1.0, 0
            self.signal = "underuse"
        else:
            self._over_s, self._over_count = -1.0, 0
            self.signal = "normal"
        self._prev_trend = modified
        # the threshold follows the trend slowly (quicker down than up), not for outliers
        last = self._last_threshold_update
        self._last_threshold_update = arrival
        if last is None or abs(modified) > threshold + 15:
            return
        k = THRESHOLD_K_DOWN if abs(modified) < threshold else THRESHOLD_K_UP
        dt_ms = min((arrival - last) * 1000, 100.0)
        self._threshold_ms = min(THRESHOLD_MAX_MS, max(THRESHOLD_MIN_MS, threshold + k * (abs(modified) - threshold)
                                                       * dt_ms))

    def on_probe(self, bps: float, now: float) -> None:
        """A probe (sfu/adapt/probe.py) measured that the link carried `bps`: the estimate starts from there
        (libwebrtc takes a probe's result the same way); a loss bound that binds below it is lifted too, since
        the probe's packets arrived."""
        if bps > self.delay_bps:
            self.delay_bps = min(self.max_bps, float(bps))
            self._avg_max_kbps = None  # the capacity seen before is history
        if self.loss_bps is not None and self.loss_bps < bps:
            self.loss_bps = float(bps)
        self._last_update = now

    # -- rate control ------------------------------------------------------------------------------------------

    def _update_rate(self, now: float) -> None:
        signal, state = self.signal, self.rate_state
        if signal == "overuse":
            state = "decrease"
        elif signal == "underuse":
            state = "hold"
        elif state == "hold" or state == "decrease":
            state = "increase" if state == "hold" else "hold"
        self.rate_state = state
        acked = self.acked_bps
        rate = self.delay_bps
        if state == "decrease":
            if now - self._last_decrease >= DECREASE_EVERY_S + self.rtt_s and acked is not None:
                self._note_max(acked)
                rate = min(BETA * acked, rate)
                self._last_decrease = now
                self.decreases += 1
            self.rate_state = "hold"  # after a decrease the queues drain first
            self.signal = "normal"
        elif state == "increase":
            dt = max(0.0, min(now - self._last_update, 1.0))
            if acked is not None and self._avg_max_kbps is not None \
                    and acked / 1000 > self._avg_max_kbps + 3 * self._std_max():
                self._avg_max_kbps = None  # far above the old capacity: it changed
            near = (self._avg_max_kbps is not None
                    and abs(rate / 1000 - self._avg_max_kbps) < 3 * self._std_max())
            if near:
                rate += self._additive_bps_per_s(rate) * dt
            else:
                rate *= INCREASE_PER_S ** dt
            if acked is not None:
                cap = MAX_TO_ACKED * acked + MAX_TO_ACKED_ADD_BPS
                if rate > cap:
                    rate = max(cap, min(self.delay_bps, rate))
        self.delay_bps = max(self.min_bps, min(self.max_bps, rate))

    def _additive_bps_per_s(self, rate: float) -> float:
        """About one packet more per response time (libwebrtc's rule): a packet of a 30 fps frame's size split in
        1200-byte packets, every round trip + 100 ms."""
        bits_per_frame = rate / 30
        packets = max(1.0, -(-bits_per_frame // (1200 * 8)))
        return max(4000.0, (bits_per_frame / packets) / (self.rtt_s + 0.1))

    def _std_max(self) -> float:
        avg = self._avg_max_kbps or 1.0
        return (self._var_max_kbps * avg) ** 0.5

    def _note_max(self, acked_bps: float) -> None:
        kbps = acked_bps / 1000
        if self._avg_max_kbps is None:
            self._avg_max_kbps = kbps
            return
        alpha = 0.05
        self._avg_max_kbps = (1 - alpha) * self._avg_max_kbps + alpha * kbps
        norm = max(self._avg_max_kbps, 1.0)
        self._var_max_kbps = min(2.5, max(0.4, (1 - alpha) * self._var_max_kbps
                                          + alpha * (self._avg_max_kbps - kbps) ** 2 / norm))

    def _update_loss_bound(self, now: float, packets: int) -> None:
        if packets < LOSS_MIN_PACKETS:
            return
        loss = self.loss
        if loss <= LOSS_HIGH:
            self._loss_high_since = None
        elif self._loss_high_since is None:
            self._loss_high_since = now
        if loss > LOSS_HIGH:
            if now - self._loss_high_since >= LOSS_HIGH_HOLD_S \
                    and now - self._last_decrease >= DECREASE_EVERY_S + self.rtt_s:
                # never below BETA of what the receiver is getting: the SFU cannot slow down at once (a layer
                # switch waits for a keyframe), so losses go on for a while after the bound was lowered, and they
                # say the link is full, not that it carries less than arrives
                base = self.estimate_bps
                floor = BETA * self.acked_bps if self.acked_bps is not None else 0.0
                self.loss_bps = max(self.min_bps, min(base, max(base * (1 - 0.5 * loss), floor)))
                self._last_decrease = now
                self.decreases += 1
                # the next decision reads only what is sent at the new rate: the packets lost while the old one
                # overflowed the queue must not cut it again and again
                self._outcomes.clear()
                self._lost_in_window = 0
                self._loss_high_since = None
        elif loss < LOSS_LOW and self.loss_bps is not None:
            dt = max(0.0, min(now - self._last_update, 1.0))
            self.loss_bps *= INCREASE_PER_S ** dt
            if self.loss_bps >= self.delay_bps:
                self.loss_bps = None  # no longer binds

    def stats(self) -> dict:
        return {"estimate_bps": self.estimate_bps, "delay_bps": int(self.delay_bps),
                "loss_bps": int(self.loss_bps) if self.loss_bps is not None else None,
                "acked_bps": int(self.acked_bps) if self.acked_bps is not None else None,
                "loss": round(self.loss, 4), "signal": self.signal, "threshold_ms": round(self._threshold_ms, 2),
                "decreases": self.decreases}


def _slope(points: Iterable[tuple[float, float]]) -> float | None:
    """Least-squares slope of (x, y) points; None when x does not vary."""
    pts = list(points)
    n = len(pts)
    mean_x = sum(p[0] for p in pts) / n
    mean_y = sum(p[1] for p in pts) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in pts)
    den = sum((x - mean_x) ** 2 for x, _ in pts)
    return num / den if den > 0 else None

"""Probing a classroom's link before an up-switch (issue 15, item 2). Pure, with the clock passed in.

The send-side estimate (gcc.py) cannot grow much above what is acknowledged (1.5x + 10 kbit/s), and the server
sends only what fits the estimate: a classroom on the low layer, or on audio only, would never earn the rate of
the layer above. So before going up the server *probes*: for at most `PROBE_S` it sends at the rate the next
step needs (`Prober.start`), the media topped up with padding (padding-only RTP packets on the video's RTX
stream, as Chromium's own senders do, each with a transport-wide number so the classroom's feedback measures
them; sfu/pacer.py sends them). The probe's result is what the feedback says of the packets sent during it:
the smaller of the rate they were sent at and the rate they arrived at. The step is taken only if that reached
the target; the probe ends at once (failed) when its own packets' delay rises (`PROBE_DELAY_RISE_S`; half that
when the delay-based detector also sees overuse) or they are lost beyond `PROBE_LOSS_MAX`, before a queue builds
up behind the audio.

`ProbeSchedule` spaces probes: the first `FIRST_AFTER_S` after a change, doubling after each failure up to
`BACKOFF_MAX_S` (short enough that a classroom is back on the top layer within 15 s of a link clearing).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from sfu.adapt.gcc import PacketReport

__all__ = ["AFTER_DOWN_S", "BACKOFF_MAX_S", "DELAY_SAMPLES", "FIRST_AFTER_S", "OVERSHOOT", "PROBE_DELAY_RISE_S", "PROBE_LOSS_MAX",
           "PROBE_MAX_STEP", "PROBE_S", "RESULT_WAIT_S", "ProbeSchedule",
           "Prober"]

# a probe sends for this long (at most), then waits for the feedback on what it sent
PROBE_S = 1.0
# ...at most this long after its end (plus the round trip); then it is judged on what came back
RESULT_WAIT_S = 0.5
# the probe sends at OVERSHOOT x the target and succeeds when what arrived reached the target
OVERSHOOT = 1.15
# more of the probe's packets lost than this: the link is full (random loss of a few percent is not)
PROBE_LOSS_MAX = 0.10
# at least this many of the probe's packets must be acknowledged for a verdict (else: failed, "too few")
MIN_PACKETS = 10
# a probe ends when the one-way delay of its latest DELAY_SAMPLES packets (median) is this much above its first
# ones': a queue builds up (a probe 15 % above an 80 kbit/s link's rate adds ~0.15 s a second)
PROBE_DELAY_RISE_S = 0.05
DELAY_SAMPLES = 8
FIRST_AFTER_S = 1.5
BACKOFF_MAX_S = 8.0
# after a step *down* (a rung, or a layer: the link just proved short) the first probe waits this long: a probe
# then would only overfill the queue the step down is draining, behind the audio (at 80 kbit/s a probe 1.5 s into
# audio only concealed 15-20 % of the audio of the next two seconds on a loaded machine)
AFTER_DOWN_S = 4.0
# a probe aims at most this multiple of the estimate: a classroom far below the next step climbs in probes (each
# success is the next one's start), so a probe into a link that cannot carry it overfills its queue less
PROBE_MAX_STEP = 3.0


class Prober:
    """One probe at a time: `start`, then per sent packet `on_sent`, per pacing tick `padding_due`, per feedback
    `on_feedback`; `state` is "idle", "probing", "waiting" (for feedback), "succeeded" or "failed"; `result_bps`
    what the probe measured, `reason` why it ended."""

    def __init__(self) -> None:
        self.state = "idle"
        self.target_bps = 0.0
        self.result_bps: float | None = None
        self.reason = ""
        self.probes = self.succeeded = self.failed = 0
        self.history: deque[str] = deque(maxlen=6)  # the latest probes' targets and verdicts (for /stats)
        self._start = self._end = 0.0
        self._sent_bytes = 0
        self._acked_bytes = 0
        self._acked = self._lost = 0
        self._first_arrival: float | None = None
        self._last_arrival: float | None = None
        self._first_size = 0
        self._last_sent_reported = -1.0
        # one-way delays (arrival by the receiver's clock - send time: only their changes mean anything) of the
        # probe's first acknowledged packets, and of its latest ones
        self._first_delays: list[float] = []
        self._last_delays: deque[float] = deque(maxlen=DELAY_SAMPLES)

    @property
    def active(self) -> bool:
        """Sending padding (probing) or waiting for the verdict."""
        return self.state in ("probing", "waiting")

    def start(self, target_bps: float, now: float) -> None:
        self.state, self.target_bps, self.result_bps, self.reason = "probing", float(target_bps), None, ""
        self.probes += 1
        self._start, self._end = now, now + PROBE_S
        self._sent_bytes = self._acked_bytes = self._acked = self._lost = self._first_size = 0
        self._first_arrival = self._last_arrival = None
        self._last_sent_reported = -1.0
        self._first_delays.clear()
        self._last_delays.clear()

    def on_sent(self, size: int, now: float) -> None:
        """A packet (media, padding or audio) of `size` bytes on the wire went out now."""
        if self.state == "probing" and now <= self._end:
            self._sent_bytes += size

    def padding_due(self, now: float) -> int:
        """Bytes of padding to send now so that everything sent since the probe began keeps OVERSHOOT x the
        target (0 when not probing, or the media already does)."""
        if self.state != "probing":
            return 0
        if now >= self._end:
            self.state = "waiting"
            return 0
        return max(0, int(OVERSHOOT * self.target_bps / 8 * (now - self._start)) - self._sent_bytes)

    def abort(self, why: str) -> None:
        if self.active:
            self._finish(False, why)

    def _finish(self, ok: bool, why: str) -> None:
        self.state, self.reason = ("succeeded" if ok else "failed"), why
        self.history.append(f"{self.target_bps / 1000:.0f}k {'ok' if ok else 'failed'}: {why}")
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1

    def on_feedback(self, results: Iterable[PacketReport], now: float, overuse: bool, rtt_s: float = 0.1) -> None:
        """One feedback packet's results; `overuse`: the delay-based detector's signal after it. The probe ends
        when its own packets' one-way delay has risen by PROBE_DELAY_RISE_S (a queue is building) and, with
        `overuse`, by half that (the detector agrees); the detector's signal alone does not end it (see
        docs/weak-networks.md: on a loaded machine it fires on jitter in most probes of a clean link)."""
        if not self.active:
            return
        for r in results:
            if not self._start <= r.sent_at <= self._end:
                continue
            self._last_sent_reported = max(self._last_sent_reported, r.sent_at)
            if r.arrived_at is None:
                self._lost += 1
                continue
            delay = r.arrived_at - r.sent_at
            if len(self._first_delays) < DELAY_SAMPLES:
                self._first_delays.append(delay)
            self._last_delays.append(delay)
            self._acked += 1
            self._acked_bytes += r.size
            if self._first_arrival is None or r.arrived_at < self._first_arrival:
                self._first_arrival, self._first_size = r.arrived_at, r.size
            if self._last_arrival is None or r.arrived_at > self._last_arrival:
                self._last_arrival = r.arrived_at
        total = self._acked + self._lost
        if total >= MIN_PACKETS and self._lost / total > PROBE_LOSS_MAX:
            self._finish(False, f"loss {self._lost / total:.0%}")
            return
        rise = self.delay_rise()
        if rise is not None and (rise > PROBE_DELAY_RISE_S or (overuse and rise > PROBE_DELAY_RISE_S / 2)):
            self._finish(False, f"delay +{rise * 1000:.0f} ms" + (" (overuse)" if overuse else ""))
            return
        self.judge(now, rtt_s)

    def delay_rise(self) -> float | None:
        """How much the one-way delay of the probe's latest packets exceeds its first ones' (medians), seconds."""
        if len(self._first_delays) < DELAY_SAMPLES or len(self._last_delays) < DELAY_SAMPLES:
            return None
        first, last = sorted(self._first_delays), sorted(self._last_delays)
        return last[len(last) // 2] - first[len(first) // 2]

    def measured_bps(self) -> float | None:
        """The smaller of the rates the probe's acknowledged packets were sent and arrived at."""
        if self._acked < MIN_PACKETS or self._first_arrival is None or self._last_arrival is None:
            return None
        span = self._last_arrival - self._first_arrival
        if span <= 0:
            return None
        received = (self._acked_bytes - self._first_size) * 8 / span
        sent = self._sent_bytes * 8 / max(1e-3, min(self._end, self._last_sent_reported) - self._start)
        return min(received, sent)

    def judge(self, now: float, rtt_s: float = 0.1) -> None:
        """Once the feedback covers the probe's end (or waiting is over): succeeded if it reached the target."""
        if self.state == "probing" and now >= self._end:
            self.state = "waiting"
        if self.state != "waiting":
            return
        covered = self._last_sent_reported >= self._end - 0.05
        if not covered and now < self._end + rtt_s + RESULT_WAIT_S:
            return
        self.result_bps = self.measured_bps()
        if self.result_bps is None:
            self._finish(False, "too few packets acknowledged")
        elif self.result_bps >= self.target_bps:
            self._finish(True, f"{self.result_bps / 1000:.0f} kbit/s")
        else:
            self._finish(False, f"{self.result_bps / 1000:.0f} < {self.target_bps / 1000:.0f} kbit/s")

    def stats(self) -> dict:
        return {"state": self.state, "target_bps": int(self.target_bps),
                "result_bps": int(self.result_bps) if self.result_bps is not None else None, "reason": self.reason,
                "probes": self.probes, "succeeded": self.succeeded, "failed": self.failed,
                "history": list(self.history)}


class ProbeSchedule:
    """When the next probe may start: FIRST_AFTER_S after the last change of rung or layer (its queue drains),
    then again after each failure, waiting twice as long each time up to BACKOFF_MAX_S."""

    def __init__(self, now: float) -> None:
        self._wait = FIRST_AFTER_S
        self._not_before = now + FIRST_AFTER_S

    def due(self, now: float) -> bool:
        return now >= self._not_before

    def changed(self, now: float, down: bool = False) -> None:
        """The rung or the layer changed (a switch's keyframe is under way): the next probe waits, AFTER_DOWN_S
        after a step down."""
        self._wait = FIRST_AFTER_S
        self._not_before = max(self._not_before, now + (AFTER_DOWN_S if down else FIRST_AFTER_S))

    def failed(self, now: float) -> None:
        self._wait = min(self._wait * 2, BACKOFF_MAX_S)
        self._not_before = now + self._wait

    def succeeded(self, now: float) -> None:
        self._wait = FIRST_AFTER_S
        self._not_before = now + FIRST_AFTER_S

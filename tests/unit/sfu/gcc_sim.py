"""A synthetic link for the send-side estimator's tests: a sender whose rate follows the estimate (frames in bursts
at 15 fps, plus audio), a bottleneck with a drop-tail queue, one-way delay and random loss, and a receiver whose
feedback every 100 ms reaches the sender one delay later. Clocks are the simulation's; nothing sleeps."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from sfu.adapt.gcc import SendSideEstimator

FPS = 15
MTU = 1200
AUDIO_BYTES = 120
AUDIO_PPS = 50
FEEDBACK_EVERY_S = 0.1
RECEIVER_CLOCK_OFFSET_S = 1234.5  # the receiver's clock has nothing to do with ours


@dataclass(frozen=True)
class Result:
    seq: int
    sent_at: float
    arrived_at: float | None
    size: int


@dataclass
class Link:
    capacity_bps: float = 1e9
    delay_s: float = 0.05
    loss: float = 0.0
    queue_bytes: int = 60_000


@dataclass
class Sim:
    estimator: SendSideEstimator
    link: Link
    seed: int = 1
    source_max_bps: float = 3_000_000  # the sender never sends more than this (the lesson's top layer and audio)
    rate_of: Callable[[float], float] | None = None  # what to send for an estimate (default: the estimate)
    t: float = 0.0
    trace: list[tuple[float, int]] = field(default_factory=list)  # (time, estimate) after each feedback
    # also sees every feedback's results after the estimator (a prober under test)
    on_feedback: Callable[[list[Result], float], None] | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._seq = 0
        self._queue_free_at = 0.0  # when the bottleneck has sent everything queued so far
        self._in_flight: list[Result] = []  # sent, not yet reported (arrival computed at send)
        self._pending_feedback: list[tuple[float, list[Result]]] = []  # (reaches the sender at, results)
        self._next_frame = 0.0
        self._next_audio = 0.0
        self._next_feedback = FEEDBACK_EVERY_S

    def _send(self, size: int) -> None:
        link, now = self.link, self.t
        self._seq += 1
        arrived: float | None = None
        if self.rng.random() >= link.loss:
            start = max(now, self._queue_free_at)
            backlog_bytes = (start - now) * link.capacity_bps / 8
            if backlog_bytes + size <= link.queue_bytes:
                self._queue_free_at = start + size * 8 / link.capacity_bps
                arrived = self._queue_free_at + link.delay_s + RECEIVER_CLOCK_OFFSET_S
        self._in_flight.append(Result(self._seq, now, arrived, size))

    def run(self, seconds: float, step: float = 0.001) -> None:
        end = self.t + seconds
        while self.t < end:
            now = self.t
            if now >= self._next_frame:
                rate = self.estimator.estimate_bps if self.rate_of is None else self.rate_of(
                    self.estimator.estimate_bps)
                frame = int(min(rate, self.source_max_bps) / 8 / FPS)
                while frame > 0:
                    self._send(min(MTU, frame))
                    frame -= MTU
                self._next_frame += 1 / FPS
            if now >= self._next_audio:
                self._send(AUDIO_BYTES)
                self._next_audio += 1 / AUDIO_PPS
            if now >= self._next_feedback:
                # the receiver reports what arrived by now, and as lost what a later arrival overtook
                local = now + RECEIVER_CLOCK_OFFSET_S
                arrived = [r for r in self._in_flight if r.arrived_at is not None and r.arrived_at <= local]
                if arrived:
                    newest = max(r.seq for r in arrived)
                    report = [r for r in self._in_flight if r.seq <= newest
                              and (r.arrived_at is None or r.arrived_at <= local)]
                    done = {r.seq for r in report}
                    self._in_flight = [r for r in self._in_flight if r.seq not in done]
                    self._pending_feedback.append((now + self.link.delay_s, report))
                self._next_feedback += FEEDBACK_EVERY_S
            while self._pending_feedback and self._pending_feedback[0][0] <= now:
                _, report = self._pending_feedback.pop(0)
                self.estimator.on_feedback(report, now, rtt_s=2 * self.link.delay_s)
                if self.on_feedback is not None:
                    self.on_feedback(report, now)
                self.trace.append((now, self.estimator.estimate_bps))
            self.t = round(now + step, 6)

    def estimates_between(self, start: float, end: float) -> list[int]:
        return [e for t, e in self.trace if start <= t <= end]

"""Prometheus metrics (/metrics): what the server does, read from its own state when scraped.

Most figures are counters the SFU, the recorder and the library already keep on their objects (a producer's
packets in, a consumer's packets out and retransmissions, the datagram guard's drops, the recorder's bytes
written). `ServerCollector` reads them at scrape time, so forwarding pays nothing for metrics. Objects come and go
(a classroom leaves, a lesson ends) while a Prometheus counter may never go down: `Monotonic` keeps each object's
last counts and, once the object is gone, adds them to a retired total. What no state holds (a websocket error
sent, a token refused, the event loop's lag) is counted where it happens by the counters below; the layers below
signalling never import this module. No label ever carries a lesson or a participant id.
"""

from __future__ import annotations

import asyncio
import bisect
import operator
import re
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from recorder.record.webm import WRITTEN
from sfu.adapt.ladder import LEVEL_NAMES
from sfu.adapt.overload import MAX_LEVEL
from sfu.adapt.overload import NODE as OVERLOAD
from sfu.seams import GUARD

# -- counted where they happen (signalling) ----------------------------------------------------------------------

disable_created_metrics()  # no `_created` series beside every counter: nothing here reads them

WEBSOCKET_ERRORS = Counter("ketang_websocket_errors", "Error replies sent on signalling websockets, by code",
                           ["code"], registry=None)
TOKEN_REFUSALS = Counter("ketang_token_refusals", "Joins refused because of the token or what it may do, by reason",
                         ["reason"], registry=None)
JOINS = Counter("ketang_joins", "Participants that joined a lesson on this process, by role", ["role"],
                registry=None)
LOOP_LAG = Histogram("ketang_event_loop_lag_seconds",
                     "How late the event loop ran a task due now (sampled every LOOP_LAG_EVERY_S)",
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
                     registry=None)
EVENT_METRICS = (WEBSOCKET_ERRORS, TOKEN_REFUSALS, JOINS, LOOP_LAG)
# the error codes of docs/protocol.md (*Errors*) and the refusal reasons of docs/metrics.md: each label is exposed at 0
# from the start, so the first error of a code is a step from 0 that `increase`/`rate` see (a series that first
# appears at 1 shows no increase, and the dashboard's panel would stay empty)
ERROR_CODES = (
    "too_large", "bad_json", "bad_message", "unknown_type", "rate_limited", "join_timeout", "not_joined",
    "already_joined", "token_invalid", "token_expired", "token_wrong_lesson", "forbidden", "lesson_ended",
    "lesson_locked", "removed", "lesson_elsewhere", "not_found", "stage_full", "chat_off", "bad_sdp",
    "unsupported_codec", "nothing_to_publish", "unexpected_answer", "too_many_tracks", "draining", "overloaded",
    "unavailable", "probe_running", "probe_busy", "probe_timeout", "no_probe", "unexpected_report", "internal",
    "other")
REFUSAL_REASONS = ("token_invalid", "token_expired", "token_wrong_lesson", "forbidden_role", "removed",
                   "lesson_locked", "overloaded")

_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")  # an error code fit to be a label (ours are; anything else: "other")
LOOP_LAG_EVERY_S = 0.25
ROLES = ("teacher", "classroom", "observer")
SIMULCAST_LAYERS = ("0", "1", "2", "paused")  # the teacher's camera goes out as three layers (docs/simulcast.md)
KINDS = (("audio",), ("video",))
KIND_SOURCE = tuple((kind, role) for kind in ("audio", "video") for role in ("teacher", "classroom"))
# classrooms' downlink estimates (REMB), in bit/s: the buckets of the gauge histogram
REMB_BUCKETS = (150e3, 300e3, 500e3, 800e3, 1.2e6, 2e6, 3e6, 5e6, 10e6)
REMB_QUANTILES = (0.1, 0.5, 0.9)
REMB_FRESH_S = 10.0  # an estimate older than this says nothing about the link now


def _start_at_zero() -> None:
    for code in ERROR_CODES:
        WEBSOCKET_ERRORS.labels(code)
    for reason in REFUSAL_REASONS:
        TOKEN_REFUSALS.labels(reason)
    for role in ROLES:
        JOINS.labels(role)


def _code(code: Any) -> str:
    return code if isinstance(code, str) and _CODE.fullmatch(code) else "other"


_start_at_zero()


def count_error(message: dict[str, Any]) -> None:
    """A message about to go to a client: counted when it is an error reply."""
    if message.get("type") == "error":
        WEBSOCKET_ERRORS.labels(_code(message.get("code"))).inc()


def count_refusal(reason: str) -> None:
    TOKEN_REFUSALS.labels(_code(reason)).inc()


def count_join(role: str | None) -> None:
    JOINS.labels(role if role in ROLES else "other").inc()


async def measure_loop_lag(every_s: float = LOOP_LAG_EVERY_S, overload: Any = OVERLOAD) -> None:
    """Sleep `every_s` again and again; how much later than asked each wake-up comes is the loop's lag (a
    busy loop makes every websocket reply and every RTCP answer that much later). Each sample also goes to the
    node's overload controller (sfu/adapt/overload.py), with how late the SFU took its datagrams meanwhile."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every_s
        await asyncio.sleep(every_s)
        lag = max(0.0, loop.time() - due)
        LOOP_LAG.observe(lag)
        overload.observe(lag)


# -- counters read from objects that come and go -------------------------------------------------------------------

Key = tuple[str, tuple[str, ...]]  # (metric, label values)
# what one object counts: (group, values); a group names the metrics and labels of its values (GROUPS)
Counts = tuple[tuple[str, ...], tuple[float, ...]]
Group = tuple[str, ...]
GROUPS: dict[str, tuple[str, ...]] = {  # group kind -> its metrics, in the order of the values
    "producer": ("packets_in", "bytes_in", "duplicates", "keyframes_forwarded", "keyframes_suppressed"),
    "consumer": ("retransmits", "nack_unanswered", "nacks", "retransmit_capped", "keyframes_asked"),
    "slot": ("packets_out", "bytes_out"),
}


class Monotonic:
    """Sums counters kept on short-lived objects into totals that never go down.

    `observe(objects)` takes each live object's counts, (group, values); an object seen before and not now is
    retired: its last counts stay in the totals. Counts of None: the object has nothing to say now (a slot between
    two consumers), its last counts stand. `retire(obj, counts)` retires one at once with its final counts (a
    classroom that leaves, a lesson that ends); it is not counted again while it lingers. Objects are told apart
    by a weak reference; counts that went down start again (a slot's stream restarted, or a reused id)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Callable[[], object] | None, Counts]] = {}
        self._done: dict[int, Callable[[], object] | None] = {}  # retired, perhaps still live for a moment
        self._retired: dict[Group, list[float]] = {}

    @staticmethod
    def _ref(obj: object) -> Callable[[], object] | None:
        try:
            return weakref.ref(obj)
        except TypeError:
            return None

    @staticmethod
    def _add(totals: dict[Group, list[float]], counts: Counts) -> None:
        group, values = counts
        sums = totals.get(group)
        if sums is None:
            totals[group] = list(values)
        else:
            for i, value in enumerate(values):
                sums[i] += value

    def retire(self, obj: object, counts: Counts | None) -> None:
        before = self._seen.pop(id(obj), None)
        if counts is None:
            counts = before[1] if before is not None else None
        self._done[id(obj)] = self._ref(obj)
        if counts is not None:
            self._add(self._retired, counts)

    def observe(self, live: Iterable[tuple[object, Counts | None]]) -> dict[Key, float]:
        seen: dict[int, tuple[Callable[[], object] | None, Counts]] = {}
        done: dict[int, Callable[[], object] | None] = {}
        previous, retired = self._seen, self._retired
        for obj, counts in live:
            key = id(obj)
            if key in self._done:
                ref = self._done[key]
                if ref is None or ref() is obj:
                    done[key] = ref  # retired already: its counts are in the totals
                    continue
            before = previous.pop(key, None)
            if before is None:
                if counts is not None:
                    seen[key] = (self._ref(obj), counts)
                continue
            ref, old = before
            if ref is not None and ref() is not obj:
                self._add(retired, old)  # another object under a reused id: the old one's counts stay
                ref = self._ref(obj)
            elif counts is None:
                seen[key] = before
                continue
            elif old[0] != counts[0] or any(map(operator.lt, counts[1], old[1])):
                self._add(retired, old)  # started again from 0: what it had counted stays
            if counts is not None:
                seen[key] = (ref, counts)
        for _, gone in previous.values():
            self._add(retired, gone)
        self._seen, self._done = seen, done
        totals = {group: list(sums) for group, sums in retired.items()}
        for _, counts in seen.values():
            self._add(totals, counts)
        return {(metric, group[1:]): value for group, sums in totals.items()
                for metric, value in zip(GROUPS[group[0]], sums)}


def _producer_counts(producer: Any) -> Counts:
    keyframes = producer.keyframes
    return (("producer", producer.kind, producer.owner_role),
            (producer.packets_in, producer.bytes_in, producer.duplicates, keyframes.requested, keyframes.suppressed))


def _consumer_counts(consumer: Any) -> Counts:
    return (("consumer", consumer.kind),
            (consumer.retransmits, consumer.nack_unanswered, getattr(consumer, "nacks_received", 0),
             getattr(consumer, "retransmit_capped", 0), consumer.keyframe_requests))


def _slot_counts(slot: Any) -> Counts | None:
    """Packets and bytes out, per subscriber slot: a consumer that continues a slot's stream (the teacher
    reconnected) continues its counts too, so they are the slot's, not the consumer's. None between consumers."""
    consumer = slot.consumer
    if consumer is None:
        return None
    return ("slot", consumer.kind), (consumer.packets_out, consumer.octets_out)


def _producers(router: Any) -> Iterator[Any]:
    for producer in list(router.producers.values()):
        yield from (producer.layers or [producer])


def _subscriber_objects(sub: Any) -> Iterator[tuple[object, Counts | None]]:
    for slot in list(sub.slots):
        yield slot, _slot_counts(slot)
        if slot.consumer is not None:
            yield slot.consumer, _consumer_counts(slot.consumer)


def router_objects(router: Any) -> Iterator[tuple[object, Counts | None]]:
    """Every counting object of one lesson's media graph, with its counts now."""
    for producer in _producers(router):
        yield producer, _producer_counts(producer)
    for sub in list(router.subscribers.values()):
        yield from _subscriber_objects(sub)


def participant_objects(router: Any, participant: str) -> Iterator[tuple[object, Counts | None]]:
    """The counting objects of one participant: what it publishes, and its subscriber."""
    for producer in _producers(router):
        if producer.owner == participant:
            yield producer, _producer_counts(producer)
    sub = router.subscribers.get(participant)
    if sub is not None:
        yield from _subscriber_objects(sub)


def rung_and_layer(sub: Any) -> tuple[str, str | None]:
    """A classroom's subscriber: its audio-first ladder's rung (video, courseware, audio; trial), and the simulcast
    layer of the teacher's camera it is forwarded ("0" the smallest, "paused"), None without a simulcast camera."""
    rung = "audio" if not sub.video else (sub.ladder.state if sub.ladder is not None else "video")
    layer = None
    for consumer in sub.consumers():
        if consumer.kind == "video" and getattr(consumer, "layers", None) \
                and consumer.producer.owner_role == "teacher" and consumer.producer.source == "camera":
            layer = "paused" if consumer.paused or consumer.current is None else str(consumer.current)
    return rung, layer


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class ServerCollector(Collector):
    """Read at scrape time: lessons, participants, classrooms' rungs and layers, the SFU's counters, the
    recorder's and the library's. `hub()` gives the Hub (None before it has started); `exports()` the library's
    export jobs ({id: job with .state})."""

    def __init__(self, hub: Callable[[], Any], exports: Callable[[], dict[str, Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._hub = hub
        self._exports = exports
        self._clock = clock
        self.sfu = Monotonic()
        _COLLECTORS.add(self)

    def _ours(self, router: Any) -> bool:
        hub = self._hub()  # (tests run several servers in one process: another's router is not counted here)
        return hub is not None and any(lesson.router is router for lesson in list(hub.lessons.values()))

    def router_leaving(self, router: Any) -> None:
        """A router of this collector's hub is leaving it: its counts are final now, not at the next scrape."""
        if self._ours(router):
            for obj, counts in list(router_objects(router)):
                self.sfu.retire(obj, counts)

    def participant_leaving(self, router: Any, participant: str) -> None:
        """A participant is leaving a router of this hub: its subscriber's and its tracks' counts, final now."""
        if self._ours(router):
            for obj, counts in list(participant_objects(router, participant)):
                self.sfu.retire(obj, counts)

    def describe(self) -> list[Metric]:
        return []  # (collected only when scraped: no sample at registration)

    def collect(self) -> Iterator[Metric]:
        hub = self._hub()
        lessons = list(hub.lessons.values()) if hub is not None else []
        yield from self._lessons(lessons)
        routers = [lesson.router for lesson in lessons if lesson.router is not None]
        totals = self.sfu.observe(obj for router in routers for obj in router_objects(router))
        yield from self._sfu(totals)
        yield from self._classrooms(routers)
        yield from self._recorder(lessons)
        yield from self._library()

    def _lessons(self, lessons: list[Any]) -> Iterator[Metric]:
        live = GaugeMetricFamily("ketang_lessons_live", "Lessons with at least one participant on this process")
        live.add_metric([], sum(1 for lesson in lessons if lesson.connections))
        yield live
        hub = self._hub()
        draining = GaugeMetricFamily("ketang_draining", "1 while this process drains (takes no new lessons, moves "
                                     "its live ones at the drain timeout, then stops), else 0")
        draining.add_metric([], 1 if hub is not None and hub.draining else 0)
        yield draining
        yield from self._overload()
        people = GaugeMetricFamily("ketang_participants", "Participants connected to this process, by role",
                                   labels=["role"])
        counts = dict.fromkeys(ROLES, 0)
        for lesson in lessons:
            for conn in list(lesson.connections.values()):
                role = conn.role if conn.role in counts else "other"
                counts[role] = counts.get(role, 0) + 1
        for role, n in counts.items():
            people.add_metric([role], n)
        yield people

    def _overload(self) -> Iterator[Metric]:
        node = OVERLOAD
        overloaded = GaugeMetricFamily("ketang_overloaded", "1 while this process is short of CPU: it sheds the "
                                       "classrooms' video, drops late media and takes no new lessons (nor new "
                                       "classrooms from shed level 5), else 0")
        overloaded.add_metric([], 1 if node.overloaded else 0)
        yield overloaded
        level = GaugeMetricFamily("ketang_overload_shed_level", "How much video is shed (0: none; 1-4 simulcast "
                                  f"layers to q, 5-8 cameras off, 9-{MAX_LEVEL} audio only, a quarter of the "
                                  "classrooms more at each level)")
        level.add_metric([], node.level)
        yield level
        lateness = GaugeMetricFamily("ketang_overload_lateness_seconds", "How late work ran at the latest sample: "
                                     "the event loop's lag or the oldest teacher datagram the SFU took, the worse")
        lateness.add_metric([], node.lateness)
        yield lateness
        late = CounterMetricFamily("ketang_sfu_late_dropped_packets", "Media packets dropped because the SFU took "
                                   "them too late (video after 100 ms, audio after 400 ms), by kind",
                                   labels=["kind"])
        for kind in ("audio", "video"):
            late.add_metric([kind], node.late.dropped.get(kind, 0))
        yield late

    def _classrooms(self, routers: list[Any]) -> Iterator[Metric]:
        rungs = GaugeMetricFamily("ketang_classrooms_by_rung", "Classrooms receiving media, by the audio-first "
                                  "ladder's rung (video, courseware, audio; trial: trying the rung above)",
                                  labels=["rung"])
        layers = GaugeMetricFamily("ketang_classrooms_by_simulcast_layer", "Classrooms receiving a simulcast "
                                   "camera, by the layer forwarded (0: the smallest; paused: no video now)",
                                   labels=["layer"])
        by_rung = dict.fromkeys((*LEVEL_NAMES, "trial"), 0)
        by_layer = dict.fromkeys(SIMULCAST_LAYERS, 0)  # (every series from the first scrape on)
        estimates: list[float] = []
        now = self._clock()
        for router in routers:
            for pid, sub in list(router.subscribers.items()):
                if router.roles.get(pid) != "classroom":
                    continue
                rung, layer = rung_and_layer(sub)
                by_rung[rung] = by_rung.get(rung, 0) + 1
                if layer is not None:
                    by_layer[layer] = by_layer.get(layer, 0) + 1
                remb = None
                for consumer in sub.consumers():
                    if consumer.kind != "video":
                        continue
                    if consumer.remb_bps is not None and consumer.remb_at is not None \
                            and now - consumer.remb_at <= REMB_FRESH_S:
                        remb = max(remb or 0, consumer.remb_bps)
                link = sub.link(now)
                if link.send_side and link.estimate_bps is not None:
                    remb = link.estimate_bps  # the server's own estimate from transport-cc feedback
                if remb is not None:
                    estimates.append(float(remb))
        for rung, n in by_rung.items():
            rungs.add_metric([rung], n)
        for layer, n in by_layer.items():
            layers.add_metric([layer], n)
        yield rungs
        yield layers
        yield from self._estimates(sorted(estimates))

    def _estimates(self, values: list[float]) -> Iterator[Metric]:
        hist = GaugeHistogramMetricFamily(
            "ketang_classroom_downlink_estimate_bits_per_second",
            "Classrooms' latest downlink estimates (the send-side estimate from transport-cc feedback, else REMB fresh "
            "within REMB_FRESH_S), as a distribution now")
        buckets = [(f"{bound:.0f}", float(bisect.bisect_right(values, bound))) for bound in REMB_BUCKETS]
        buckets.append(("+Inf", float(len(values))))
        hist.add_metric([], buckets, gsum_value=sum(values))
        yield hist
        quant = GaugeMetricFamily("ketang_classroom_downlink_estimate_quantile_bits_per_second",
                                  "Quantiles of the classrooms' latest downlink estimates (NaN: no estimate)",
                                  labels=["quantile"])
        for q in REMB_QUANTILES:
            quant.add_metric([f"{q:g}"], _quantile(values, q))
        yield quant

    def _sfu(self, totals: dict[Key, float]) -> Iterator[Metric]:
        def family(name: str, doc: str, key: str, labels: list[str]) -> CounterMetricFamily:
            metric = CounterMetricFamily(name, doc, labels=labels)
            # every series from the first scrape on (at 0), so that rate() has a start
            series = {values: 0.0 for values in (KIND_SOURCE if len(labels) == 2 else KINDS)}
            for (k, values), value in totals.items():
                if k == key:  # (summed over the labels this family does not have)
                    series[values[:len(labels)]] = series.get(values[:len(labels)], 0.0) + value
            for values, value in sorted(series.items()):
                metric.add_metric(list(values), value)
            return metric

        src = ["kind", "source"]
        yield family("ketang_sfu_received_packets", "RTP media packets received from publishers (teacher or "
                     "classroom), duplicates and padding excluded", "packets_in", src)
        yield family("ketang_sfu_received_bytes", "RTP payload bytes received from publishers", "bytes_in", src)
        yield family("ketang_sfu_received_duplicate_packets", "Packets received again (retransmissions of what "
                     "had arrived, probes)", "duplicates", src)
        yield family("ketang_sfu_sent_packets", "RTP packets forwarded to subscribers (retransmissions excluded)",
                     "packets_out", ["kind"])
        yield family("ketang_sfu_sent_bytes", "RTP payload bytes forwarded to subscribers", "bytes_out", ["kind"])
        yield family("ketang_sfu_nacks_received", "Sequence numbers subscribers asked again for (NACK)", "nacks",
                     ["kind"])
        yield family("ketang_sfu_retransmissions", "Retransmissions sent (as RTX when negotiated) answering NACKs",
                     "retransmits", ["kind"])
        yield family("ketang_sfu_nacks_unanswered", "NACKed packets no longer in the cache, or never sent",
                     "nack_unanswered", ["kind"])
        yield family("ketang_sfu_retransmission_cap_hits", "NACKed packets not resent because the subscriber's "
                     "retransmission budget (count or bytes a second) was spent", "retransmit_capped", ["kind"])
        yield family("ketang_sfu_keyframe_requests_received", "PLI/FIR received from subscribers",
                     "keyframes_asked", ["kind"])
        yield family("ketang_sfu_keyframe_requests_forwarded", "Keyframe requests (PLI) sent on to the publisher "
                     "(after the throttle)", "keyframes_forwarded", ["kind"])
        yield family("ketang_sfu_keyframe_requests_suppressed", "Keyframe requests held back by the throttle",
                     "keyframes_suppressed", ["kind"])
        guard = CounterMetricFamily("ketang_sfu_datagrams_dropped", "Datagrams the guard in front of DTLS/SRTP "
                                    "dropped (unproven: from an address without ICE credentials)", labels=["reason"])
        guard.add_metric(["unproven"], GUARD.dropped_unproven)
        guard.add_metric(["malformed"], GUARD.dropped_malformed)
        yield guard

    def _recorder(self, lessons: list[Any]) -> Iterator[Metric]:
        active = GaugeMetricFamily("ketang_recordings_active", "Lessons being recorded on this process")
        active.add_metric([], sum(1 for lesson in lessons if getattr(lesson, "recorder", None) is not None
                                  and not lesson.recorder.closed and lesson.recorder.failed is None))
        yield active
        written = CounterMetricFamily("ketang_recorder_written_bytes", "Media bytes written to recordings")
        written.add_metric([], WRITTEN.bytes)
        yield written
        errors = CounterMetricFamily("ketang_recorder_write_errors", "Recording files stopped by a write error "
                                     "(a full disk)")
        errors.add_metric([], WRITTEN.errors)
        yield errors

    def _library(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("ketang_library_export_jobs", "MP4 export jobs known to this process, by state",
                                 labels=["state"])
        by_state = dict.fromkeys(("queued", "running", "done", "failed", "cancelled"), 0)
        for job in list((self._exports() if self._exports else {}).values()):
            by_state[job.state] = by_state.get(job.state, 0) + 1
        for state, n in by_state.items():
            jobs.add_metric([state], n)
        yield jobs


def make_registry(collector: ServerCollector) -> CollectorRegistry:
    """One registry per app (tests run several servers in one process): the server's collector, the event
    counters, and prometheus-client's process, platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=False)
    for metric in (*EVENT_METRICS, collector, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(metric)
    return registry


_COLLECTORS: weakref.WeakSet[ServerCollector] = weakref.WeakSet()


def router_leaving(router: Any) -> None:
    """A lesson's router is about to leave its hub (the lesson ended, or its last participant left): the
    collector of that hub takes its final counts now."""
    if router is None:
        return
    for collector in list(_COLLECTORS):
        collector.router_leaving(router)



def participant_leaving(router: Any, participant: str) -> None:
    """A participant is about to be removed from a router (it left): its counts are taken now."""
    for collector in list(_COLLECTORS):
        collector.participant_leaving(router, participant)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus (and Grafana Agent) version reads


def generate_latest(registry: CollectorRegistry) -> bytes:
    """The exposition text of a registry (prometheus-client's, named here so the app imports one module)."""
    return _generate_latest(registry)

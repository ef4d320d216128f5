"""/metrics' collector on a real Hub and Router with real Producers (classrooms' subscribers stand in: a real one
needs a negotiated peer connection, which tests/scenario/test_metrics.py has), the counters that never go down,
label hygiene, the event-loop lag sampler, and the Grafana dashboard against the metrics that exist."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sfu.consumer.base import NACK_REPEAT_MIN_S, NACK_RETRANSMIT_PER_S
from sfu.producer import Producer
from signaling import metrics
from signaling.config import Config
from signaling.hub import Hub
from signaling.state import MemoryRoomStore
from signaling.tokens import Claims
from tests.unit.sfu.test_forwarding import clip, graph, packetize, parse  # noqa: F401 - (fixtures)

DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana-ketang.json"
DOCS = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


class _Conn:
    """What the hub reads of a websocket connection."""

    def __init__(self, lesson: str, pid: str, role: str) -> None:
        now = int(time.time())
        self.claims = Claims(role=role, lesson=lesson, name=pid, sub=pid, iat=now, exp=now + 600)
        self.lesson_id, self.participant_id, self.role = lesson, pid, role
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def send_text(self, text: str) -> None:
        self.sent.append({"text": text})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def _producer(track: str, kind: str, owner: str = "teacher") -> Producer:
    codec, rate = ("vp8", 90000) if kind == "video" else ("opus", 48000)
    return Producer(track, kind, codec, rate, lambda ssrc: None, owner=owner)


def _feed(producer: Producer, packets: int, size: int = 100) -> None:
    start = producer.packets_in + producer.duplicates
    for i in range(packets):
        producer.receive((start + i) & 0xFFFF, i * 3000, 1, b"\x10" + bytes(size - 1), 0)


def _consumer(kind: str, producer: Producer, **attrs: Any) -> SimpleNamespace:
    """A subscriber's consumer as the collector reads it (the counters BaseConsumer keeps)."""
    fields = dict(kind=kind, producer=producer, packets_out=0, octets_out=0, retransmits=0, nack_unanswered=0,
                  nacks_received=0, retransmit_capped=0, keyframe_requests=0, remb_bps=None, remb_at=None,
                  paused=False)
    fields.update(attrs)
    return SimpleNamespace(**fields)


def _subscriber(*consumers: SimpleNamespace, video: bool = True, rung: str | None = "video") -> SimpleNamespace:
    slots = [SimpleNamespace(consumer=c) for c in consumers]
    ladder = SimpleNamespace(state=rung) if rung is not None else None
    no_twcc = SimpleNamespace(send_side=False, estimate_bps=None)  # a classroom without transport-cc: REMB counts
    return SimpleNamespace(slots=slots, video=video, ladder=ladder, consumers=lambda: [s.consumer for s in slots],
                           link=lambda now: no_twcc)


def _scrape(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbls), v in samples.items() if n == name and all(dict(lbls).get(k) == x
                                                                           for k, x in labels.items()))


@pytest.fixture
async def hub(tmp_path: Path) -> Any:
    hub = Hub(Config(data_dir=tmp_path, record=False), MemoryRoomStore())
    await hub.start()
    yield hub
    await hub.close()


async def _lesson(hub: Hub, lesson_id: str, classrooms: int) -> Any:
    await hub.join(_Conn(lesson_id, "t", "teacher"))  # type: ignore[arg-type]
    for i in range(classrooms):
        await hub.join(_Conn(lesson_id, f"c{i}", "classroom"))  # type: ignore[arg-type]
    return hub.lesson(lesson_id).media()


# -- counters that never go down ----------------------------------------------------------------------------------

class _Counting:
    """An object a weak reference can be taken of (as producers, consumers and slots are)."""


def _in(n: float) -> metrics.Counts:
    """A teacher video producer's counts with `n` packets in."""
    return ("producer", "video", "teacher"), (n, 0, 0, 0, 0)


PACKETS_IN = ("packets_in", ("video", "teacher"))


def test_totals_keep_the_counts_of_objects_that_are_gone() -> None:
    mono = metrics.Monotonic()
    a, b, c = _Counting(), _Counting(), _Counting()
    assert mono.observe([(a, _in(10)), (b, _in(5))])[PACKETS_IN] == 15
    assert mono.observe([(a, _in(12))])[PACKETS_IN] == 17  # b left: its 5 stay
    assert mono.observe([])[PACKETS_IN] == 17
    mono.retire(c, _in(3))  # retired at once with its final counts
    assert mono.observe([])[PACKETS_IN] == 20


def test_counts_that_went_down_start_again() -> None:
    """(An id reused by an object no weak reference can be taken of; a slot whose stream restarted at 0.)"""
    mono = metrics.Monotonic()
    obj = object()
    assert mono.observe([(obj, _in(100))])[PACKETS_IN] == 100
    assert mono.observe([(obj, _in(4))])[PACKETS_IN] == 104
    assert mono.observe([(obj, _in(10))])[PACKETS_IN] == 110


def test_a_retired_object_that_lingers_is_not_counted_twice() -> None:
    mono = metrics.Monotonic()
    leaving, staying = _Counting(), _Counting()
    assert mono.observe([(leaving, _in(4)), (staying, _in(1))])[PACKETS_IN] == 5
    mono.retire(leaving, _in(6))  # it left: its final counts, now
    assert mono.observe([(leaving, _in(6)), (staying, _in(2))])[PACKETS_IN] == 8  # (still listed while it closes)
    assert mono.observe([(staying, _in(3))])[PACKETS_IN] == 9


def test_a_slot_between_two_consumers_keeps_its_counts() -> None:
    """A slot's next consumer continues its stream's counts (a resume point): neither lost nor counted twice."""
    mono = metrics.Monotonic()
    slot = _Counting()
    out = ("slot", "video"), (50, 5000)
    assert mono.observe([(slot, out)])[("packets_out", ("video",))] == 50
    assert mono.observe([(slot, None)])[("packets_out", ("video",))] == 50  # no consumer for a moment
    assert mono.observe([(slot, (("slot", "video"), (55, 5500)))])[("packets_out", ("video",))] == 55


# -- what a real consumer counts of NACKs (the forwarding tests' graph: real Producer, Consumer, sender) ----------

async def test_a_real_consumer_counts_the_nacks_it_received_and_the_cap_hits(clip, graph) -> None:  # noqa: F811
    consumer, wire = graph.consumer(rtx=97)
    graph.feed(packetize(clip[:80]))
    seqs = [parse(d).sequence_number for d in wire]
    asked = sent = 0
    for _ in range(10):  # storms a little apart within a second, each asking for every packet again
        sent += consumer.on_nack(seqs)
        asked += len(seqs)
        graph.clock.advance(NACK_REPEAT_MIN_S * 1.01)
    assert consumer.nacks_received == asked
    assert asked > NACK_RETRANSMIT_PER_S
    assert sent == consumer.retransmits == NACK_RETRANSMIT_PER_S
    assert consumer.retransmit_capped == asked - sent > 0
    group, values = metrics._consumer_counts(consumer)
    counted = dict(zip(metrics.GROUPS[group[0]], values))
    assert (counted["nacks"], counted["retransmits"], counted["retransmit_capped"]) == (asked, sent, asked - sent)


# -- the collector on a real hub and router ------------------------------------------------------------------------

async def test_packets_and_participants_of_a_live_lesson(hub: Hub) -> None:
    registry = metrics.make_registry(metrics.ServerCollector(lambda: hub))
    router = await _lesson(hub, "lesson-a", classrooms=3)
    cam, mic = _producer("cam", "video"), _producer("mic", "audio")
    router.producers.update({"cam": cam, "mic": mic})
    _feed(cam, 50, size=1000)
    _feed(mic, 20, size=80)
    first = _scrape(registry)
    assert _value(first, "ketang_lessons_live") == 1
    assert _value(first, "ketang_participants", role="teacher") == 1
    assert _value(first, "ketang_participants", role="classroom") == 3
    assert _value(first, "ketang_sfu_received_packets_total", kind="video", source="teacher") == 50
    assert _value(first, "ketang_sfu_received_bytes_total", kind="video", source="teacher") == 50_000
    assert _value(first, "ketang_sfu_received_packets_total", kind="audio", source="teacher") == 20
    _feed(cam, 10, size=1000)
    assert cam.keyframes.should_request(0.0)  # a PLI sent on to the teacher
    second = _scrape(registry)
    assert _value(second, "ketang_sfu_received_packets_total", kind="video", source="teacher") == 60
    assert _value(second, "ketang_sfu_keyframe_requests_forwarded_total", kind="video") == 1
    # the teacher republishes: the old producer is gone, a new one starts at 0; the total does not go down
    router.producers["cam"] = _producer("cam", "video")
    _feed(router.producers["cam"], 5, size=1000)
    third = _scrape(registry)
    assert _value(third, "ketang_sfu_received_packets_total", kind="video", source="teacher") == 65


async def test_a_lesson_that_ends_keeps_its_counts_including_those_after_the_last_scrape(hub: Hub) -> None:
    registry = metrics.make_registry(metrics.ServerCollector(lambda: hub))
    router = await _lesson(hub, "lesson-b", classrooms=1)
    cam = router.producers["cam"] = _producer("cam", "video")
    _feed(cam, 30)
    assert _value(_scrape(registry), "ketang_sfu_received_packets_total", kind="video") == 30
    _feed(cam, 12)  # not scraped before the lesson ends
    await hub.end_lesson("lesson-b")
    after = _scrape(registry)
    assert _value(after, "ketang_sfu_received_packets_total", kind="video") == 42
    assert hub.lessons["lesson-b"].router is None


async def test_hub_leave_takes_a_classroom_s_final_counts(hub: Hub) -> None:
    registry = metrics.make_registry(metrics.ServerCollector(lambda: hub))
    router = await _lesson(hub, "lesson-f", classrooms=1)
    thumb = _producer("thumb", "video", owner="c0")
    thumb.owner_role = "classroom"
    router.producers["thumb"] = thumb
    _feed(thumb, 4)
    assert _value(_scrape(registry), "ketang_sfu_received_packets_total", source="classroom") == 4
    _feed(thumb, 3)  # after the last scrape
    conn = hub.lessons["lesson-f"].connections["c0"]
    await hub.leave(conn)  # type: ignore[arg-type]
    router.producers.pop("thumb", None)
    assert _value(_scrape(registry), "ketang_sfu_received_packets_total", source="classroom") == 7


async def test_a_router_of_another_hub_is_not_counted_here(hub: Hub, tmp_path: Path) -> None:
    other = Hub(Config(data_dir=tmp_path / "other", record=False), MemoryRoomStore())
    await other.start()
    try:
        registry = metrics.make_registry(metrics.ServerCollector(lambda: hub))
        metrics.make_registry(metrics.ServerCollector(lambda: other))
        router = await _lesson(other, "lesson-c", classrooms=1)
        _feed(router.producers.setdefault("cam", _producer("cam", "video")), 7)
        await other.end_lesson("lesson-c")
        assert _value(_scrape(registry), "ketang_sfu_received_packets_total") == 0
    finally:
        await other.close()


async def test_classrooms_by_rung_and_layer_and_their_downlink_estimates(hub: Hub) -> None:
    now = time.monotonic()
    registry = metrics.make_registry(metrics.ServerCollector(lambda: hub))
    router = await _lesson(hub, "lesson-d", classrooms=5)
    cam = router.producers["cam"] = _producer("cam", "video")
    mic = router.producers["mic"] = _producer("mic", "audio")

    def simulcast(layer: int | None, remb: int | None, at: float = now, paused: bool = False) -> SimpleNamespace:
        return _consumer("video", cam, layers=[cam, cam, cam], current=layer, remb_bps=remb, remb_at=at,
                         paused=paused, packets_out=10, octets_out=1000, retransmits=2, nacks_received=3,
                         retransmit_capped=1, keyframe_requests=1)

    router.subscribers.update({
        "c0": _subscriber(simulcast(2, 2_500_000), _consumer("audio", mic, packets_out=5, octets_out=50)),
        "c1": _subscriber(simulcast(0, 400_000)),
        "c2": _subscriber(simulcast(None, 200_000, paused=True), rung="courseware"),
        "c3": _subscriber(simulcast(0, 900_000, at=now - 60)),  # an old estimate: not the link now
        "c4": _subscriber(simulcast(None, None, paused=True), video=False),  # the school chose audio only
        "t": _subscriber(simulcast(2, 5_000_000)),  # the teacher's own wall: not a classroom
    })
    router.roles.update({f"c{i}": "classroom" for i in range(5)} | {"t": "teacher"})
    s = _scrape(registry)
    assert {r: _value(s, "ketang_classrooms_by_rung", rung=r) for r in ("video", "courseware", "audio", "trial")} \
        == {"video": 2 + 1, "courseware": 1, "audio": 1, "trial": 0}
    assert {k: _value(s, "ketang_classrooms_by_simulcast_layer", layer=k) for k in ("0", "1", "2", "paused")} \
        == {"0": 2, "1": 0, "2": 1, "paused": 2}
    name = "ketang_classroom_downlink_estimate_bits_per_second"
    assert _value(s, name + "_gcount") == 3  # c0, c1, c2 (fresh); c3 stale, c4 none, t not a classroom
    assert _value(s, name + "_bucket", le="300000") == 1
    assert _value(s, name + "_bucket", le="500000") == 2
    assert _value(s, name + "_bucket", le="+Inf") == 3
    assert _value(s, name + "_gsum") == 2_500_000 + 400_000 + 200_000
    assert _value(s, "ketang_classroom_downlink_estimate_quantile_bits_per_second", quantile="0.5") == 400_000
    # the consumers' counters, summed over every subscriber (the teacher's wall included)
    assert _value(s, "ketang_sfu_sent_packets_total", kind="video") == 60
    assert _value(s, "ketang_sfu_sent_packets_total", kind="audio") == 5
    assert _value(s, "ketang_sfu_nacks_received_total", kind="video") == 18
    assert _value(s, "ketang_sfu_retransmissions_total", kind="video") == 12
    assert _value(s, "ketang_sfu_retransmission_cap_hits_total", kind="video") == 6
    assert _value(s, "ketang_sfu_keyframe_requests_received_total", kind="video") == 6
    # no lesson id or participant id in any label
    ids = {"lesson-d", "t", *(f"c{i}" for i in range(5))}
    assert not {value for _, labels in s for _, value in labels} & ids
    router.subscribers.clear()  # (the stand-ins have nothing for the router to close)


def test_error_codes_and_refusal_reasons_are_bounded_labels() -> None:
    def count(code: str) -> float:
        return metrics.WEBSOCKET_ERRORS.labels(code)._value.get()

    before_other, before_bad = count("other"), count("bad_sdp")
    metrics.count_error({"type": "error", "code": "bad_sdp"})
    metrics.count_error({"type": "error", "code": "a participant id 第三小学"})  # never a label as it is
    metrics.count_error({"type": "error", "code": "x" * 200})
    metrics.count_error({"type": "answer", "sdp": ""})  # not an error
    assert count("bad_sdp") == before_bad + 1
    assert count("other") == before_other + 2


def test_every_error_code_and_refusal_reason_starts_at_zero() -> None:
    """A labelled counter whose series first appears at 1 shows no `increase` in Prometheus: the first refused token
    of a kind would never reach the dashboard (tests/scenario/test_prometheus.py). Every code of the protocol's
    error table and every refusal reason the docs list is exposed at 0 before it happens."""
    protocol = (DOCS.parent / "protocol.md").read_text(encoding="utf-8")
    table = protocol[protocol.index("| code | when |"):]
    table = table[:table.index("\n\n")]
    codes = {c for row in table.splitlines()[2:] for c in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    assert len(codes) > 25 and codes <= set(metrics.ERROR_CODES), codes - set(metrics.ERROR_CODES)
    reasons = set(re.findall(r"`([a-z_]+)`", next(line for line in DOCS.read_text(encoding="utf-8").splitlines()
                                                   if line.startswith("| `ketang_token_refusals_total`"))))
    assert reasons - {"ketang_token_refusals_total", "reason"} <= set(metrics.REFUSAL_REASONS)
    samples = _scrape(metrics.WEBSOCKET_ERRORS)
    assert {dict(labels)["code"] for (name, labels) in samples if name == "ketang_websocket_errors_total"} \
        >= set(metrics.ERROR_CODES)
    samples = _scrape(metrics.TOKEN_REFUSALS)
    assert {dict(labels)["reason"] for (name, labels) in samples if name == "ketang_token_refusals_total"} \
        >= set(metrics.REFUSAL_REASONS)


async def test_the_event_loop_lag_is_measured() -> None:
    before = metrics.LOOP_LAG._sum.get()
    task = asyncio.ensure_future(metrics.measure_loop_lag(every_s=0.01))
    await asyncio.sleep(0.02)
    time.sleep(0.2)  # the loop is blocked: the sampler wakes up that much late
    await asyncio.sleep(0.05)
    task.cancel()
    assert metrics.LOOP_LAG._sum.get() - before >= 0.15


async def test_process_collector_and_every_family_are_exposed(hub: Hub) -> None:
    samples = _scrape(metrics.make_registry(metrics.ServerCollector(lambda: hub)))
    names = {name for name, _ in samples}
    assert "process_resident_memory_bytes" in names or "process_cpu_seconds_total" in names
    assert "ketang_library_export_jobs" in names and "ketang_recorder_written_bytes_total" in names


# -- the dashboard and the docs name metrics that exist ------------------------------------------------------------

def _exposed_names(hub: Hub) -> set[str]:
    metrics.count_error({"type": "error", "code": "bad_sdp"})
    metrics.count_refusal("token_expired")
    metrics.count_join("classroom")
    metrics.LOOP_LAG.observe(0.001)
    samples = _scrape(metrics.make_registry(metrics.ServerCollector(lambda: hub)))
    return {name for name, _ in samples}


_METRIC = re.compile(r"\b((?:ketang|process)_[a-z0-9_]+)\b")


async def test_every_dashboard_expression_names_a_metric_that_exists(hub: Hub) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] and dashboard["schemaVersion"] >= 30 and dashboard["panels"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    exposed = _exposed_names(hub)
    for expr in exprs:
        named = _METRIC.findall(expr)
        assert named, expr
        for name in named:
            assert name in exposed, f"{name} (in {expr!r}) is not exposed"
    # every panel has a datasource variable and a title
    assert all(p.get("title") for p in dashboard["panels"])


async def test_the_docs_list_every_ketang_metric(hub: Hub) -> None:
    text = DOCS.read_text(encoding="utf-8")
    families = {re.sub(r"_(bucket|count|sum|gcount|gsum)$", "", n) for n in _exposed_names(hub)
                if n.startswith("ketang_")}
    missing = sorted(f for f in families if f not in text)
    assert not missing, missing

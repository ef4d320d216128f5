"""/metrics of a real server during a real lesson: aiortc teacher and classrooms, counters read between scrapes."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtest.wsclient import WsClient
from tests.support import (
    Classroom,
    Server,
    hang_up,
    join_lesson,
    publishing_teacher,
    token,
)

pytestmark = pytest.mark.slow


async def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(value for (n, lbls), value in samples.items()
               if n == name and all(dict(lbls).get(k) == v for k, v in labels.items()))


async def wait_for(predicate, server: Server, timeout_s: float = 20.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await scrape(server)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.5)


async def test_counters_move_during_a_lesson_and_nacks_appear_under_loss(server: Server) -> None:
    lesson = "metrics-live"
    teacher = await publishing_teacher(server, lesson)
    clean = Classroom(await join_lesson(server, "classroom", lesson, "第一小学"))
    lossy = Classroom(await join_lesson(server, "classroom", lesson, "第二小学"), loss=0.1)
    try:
        await clean.wait_frames(10, timeout_s=20)
        await lossy.wait_frames(5, timeout_s=20)
        first = await scrape(server)
        assert total(first, "ketang_lessons_live") >= 1
        assert total(first, "ketang_participants", role="teacher") >= 1
        assert total(first, "ketang_participants", role="classroom") >= 2
        assert total(first, "ketang_classrooms_by_rung") >= 2
        await clean.wait_frames(len(clean.frames) + 15, timeout_s=20)
        second = await wait_for(lambda s: total(s, "ketang_sfu_nacks_received_total", kind="video") > 0, server)
        for name, labels in [("ketang_sfu_received_packets_total", {"kind": "video", "source": "teacher"}),
                             ("ketang_sfu_received_bytes_total", {"kind": "video", "source": "teacher"}),
                             ("ketang_sfu_received_packets_total", {"kind": "audio", "source": "teacher"}),
                             ("ketang_sfu_sent_packets_total", {"kind": "video"}),
                             ("ketang_sfu_sent_bytes_total", {"kind": "video"})]:
            assert total(second, name, **labels) > total(first, name, **labels), (name, labels)
        # 10 % of the lossy classroom's packets dropped before its receiver: it asks again, the SFU resends
        assert lossy.loss is not None and lossy.loss.dropped > 0
        assert total(second, "ketang_sfu_nacks_received_total", kind="video") > 0
        assert total(second, "ketang_sfu_retransmissions_total", kind="video") > 0
        assert total(second, "ketang_event_loop_lag_seconds_count") > 0
        # the lesson is recorded (the server's default): the WebM writer's bytes grow once the teacher's first
        # sender report has come (about a second in)
        third = await wait_for(lambda s: total(s, "ketang_recorder_written_bytes_total")
                               > total(second, "ketang_recorder_written_bytes_total"), server)
        assert total(third, "ketang_recorder_written_bytes_total") > total(second, "ketang_recorder_written_bytes_total")
        assert total(third, "ketang_recordings_active") >= 1
        assert total(third, "ketang_recorder_write_errors_total") == 0
        assert total(second, "process_resident_memory_bytes") > 0
        # no lesson or participant id is ever a label
        for (_, labels), _ in second.items():
            assert not any(lesson in value or "第" in value for _, value in labels)
    finally:
        await hang_up(teacher, clean, lossy)


async def test_a_refused_token_is_counted_by_reason(server: Server) -> None:
    before = await scrape(server)
    ws = await WsClient().connect(server.ws_url)
    try:
        reply = await ws.request({"type": "join", "token": token("classroom", "metrics-a") + "x",
                                  "lesson": "metrics-a"})
        assert reply["type"] == "error" and reply["code"] == "token_invalid"
        reply = await ws.request({"type": "join", "token": token("classroom", "metrics-b"), "lesson": "metrics-a"})
        assert reply["type"] == "error" and reply["code"] == "token_wrong_lesson"
    finally:
        await ws.close()
    after = await scrape(server)
    for reason in ("token_invalid", "token_wrong_lesson"):
        assert total(after, "ketang_token_refusals_total", reason=reason) \
            == total(before, "ketang_token_refusals_total", reason=reason) + 1
        assert total(after, "ketang_websocket_errors_total", code=reason) \
            == total(before, "ketang_websocket_errors_total", code=reason) + 1

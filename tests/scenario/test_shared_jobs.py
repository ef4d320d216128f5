"""The library's jobs on Redis (arq), shared by the nodes (recorder/compose/shared.py), with a real Redis, real
child processes and real media: two nodes' job boards on one Redis prefix and one shared media directory — node A
runs no jobs, node B does. A lesson queued three times (twice at A, once at B) is one arq job; B composes it; A
sees it queued, running with its progress, then done, with B named; queued again once done, it is made again.
An HLS job queued at A is made by B from the shared media dir, and A's status follows it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import av
import pytest
import redis.asyncio as aioredis

from loadtest.bench.compose import ORIGIN, write_source
from recorder.compose.jobs import COMPOSITE_NAME
from recorder.compose.shared import SharedComposeQueue, SharedJobs
from recorder.hls.jobs import SharedHlsQueue

pytestmark = pytest.mark.timeout(240)

GREEN, BLUE = (40, 170, 40), (40, 40, 210)


def make_lesson(media: Path, lesson: str, seconds: float = 6.0, lessons: Path | None = None) -> Path:
    """A short lesson in the shared media dir: the teacher (green, 440 Hz) throughout, courseware (blue) midway;
    its record.json in media/lessons/<lesson>/ as the recorder writes it with a media dir (``lessons``: in that
    folder instead — a node's data_dir/lessons without one)."""
    folder = (lessons or media / "lessons") / lesson
    folder.mkdir(parents=True, exist_ok=True)
    media.mkdir(parents=True, exist_ok=True)
    write_source(media / f"{lesson}-t.webm", GREEN, (320, 240), seconds, fps=15, tone_hz=440, kbps=300)
    write_source(media / f"{lesson}-s.webm", BLUE, (320, 180), seconds / 2, fps=5, kbps=200)
    files = [{"file": f"{lesson}-t.webm", "role": "teacher", "label": "李老师", "start": ORIGIN,
              "end": ORIGIN + seconds},
             {"file": f"{lesson}-s.webm", "role": "courseware", "label": "课件 1", "start": ORIGIN + seconds / 4,
              "end": ORIGIN + seconds * 3 / 4}]
    (folder / "record.json").write_text(json.dumps({"recording": {"files": files}}))
    return folder / "record.json"


def _node(redis_url: str, prefix: str, media: Path, name: str, work: bool) -> tuple[SharedJobs, SharedComposeQueue]:
    jobs = SharedJobs(redis_url, prefix, "", work=work, lease_s=3.0, poll_s=0.2, node=name)

    def record_file(lesson: str) -> Path | None:
        path = media / "lessons" / lesson / "record.json"
        return path if path.exists() else None

    return jobs, SharedComposeQueue(jobs, record_file, media)


async def _until(check, timeout_s: float, step_s: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        await asyncio.sleep(step_s)
    raise AssertionError(f"not within {timeout_s} s")


async def test_a_job_queued_at_a_node_without_jobs_is_one_job_made_by_the_other_and_seen_from_both(
        tmp_path, redis_url, redis_prefix):
    media = tmp_path / "media"
    make_lesson(media, "les-1")
    a_jobs, a = _node(redis_url, redis_prefix, media, "http://a", work=False)
    b_jobs, b = _node(redis_url, redis_prefix, media, "http://b", work=True)
    client = aioredis.from_url(redis_url)
    try:
        await a_jobs.start()
        assert a.status("les-1")["state"] == "none"
        # three enqueues, two nodes: one job (arq refuses a second job with the id)
        assert a.enqueue("les-1")["state"] == "queued"
        a_jobs._cache.clear()  # (as if A had not yet seen its own status: the second enqueue reaches Redis too)
        a.enqueue("les-1")
        await _until(lambda: not a_jobs._pending, 10)
        await b_jobs.refresh()
        assert b.status("les-1")["state"] == "queued"
        b_jobs._cache.clear()
        b.enqueue("les-1")
        await _until(lambda: not b_jobs._pending, 10)
        assert await client.zcard(f"{redis_prefix}jobs:queue") == 1
        assert await client.exists(f"arq:job:{redis_prefix}compose:les-1") == 1

        await b_jobs.start()  # B's worker takes it
        seen: list[tuple[str, int, str | None]] = []

        def finished() -> bool:
            job = a.status("les-1")
            seen.append((job["state"], job["progress"], job.get("node")))
            return job["state"] in ("done", "failed")

        await _until(finished, 180, 0.1)
        done = a.status("les-1")
        assert done["state"] == "done" and done["progress"] == 100, done
        assert done["node"] == "http://b" and done["output"] == str(media / "lessons" / "les-1" / COMPOSITE_NAME)
        assert any(s == "running" and 0 < p < 100 and n == "http://b" for s, p, n in seen), seen  # progress, at A
        with av.open(done["output"]) as c:
            assert c.streams.video and c.streams.audio and c.duration / 1e6 == pytest.approx(6, abs=0.3)
        assert b.status("les-1")["state"] == "done"
        # arq's keys are gone: nothing left running or queued; queued again, it is made again
        assert await client.zcard(f"{redis_prefix}jobs:queue") == 0
        assert not await client.exists(f"arq:in-progress:{redis_prefix}compose:les-1",
                                       f"arq:job:{redis_prefix}compose:les-1")
        first = Path(done["output"]).stat().st_mtime_ns
        assert a.enqueue("les-1")["state"] == "queued"
        await _until(lambda: a.status("les-1")["state"] == "done" and
                     Path(done["output"]).stat().st_mtime_ns != first, 180, 0.2)

        # an HLS job queued at A (paths relative to the media dir) is made by B; A sees it done
        hls_a = SharedHlsQueue(a_jobs, lambda p: str(Path(p).relative_to(media)), lambda r: media / r)
        hls_b = SharedHlsQueue(b_jobs, lambda p: str(Path(p).relative_to(media)), lambda r: media / r)
        made: list[tuple[str, str]] = []
        hls_b.on_done = lambda rec, folder: made.append((rec, folder))
        folder = media / "lessons" / "les-1" / "hls" / "rec-1"
        hls_a.enqueue("rec-1", media / "lessons" / "les-1" / COMPOSITE_NAME, folder)
        await _until(lambda: hls_a.status("rec-1")["state"] in ("done", "failed"), 180, 0.2)
        assert hls_a.status("rec-1")["state"] == "done", hls_a.status("rec-1")
        assert made == [("rec-1", str(folder))] and (folder / "master.m3u8").is_file()
        assert [j["rec_id"] for j in hls_a.list()] == ["rec-1"] and [j["lesson_id"] for j in a.list()] == ["les-1"]
    finally:
        await a_jobs.close()
        await b_jobs.close()
        await client.aclose()


async def test_a_redis_outage_keeps_the_enqueue_and_the_worker_takes_jobs_again_after_it(tmp_path):
    from tests.throwaway_redis import ThrowawayRedis

    media = tmp_path / "media"
    make_lesson(media, "les-o", seconds=3.0)
    server = ThrowawayRedis(tmp_path).start()
    jobs, queue = _node(server.url, "outage:", media, "http://o", work=True)
    try:
        await jobs.start()
        await _until(lambda: jobs._worker is not None, 10)
        server.stop()  # an outage: the worker's poll fails, the enqueue cannot reach Redis
        await asyncio.sleep(1.5)
        assert queue.enqueue("les-o")["state"] == "queued"
        await asyncio.sleep(2.0)
        assert jobs._pending  # kept, tried again
        server.start()  # back, empty
        await _until(lambda: queue.status("les-o")["state"] in ("done", "failed"), 120, 0.2)
        assert queue.status("les-o")["state"] == "done", queue.status("les-o")
        assert not jobs._pending
    finally:
        await jobs.close()
        server.stop()

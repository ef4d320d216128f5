"""The library's jobs on Redis between real `ketang serve` nodes (recorder/compose/shared.py): one Redis, one
PostgreSQL catalog, one shared media directory.

- A lesson taught and ended on node A, which runs no jobs (``KETANG_JOBS=0``), is composed by node B; A's library
  page shows the composite's progress while B makes it, then the composite (played with Range) — from A and B.
- A node killed (SIGKILL) while its worker composes: the job does not stay "running" (its lease lapses), its child
  process does not go on, and the node started again composes it to the end.
- Without a shared media dir, a node's jobs wait on its own queue (named by its public URL), worked by one process
  of its `--workers 2`."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import av
import pytest

from recorder.compose.jobs import COMPOSITE_NAME
from recorder.compose.shared import SharedComposeQueue, SharedJobs
from tests.scenario.test_shared_jobs import make_lesson
from tests.support import Server, Teacher, WsClient, hang_up, node_dir, token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LEASE_S = 2.0


def _env(media: Path, **extra: str) -> dict[str, str]:
    return {"KETANG_MEDIA_DIR": str(media), "KETANG_JOB_LEASE_S": str(LEASE_S), **extra}


async def _item(http: aiohttp.ClientSession, base: str, lesson: str, auth: dict[str, str]) -> dict:
    async with http.get(f"{base}/api/library/lessons/{lesson}", headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_a_lesson_ended_on_a_node_without_jobs_is_composed_by_another_and_shown_on_both(
        tmp_path, redis_url, redis_prefix, postgres_database):
    media = tmp_path / "media"
    common = {"KETANG_DATABASE_URL": postgres_database}
    a = Server(node_dir(tmp_path, "a"), redis_url, redis_prefix, env=_env(media, KETANG_JOBS="0", **common))
    b = Server(node_dir(tmp_path, "b"), redis_url, redis_prefix, env=_env(media, **common))
    lesson = f"shared-{uuid.uuid4().hex[:8]}"
    peers: list = []
    try:
        a.wait_ready()
        b.wait_ready()
        ws = await WsClient().connect(a.ws_url)
        assert (await ws.request({"type": "join", "token": token("teacher", lesson, "李老师")}))["type"] == "joined"
        teacher = Teacher(ws)
        peers.append(teacher)
        assert (await teacher.publish())["type"] == "answer"
        await asyncio.sleep(4)
        await ws.send({"type": "end_lesson"})
        await ws.wait_for(lambda m: m.get("event") == "lesson-ended")
        await hang_up(*peers)
        peers.clear()

        auth = {"Authorization": f"Bearer {token('teacher', lesson, '李老师')}"}
        seen: dict[str, list[str]] = {"a": [], "b": []}
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 120
            item: dict = {}
            while time.monotonic() < deadline:
                for name, node in (("a", a), ("b", b)):
                    try:
                        item = await _item(http, node.url, lesson, auth)
                    except AssertionError:
                        continue  # (the recording is being catalogued)
                    seen[name].append(f"{item['compose']['state']}:{item['compose']['progress']}")
                if seen["a"] and seen["a"][-1] == "done:100" and seen["b"] and seen["b"][-1] == "done:100":
                    break
                await asyncio.sleep(0.2)
            for node in (a, b):
                item = await _item(http, node.url, lesson, auth)
                assert item["urls"]["composite"], item["urls"]
                async with http.get(node.url + item["urls"]["composite"], headers={"Range": "bytes=0-99"}) as resp:
                    assert resp.status == 206 and len(await resp.read()) == 100
        assert seen["a"][-1] == "done:100" and seen["b"][-1] == "done:100", seen
        assert any(s.startswith(("queued", "running")) for s in seen["a"]), seen  # A showed it being made
        composite = media / "lessons" / lesson / COMPOSITE_NAME
        with av.open(str(composite)) as c:
            assert c.streams.video and c.streams.audio
        logs = {n: (tmp_path / n / f"server-{s.port}.log").read_text(errors="replace") for n, s in
                (("a", a), ("b", b))}
        assert f"compose {lesson}: done" in logs["b"] and f"compose {lesson}: done" not in logs["a"]
    finally:
        await hang_up(*peers)
        a.stop()
        b.stop()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_job_whose_node_is_killed_mid_run_is_not_left_running_and_completes_after_the_restart(
        tmp_path, redis_url, redis_prefix):
    media = tmp_path / "media"
    make_lesson(media, "killed", seconds=24.0)
    board = SharedJobs(redis_url, redis_prefix, "", work=False, lease_s=LEASE_S, poll_s=0.2, node="test")
    queue = SharedComposeQueue(board, lambda lesson: None, media)  # (this board only queues and watches)
    data = node_dir(tmp_path, "c")
    node = Server(data, redis_url, redis_prefix, env=_env(media))
    restarted = None
    try:
        await board.start()
        node.wait_ready()
        queue.enqueue("killed")
        deadline = time.monotonic() + 120
        while not (queue.status("killed")["state"] == "running" and queue.status("killed")["progress"] >= 4):
            assert time.monotonic() < deadline and queue.status("killed")["state"] in ("queued", "running", "none")
            await asyncio.sleep(0.1)
        composers = _children(node.proc.pid)
        assert composers, "the job runs in a child process"
        node.kill()
        killed_at = time.monotonic()
        # the lease lapses: the status no longer says running; the orphaned child stops too
        while queue.status("killed")["state"] == "running":
            assert time.monotonic() - killed_at < LEASE_S * 2 + 3, queue.status("killed")
            await asyncio.sleep(0.1)
        assert queue.status("killed")["state"] == "queued"
        gone_by = time.monotonic() + 20  # (it checks every second; at nice 19 on a loaded machine, it may wait)
        while any(_alive(pid) for pid in composers):
            assert time.monotonic() < gone_by, "the killed node's job went on"
            await asyncio.sleep(0.2)
        assert not (media / "lessons" / "killed" / COMPOSITE_NAME).exists()

        restarted = Server(data, redis_url, redis_prefix, env=_env(media))
        restarted.wait_ready()
        deadline = time.monotonic() + 150
        while queue.status("killed")["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline, queue.status("killed")
            await asyncio.sleep(0.2)
        done = queue.status("killed")
        assert done["state"] == "done" and done["tries"] == 2, done
        with av.open(done["output"]) as c:
            assert c.duration / 1e6 == pytest.approx(24, abs=0.5)
        assert sorted(p.name for p in (media / "lessons" / "killed").iterdir()) == [
            "composite.mp4", "composite.vtt", "record.json"]  # (the killed job's temporary file removed)
    finally:
        await board.close()
        for server in (node, restarted):
            if server is not None:
                server.stop()


async def test_without_a_shared_media_dir_the_node_with_the_files_works_its_own_queue_in_one_worker_process(
        tmp_path, redis_url, redis_prefix):
    data = node_dir(tmp_path, "w")
    make_lesson(data / "recordings", "own", seconds=3.0, lessons=data / "lessons")
    node = Server(data, redis_url, redis_prefix, env={"KETANG_WORKERS": "2", "KETANG_JOB_LEASE_S": str(LEASE_S)})
    # another node's board queues on the node's own queue (named by its public URL), as the node itself would
    board = SharedJobs(redis_url, redis_prefix, node.url, work=False, lease_s=LEASE_S, poll_s=0.2, node="test")
    queue = SharedComposeQueue(board, lambda lesson: None, data / "recordings")
    other = SharedJobs(redis_url, redis_prefix, "", work=False, poll_s=0.2)  # the shared queue: nobody's
    try:
        node.wait_ready()
        await board.start()
        await other.start()
        queue.enqueue("own")
        deadline = time.monotonic() + 120
        while queue.status("own")["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline, queue.status("own")
            await asyncio.sleep(0.2)
        assert queue.status("own")["state"] == "done", queue.status("own")
        assert queue.status("own")["queue"] == f"{redis_prefix}jobs:queue:{node.url}"
        assert (data / "lessons" / "own" / COMPOSITE_NAME).is_file()
    finally:
        await board.close()
        await other.close()
        node.stop()
    log = (data / f"server-{node.port}.log").read_text(errors="replace")
    assert log.count("working the job queue") == 1, log  # worker 0 only, of the two

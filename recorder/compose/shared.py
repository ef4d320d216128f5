"""The job queue on Redis (arq) that every node shares: each lesson's composite 课例 and each published item's HLS
renditions, when the server has ``--redis-url``. Without Redis the queues stay in the process (jobs.py).

Where the jobs wait. An arq queue in Redis: with a shared ``--media-dir`` (the lesson folders and recordings are on
a mount every node has) ONE queue, ``<prefix>jobs:queue``, that any node's worker takes jobs from; without one, a
queue per node, ``<prefix>jobs:queue:<node's public URL>``, that only the node holding the recording's files works
(the node that enqueues is the one that has them). A job's arq id is ``<prefix><kind>:<key>`` (kind ``compose``
keyed by lesson, ``hls`` by library item): queuing it again while it waits or runs is the same one job (arq refuses a
second job with an id that exists); once it is done or failed (no arq result is kept) it can be queued again.

Who works them. One arq worker per node that runs jobs (``--jobs on``, the default; with ``--workers N`` only
worker 0's process), one job at a time (``max_jobs=1``): composing is CPU-heavy, and a node gives it one core at
most, at the lowest priority. The work itself runs in a spawned child process at nice 19 (jobs.run_child), never
in the event loop; the worker's own part is a few Redis calls a second.

What everyone sees. Each job's status ``{state, progress, error, output, node, ...}`` is a JSON string at
``<prefix>jobs:status:<kind>:<key>`` (kept STATUS_TTL_S after its last change), written by the worker at each
change and each PROGRESS_STEP % of progress; every write also bumps a sequence number and puts the job in the
sorted set ``<prefix>jobs:index`` under it (one Lua script: atomic), so every process of every node follows all
the statuses by reading only what changed since it last looked (every POLL_S) into a cache ``status()`` answers
from without waiting (the library pages are built synchronously).

Restarts and crashes. A job waits in the arq queue until a worker finishes it, so a job queued when its node
stopped runs when a worker is next there. A running job holds arq's in-progress key, which the worker renews every
LEASE_S / 3 with a lifetime of LEASE_S (instead of arq's job timeout + 10 s): when the worker's process dies
(killed, the machine lost), the key lapses within LEASE_S and the next poll of any worker of that queue takes the
job again, from the start (a status whose worker has not renewed it for LEASE_S reads "queued" meanwhile). A
graceful stop terminates the job's child and leaves the job queued. A job interrupted MAX_TRIES times fails (with
that said), rather than crash its workers forever. A status left "queued" or "running" with no arq job behind it
(the job expired after JOB_EXPIRES_S unworked, a flushed Redis) is queued again when a worker starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.worker import Worker, func

from recorder.compose.jobs import COMPOSITE_NAME, DONE, FAILED, QUEUED, RUNNING, THREADS, _child, run_child

log = logging.getLogger("ketang.recorder.jobs")

POLL_S: Final[float] = 1.0  # how often each process reads the statuses that changed
LEASE_S: Final[float] = 30.0  # a running job's in-progress key lives this long unless renewed (KETANG_JOB_LEASE_S)
MAX_TRIES: Final[int] = 5  # a job whose worker died this many times under it fails
MAX_JOB_S: Final[float] = 6 * 3600.0  # arq's timeout of one job (a lesson of hours, composed at nice 19)
JOB_EXPIRES_S: Final[float] = 30 * 86400.0  # a job nobody works is dropped by arq after this (re-queued at start)
STATUS_TTL_S: Final[int] = 30 * 86400  # a job's status is kept this long after its last change
PROGRESS_STEP: Final[int] = 2  # progress written to Redis at most every 2 %
RETRY_S: Final[float] = 5.0  # an enqueue that found Redis down is tried again after this
FINAL_WRITE_TRIES: Final[int] = 6  # a job's outcome is written again for 30 s while Redis is away
FUNCTION: Final[str] = "ketang_job"
STATES: Final[frozenset[str]] = frozenset({QUEUED, RUNNING, DONE, FAILED})

# INCR the sequence, SET the status with its lifetime, ZADD it to the index under the new sequence number
_WRITE = """
local seq = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('ZADD', KEYS[3], seq, ARGV[3])
return seq
"""

# (kind, key, status record) -> (DONE, output) | (FAILED, why); the record holds the job's parameters
Runner = Callable[[str, dict[str, Any], Callable[[int], None], Callable[[Any], bool]], tuple[str, str]]


class SharedJobs:
    """The node's side of the shared queue: enqueue and status for every process, the worker where jobs run.

    ``queue_scope``: "" for the one shared queue (a shared media dir), else this node's name (its public URL).
    ``work``: this process runs jobs. Kinds are registered by the queues below (``register``)."""

    def __init__(self, redis_url: str, prefix: str, queue_scope: str = "", *, work: bool = True,
                 lease_s: float = LEASE_S, poll_s: float = POLL_S, node: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.redis_url, self.prefix = redis_url, prefix
        self.queue_name = f"{prefix}jobs:queue" + (f":{queue_scope}" if queue_scope else "")
        self.work, self.lease_s, self.poll_s, self.node, self._clock = work, lease_s, poll_s, node, clock
        self._runners: dict[str, Runner] = {}
        self._done: dict[str, Callable[[str, dict[str, Any]], None]] = {}
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._seen = 0  # the last sequence number read
        self._pool: ArqRedis | None = None
        self._worker: Worker | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}  # enqueues waiting for Redis
        self._closing = False
        self._write_script: Any = None

    # -- keys ------------------------------------------------------------------------------------------------

    def job_id(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    def _status_key(self, kind: str, key: str) -> str:
        return f"{self.prefix}jobs:status:{kind}:{key}"

    # -- the interface the queues use -------------------------------------------------------------------------

    def register(self, kind: str, runner: Runner,
                 done: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self._runners[kind] = runner
        if done is not None:
            self._done[kind] = done

    def cached(self, kind: str, key: str) -> dict[str, Any] | None:
        job = self._cache.get((kind, key))
        if job is None:
            return None
        job = dict(job)
        lease_s = job.get("lease_s") if isinstance(job.get("lease_s"), (int, float)) else self.lease_s
        if job["state"] == RUNNING and self._clock() - float(job.get("alive_at") or 0) > lease_s * 2:
            job["state"] = QUEUED  # its worker stopped renewing it: it waits for the next one
        return job

    def listed(self, kind: str) -> list[dict[str, Any]]:
        jobs = [self.cached(k, key) for (k, key) in list(self._cache) if k == kind]
        return sorted((j for j in jobs if j), key=lambda j: j.get("queued_at") or 0)

    def submit(self, kind: str, key: str, record: dict[str, Any], replace_queued: bool = False) -> None:
        """Queue the job (in the background: the caller is synchronous). ``record``: its status with its
        parameters. ``replace_queued``: a job already waiting (not running) takes this record's parameters."""
        self._cache[(kind, key)] = dict(record)
        self._pending[(kind, key)] = {"record": record, "replace": replace_queued}
        self._spawn(self._enqueue(kind, key))

    # -- life ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (retrying in the background while Redis is down), follow the statuses, and work the queue
        here when ``work``."""
        self._tasks.add(asyncio.ensure_future(self._run()))

    async def close(self) -> None:
        self._closing = True
        if self._worker is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._worker.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.aclose()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> ArqRedis:
        while self._pool is None:
            try:
                self._pool = await create_pool(RedisSettings.from_dsn(self.redis_url))
                self._write_script = self._pool.register_script(_WRITE)
            except Exception as exc:  # noqa: BLE001 - Redis down: again shortly
                log.warning("the job queue's Redis is not reachable (%s): trying again in %g s",
                            " ".join(str(exc).split())[:200], RETRY_S)
                await asyncio.sleep(RETRY_S)
        return self._pool

    async def _run(self) -> None:
        await self._connect()
        if self.work:
            with contextlib.suppress(Exception):
                await self._requeue_lost()
            self._spawn(self._work_forever())
        while not self._closing:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - Redis down: the cache stays as it was
                log.debug("job statuses not read: %s", exc)
            await asyncio.sleep(self.poll_s)

    async def _work_forever(self) -> None:
        """The arq worker; made again when it stops on an error (Redis gone a while: arq's poll raises)."""
        while not self._closing:
            self._worker = Worker(
                [func(self._job, name=FUNCTION, timeout=MAX_JOB_S, max_tries=10 ** 6)],
                queue_name=self.queue_name, redis_settings=RedisSettings.from_dsn(self.redis_url),
                handle_signals=False, max_jobs=1, keep_result=0, poll_delay=self.poll_s,
                health_check_interval=60, retry_jobs=True)
            log.info("working the job queue %s (one job at a time)", self.queue_name)
            try:
                await self._worker.async_run()
            except Exception as exc:  # noqa: BLE001 - made again after a pause
                log.warning("the job worker stopped (%s): starting it again in %g s",
                            " ".join(str(exc).split())[:200], RETRY_S)
            worker, self._worker = self._worker, None
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await worker.close()
            await asyncio.sleep(RETRY_S)

    # -- statuses ------------------------------------------------------------------------------------------

    async def refresh(self) -> int:
        """Read the statuses written since the last look; returns how many."""
        pool = await self._connect()
        changed = await pool.zrangebyscore(f"{self.prefix}jobs:index", f"({self._seen}", "+inf", withscores=True)
        if not changed:
            return 0
        members = [m.decode() if isinstance(m, bytes) else m for m, _ in changed]
        values = await pool.mget([f"{self.prefix}jobs:status:{m}" for m in members])
        gone = []
        for member, raw in zip(members, values):
            kind, _, key = member.partition(":")
            if raw is None:
                gone.append(member)
                self._cache.pop((kind, key), None)
                continue
            try:
                job = json.loads(raw)
            except ValueError:
                job = None
            if not isinstance(job, dict) or job.get("state") not in STATES or not isinstance(
                    job.get("alive_at", 0), (int, float)):
                log.warning("job status %s is not one this server writes: ignored", member[:200])
                continue
            self._cache[(kind, key)] = job
        if gone:
            await pool.zrem(f"{self.prefix}jobs:index", *gone)
        self._seen = max(self._seen, int(max(score for _, score in changed)))
        return len(changed)

    async def _write(self, kind: str, key: str, record: dict[str, Any]) -> None:
        pool = await self._connect()
        record = {**record, "updated_at": self._clock()}
        self._cache[(kind, key)] = record
        await self._write_script(keys=[f"{self.prefix}jobs:seq", self._status_key(kind, key),
                                       f"{self.prefix}jobs:index"],
                                 args=[json.dumps(record, ensure_ascii=False), STATUS_TTL_S, f"{kind}:{key}"],
                                 client=pool)

    async def _read(self, kind: str, key: str) -> dict[str, Any] | None:
        pool = await self._connect()
        raw = await pool.get(self._status_key(kind, key))
        try:
            job = json.loads(raw) if raw else None
        except ValueError:
            return None
        return job if isinstance(job, dict) and job.get("state") in STATES else None

    # -- enqueue ---------------------------------------------------------------------------------------------

    async def _enqueue(self, kind: str, key: str) -> None:
        while not self._closing:
            pending = self._pending.get((kind, key))
            if pending is None:
                return
            try:
                await self._enqueue_once(kind, key, pending["record"], pending["replace"])
            except Exception as exc:  # noqa: BLE001 - Redis down: kept, tried again
                log.warning("%s %s: could not be queued (%s): trying again in %g s", kind, key,
                            " ".join(str(exc).split())[:200], RETRY_S)
                await asyncio.sleep(RETRY_S)
                continue
            if self._pending.get((kind, key)) is pending:
                del self._pending[(kind, key)]
            return

    async def _enqueue_once(self, kind: str, key: str, record: dict[str, Any], replace: bool) -> None:
        pool = await self._connect()
        job = await pool.enqueue_job(FUNCTION, kind, key, _job_id=self.job_id(kind, key),
                                     _queue_name=self.queue_name, _expires=JOB_EXPIRES_S)
        if job is not None:
            await self._write(kind, key, {**record, "queue": self.queue_name})
            log.info("%s %s: queued on %s", kind, key, self.queue_name)
            return
        current = await self._read(kind, key)
        if current is None:  # (an arq job with no status: lost at a crash between the two writes)
            await self._write(kind, key, {**record, "queue": self.queue_name})
        elif replace and current.get("state") == QUEUED:
            await self._write(kind, key, {**current, **{k: v for k, v in record.items() if k not in (
                "state", "progress", "queued_at")}})
        else:
            self._cache[(kind, key)] = current

    async def _requeue_lost(self) -> None:
        """Statuses queued or running on this queue whose arq job is gone: queued again."""
        await self.refresh()
        pool = await self._connect()
        for (kind, key), job in list(self._cache.items()):
            if job.get("state") in (QUEUED, RUNNING) and job.get("queue") == self.queue_name \
                    and not await pool.exists(job_key_prefix + self.job_id(kind, key)):
                log.warning("%s %s: its job was lost (%s): queued again", kind, key, job.get("state"))
                self.submit(kind, key, {**job, "state": QUEUED, "progress": 0})

    # -- the worker's job ----------------------------------------------------------------------------------

    async def _job(self, ctx: dict[str, Any], kind: str, key: str) -> str:
        """arq calls this on the node that took the job; the work runs in a child process."""
        pool = await self._connect()
        job_id = ctx["job_id"]
        progress_key = in_progress_key_prefix + job_id
        await pool.pexpire(progress_key, int(self.lease_s * 1000))  # a lease, not arq's timeout + 10 s
        record = await self._read(kind, key) or {"kind": kind, "state": QUEUED, "queued_at": self._clock()}
        runner = self._runners.get(kind)
        tries = int(ctx.get("job_try") or 1)
        if runner is None:
            await self._write(kind, key, {**record, "state": FAILED, "error": f"no worker here for {kind} jobs"})
            return FAILED
        if tries > MAX_TRIES:
            why = f"its worker stopped {tries - 1} times while it ran"
            await self._write(kind, key, {**record, "state": FAILED, "error": why})
            log.error("%s %s: %s: not tried again", kind, key, why)
            return FAILED
        record.update(state=RUNNING, progress=0, error=None, node=self.node, tries=tries, alive_at=self._clock(),
                      lease_s=self.lease_s)
        await self._write(kind, key, record)
        loop = asyncio.get_running_loop()
        written = [0]
        process: list[Any] = []
        writing = asyncio.Lock()  # one write of this status at a time, in order: none lands after the outcome

        def progress(percent: int) -> None:  # (from the thread that follows the child)
            if percent - written[0] >= PROGRESS_STEP:
                written[0] = percent
                loop.call_soon_threadsafe(self._spawn, self._progress(kind, key, record, percent, writing))

        def launch(child: Any) -> bool:
            if self._closing:
                return False
            process.append(child)
            child.start()
            return True

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease_s / 3)
                try:
                    await pool.pexpire(progress_key, int(self.lease_s * 1000))
                    async with writing:
                        if record.get("state") == RUNNING:
                            record["alive_at"] = self._clock()
                            await self._write(kind, key, record)
                except Exception as exc:  # noqa: BLE001 - Redis away a moment: renewed at the next turn
                    log.warning("%s %s: its lease could not be renewed (%s)", kind, key,
                                " ".join(str(exc).split())[:200])

        renewing = asyncio.ensure_future(renew())
        running = asyncio.ensure_future(asyncio.to_thread(runner, key, record, progress, launch))
        try:
            outcome, detail = await asyncio.shield(running)
        except asyncio.CancelledError:  # the node stops: the child too, the job is queued again
            for child in process:
                if child.is_alive():
                    child.terminate()
            with contextlib.suppress(BaseException):
                await running
            record.update(state=QUEUED, progress=0, node=None)
            with contextlib.suppress(Exception):
                await pool.decr(retry_key_prefix + job_id)  # (a clean stop is no failed try)
                async with writing:
                    await self._write(kind, key, record)
            raise
        finally:
            renewing.cancel()
        if outcome == QUEUED:  # (closing before the child started)
            record.update(state=QUEUED, progress=0, node=None)
            async with writing:
                await self._write(kind, key, record)
            raise asyncio.CancelledError
        if outcome == DONE:
            record.update(state=DONE, progress=100, error=None, output=detail)
            log.info("%s %s: done (%s)", kind, key, detail)
        else:
            record.update(state=FAILED, error=detail)
            log.error("%s %s: failed: %s", kind, key, detail)
        for attempt in range(FINAL_WRITE_TRIES):  # (Redis away as the job ends: the outcome is not lost at once)
            try:
                async with writing:
                    await self._write(kind, key, record)
                break
            except Exception:  # noqa: BLE001
                if attempt == FINAL_WRITE_TRIES - 1:
                    raise
                await asyncio.sleep(RETRY_S)
        if outcome == DONE and (done := self._done.get(kind)) is not None:
            try:
                done(key, record)
            except Exception:  # noqa: BLE001 - the job is done; what follows is logged
                log.exception("%s %s: after the job", kind, key)
        return outcome

    async def _progress(self, kind: str, key: str, record: dict[str, Any], percent: int,
                        writing: asyncio.Lock) -> None:
        async with writing:
            if record.get("state") != RUNNING or percent <= int(record.get("progress") or 0):
                return
            record.update(progress=percent, alive_at=self._clock())
            with contextlib.suppress(Exception):
                await self._write(kind, key, record)


def remove_leftovers(dst: Path) -> None:
    """The temporary files a killed node's job left beside ``dst`` (``.<name>.<pid>…tmp…``): this job is the one
    that makes ``dst`` now (the lease), so no other process writes them any more."""
    for leftover in dst.parent.glob(f".{dst.name}.*tmp*"):
        try:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s: %s", leftover, exc.strerror)


class SharedQueue:
    """What every kind of job on the shared queue answers alike: ``status(key)``, ``list()``; started and closed by
    their owner (SharedJobs.start / close). A subclass names its KIND and KEY and makes ``enqueue``."""

    KIND = ""
    KEY = ""
    jobs: SharedJobs

    def status(self, key: str) -> dict[str, Any]:
        return self.jobs.cached(self.KIND, key) or {self.KEY: key, "state": "none", "progress": 0, "error": None,
                                                     "output": None}

    def list(self) -> list[dict[str, Any]]:
        return self.jobs.listed(self.KIND)

    def start(self) -> None:
        """(The shared jobs are started by their owner: SharedJobs.start.)"""

    def close(self) -> None:
        """(Likewise closed by SharedJobs.close.)"""


class SharedComposeQueue(SharedQueue):
    """ComposeQueue (jobs.py) on the shared queue: ``enqueue(lesson_id)``, ``status``, ``list``. The worker finds
    the lesson's record with ``record_file`` and writes the composite next to it."""

    KIND = "compose"
    KEY = "lesson_id"

    def __init__(self, jobs: SharedJobs, record_file: Callable[[str], Path | None], recordings_dir: Path,
                 threads: int = THREADS) -> None:
        self.jobs = jobs
        self._record_file, self._recordings_dir, self._threads = record_file, Path(recordings_dir), threads
        jobs.register(self.KIND, self._run)

    def enqueue(self, lesson_id: str) -> dict[str, Any]:
        job = self.jobs.cached(self.KIND, lesson_id)
        if job is not None and job["state"] in (QUEUED, RUNNING):
            return job
        record = {"kind": self.KIND, self.KEY: lesson_id, "state": QUEUED, "progress": 0, "error": None,
                  "output": None, "queued_at": time.time()}
        self.jobs.submit(self.KIND, lesson_id, record)
        return dict(record)

    def _run(self, lesson_id: str, record: dict[str, Any], progress: Callable[[int], None],
             launch: Callable[[Any], bool]) -> tuple[str, str]:
        path = self._record_file(lesson_id)
        if path is None or not path.is_file():
            return FAILED, "the lesson has no record (record.json) with its recorded files on this node"
        dst = path.parent / COMPOSITE_NAME
        remove_leftovers(dst)
        return run_child(_child, (str(path), str(self._recordings_dir), str(dst), self._threads), dst, progress,
                         launch)


__all__ = ["LEASE_S", "SharedComposeQueue", "SharedJobs", "remove_leftovers"]

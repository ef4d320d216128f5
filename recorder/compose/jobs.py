"""The queue that composes each lesson's 课例 after it ends, off the live path.

`ComposeQueue` is the interface the server and the library use: ``enqueue(lesson_id)``, ``status(lesson_id)``
→ ``{state, progress, error, output}``, ``list()``. `LocalComposeQueue` is the in-process implementation: jobs
are kept in a small JSON file in the data directory (written atomically at each change of state), so a job
queued or running when the server stopped is run (again, from the start) after the next start. One worker
thread takes the jobs one at a time, oldest first, and runs each in a child process of its own at the lowest
CPU priority (nice 19) with one thread per codec: the live lesson's event loop in this process never waits for
it, and the kernel gives the job only what the lessons leave (docs/benchmarks.md measures it beside a load-test
lesson). The child reports progress through a pipe.

States: queued → running → done | failed. A lesson queued again while queued or running stays as it is; one that
is done or failed is composed again.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

log = logging.getLogger("ketang.recorder.compose")

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
NICE: Final[int] = 19
THREADS: Final[int] = 1
COMPOSITE_NAME: Final[str] = "composite.mp4"  # next to the lesson's record.json (and composite.vtt: chapters)
JOBS_FILE: Final[str] = "compose-jobs.json"
SAVE_PROGRESS_STEP: Final[int] = 10  # the file is rewritten at most every 10 % (and at each change of state)


class ComposeQueue(Protocol):
    def enqueue(self, lesson_id: str) -> dict[str, Any]: ...

    def status(self, lesson_id: str) -> dict[str, Any]: ...

    def list(self) -> list[dict[str, Any]]: ...


ORPHAN_CHECK_S: Final[float] = 1.0


def die_with_parent() -> None:
    """In a job's child process: nice 19, and exit when the process that started it is gone (killed: nobody
    reads the outcome any more, and the job is run again by another worker — its work must not go on)."""
    try:
        os.nice(NICE)
    except OSError:
        pass
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="ketang-orphan-watch", daemon=True).start()


def _child(record: str, recordings: str, dst: str, threads: int, conn: Any) -> None:
    """In the child process: nice, compose, report progress and the outcome through `conn`."""
    die_with_parent()
    from recorder.compose.compose import compose_lesson  # (imported here: the child starts from scratch)

    def progress(fraction: float) -> None:
        conn.send(("progress", fraction))

    try:
        info = compose_lesson(Path(record), Path(recordings), Path(dst), progress=progress, threads=threads)
        conn.send(("done", info))
    except Exception as exc:  # noqa: BLE001 - every failure is the job's outcome, in words
        conn.send(("failed", str(exc) or type(exc).__name__))
    finally:
        conn.close()


def run_child(target: Callable[..., None], args: tuple[Any, ...], dst: Path, progress: Callable[[int], None],
              launch: Callable[[Any], bool] | None = None) -> tuple[str, str]:
    """Run ``target(*args, conn)`` in a spawned child process, following its ("progress", 0..1), ("done", info)
    or ("failed", why) messages on ``conn``: ``progress(0..99)`` for each report; returns (DONE, str(dst)) or
    (FAILED, why). ``launch(process)`` starts the process and returns True (the caller keeps it, to terminate it
    from another thread), or returns False without starting it (the caller is stopping): then (QUEUED, "").
    Blocking: call it from a thread, never from an event loop."""
    ctx = multiprocessing.get_context("spawn")  # (never fork a process with an event loop and threads)
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(*args, send), daemon=True)
    if launch is None:
        process.start()
    elif not launch(process):
        receive.close()
        send.close()
        return QUEUED, ""
    send.close()
    outcome: tuple[str, str] = (FAILED, "the job's process ended without a word")
    try:
        while True:
            try:
                kind, value = receive.recv()
            except (EOFError, OSError):
                break
            if kind == "progress":
                progress(max(0, min(99, int(value * 100))))
            elif kind == "done":
                outcome = (DONE, str(dst))
            else:
                outcome = (FAILED, str(value))
    finally:
        receive.close()
        process.join()
    if outcome[0] == FAILED and process.exitcode not in (0, None) and outcome[1].endswith("without a word"):
        outcome = (FAILED, f"the job's process ended with exit code {process.exitcode}")
    return outcome


class LocalComposeQueue:
    """Jobs in `<data_dir>/compose-jobs.json`, run one at a time by a worker thread, each in a niced child
    process. `record_file(lesson_id)` finds the lesson's record.json (the library's); the composite goes next
    to it. Call start() to run jobs (queued ones from before a restart included) and close() at shutdown."""

    KEY = "lesson_id"  # what a job is for, the key of its entry (a subclass's queue keys its jobs by another id)

    def __init__(self, data_dir: Path, record_file: Callable[[str], Path | None], recordings_dir: Path,
                 threads: int = THREADS, clock: Callable[[], float] = time.time, jobs_file: str = JOBS_FILE,
                 run_jobs: bool = True) -> None:
        # one file per process that runs jobs (each worker of `--workers N` its own: no two write one file)
        self.path = Path(data_dir) / jobs_file
        self._record_file = record_file
        self._recordings_dir = Path(recordings_dir)
        self._threads = threads
        self._clock = clock
        self.run_jobs = run_jobs  # False (--jobs off): jobs are kept queued, start() runs none
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._process: Any = None
        self._jobs: dict[str, dict[str, Any]] = self._load()
        for job in self._jobs.values():
            if job["state"] == RUNNING:  # the server stopped while it ran: from the start again
                job.update(state=QUEUED, progress=0)

    # -- the interface ---------------------------------------------------------------------------------------

    def enqueue(self, lesson_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(lesson_id)
            if job is None or job["state"] in (DONE, FAILED):
                job = self._jobs[lesson_id] = {"lesson_id": lesson_id, "state": QUEUED, "progress": 0,
                                               "error": None, "output": None, "queued_at": self._clock(),
                                               "updated_at": self._clock()}
                self._save()
                self._wake.notify()
                log.info("lesson %s: its composite is queued", lesson_id)
            return dict(job)

    def status(self, lesson_id: str) -> dict[str, Any]:
        """{state: none|queued|running|done|failed, progress: 0..100, error, output (the MP4's path)}."""
        with self._lock:
            job = self._jobs.get(lesson_id)
            return dict(job) if job else {self.KEY: lesson_id, "state": "none", "progress": 0, "error": None,
                                          "output": None}

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted((dict(j) for j in self._jobs.values()), key=lambda j: j["queued_at"])

    # -- the worker ------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None and self.run_jobs:
            self._thread = threading.Thread(target=self._work, name="ketang-compose", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop: a running job's child is terminated and the job stays queued for the next start."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            process = self._process
        if process is not None and process.is_alive():
            process.terminate()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _next(self) -> dict[str, Any] | None:
        with self._lock:
            while not self._stopping:
                queued = [j for j in self._jobs.values() if j["state"] == QUEUED]
                if queued:
                    job = min(queued, key=lambda j: j["queued_at"])
                    job.update(state=RUNNING, progress=0, updated_at=self._clock())
                    self._save()
                    return dict(job)
                self._wake.wait()
            return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            lesson_id = job[self.KEY]
            try:
                outcome, detail = self._run(lesson_id)
            except Exception as exc:  # noqa: BLE001 - the worker goes on with the next job
                log.exception("lesson %s: composing failed", lesson_id)
                outcome, detail = FAILED, str(exc)
            with self._lock:
                current = self._jobs.get(lesson_id)
                if current is None:
                    continue
                if self._stopping and outcome != DONE:
                    current.update(state=QUEUED, progress=0)  # (terminated by close(): again at the next start)
                elif outcome == DONE:
                    current.update(state=DONE, progress=100, error=None, output=detail)
                else:
                    current.update(state=FAILED, error=detail)
                current["updated_at"] = self._clock()
                self._save()
            if outcome == DONE:
                log.info("lesson %s: composite written to %s", lesson_id, detail)
            elif not self._stopping:
                log.error("lesson %s: the composite could not be made: %s", lesson_id, detail)

    def _run(self, lesson_id: str) -> tuple[str, str]:
        record = self._record_file(lesson_id)
        if record is None or not record.is_file():
            return FAILED, "the lesson has no record (record.json) with its recorded files"
        dst = record.parent / COMPOSITE_NAME
        return self._spawn(lesson_id, _child, (str(record), str(self._recordings_dir), str(dst), self._threads), dst)

    def _spawn(self, key: str, target: Callable[..., None], args: tuple[Any, ...], dst: Path) -> tuple[str, str]:
        """Run ``target(*args, conn)`` in a spawned child process (run_child); returns (DONE, str(dst)) or
        (FAILED, why), or (QUEUED, "") when the queue is closing."""
        saved = [0]

        def launch(process: Any) -> bool:
            with self._lock:
                if self._stopping:
                    return False
                self._process = process
                process.start()
                return True

        def progress(percent: int) -> None:
            with self._lock:
                self._jobs[key].update(progress=percent, updated_at=self._clock())
                if percent - saved[0] >= SAVE_PROGRESS_STEP:
                    saved[0] = percent
                    self._save()

        try:
            return run_child(target, args, dst, progress, launch)
        finally:
            with self._lock:
                self._process = None

    # -- persistence -----------------------------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("compose jobs in %s cannot be read (%s): starting with none", self.path, exc)
            return {}
        jobs = {}
        for job in data.get("jobs", []) if isinstance(data, dict) else []:
            if isinstance(job, dict) and isinstance(job.get(self.KEY), str) and job.get("state") in (
                    QUEUED, RUNNING, DONE, FAILED):
                jobs[job[self.KEY]] = job
        return jobs

    def _save(self) -> None:
        """Atomically (a crash leaves the old file or the new one); a full disk is logged, the jobs stay in
        memory and are written at the next change."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"jobs": list(self._jobs.values())}, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.error("compose jobs could not be written to %s: %s", self.path, exc)

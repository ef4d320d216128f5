"""The queue that makes each published lesson's HLS renditions (renditions.py), off the live path.

`LocalHlsQueue` is the composite's queue (recorder/compose/jobs.py) with jobs keyed by library item: the same
persisted JSON file of jobs (``hls-jobs.json``: a job queued or running when the server stopped runs again after
the next start), one worker thread, one job at a time in a spawned child process at nice 19 with one encoder
thread, progress 0..100 read by ``status(rec_id)``. A job remembers its source and where the renditions go: an
item queued again with another source (its lesson's composite, which appeared after the teacher's recording was
used) is made again; with the same source, only when its last attempt failed or ``force`` is asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from recorder.compose.jobs import (
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    THREADS,
    LocalComposeQueue,
    die_with_parent,
    run_child,
)

from recorder.compose.shared import SharedQueue, remove_leftovers

log = logging.getLogger("ketang.recorder.hls")

JOBS_FILE: Final[str] = "hls-jobs.json"


def _child(source: str, dst: str, threads: int, conn: Any) -> None:
    """In the child process: nice, make the renditions, report progress and the outcome through `conn`."""
    die_with_parent()
    from recorder.hls.renditions import make_hls  # (imported here: the child starts from scratch)

    try:
        info = make_hls(Path(source), Path(dst), progress=lambda f: conn.send(("progress", f)), threads=threads)
        conn.send(("done", info))
    except Exception as exc:  # noqa: BLE001 - every failure is the job's outcome, in words
        conn.send(("failed", str(exc) or type(exc).__name__))
    finally:
        conn.close()


def _no_record(_: str) -> Path | None:
    return None


class LocalHlsQueue(LocalComposeQueue):
    KEY = "rec_id"

    def __init__(self, data_dir: Path, threads: int = THREADS, clock: Callable[[], float] = time.time,
                 jobs_file: str = JOBS_FILE, run_jobs: bool = True) -> None:
        super().__init__(data_dir, _no_record, Path(data_dir), threads=threads, clock=clock, jobs_file=jobs_file,
                         run_jobs=run_jobs)
        # called from the worker thread with (rec_id, the renditions' folder) when a job is done
        self.on_done: Callable[[str, str], None] | None = None

    def enqueue(self, rec_id: str, source: Path | None = None, dst: Path | None = None,  # type: ignore[override]
                force: bool = False) -> dict[str, Any]:
        """Queue the renditions of item ``rec_id`` from ``source`` into the folder ``dst``."""
        if source is None or dst is None:
            raise ValueError("an HLS job needs its source and its destination")
        with self._lock:
            job = self._jobs.get(rec_id)
            busy = job is not None and job["state"] in (QUEUED, RUNNING)
            same = job is not None and job.get("source") == str(source) and job.get("dst") == str(dst)
            if job is None or (not busy and (force or not same or job["state"] == FAILED)) or \
                    (busy and not same and job["state"] == QUEUED):
                job = self._jobs[rec_id] = {self.KEY: rec_id, "state": QUEUED, "progress": 0, "error": None,
                                            "output": None, "source": str(source), "dst": str(dst),
                                            "queued_at": self._clock(), "updated_at": self._clock()}
                self._save()
                self._wake.notify()
                log.info("item %s: its HLS renditions are queued (from %s)", rec_id, Path(source).name)
            return dict(job)

    def _run(self, rec_id: str) -> tuple[str, str]:
        with self._lock:
            job = dict(self._jobs[rec_id])
        source, dst = Path(job["source"]), Path(job["dst"])
        if not source.is_file():
            return FAILED, f"the recording {source.name} is not on this node"
        outcome = self._spawn(rec_id, _child, (str(source), str(dst), self._threads), dst)
        if outcome[0] == DONE and self.on_done is not None:
            self.on_done(rec_id, outcome[1])
        return outcome




class SharedHlsQueue(SharedQueue):
    """LocalHlsQueue's interface on the shared queue (recorder/compose/shared.py): the job's source and folder are
    kept in its status, relative to the data (or media) directory — ``relative``/``absolute`` convert (the
    library's) — so that the node that runs it finds them under its own mounts."""

    KIND = "hls"
    KEY = "rec_id"

    def __init__(self, jobs: Any, relative: Callable[[Path], str], absolute: Callable[[str], Path],
                 threads: int = THREADS) -> None:
        self.jobs, self._relative, self._absolute, self._threads = jobs, relative, absolute, threads
        self.on_done: Callable[[str, str], None] | None = None
        jobs.register(self.KIND, self._run, self._finished)

    def enqueue(self, rec_id: str, source: Path | None = None, dst: Path | None = None,
                force: bool = False) -> dict[str, Any]:
        if source is None or dst is None:
            raise ValueError("an HLS job needs its source and its destination")
        src, out = self._relative(source), self._relative(dst)
        job = self.jobs.cached(self.KIND, rec_id)
        same = job is not None and job.get("source") == src and job.get("dst") == out
        if job is not None and job["state"] == RUNNING:
            return job
        if job is not None and job["state"] == QUEUED and same:
            return job
        if job is not None and job["state"] == DONE and same and not force:
            return job
        record = {"kind": self.KIND, self.KEY: rec_id, "state": QUEUED, "progress": 0, "error": None,
                  "output": None, "source": src, "dst": out, "queued_at": time.time()}
        self.jobs.submit(self.KIND, rec_id, record, replace_queued=True)
        log.info("item %s: its HLS renditions are queued (from %s)", rec_id, Path(source).name)
        return dict(record)

    def _run(self, rec_id: str, record: dict[str, Any], progress: Callable[[int], None],
             launch: Callable[[Any], bool]) -> tuple[str, str]:
        try:
            source, dst = self._absolute(str(record["source"])), self._absolute(str(record["dst"]))
        except Exception:  # noqa: BLE001 - a status that names no usable path
            return FAILED, "the job does not say which recording to use"
        if not source.is_file():
            return FAILED, f"the recording {source.name} is not on this node"
        remove_leftovers(dst)
        return run_child(_child, (str(source), str(dst), self._threads), dst, progress, launch)

    def _finished(self, rec_id: str, record: dict[str, Any]) -> None:
        if self.on_done is not None:
            self.on_done(rec_id, str(record["output"]))


__all__ = ["DONE", "FAILED", "JOBS_FILE", "LocalHlsQueue", "QUEUED", "RUNNING", "SharedHlsQueue"]

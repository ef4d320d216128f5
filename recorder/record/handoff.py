"""The catalog hand-off: what the recorder needs of the library, and a finish that waits when it cannot be written.

A recording is catalogued when its file starts and finished when it closes (complete, or incomplete with the
reason). The catalog is async (the store): the recorder, which reacts to tracks and stages synchronously, starts
and finishes items as background tasks (`in_background`), each finish after its item's start; `drain()` waits for
them (at shutdown). When the catalog cannot take the finish (a full disk, the database unreachable), the finish
waits in memory here and is tried again whenever this process starts or finishes a recording; after a restart,
start-up repair (repair.py) finishes it from the incomplete marker. The recorder never imports the library: it is
given an object of the `Catalog` shape.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from recorder.record.marker import clear_incomplete

log = logging.getLogger("ketang.recorder")

# what a failed write of the catalog (the store: SQLAlchemy around SQLite or PostgreSQL) or of a file raises
CATALOG_ERRORS = (SQLAlchemyError, sqlite3.Error, OSError)
T = TypeVar("T")


def unwrap(exc: BaseException) -> BaseException:
    """The driver's own error inside SQLAlchemy's wrapper ("database or disk is full"), else ``exc``."""
    orig = getattr(exc, "orig", None) if isinstance(exc, SQLAlchemyError) else None
    return orig if isinstance(orig, BaseException) else exc


def describe(exc: BaseException) -> str:
    """A catalog error in one log-friendly line."""
    return " ".join(str(unwrap(exc)).split())


class Catalog(Protocol):
    """What the recorder needs of the library (recorder.library.catalog.Library)."""

    recordings_dir: Path

    async def start_recording(self, lesson_id: str, title: str, teacher: str, teacher_sub: str,
                              file: Path, *, role: str | None = None, label: str = "") -> str: ...

    async def finish_recording(self, rec_id: str, duration_s: float, size_bytes: int) -> None: ...
    # (called with incomplete="why" as well when the file stops before the lesson: see finish_in_catalog)

    async def unfinished(self) -> list[Any]: ...

    def save_lesson_record(self, lesson_id: str, record: dict[str, Any], attendance_csv: str,
                           chat_csv: str) -> None: ...


# the catalog writes the recorder started and nobody awaits: kept here until done, so that none is lost to the
# garbage collector and shutdown can wait for them (drain)
CATALOG_TASKS: set[asyncio.Task[Any]] = set()


def in_background(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run a catalog write as a task of its own (the caller is synchronous: a track arrived, a lesson ended)."""
    task = asyncio.get_running_loop().create_task(coro)
    CATALOG_TASKS.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Task[Any]) -> None:
    CATALOG_TASKS.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("a library update failed: %s", task.exception())


async def drain(timeout_s: float = 10.0) -> None:
    """Wait (at most ``timeout_s``) for the catalog writes still running: before the store closes."""
    while CATALOG_TASKS:
        done, pending = await asyncio.wait(set(CATALOG_TASKS), timeout=timeout_s)
        if pending:
            log.warning("%d library update(s) still running at shutdown: left to start-up repair", len(pending))
            return


async def finish_in_catalog(catalog: Catalog, rec_id: str, duration_s: float, size_bytes: int,
                            incomplete: str | None) -> None:
    """Finish a library item: complete, or incomplete with why (raises what the catalog's write raises)."""
    if incomplete:
        await catalog.finish_recording(rec_id, duration_s, size_bytes, incomplete=incomplete)  # type: ignore[call-arg]
    else:
        await catalog.finish_recording(rec_id, duration_s, size_bytes)


@dataclass
class PendingFinish:
    """A library item the catalog could not finish (a full disk), kept until it can."""

    catalog: Catalog
    rec_id: str
    lesson_id: str
    path: Path
    duration_s: float
    size_bytes: int
    incomplete: str | None

    async def finish(self) -> None:
        await finish_in_catalog(self.catalog, self.rec_id, self.duration_s, self.size_bytes, self.incomplete)
        clear_incomplete(self.path)  # the catalog knows now


# library items whose finish the catalog could not take, by id: tried again whenever this process starts or
# finishes a recording; after a restart, start-up repair finishes them (the marker file says why incomplete)
PENDING_FINISHES: dict[str, PendingFinish] = {}


async def finish_or_keep(pending: PendingFinish) -> None:
    """Finish now, after the ones still waiting for `pending.catalog`; when the catalog cannot be written, keep
    it waiting (and raise the catalog's error for the caller to report)."""
    await retry_pending_finishes(pending.catalog)
    try:
        await pending.finish()
    except CATALOG_ERRORS:
        PENDING_FINISHES[pending.rec_id] = pending
        raise


async def retry_pending_finishes(catalog: Catalog) -> int:
    """Finish the items of `catalog` a full disk kept waiting; returns how many still wait."""
    for rec_id, pending in list(PENDING_FINISHES.items()):
        if pending.catalog is not catalog or PENDING_FINISHES.get(rec_id) is not pending:
            continue
        del PENDING_FINISHES[rec_id]  # (taken: a concurrent retry does not finish it twice)
        try:
            await pending.finish()
        except CATALOG_ERRORS:
            PENDING_FINISHES.setdefault(rec_id, pending)
            break  # still no room
        except Exception as exc:  # noqa: BLE001 - e.g. finished meanwhile by start-up repair of another process
            log.warning("recording %s of lesson %s: not finished after all: %s", rec_id, pending.lesson_id, exc)
        else:
            log.info("recording %s of lesson %s finished in the library after all", rec_id, pending.lesson_id)
    return sum(1 for p in PENDING_FINISHES.values() if p.catalog is catalog)

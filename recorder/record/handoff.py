"""The catalog hand-off: what the recorder needs of the library, and a finish that waits when it cannot be written.

A recording is catalogued when its file starts and finished when it closes (complete, or incomplete with the
reason). When the catalog cannot take the finish (SQLite's "database or disk is full"), the finish waits in
memory here and is tried again whenever this process starts or finishes a recording; after a restart, start-up
repair (repair.py) finishes it from the incomplete marker. The recorder never imports the library: it is given
an object of the `Catalog` shape.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from recorder.record.marker import clear_incomplete

log = logging.getLogger("ketang.recorder")

# what a failed write of the catalog (SQLite) or of a file raises
CATALOG_ERRORS = (sqlite3.Error, OSError)


class Catalog(Protocol):
    """What the recorder needs of the library (recorder.library.catalog.Library)."""

    recordings_dir: Path

    def start_recording(self, lesson_id: str, title: str, teacher: str, teacher_sub: str, file: Path) -> str: ...

    def finish_recording(self, rec_id: str, duration_s: float, size_bytes: int) -> None: ...
    # (called with incomplete="why" as well when the file stops before the lesson: see finish_in_catalog)

    def unfinished(self) -> list[Any]: ...

    def save_lesson_record(self, lesson_id: str, record: dict[str, Any], attendance_csv: str,
                           chat_csv: str) -> None: ...


def finish_in_catalog(catalog: Catalog, rec_id: str, duration_s: float, size_bytes: int,
                      incomplete: str | None) -> None:
    """Finish a library item: complete, or incomplete with why (raises what the catalog's write raises)."""
    if incomplete:
        catalog.finish_recording(rec_id, duration_s, size_bytes, incomplete=incomplete)  # type: ignore[call-arg]
    else:
        catalog.finish_recording(rec_id, duration_s, size_bytes)


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

    def finish(self) -> None:
        finish_in_catalog(self.catalog, self.rec_id, self.duration_s, self.size_bytes, self.incomplete)
        clear_incomplete(self.path)  # the catalog knows now


# library items whose finish the catalog could not take, by id: tried again whenever this process starts or
# finishes a recording; after a restart, start-up repair finishes them (the marker file says why incomplete)
PENDING_FINISHES: dict[str, PendingFinish] = {}


def finish_or_keep(pending: PendingFinish) -> None:
    """Finish now, after the ones still waiting for `pending.catalog`; when the catalog cannot be written, keep
    it waiting (and raise the catalog's error for the caller to report)."""
    retry_pending_finishes(pending.catalog)
    try:
        pending.finish()
    except CATALOG_ERRORS:
        PENDING_FINISHES[pending.rec_id] = pending
        raise


def retry_pending_finishes(catalog: Catalog) -> int:
    """Finish the items of `catalog` a full disk kept waiting; returns how many still wait."""
    for rec_id, pending in list(PENDING_FINISHES.items()):
        if pending.catalog is not catalog:
            continue
        try:
            pending.finish()
        except CATALOG_ERRORS:
            break  # still no room
        except Exception as exc:  # noqa: BLE001 - e.g. finished meanwhile by start-up repair of another process
            log.warning("recording %s of lesson %s: not finished after all: %s", rec_id, pending.lesson_id, exc)
        else:
            log.info("recording %s of lesson %s finished in the library after all", rec_id, pending.lesson_id)
        PENDING_FINISHES.pop(rec_id, None)
    return sum(1 for p in PENDING_FINISHES.values() if p.catalog is catalog)

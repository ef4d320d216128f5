"""A scheduled lesson's recordings filed under its timetable entry's curriculum fields, so nobody retypes them: when a
lesson whose id is an occurrence's (``<entry>-<YYYYMMDD>``) has been recorded, each of its library items gets the
entry's 学段/学科/年级/教材版本/章节, the date and the teacher's school — only where the item has none yet (what the
teacher typed stays)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from recorder.library.catalog import METADATA_FIELDS, Library, LibraryError, Viewer
from signaling.accounts.service import AccountError, Accounts
from signaling.accounts.timetable import CURRICULUM, parse_lesson_id

log = logging.getLogger("ketang.accounts")
FILER = Viewer.operator("timetable")


async def file_recordings(accounts: Accounts, library: Library, lesson_id: str) -> int:
    """Fill the curriculum fields of ``lesson_id``'s library items from its timetable entry; how many were
    changed (0 for a lesson not of the timetable)."""
    if parse_lesson_id(lesson_id) is None:
        return 0
    try:
        occurrence = await accounts.occurrence(lesson_id)
        teacher = await accounts.get_user(occurrence["teacher"]["id"])
    except AccountError:
        return 0
    wanted: dict[str, Any] = {name: occurrence[name] for name in CURRICULUM}
    wanted.update(date=occurrence["date"], school=teacher["school"])
    items, _ = await library.search("", {"lesson_id": lesson_id}, viewer=FILER)
    changed = 0
    for item in items:
        fields = {name: str(value)[:METADATA_FIELDS[name]] for name, value in wanted.items()
                  if value and not getattr(item, name, "")}
        if not fields:
            continue
        try:
            await library.update_metadata(item.id, fields, FILER)
            changed += 1
        except LibraryError as exc:  # (an item being reviewed at that moment: filed by hand instead)
            log.warning("could not file recording %s under its timetable entry: %s", item.id, exc.message)
    return changed


def filer(accounts: Accounts, library: Library) -> Callable[[str], None]:
    """``file_soon(lesson_id)``: file_recordings in the background (for the hub's lesson-recorded callback, which
    must not wait); a failure is logged, never raised."""
    running: set[asyncio.Future[int]] = set()

    async def logged(lesson_id: str) -> int:
        try:
            return await file_recordings(accounts, library, lesson_id)
        except Exception:  # noqa: BLE001 - a store outage costs the filing (done by hand), never the lesson
            log.exception("filing lesson %s's recordings under its timetable entry failed", lesson_id)
            return 0

    def file_soon(lesson_id: str) -> None:
        if parse_lesson_id(lesson_id) is None:
            return
        task = asyncio.ensure_future(logged(lesson_id))
        running.add(task)
        task.add_done_callback(running.discard)

    return file_soon

"""What the supervision dashboard and webhooks hear of the lessons: the hub's lesson events (a lesson went live, its
teacher ended it), the recordings finished, and a check every ABSENT_CHECK_S for scheduled classrooms not connected
ABSENT_AFTER_S after their lesson's start (``classroom.absent``, once per lesson and classroom on any node: the
room store says who is connected on every node). Nothing here may hold a lesson up: every store write runs in the
background and a failure is logged."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from recorder.library.catalog import Library
from signaling.accounts.filing import FILER
from signaling.accounts.timetable import parse_lesson_id
from signaling.supervision.service import Supervision
from signaling.supervision.webhooks import Webhooks

if TYPE_CHECKING:
    from signaling.hub import Hub

log = logging.getLogger("ketang.supervision")

ABSENT_AFTER_S: Final[float] = 5 * 60
ABSENT_CHECK_S: Final[float] = 30.0


class LessonWatch:
    def __init__(self, supervision: Supervision, webhooks: Webhooks, library: Library | None = None, *,
                 absent_after_s: float = ABSENT_AFTER_S, check_s: float = ABSENT_CHECK_S) -> None:
        self.supervision = supervision
        self.webhooks = webhooks
        self.library = library
        self.absent_after_s = absent_after_s
        self.check_s = check_s
        self.hub: Hub | None = None
        self._recorded: set[str] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._absence: asyncio.Task[None] | None = None

    def attach(self, hub: Hub) -> None:
        """Listen to ``hub``'s lesson events and start the absence check."""
        self.hub = hub
        hub.on_lesson_event = self.lesson_event
        self._absence = asyncio.ensure_future(self._absence_loop())

    async def close(self) -> None:
        if self._absence is not None:
            self._absence.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def recorded(self, lesson_id: str) -> None:
        """The lesson's teacher ended it with files recorded (the hub's lesson-recorded callback)."""
        self._recorded.add(lesson_id)

    def lesson_event(self, event: str, lesson_id: str, data: dict[str, Any]) -> None:
        self._spawn(self._on_event(event, lesson_id, data))

    async def _on_event(self, event: str, lesson_id: str, data: dict[str, Any]) -> None:
        lesson = data.get("lesson") or {}
        public = {"lesson": lesson_id, "title": lesson.get("title", ""), "teacher": lesson.get("teacher", ""),
                  "started_at": lesson.get("started_at"), "ended_at": lesson.get("ended_at")}
        parsed = parse_lesson_id(lesson_id)
        if parsed is not None:
            public.update(entry=parsed[0], date=parsed[1].isoformat())
        try:
            if event == "started":
                await self.webhooks.emit("lesson.started", public,
                                         dedup=f"started:{lesson_id}:{lesson.get('started_at')}")
                return
            rows = data.get("attendance") or []
            await self.supervision.record_run(lesson_id, title=public["title"], teacher=public["teacher"],
                                              started_at=lesson.get("started_at"),
                                              ended_at=lesson.get("ended_at") or time.time(), rows=rows)
            public["classrooms"] = [{"id": r["participant"], "name": r["name"],
                                     "present_min": round(r["present_s"] / 60, 1)} for r in rows]
            await self.webhooks.emit("lesson.ended", public, dedup=f"ended:{lesson_id}:{lesson.get('ended_at')}")
            if lesson_id in self._recorded:
                self._recorded.discard(lesson_id)
                await self.webhooks.emit("recording.ready", {"lesson": lesson_id, "title": public["title"],
                                                             "items": await self._items(lesson_id)})
        except Exception:  # noqa: BLE001 - a store outage costs the figures or the event, never the lesson
            log.exception("could not keep lesson %s's %s event", lesson_id, event)

    async def _items(self, lesson_id: str) -> list[dict[str, Any]]:
        if self.library is None:
            return []
        items, _ = await self.library.search("", {"lesson_id": lesson_id}, viewer=FILER)
        return [{"id": i.id, "title": i.title, "duration_s": i.duration_s, "state": i.state} for i in items]

    # -- classroom.absent ---------------------------------------------------------------------------------------

    async def _absence_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.check_absent(time.time())
            except Exception:  # noqa: BLE001
                log.exception("the absent classrooms check failed")

    async def check_absent(self, now: float) -> int:
        """Queue classroom.absent for each classroom of a lesson going on now (started at least absent_after_s ago,
        not yet over) that is not connected; how many were found."""
        hub = self.hub
        if hub is None or hub.store_up is False:
            return 0
        today = datetime.fromtimestamp(now).date()
        found = 0
        for o in await self.supervision.accounts.occurrences(today, today):
            start = datetime.combine(today, datetime.strptime(o["start_time"], "%H:%M").time()).timestamp()
            end = datetime.combine(today, datetime.strptime(o["end_time"], "%H:%M").time()).timestamp()
            if not start + self.absent_after_s <= now < end:
                continue
            here = {p.id for p in await hub.store.list_participants(o["lesson"]) if p.role == "classroom"}
            for c in o["classrooms"]:
                if c["id"] in here:
                    continue
                found += 1
                await self.webhooks.emit("classroom.absent", {
                    "lesson": o["lesson"], "title": o["title"], "date": o["date"], "start_time": o["start_time"],
                    "teacher": o["teacher"], "classroom": c,
                    "minutes_after_start": int((now - start) // 60)}, dedup=f"absent:{o['lesson']}:{c['id']}")
        return found

"""The supervision dashboard's figures (督导): held lessons kept in the store, figures per school and per teacher, a
school's weekly report (CSV, XLSX), and what is live now on this node.

A lesson is **held** when its teacher ended it: the hub then hands its attendance rows (the same rows as its
attendance.csv) to ``record_run``, which keeps them in ``lesson_runs`` / ``lesson_run_classrooms``, so reports work
across nodes and restarts. A lesson of the timetable is known by its live lesson id (``<entry>-<YYYYMMDD>``).

Figures over a date range (``figures``), counting only lessons **due** (their day has passed, or today their end
time has, or they were held):
- per teacher: the teacher's lessons; per school: the lessons with a receiving classroom of that school (a
  classroom account's ``school``), and that school's classroom places in them;
- 开课率 ``held_rate`` = held / scheduled lessons; classroom attendance rate ``attendance_rate`` = classroom places
  present (any time in the lesson) / classroom places of the scheduled lessons (the classrooms of a lesson not
  held count as absent); ``video_min`` the minutes the classrooms received video;
  ``loss_avg`` / ``rtt_ms_avg`` the mean of the present classrooms' lesson averages.
"""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta, timezone
from typing import Any, Final

import sqlalchemy as sa
from openpyxl import Workbook
from openpyxl.styles import Font

from signaling.accounts import Accounts
from signaling.accounts.timetable import parse_lesson_id
from signaling.lesson.interaction import UTF8_BOM, _csv_text
from store import lesson_run_classrooms, lesson_runs

# quality bands of a classroom's reception (averages so far): good below both, fair below both of the second
GOOD: Final[tuple[float, float]] = (0.02, 150.0)  # loss fraction, RTT ms
FAIR: Final[tuple[float, float]] = (0.08, 400.0)
REPORT_HEADER: Final[list[str]] = ["日期", "开始", "结束", "节次", "课程名称", "主讲教师", "接收教室", "已开课",
                                   "出勤分钟", "有视频分钟", "丢包率%", "往返时延ms"]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def band(loss: float | None, rtt_ms: float | None) -> str | None:
    """good / fair / poor from a classroom's loss (0..1) and RTT; None when neither is known yet."""
    if loss is None and rtt_ms is None:
        return None
    loss, rtt_ms = loss or 0.0, rtt_ms or 0.0
    if loss < GOOD[0] and rtt_ms < GOOD[1]:
        return "good"
    if loss < FAIR[0] and rtt_ms < FAIR[1]:
        return "fair"
    return "poor"


class Supervision:
    """Held lessons in ``accounts``' store, and the figures made from them and the timetable. ``now``: epoch seconds
    (tests move it); dates and times of day are the server's local ones, as the timetable is written."""

    def __init__(self, accounts: Accounts, *, now: Callable[[], float] = time.time) -> None:
        self.accounts = accounts
        self.now = now

    @property
    def store(self) -> Any:
        return self.accounts.store

    def today(self) -> date:
        return datetime.fromtimestamp(self.now()).date()

    # -- writing ------------------------------------------------------------------------------------------------

    async def record_run(self, lesson_id: str, *, title: str, teacher: str, started_at: float | None,
                         ended_at: float, rows: Iterable[dict[str, Any]]) -> None:
        """A lesson was held (its teacher ended it): its classrooms' attendance rows (Attendance.rows). Ended
        again later (the teacher started it anew), the run is replaced, keeping its first start."""
        await self.accounts.open()
        parsed = parse_lesson_id(lesson_id)
        held_on = parsed[1] if parsed else datetime.fromtimestamp(started_at or ended_at).date()
        async with self.store.write() as db:
            before = (await db.execute(sa.select(lesson_runs.c.started_at)
                                       .where(lesson_runs.c.lesson_id == lesson_id))).first()
            await db.execute(sa.delete(lesson_run_classrooms).where(lesson_run_classrooms.c.lesson_id == lesson_id))
            await db.execute(sa.delete(lesson_runs).where(lesson_runs.c.lesson_id == lesson_id))
            first = before.started_at if before is not None and before.started_at else (
                _iso(started_at) if started_at else None)
            await db.execute(sa.insert(lesson_runs).values(
                lesson_id=lesson_id, entry_id=parsed[0] if parsed else None, date=held_on.isoformat(),
                title=title[:500], teacher=teacher[:200], started_at=first, ended_at=_iso(ended_at)))
            values = [{"lesson_id": lesson_id, "participant": str(r["participant"])[:160],
                       "name": str(r.get("name") or "")[:200], "present_s": float(r["present_s"]),
                       "video_s": float(r["present_s"]) * float(r.get("video_share") or 0.0),
                       "sessions": int(r.get("sessions") or 0), "loss_avg": r.get("loss_avg"),
                       "rtt_ms_avg": r.get("rtt_ms_avg"), "kbps_avg": r.get("kbps_avg")} for r in rows]
            if values:
                await db.execute(sa.insert(lesson_run_classrooms), values)

    # -- reading ------------------------------------------------------------------------------------------------

    async def runs(self, first: date, last: date) -> dict[str, dict[str, Any]]:
        """The lessons held from ``first`` to ``last``, by live lesson id, each with ``classrooms`` by participant."""
        await self.accounts.open()
        async with self.store.read() as db:
            found = (await db.execute(sa.select(lesson_runs).where(
                lesson_runs.c.date.between(first.isoformat(), last.isoformat())))).all()
            out = {r.lesson_id: dict(r._mapping, classrooms={}) for r in found}
            if out:
                for c in (await db.execute(sa.select(lesson_run_classrooms).where(
                        lesson_run_classrooms.c.lesson_id.in_(list(out))))).all():
                    out[c.lesson_id]["classrooms"][c.participant] = dict(c._mapping)
        return out

    async def run(self, lesson_id: str) -> dict[str, Any] | None:
        parsed = parse_lesson_id(lesson_id)
        day = parsed[1] if parsed else None
        if day is None:
            async with self.store.read() as db:
                row = (await db.execute(sa.select(lesson_runs.c.date)
                                        .where(lesson_runs.c.lesson_id == lesson_id))).first()
            if row is None:
                return None
            day = date.fromisoformat(row.date)
        return (await self.runs(day, day)).get(lesson_id)

    def _due(self, occurrence: dict[str, Any], held: bool) -> bool:
        now = datetime.fromtimestamp(self.now())
        today, hhmm = now.date().isoformat(), now.strftime("%H:%M")
        return held or occurrence["date"] < today or (occurrence["date"] == today and occurrence["end_time"] <= hhmm)

    async def lessons(self, first: date, last: date) -> list[dict[str, Any]]:
        """Every scheduled lesson from ``first`` to ``last``: the occurrence, whether it is due and held, and each
        classroom's attendance in it (``school`` from its account)."""
        occurrences = await self.accounts.occurrences(first, last)
        runs = await self.runs(first, last)
        schools = {u["id"]: u["school"] for u in await self.accounts.list_users()}
        out = []
        for o in occurrences:
            run = runs.get(o["lesson"])
            rooms = []
            for c in o["classrooms"]:
                row = run["classrooms"].get(c["id"]) if run else None
                rooms.append({"id": c["id"], "name": c["name"], "school": schools.get(c["id"], ""),
                              "present": bool(row and row["present_s"] > 0),
                              "present_min": round(row["present_s"] / 60, 1) if row else 0.0,
                              "video_min": round(row["video_s"] / 60, 1) if row else 0.0,
                              "loss_avg": row["loss_avg"] if row else None,
                              "rtt_ms_avg": row["rtt_ms_avg"] if row else None})
            out.append({**o, "teacher_school": schools.get(o["teacher"]["id"], ""), "held": run is not None,
                        "due": self._due(o, run is not None), "classrooms": rooms,
                        "started_at": run["started_at"] if run else None,
                        "ended_at": run["ended_at"] if run else None})
        return out

    async def figures(self, first: date, last: date) -> dict[str, Any]:
        """开课率, classroom attendance rate, minutes with video, average loss and RTT, per school and per teacher,
        over the due lessons from ``first`` to ``last``."""
        lessons = [lesson for lesson in await self.lessons(first, last) if lesson["due"]]
        by_school: dict[str, _Tally] = defaultdict(_Tally)
        by_teacher: dict[str, _Tally] = defaultdict(_Tally)
        total = _Tally()
        for lesson in lessons:
            teacher = by_teacher[lesson["teacher"]["id"]]
            teacher.name = lesson["teacher"]["name"]
            for tally, rooms in ((teacher, lesson["classrooms"]), (total, lesson["classrooms"])):
                tally.add(lesson["held"], rooms)
            for school in sorted({c["school"] for c in lesson["classrooms"]}):
                by_school[school].name = school
                by_school[school].add(lesson["held"], [c for c in lesson["classrooms"] if c["school"] == school])
        return {"from": first.isoformat(), "to": last.isoformat(), "total": total.json(),
                "schools": [t.json() for _, t in sorted(by_school.items())],
                "teachers": [dict(t.json(), id=tid) for tid, t in sorted(by_teacher.items(),
                                                                         key=lambda kv: kv[1].name)]}

    # -- a school's weekly report -------------------------------------------------------------------------------

    async def report_rows(self, school: str, monday: date) -> list[list[Any]]:
        """One row per classroom of ``school`` per scheduled lesson of the week from ``monday``."""
        rows: list[list[Any]] = []
        for lesson in await self.lessons(monday, monday + timedelta(days=6)):
            for c in lesson["classrooms"]:
                if c["school"] != school:
                    continue
                rows.append([lesson["date"], lesson["start_time"], lesson["end_time"], lesson["period"] or "",
                             lesson["title"], lesson["teacher"]["name"], c["name"],
                             "是" if lesson["held"] else ("否" if lesson["due"] else "未到"),
                             c["present_min"], c["video_min"],
                             "" if c["loss_avg"] is None else round(c["loss_avg"] * 100, 2),
                             "" if c["rtt_ms_avg"] is None else round(c["rtt_ms_avg"])])
        return rows

    async def report_csv(self, school: str, monday: date) -> str:
        """The weekly report as CSV for Excel: UTF-8 with a BOM, text cells kept from running as formulas."""
        out = io.StringIO()
        out.write(UTF8_BOM)
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(REPORT_HEADER)
        for row in await self.report_rows(school, monday):
            writer.writerow([_csv_text(v) if isinstance(v, str) else v for v in row])
        return out.getvalue()

    async def report_xlsx(self, school: str, monday: date) -> bytes:
        rows = await self.report_rows(school, monday)
        book = Workbook()
        sheet = book.active
        sheet.title = "周报"
        sheet.append([f"{school} · {monday.isoformat()} 起一周"])
        sheet.append(REPORT_HEADER)
        for cell in sheet[2]:
            cell.font = Font(bold=True)
        for row in rows:
            sheet.append([_csv_text(v) if isinstance(v, str) else v for v in row])
        for column, width in zip("ABCDEFGHIJKL", (11, 7, 7, 5, 28, 12, 22, 7, 9, 11, 8, 10), strict=True):
            sheet.column_dimensions[column].width = width
        out = io.BytesIO()
        book.save(out)
        return out.getvalue()


class _Tally:
    def __init__(self) -> None:
        self.name = ""
        self.scheduled = self.held = self.places = self.present = 0
        self.video_s = 0.0
        self.losses: list[float] = []
        self.rtts: list[float] = []

    def add(self, held: bool, rooms: list[dict[str, Any]]) -> None:
        self.scheduled += 1
        self.held += held
        self.places += len(rooms)
        for c in rooms:
            if not c["present"]:
                continue
            self.present += 1
            self.video_s += c["video_min"] * 60
            if c["loss_avg"] is not None:
                self.losses.append(c["loss_avg"])
            if c["rtt_ms_avg"] is not None:
                self.rtts.append(c["rtt_ms_avg"])

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "scheduled": self.scheduled, "held": self.held,
                "held_rate": round(self.held / self.scheduled, 3) if self.scheduled else None,
                "classroom_places": self.places, "classrooms_present": self.present,
                "attendance_rate": round(self.present / self.places, 3) if self.places else None,
                "video_min": round(self.video_s / 60, 1),
                "loss_avg": round(sum(self.losses) / len(self.losses), 4) if self.losses else None,
                "rtt_ms_avg": round(sum(self.rtts) / len(self.rtts), 1) if self.rtts else None}

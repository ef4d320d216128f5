"""The timetable's rules, pure (no store, no clock): weeks of a term, the dates a lesson happens on, the live lesson id
of each occurrence, clashes, and reading a school's timetable sheet (CSV or XLSX) into checked rows with a per-row
report in Chinese.

A term has a first day and a number of weeks; week 1 is the (Monday-to-Sunday) week of its first day, and days of
week 1 before the first day are not in the term. A weekly entry happens on its weekday in each of its weeks; a one-off
entry on its date. Times are the school's wall-clock ``HH:MM``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final

MAX_TERM_WEEKS: Final[int] = 30
MAX_IMPORT_ROWS: Final[int] = 2000
MAX_IMPORT_BYTES: Final[int] = 2 * 1024 * 1024
MAX_TITLE_CHARS: Final[int] = 200
MAX_FIELD_CHARS: Final[int] = 100
_TIME = re.compile(r"([01]?\d|2[0-3])[:：]([0-5]\d)")
_WEEKS = re.compile(r"\d{1,2}(-\d{1,2})?(,\d{1,2}(-\d{1,2})?)*")
WEEKDAY_NAMES: Final[dict[str, int]] = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "日": 7, "天": 7}
CURRICULUM: Final[tuple[str, ...]] = ("stage", "subject", "grade", "edition", "chapter")


def lesson_id(entry_id: str, day: date) -> str:
    """The live lesson id of one occurrence: the engine's lessons are named by it, so a teacher starting it and
    its classrooms' screens meet in one lesson (``k3x9m2pq-20250908``)."""
    return f"{entry_id}-{day:%Y%m%d}"


def parse_lesson_id(lesson: str) -> tuple[str, date] | None:
    """The entry id and the date of an occurrence's lesson id, or None for any other lesson id."""
    entry, _, day = lesson.rpartition("-")
    if not entry or not re.fullmatch(r"\d{8}", day):
        return None
    try:
        return entry, date(int(day[:4]), int(day[4:6]), int(day[6:]))
    except ValueError:
        return None


def parse_date(text: str) -> date:
    """``YYYY-MM-DD`` (or with / or . between), else ValueError."""
    m = re.fullmatch(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})", text.strip())
    if not m:
        raise ValueError("not a date")
    return date(int(m[1]), int(m[2]), int(m[3]))


def parse_time(text: str) -> str:
    """``H:MM`` or ``HH:MM`` (a full-width colon too) as ``HH:MM``, else ValueError."""
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise ValueError("not a time")
    return f"{int(m[1]):02d}:{m[2]}"


def parse_weekday(text: str) -> int:
    """1 (Monday) ... 7 (Sunday) from ``1``-``7``, ``一``/``周一``/``星期一``/``礼拜一`` (日/天 for Sunday) or an English
    name; else ValueError."""
    s = text.strip().lower()
    if s.isdigit() and 1 <= int(s) <= 7:
        return int(s)
    for prefix in ("星期", "周", "礼拜"):
        s = s.removeprefix(prefix)
    if s in WEEKDAY_NAMES:
        return WEEKDAY_NAMES[s]
    for i, name in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), 1):
        if s.startswith(name):
            return i
    raise ValueError("not a weekday")


def parse_weeks(text: str, term_weeks: int) -> list[int]:
    """The weeks of ``"1-16"``, ``"1,3,5-9"`` (full-width commas, 、 and ~ too; 单周/双周 after a range keep the odd
    or even ones) within 1..term_weeks, sorted; ValueError when malformed, empty or outside the term."""
    s = re.sub(r"\s+", "", text).replace("，", ",").replace("、", ",").replace("~", "-").replace("～", "-")
    s = s.replace("—", "-").replace("至", "-").removeprefix("第").removesuffix("周")
    parity = None
    for word, p in (("(单)", 1), ("(双)", 0), ("单周", 1), ("双周", 0), ("单", 1), ("双", 0)):
        if s.endswith(word):
            s, parity = s[: -len(word)].removesuffix("周"), p
            break
    if not s:
        return list(range(1, term_weeks + 1))
    if not _WEEKS.fullmatch(s):
        raise ValueError("weeks are malformed")
    weeks: set[int] = set()
    for part in s.split(","):
        first, _, last = part.partition("-")
        a, b = int(first), int(last or first)
        if a > b or a < 1 or b > term_weeks:
            raise ValueError("weeks outside the term")
        weeks.update(w for w in range(a, b + 1) if parity is None or w % 2 == parity)
    if not weeks:
        raise ValueError("no week")
    return sorted(weeks)


def format_weeks(weeks: Iterable[int]) -> str:
    """The canonical text of a set of weeks: ``[1, 2, 3, 5]`` -> ``"1-3,5"``."""
    out: list[str] = []
    ordered = sorted(set(weeks))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def term_week_dates(start: date, weeks: int, week: int) -> tuple[date, date]:
    """The Monday and Sunday of a term's ``week`` (1-based)."""
    monday = start - timedelta(days=start.weekday()) + timedelta(weeks=week - 1)
    return monday, monday + timedelta(days=6)


def term_end(start: date, weeks: int) -> date:
    return term_week_dates(start, weeks, weeks)[1]


def weekly_dates(start: date, term_weeks: int, weekday: int, weeks: Iterable[int]) -> list[date]:
    """The dates a weekly entry happens on: its weekday in each of its weeks, never before the term's first day."""
    out = []
    for week in sorted(set(weeks)):
        if not 1 <= week <= term_weeks:
            continue
        day = term_week_dates(start, term_weeks, week)[0] + timedelta(days=weekday - 1)
        if day >= start:
            out.append(day)
    return out


@dataclass(frozen=True)
class Slot:
    """When and with whom one entry happens: what clashes are decided on."""

    entry_id: str
    title: str
    teacher_id: str
    classroom_ids: frozenset[str]
    dates: frozenset[date]
    start_time: str
    end_time: str

    def overlaps(self, other: Slot) -> bool:
        return self.start_time < other.end_time and other.start_time < self.end_time


@dataclass(frozen=True)
class Clash:
    """``entry`` (already in the timetable, or an earlier row of the same import) has ``who`` in it at ``day``."""

    entry_id: str
    title: str
    day: date
    start_time: str
    end_time: str
    teacher: bool
    classroom_ids: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"entry": self.entry_id, "title": self.title, "date": self.day.isoformat(),
                "start_time": self.start_time, "end_time": self.end_time, "teacher": self.teacher,
                "classrooms": list(self.classroom_ids)}


def clashes(candidate: Slot, others: Iterable[Slot]) -> list[Clash]:
    """Every other slot the candidate clashes with (the same teacher or a shared classroom, on a common date, at an
    overlapping time), the first date of each; the candidate's own entry id is skipped (an edit)."""
    found = []
    for other in others:
        if other.entry_id == candidate.entry_id or not candidate.overlaps(other):
            continue
        teacher = other.teacher_id == candidate.teacher_id
        shared = candidate.classroom_ids & other.classroom_ids
        if not (teacher or shared):
            continue
        common = candidate.dates & other.dates
        if common:
            found.append(Clash(other.entry_id, other.title, min(common), other.start_time, other.end_time, teacher,
                               tuple(sorted(shared))))
    return found


# -- import: a school's timetable sheet ------------------------------------------------------------------------

# the columns a sheet may have, by the names schools write (Chinese) or English; the first row is the header
COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "title": ("课程名称", "课程", "课题", "标题", "title"),
    "teacher": ("主讲教师", "教师", "授课教师", "teacher"),
    "classrooms": ("接收教室", "听讲教室", "教室", "classrooms", "classroom"),
    "date": ("日期", "date"),
    "weekday": ("星期", "周几", "weekday"),
    "period": ("节次", "第几节", "period"),
    "start_time": ("开始时间", "上课时间", "开始", "start", "start_time"),
    "end_time": ("结束时间", "下课时间", "结束", "end", "end_time"),
    "weeks": ("周次", "教学周", "weeks"),
    "stage": ("学段", "stage"),
    "subject": ("学科", "subject"),
    "grade": ("年级", "grade"),
    "edition": ("教材版本", "教材", "edition"),
    "chapter": ("章节", "chapter"),
}
REQUIRED_COLUMNS: Final[tuple[str, ...]] = ("title", "teacher", "classrooms", "start_time", "end_time")
CLASSROOM_SEPARATORS: Final = re.compile(r"[、，,;；/\n]+")

# what is wrong with a cell, in Chinese (the report is read by the district's administrator); the codes go to the
# page too, which says them in English with ?lang=en
IMPORT_MESSAGES: Final[dict[str, str]] = {
    "missing_column": "缺少必填列「{column}」",
    "required": "「{column}」不能为空",
    "too_long": "「{column}」太长（最多 {max} 个字）",
    "bad_date": "「{value}」不是日期，请写成 2025-09-08",
    "bad_time": "「{value}」不是时间，请写成 08:00",
    "bad_weekday": "「{value}」不是星期几，请写成 一 到 日（或 1 到 7）",
    "bad_weeks": "周次「{value}」无法识别或超出本学期（共 {weeks} 周），请写成 1-16 或 1,3,5-9",
    "bad_period": "节次「{value}」应为 1 到 20 的数字",
    "end_before_start": "结束时间 {end} 不晚于开始时间 {start}",
    "when_missing": "请填写「星期」（每周的课）或「日期」（单次课）",
    "date_outside_term": "日期 {value} 不在本学期内（{first} 至 {last}）",
    "unknown_teacher": "找不到教师「{value}」，请先在“用户”中创建该教师账号（填写登录名或姓名）",
    "ambiguous_teacher": "有多位教师叫「{value}」，请改填登录名",
    "unknown_classroom": "找不到接收教室「{value}」，请先在“教室屏幕”中创建该教室（填写登录名或名称）",
    "ambiguous_classroom": "有多个教室叫「{value}」，请改填登录名",
    "clash_teacher": "与「{title}」冲突：该教师 {date} {start}-{end} 已有课",
    "clash_classroom": "与「{title}」冲突：教室 {classrooms} 在 {date} {start}-{end} 已有课",
    "too_many_rows": "行数太多（最多 {max} 行），请分学期或分学校导入",
    "unreadable": "无法读取该文件：请上传 CSV（UTF-8 或 GBK 编码）或 XLSX 文件",
    "empty": "文件中没有课程行",
}


@dataclass
class RowError:
    row: int  # the sheet's row number as a spreadsheet shows it (the header is row 1)
    column: str  # the column's header as written in the sheet ("" for the whole row or file)
    code: str
    message: str  # in Chinese

    def as_json(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "code": self.code, "message": self.message}


def row_error(row: int, column: str, code: str, **values: Any) -> RowError:
    return RowError(row, column, code, IMPORT_MESSAGES[code].format(column=column, **values))


@dataclass
class SheetRow:
    """One lesson row of a sheet: its number, and each known column's text (stripped; "" when empty)."""

    number: int
    cells: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)  # field -> the header as written


class SheetError(ValueError):
    def __init__(self, error: RowError) -> None:
        super().__init__(error.message)
        self.error = error


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "gb18030"):  # Excel in China saves CSV as GBK unless told otherwise
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise SheetError(row_error(0, "", "unreadable"))


def _cell(value: Any) -> str:
    """A cell as text: times and dates of a spreadsheet written the way a person would type them."""
    if value is None:
        return ""
    if hasattr(value, "hour") and not hasattr(value, "year"):  # datetime.time
        return f"{value.hour:02d}:{value.minute:02d}"
    if hasattr(value, "year"):
        if hasattr(value, "hour") and (value.hour or value.minute):
            return f"{value:%Y-%m-%d %H:%M}"
        return f"{value:%Y-%m-%d}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_sheet(data: bytes, filename: str = "") -> list[SheetRow]:
    """The lesson rows of a CSV (UTF-8 or GBK) or XLSX file; SheetError for an unreadable file, a missing column, no
    rows or too many."""
    if len(data) > MAX_IMPORT_BYTES:
        raise SheetError(row_error(0, "", "too_many_rows", max=MAX_IMPORT_ROWS))
    if data[:4] == b"PK\x03\x04" or filename.lower().endswith(".xlsx"):
        rows = _xlsx_rows(data)
    else:
        rows = ([_cell(c) for c in r] for r in csv.reader(io.StringIO(_decode(data))))
    return _sheet_rows(rows)


def _xlsx_rows(data: bytes) -> Iterator[list[str]]:
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds for a file that is not a workbook
        raise SheetError(row_error(0, "", "unreadable")) from exc
    try:
        sheet = book.worksheets[0]
        for row in sheet.iter_rows(values_only=True):
            yield [_cell(c) for c in row]
    finally:
        book.close()


HEADER_SEARCH_ROWS: Final[int] = 10  # a title or a note above the header (as sheets have) is skipped


def _header(cells: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    by_name = {alias.lower(): key for key, aliases in COLUMNS.items() for alias in aliases}
    index: dict[str, int] = {}
    headers: dict[str, str] = {}
    for i, name in enumerate(c.strip() for c in cells):
        key = by_name.get(name.lower())
        if key and key not in index:
            index[key], headers[key] = i, name
    return index, headers


def _sheet_rows(rows: Iterable[list[str]]) -> list[SheetRow]:
    """The header is the first row (of the first few that are not blank) naming every required column."""
    iterator = iter(rows)
    first: tuple[int, dict[str, int]] | None = None
    number, index, headers = 0, {}, {}
    for number, cells in enumerate(iterator, 1):
        if not any(cells):
            continue
        index, headers = _header(cells)
        if first is None:
            first = (number, index)
        if all(key in index for key in REQUIRED_COLUMNS):
            break
        if number >= HEADER_SEARCH_ROWS:
            break
    if first is None:
        raise SheetError(row_error(0, "", "empty"))
    if not all(key in index for key in REQUIRED_COLUMNS):
        number, index = first
        missing = next(key for key in REQUIRED_COLUMNS if key not in index)
        raise SheetError(row_error(number, COLUMNS[missing][0], "missing_column"))
    out = []
    for n, cells in enumerate(iterator, number + 1):
        if not any(c.strip() for c in cells):
            continue
        if len(out) >= MAX_IMPORT_ROWS:
            raise SheetError(row_error(n, "", "too_many_rows", max=MAX_IMPORT_ROWS))
        out.append(SheetRow(n, {k: (cells[i].strip() if i < len(cells) else "") for k, i in index.items()},
                            headers))
    if not out:
        raise SheetError(row_error(number, "", "empty"))
    return out


def header_of(row: SheetRow, key: str) -> str:
    return row.headers.get(key) or COLUMNS[key][0]


def split_classrooms(text: str) -> list[str]:
    return [name.strip() for name in CLASSROOM_SEPARATORS.split(text) if name.strip()]

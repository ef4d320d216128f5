"""The accounts and the timetable on each engine of the store (SQLite and a real PostgreSQL, the library's fixtures):
users and their passwords, sign-in lockout per account and per address and its end, sessions (idle expiry, revoked
by disabling), classroom screens' credentials, a weekly entry expanded over its term, clashes refused with what they
clash with, and a term's timetable imported from CSV and XLSX with one bad row reported (row, column, reason in
Chinese) and nothing half-imported unless the good rows are accepted."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import date

import pytest
from argon2 import PasswordHasher

from signaling.accounts import AccountError, Accounts
from signaling.accounts.service import ACCOUNT_MAX_FAILURES, ADDRESS_MAX_FAILURES, LOCKOUT_S, SESSION_TTL_S
from signaling.accounts.timetable import read_sheet
from store import Store

# cheap hashes for the tests (the server uses argon2-cffi's defaults); the scheme is the same
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
TERM_START = "2025-09-01"  # a Monday
CSV_HEADER = "课程名称,主讲教师,接收教室,星期,节次,开始时间,结束时间,周次,学段,学科,年级,教材版本,章节"


class Clock:
    def __init__(self) -> None:
        self.now = 1_757_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def accounts(database_url: str) -> AsyncIterator[tuple[Accounts, Clock]]:
    clock = Clock()
    acc = Accounts(Store(database_url), clock=clock, hasher=FAST)
    try:
        yield acc, clock
    finally:
        await acc.close()


async def people(acc: Accounts) -> dict[str, str]:
    ids = {}
    for login, name, role in (("li", "李老师", "teacher"), ("wang", "王老师", "teacher"),
                              ("r3", "第三小学", "classroom"), ("r5", "第五小学", "classroom"),
                              ("r7", "第七小学", "classroom")):
        ids[login] = (await acc.create_user(login=login, name=name, role=role,
                                            password="password-123" if role == "teacher" else None))["id"]
    return ids


async def test_users_passwords_and_the_lockout_per_account_and_per_address(accounts) -> None:
    acc, clock = accounts
    admin = await acc.create_user(login="Admin", name="王主任", role="administrator", password="district-pw")
    assert admin["login"] == "admin" and admin["role"] == "administrator"
    with pytest.raises(AccountError) as taken:
        await acc.create_user(login="ADMIN", name="x", role="teacher", password="another-pw")
    assert (taken.value.code, taken.value.status) == ("login_taken", 409)
    with pytest.raises(AccountError, match="password") as weak:
        await acc.create_user(login="t", name="x", role="teacher", password="short")
    assert weak.value.code == "weak_password"
    assert (await acc.sign_in("admin", "district-pw", "10.0.0.1")).outcome == "ok"
    assert (await acc.sign_in("nobody", "district-pw", "10.0.0.1")).outcome == "unknown_login"
    # per account: the fifth failure locks it, against the right password too, from any address
    for i in range(ACCOUNT_MAX_FAILURES):
        outcome = await acc.sign_in("admin", "wrong", f"10.0.1.{i}")
        assert outcome.outcome == "bad_password"
    assert outcome.locked_now == ("account",)
    with pytest.raises(AccountError) as locked:
        await acc.sign_in("admin", "district-pw", "10.0.9.9")
    assert locked.value.code == "login_locked" and locked.value.detail["retry_after_s"] == LOCKOUT_S
    clock.now += LOCKOUT_S + 1
    assert (await acc.sign_in("admin", "district-pw", "10.0.9.9")).outcome == "ok"
    # per address: many logins tried from one address lock the address, for a login never tried from it too
    for i in range(ADDRESS_MAX_FAILURES):
        outcome = await acc.sign_in(f"guess{i}", "x", "10.6.6.6")
    assert outcome.locked_now == ("address",)
    with pytest.raises(AccountError, match="try again"):
        await acc.sign_in("admin", "district-pw", "10.6.6.6")
    assert (await acc.sign_in("admin", "district-pw", "10.0.0.2")).outcome == "ok"


async def test_sessions_expire_when_idle_and_end_when_the_account_is_disabled(accounts) -> None:
    acc, clock = accounts
    teacher = await acc.create_user(login="li", name="李老师", role="teacher", password="password-123")
    cookie, signed_in = await acc.create_session(teacher["id"], "10.0.0.1")
    assert (await acc.session(cookie)).user["id"] == teacher["id"]  # type: ignore[union-attr]
    assert await acc.session(cookie + "x") is None
    clock.now += SESSION_TTL_S - 10  # used just before it expires: it slides on
    assert await acc.session(cookie) is not None
    clock.now += SESSION_TTL_S - 10
    assert await acc.session(cookie) is not None
    clock.now += SESSION_TTL_S + 1  # idle too long
    assert await acc.session(cookie) is None
    cookie, _ = await acc.create_session(teacher["id"])
    await acc.update_user(teacher["id"], disabled=True)
    assert await acc.session(cookie) is None
    assert (await acc.sign_in("li", "password-123", "10.0.0.1")).outcome == "disabled"


async def test_a_classroom_screens_credential_verifies_until_revoked_and_only_its_hash_is_kept(accounts) -> None:
    acc, _ = accounts
    room = await acc.create_user(login="r3", name="第三小学 三(2)班", role="classroom", school="第三小学")
    with pytest.raises(AccountError):
        await acc.create_user(login="r4", name="x", role="classroom", password="password-123")
    device, credential = await acc.create_device(room["id"], "一体机")
    assert (await acc.verify_device(credential))["id"] == room["id"]
    listed = await acc.list_devices()
    assert [(d["id"], d["classroom"]["name"], d["revoked"]) for d in listed] == [(device["id"], room["name"], False)]
    assert listed[0]["last_seen_at"] is not None
    async with acc.store.read() as db:
        import sqlalchemy as sa
        stored = (await db.execute(sa.text("SELECT secret_hash FROM devices"))).scalar_one()
    assert credential.split(".", 1)[1] not in stored
    for forged in ("", "nodot", device["id"] + ".wrong", "x" * 300):
        with pytest.raises(AccountError) as refused:
            await acc.verify_device(forged)
        assert refused.value.code == "unauthorized"
    await acc.revoke_device(device["id"])
    with pytest.raises(AccountError) as revoked:
        await acc.verify_device(credential)
    assert revoked.value.code == "device_revoked"
    # a disabled classroom's other screens stop too
    _, other = await acc.create_device(room["id"])
    await acc.update_user(room["id"], disabled=True)
    with pytest.raises(AccountError, match="revoked"):
        await acc.verify_device(other)


async def test_a_weekly_lesson_is_expanded_over_its_terms_weeks_and_clashes_are_refused_naming_them(accounts) -> None:
    acc, _ = accounts
    ids = await people(acc)
    term = await acc.create_term("2025 秋季学期", TERM_START, 18)
    assert term["end_date"] == "2026-01-04"
    entry = await acc.create_entry({"title": "七年级数学", "teacher_id": ids["li"], "classroom_ids": [ids["r3"],
                                    ids["r5"]], "kind": "weekly", "term_id": term["id"], "weekday": 3,
                                    "weeks": "1-16", "start_time": "8:00", "end_time": "08:45", "period": 1,
                                    "stage": "初中", "subject": "数学", "grade": "七年级", "edition": "人教版",
                                    "chapter": "一元一次方程"})
    assert (entry["weeks"], entry["start_time"], [c["name"] for c in entry["classrooms"]]) == (
        "1-16", "08:00", ["第三小学", "第五小学"])
    found = await acc.occurrences(date(2025, 9, 1), date(2026, 1, 31))
    assert len(found) == 16
    assert [o["date"] for o in found[:2]] == ["2025-09-03", "2025-09-10"] and found[-1]["date"] == "2025-12-17"
    assert found[0]["lesson"] == f"{entry['id']}-20250903" and found[0]["subject"] == "数学"
    assert (await acc.occurrence(found[0]["lesson"]))["title"] == "七年级数学"
    # the same teacher on Wednesday of week 5, overlapping: refused, naming the weekly lesson and the date
    with pytest.raises(AccountError) as clash:
        await acc.create_entry({"title": "公开课", "teacher_id": ids["li"], "classroom_ids": [ids["r7"]],
                                "kind": "once", "date": "2025-10-01", "start_time": "08:30", "end_time": "09:10"})
    assert clash.value.code == "clash" and clash.value.status == 409
    assert clash.value.detail["clashes"] == [{"entry": entry["id"], "title": "七年级数学", "date": "2025-10-01",
                                              "start_time": "08:00", "end_time": "08:45", "teacher": True,
                                              "classrooms": []}]
    # another teacher in one of its classrooms at that time: refused, naming the classroom
    with pytest.raises(AccountError) as room_clash:
        await acc.create_entry({"title": "英语", "teacher_id": ids["wang"], "classroom_ids": [ids["r5"]],
                                "kind": "weekly", "term_id": term["id"], "weekday": 3, "weeks": "2,4",
                                "start_time": "08:40", "end_time": "09:20"})
    assert room_clash.value.detail["clashes"][0]["classrooms"] == [ids["r5"]]
    # back to back, in week 17 (after the lesson's weeks), or another classroom: fine
    for data in ({"weeks": "1-18", "start_time": "08:45", "end_time": "09:30", "classroom_ids": [ids["r5"]]},
                 {"weeks": "17", "start_time": "08:00", "end_time": "08:45", "classroom_ids": [ids["r3"]]},
                 {"weeks": "1-18", "start_time": "08:00", "end_time": "08:45", "classroom_ids": [ids["r7"]],
                  "weekday": 4}):
        await acc.create_entry({"title": "英语", "teacher_id": ids["wang"], "kind": "weekly", "term_id": term["id"],
                                "weekday": 3, **data})
    assert len(await acc.list_entries(term["id"])) == 4
    assert len(await acc.occurrences(date(2025, 9, 1), date(2025, 9, 7), classroom_id=ids["r5"])) == 2


def sheet(rows: list[str]) -> bytes:
    return ("\n".join([CSV_HEADER, *rows]) + "\n").encode("utf-8")


GOOD_ROWS = ["七年级数学,李老师,第三小学、第五小学,周一,1,08:00,08:45,1-16,初中,数学,七年级,人教版,一元一次方程",
             "八年级物理,wang,第七小学,星期二,2,9:00,9:45,1-16(单),初中,物理,八年级,人教版,光的反射"]
BAD_ROW = "九年级化学,赵老师,第三小学,周八,3,10:00,10:45,1-16,初中,化学,九年级,人教版,燃烧"


async def test_a_csv_timetable_with_one_bad_row_is_reported_and_imports_nothing_unless_the_good_rows_are_taken(
        accounts) -> None:
    acc, _ = accounts
    await people(acc)
    term = await acc.create_term("2025 秋季学期", TERM_START, 18)
    rows = read_sheet(sheet([GOOD_ROWS[0], BAD_ROW, GOOD_ROWS[1]]).decode().encode("gb18030"), "课表.csv")
    report = await acc.import_timetable(term["id"], rows, mode="all")
    assert (report["rows"], report["valid"], report["written"]) == (3, 2, 0)
    assert [(e["row"], e["column"], e["code"]) for e in report["errors"]] == [
        (3, "主讲教师", "unknown_teacher"), (3, "星期", "bad_weekday")]
    assert "找不到教师「赵老师」" in report["errors"][0]["message"]
    assert await acc.list_entries(term["id"]) == []  # nothing half-imported
    report = await acc.import_timetable(term["id"], rows, mode="valid")
    assert report["written"] == 2
    entries = await acc.list_entries(term["id"])
    physics = next(e for e in entries if e["subject"] == "物理")
    assert (physics["weeks"], physics["weekday"], physics["chapter"]) == ("1,3,5,7,9,11,13,15", 2, "光的反射")
    # importing the same sheet again: every row clashes with what is now in the timetable
    again = await acc.import_timetable(term["id"], read_sheet(sheet(GOOD_ROWS)), mode="valid")
    assert again["written"] == 0 and {e["code"] for e in again["errors"]} == {"clash_teacher"}
    assert "与「七年级数学」冲突" in again["errors"][0]["message"]


async def test_an_xlsx_timetable_as_schools_keep_it_with_times_as_cells_and_a_clash_between_two_of_its_rows(
        accounts) -> None:
    from datetime import time as clock_time

    from openpyxl import Workbook

    acc, _ = accounts
    await people(acc)
    term = await acc.create_term("2025 秋季学期", TERM_START, 18)
    book = Workbook()
    ws = book.active
    ws.append(["2025 秋季 远程同步课堂课表"])  # a title row above the header is not a lesson: the header is found
    ws.append(CSV_HEADER.split(","))
    ws.append(["七年级数学", "li", "第三小学", "一", 1, clock_time(8, 0), clock_time(8, 45), "1-16", "初中", "数学",
               "七年级", "人教版", "一元一次方程"])
    ws.append(["七年级英语", "王老师", "第三小学", "一", 1, clock_time(8, 30), clock_time(9, 15), "1-16", "初中",
               "英语", "七年级", "人教版", "Unit 1"])
    ws.append(["公开课", "王老师", "第五小学", None, None, clock_time(14, 0), clock_time(14, 45), None, "初中",
               "数学", "七年级", "", ""])
    ws.cell(row=5, column=14, value="日期")  # (an extra column the sheet does not declare is ignored)
    buffer = io.BytesIO()
    book.save(buffer)
    rows = read_sheet(buffer.getvalue(), "课表.xlsx")
    assert [r.number for r in rows] == [3, 4, 5]
    report = await acc.import_timetable(term["id"], rows, mode="check")
    assert [(e["row"], e["column"], e["code"]) for e in report["errors"]] == [
        (4, "接收教室", "clash_classroom"), (5, "星期", "when_missing")]
    assert "教室 第三小学" in report["errors"][0]["message"]
    assert report["written"] == 0 and await acc.list_entries() == []


@pytest.mark.parametrize(("data", "code"), [
    (b"", "empty"), (b"\xff\xfe\x00garbage\x81", "unreadable"), ("课程名称,教师\n数学,李老师\n".encode(), "missing_column"),
    (b"PK\x03\x04 not really a workbook", "unreadable")])
def test_a_sheet_that_cannot_be_read_says_why_in_chinese(data: bytes, code: str) -> None:
    from signaling.accounts.timetable import SheetError

    with pytest.raises(SheetError) as refused:
        read_sheet(data)
    assert refused.value.error.code == code and any("\u4e00" <= c <= "\u9fff" for c in refused.value.error.message)


async def test_failures_at_once_are_each_counted_and_a_login_taken_at_once_is_refused_not_crashed(accounts) -> None:
    import asyncio

    acc, _ = accounts
    await acc.create_user(login="li", name="李老师", role="teacher", password="password-123")
    outcomes = await asyncio.gather(*(acc.sign_in("li", "wrong", f"10.0.0.{i}")
                                      for i in range(ACCOUNT_MAX_FAILURES)))
    assert sorted(o.locked_now for o in outcomes) == [()] * (ACCOUNT_MAX_FAILURES - 1) + [("account",)]
    with pytest.raises(AccountError, match="try again"):
        await acc.sign_in("li", "password-123", "10.0.1.1")
    made = await asyncio.gather(*(acc.create_user(login="wang", name="王老师", role="classroom") for _ in range(3)),
                                return_exceptions=True)
    assert sum(isinstance(m, dict) for m in made) == 1
    assert all(m.code == "login_taken" for m in made if isinstance(m, AccountError)) and len(made) == 3

"""A classroom screen's lesson token (`POST /api/screen/lessons/{lesson}/token`) over HTTP against the accounts' real
routes and a real store (SQLite), with the API's wall clock set by the test: given only to a screen of one of the
lesson's classrooms, only within the lesson's window (5 minutes before its start to 30 minutes after its end), never
to a revoked screen or a forged credential; the token is a classroom token for that lesson and classroom, valid until
the window closes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from signaling.accounts import Accounts, AccountsApi
from signaling.accounts import add_routes as add_account_routes
from signaling.accounts.web import SCREEN_EARLY_S, SCREEN_LATE_S
from signaling.audit import AuditLog, audit_path, read
from signaling.tokens import TokenError, verify_token
from store import Store, database_url_from

SECRET = "screen-token-secret-0123456789abcdef"
DAY = date(2025, 9, 8)  # a Monday


@dataclass
class Site:
    client: TestClient
    accounts: Accounts
    clock: list[datetime]
    data: Path


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    accounts = Accounts(Store(database_url_from(None, tmp_path)))
    clock = [datetime.combine(DAY, datetime.min.time()).replace(hour=7)]
    app = web.Application()
    audit = AuditLog(audit_path(tmp_path))
    add_account_routes(app, AccountsApi(accounts, SECRET, audit, now=lambda: clock[0]))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Site(client, accounts, clock, tmp_path)
    finally:
        await client.close()
        await accounts.close()
        audit.close()


async def token(site: Site, lesson: str, credential: str) -> tuple[int, dict]:
    resp = await site.client.post(f"/api/screen/lessons/{lesson}/token",
                                  headers={"Authorization": f"Device {credential}"})
    return resp.status, await resp.json()


async def test_a_screen_gets_its_classrooms_token_only_within_the_lessons_window(site: Site) -> None:
    acc = site.accounts
    teacher = await acc.create_user(login="li", name="李老师", role="teacher", password="teacher-pw-1234")
    room = await acc.create_user(login="sanxiao", name="第三小学 三(2)班", role="classroom")
    other = await acc.create_user(login="wuxiao", name="第五小学 七(1)班", role="classroom")
    _, credential = await acc.create_device(room["id"], "一体机")
    _, elsewhere = await acc.create_device(other["id"], "一体机")
    entry = await acc.create_entry({"title": "七年级数学", "teacher_id": teacher["id"], "classroom_ids": [room["id"]],
                                    "kind": "once", "date": DAY.isoformat(), "start_time": "09:00",
                                    "end_time": "09:45"})
    lesson = f"{entry['id']}-{DAY:%Y%m%d}"
    start = datetime.combine(DAY, datetime.min.time()).replace(hour=9)
    end = start.replace(minute=45)

    # the lesson list tells the screen the server's wall clock and the window
    site.clock[0] = start - timedelta(hours=1)
    resp = await site.client.get("/api/screen/lessons", headers={"Authorization": f"Device {credential}"})
    listed = await resp.json()
    assert resp.status == 200 and listed["now"] == "2025-09-08T08:00:00" and listed["today"] == DAY.isoformat()
    assert (listed["early_s"], listed["late_s"]) == (SCREEN_EARLY_S, SCREEN_LATE_S)
    assert [o["lesson"] for o in listed["lessons"]] == [lesson]

    # too early, then just inside the window, then its last second, then closed
    for now, ok in ((start - timedelta(seconds=SCREEN_EARLY_S + 1), False),
                    (start - timedelta(seconds=SCREEN_EARLY_S), True),
                    (end + timedelta(seconds=SCREEN_LATE_S - 1), True),
                    (end + timedelta(seconds=SCREEN_LATE_S), False)):
        site.clock[0] = now
        status, body = await token(site, lesson, credential)
        if ok:
            assert status == 200, body
            claims = verify_token(SECRET, body["token"], lesson=lesson, now=now.timestamp())
            assert (claims.role, claims.sub, claims.name, claims.title) == ("classroom", room["id"],
                                                                             "第三小学 三(2)班", "七年级数学")
            assert body["closes_at"] == (end + timedelta(seconds=SCREEN_LATE_S)).isoformat()
            with pytest.raises(TokenError):  # valid until the window closes, not for days
                verify_token(SECRET, body["token"], lesson=lesson,
                             now=(end + timedelta(seconds=SCREEN_LATE_S + 120)).timestamp())
        else:
            assert (status, body["code"]) == (409, "not_now"), (now, body)
            assert body["opens_at"] == "2025-09-08T08:55:00" and body["closes_at"] == "2025-09-08T10:15:00"
    # the lesson on another day of a weekly entry's: not now either (the same id on the next day does not exist)
    site.clock[0] = start
    status, body = await token(site, f"{entry['id']}-{DAY + timedelta(days=1):%Y%m%d}", credential)
    assert (status, body["code"]) == (404, "not_found")

    # another classroom's screen: not its lesson; a forged or malformed credential: refused
    assert (await token(site, lesson, elsewhere))[0] == 404
    forged = credential.split(".")[0] + ".forged"
    assert (await token(site, lesson, forged)) == (401, {"code": "unauthorized", "message": "unknown device credential"})
    resp = await site.client.post(f"/api/screen/lessons/{lesson}/token")
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"
    resp = await site.client.post(f"/api/screen/lessons/{lesson}/token", headers={"Authorization": "Device x" * 100})
    assert resp.status == 401

    # revoked: refused, even within the window
    device_id = credential.split(".")[0]
    await acc.revoke_device(device_id)
    status, body = await token(site, lesson, credential)
    assert (status, body["code"]) == (401, "device_revoked")
    lines = [e for e in read(audit_path(site.data)) if e["action"] == "screen_token"]
    assert [e["outcome"] for e in lines] == ["not_now", "ok", "ok", "not_now"]
    assert all(e["actor"]["sub"] == room["id"] and e["device"] == device_id for e in lines)

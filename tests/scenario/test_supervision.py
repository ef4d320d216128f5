"""The supervision dashboard and webhooks on the real app (make_app over HTTP on loopback, the store on SQLite, real
aiortc peers): a timetable lesson with two classrooms, one attends, one does not; while it runs the live view shows
1 of 2 connected; after its teacher ends it the dashboard shows it held with 1 of 2 classrooms, and the school's
weekly report CSV (and XLSX) has the attendance minutes of the lesson's own attendance.csv. A webhook receiver (a
real aiohttp server on 127.0.0.1) gets lesson.started and lesson.ended with signatures that verify, answers 500
once and gets the retry."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import openpyxl
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ketang.cli import main as ketang_main
from signaling.accounts.web import openapi_document
from signaling.app import WATCH_KEY, make_app
from signaling.config import Config
from signaling.supervision import sign, verify
from signaling.tokens import issue_token
from tests.scenario.test_accounts_security import ADMIN_PASSWORD, SECRET, Site, admin_post, sign_in
from tests.support import Classroom, Teacher, WsClient

@dataclass
class Receiver:
    url: str
    got: list[tuple[dict[str, str], bytes, int]]  # headers, body, the status answered


@pytest.fixture
async def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Site]:
    """The app as served, recording lessons (their attendance.csv), retrying webhooks after 0.3 s."""
    data = tmp_path / "data"
    monkeypatch.setattr("sys.stdin", io.StringIO(ADMIN_PASSWORD + "\n"))
    assert await asyncio.to_thread(ketang_main, [
        "admin", "create-user", "--role", "administrator", "--login", "admin", "--name", "王主任", "--password-stdin",
        "--data-dir", str(data)]) == 0
    server = TestServer(make_app(Config(data_dir=data, secret=SECRET, record=True, webhook_backoff_s=0.3)),
                        host="127.0.0.1")
    client, admin = TestClient(server), TestClient(server)
    await client.start_server()
    status, body, _ = await sign_in(admin, "admin", ADMIN_PASSWORD)
    assert status == 200, body
    try:
        yield Site(data, client, admin, body["csrf"])
    finally:
        await admin.close()
        await client.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got: list[tuple[dict[str, str], bytes, int]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        status = 500 if not got else 204  # the very first delivery fails: it must come again
        got.append((dict(request.headers), body, status))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Receiver(str(server.make_url("/hook")), got)
    finally:
        await server.close()


async def _join(ws_url: str, role: str, lesson: str, name: str, sub: str) -> WsClient:
    ws = await WsClient().connect(ws_url)
    reply = await ws.request({"type": "join", "lesson": lesson,
                              "token": issue_token(SECRET, role, lesson, name=name, sub=sub, title="七年级数学")})
    assert reply["type"] == "joined", reply
    return ws


async def _until(check, timeout_s: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met: {check.__name__}")
        await asyncio.sleep(0.2)


def test_signatures_verify_and_a_changed_body_or_an_old_time_does_not() -> None:
    body = b'{"event":"lesson.started"}'
    header = sign("whsec_test", 1_700_000_000, body)
    assert verify("whsec_test", header, body, now=1_700_000_010)
    assert not verify("whsec_test", header, body + b" ", now=1_700_000_010)
    assert not verify("whsec_other", header, body, now=1_700_000_010)
    assert not verify("whsec_test", header, body, now=1_700_000_000 + 3600)  # (a replay, an hour later)
    assert not verify("whsec_test", "garbage", body)


async def test_a_lesson_with_one_of_two_classrooms_is_on_the_dashboard_in_the_report_and_in_webhooks(
        site: Site, receiver: Receiver) -> None:
    hook = await admin_post(site, "/api/admin/webhooks", {"url": receiver.url,
                                                          "events": ["lesson.started", "lesson.ended",
                                                                                     "classroom.absent"]})
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    listed = await (await site.admin.get("/api/admin/webhooks")).json()
    assert [h["url"] for h in listed["webhooks"]] == [receiver.url] and "secret" not in listed["webhooks"][0]
    bad = await site.admin.post("/api/admin/webhooks", json={"url": "file:///etc/passwd", "events": ["lesson.ended"]},
                                headers={"X-CSRF-Token": site.admin_csrf})
    assert bad.status == 400 and (await bad.json())["code"] == "invalid"

    li = await admin_post(site, "/api/admin/users", {"login": "li", "name": "李老师", "role": "teacher",
                                                     "school": "实验中学", "password": "teacher-pw-1234"})
    here = await admin_post(site, "/api/admin/users", {"login": "san-3-2", "name": "第三小学 三(2)班",
                                                       "role": "classroom", "school": "第三小学"})
    away = await admin_post(site, "/api/admin/users", {"login": "san-3-3", "name": "第三小学 三(3)班",
                                                       "role": "classroom", "school": "第三小学"})
    today = date.today()
    entry = await admin_post(site, "/api/admin/timetable", {
        "title": "七年级数学", "teacher_id": li["id"], "classroom_ids": [here["id"], away["id"]], "kind": "once",
        "date": today.isoformat(), "start_time": "00:00", "end_time": "23:59", "period": 2})
    lesson = f"{entry['id']}-{today:%Y%m%d}"

    ws_url = str(site.client.make_url("/ws")).replace("http", "ws", 1)
    teacher = Teacher(await _join(ws_url, "teacher", lesson, "李老师", li["id"]))
    assert (await teacher.publish())["type"] == "answer"
    room = Classroom(await _join(ws_url, "classroom", lesson, here["name"], here["id"]))
    try:
        await room.wait_frames(30)

        async def live_one() -> dict | None:
            found = (await (await site.admin.get("/api/admin/supervision/live")).json())["lessons"]
            return found[0] if found and found[0]["connected"] else None
        live = await _until(live_one)
        assert live["lesson"] == lesson and live["teacher_connected"]
        assert [c["id"] for c in live["expected"]] == [here["id"], away["id"]]
        assert [c["id"] for c in live["connected"]] == [here["id"]]
        assert [c["id"] for c in live["missing"]] == [away["id"]]
        assert live["connected"][0]["rung"] == "video"
        # classroom.absent: the classroom not connected 5 minutes after the start (00:00), once however often checked
        watch = site.client.server.app[WATCH_KEY]
        at = max(time.time(), datetime.combine(today, datetime.min.time()).timestamp() + 600)  # (not 00:00–00:05)
        assert await watch.check_absent(at) == 1
        assert await watch.check_absent(at) == 1
        await asyncio.sleep(4.5)  # (a few 2 s reception samples)
    finally:
        await room.close()
        await room.ws.close()

    async def left() -> bool:
        found = (await (await site.admin.get("/api/admin/supervision/live")).json())["lessons"]
        return bool(found) and not found[0]["connected"]
    await _until(left)
    await teacher.ws.send({"type": "end_lesson"})
    await teacher.ws.wait_for(lambda m: m.get("event") == "lesson-ended", timeout_s=20)
    await teacher.close()
    await teacher.ws.close()

    # the dashboard: held, 1 of 2 classrooms (kept in the store: the lesson's live state is gone)
    async def held() -> dict | None:
        found = (await (await site.admin.get("/api/admin/supervision/lessons")).json())["lessons"]
        return found[0] if found and found[0]["held"] else None
    shown = await _until(held)
    assert shown["lesson"] == lesson and shown["due"]
    assert {c["id"]: c["present"] for c in shown["classrooms"]} == {here["id"]: True, away["id"]: False}
    figures = await (await site.admin.get("/api/admin/supervision/figures")).json()
    assert {k: figures["total"][k] for k in ("scheduled", "held", "classroom_places", "classrooms_present")} == {
        "scheduled": 1, "held": 1, "classroom_places": 2, "classrooms_present": 1}
    assert figures["total"]["held_rate"] == 1.0 and figures["total"]["attendance_rate"] == 0.5
    assert [s["name"] for s in figures["schools"]] == ["第三小学"]
    assert [(t["name"], t["held"]) for t in figures["teachers"]] == [("李老师", 1)]
    assert figures["total"]["video_min"] > 0

    # the school's weekly report matches the lesson's attendance.csv
    records = list(site.data.rglob("attendance.csv"))
    assert len(records) == 1, records
    attendance = list(csv.DictReader(io.StringIO(records[0].read_text(encoding="utf-8-sig"))))
    minutes = {r["participant"]: r["present_min"] for r in attendance}
    assert list(minutes) == [here["id"]] and float(minutes[here["id"]]) > 0
    resp = await site.admin.get("/api/admin/supervision/report.csv", params={"school": "第三小学"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    raw = await resp.read()
    assert raw.startswith("\ufeff".encode())
    rows = {r["接收教室"]: r for r in csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))}
    assert set(rows) == {here["name"], away["name"]}
    assert rows[here["name"]]["已开课"] == "是" and rows[here["name"]]["课程名称"] == "七年级数学"
    assert float(rows[here["name"]]["出勤分钟"]) == float(minutes[here["id"]])
    assert float(rows[away["name"]]["出勤分钟"]) == 0.0
    xlsx = await site.admin.get("/api/admin/supervision/report.xlsx", params={"school": "第三小学"})
    sheet = openpyxl.load_workbook(io.BytesIO(await xlsx.read())).active
    values = [[c.value for c in row] for row in sheet.iter_rows(min_row=3)]
    assert sorted((v[6], v[8]) for v in values) == sorted([(here["name"], float(minutes[here["id"]])),
                                                           (away["name"], 0)])

    # the webhooks: started and ended, signed; the first answered 500 and came again
    async def both() -> bool:
        events = [json.loads(b)["event"] for _, b, status in receiver.got if status == 204]
        return {"lesson.started", "lesson.ended", "classroom.absent"} <= set(events)
    await _until(both)
    first_headers, first_body, first_status = receiver.got[0]
    assert first_status == 500
    again = [(h, b) for h, b, s in receiver.got[1:] if h["X-Ketang-Delivery"] == first_headers["X-Ketang-Delivery"]]
    assert again and again[0][1] == first_body  # the same delivery, the same body
    for headers, body, _ in receiver.got:
        assert verify(secret, headers["X-Ketang-Signature"], body), headers
        assert headers["X-Ketang-Event"] == json.loads(body)["event"]
    ended = next(json.loads(b) for _, b, s in receiver.got if json.loads(b)["event"] == "lesson.ended")
    assert ended["data"]["lesson"] == lesson and ended["data"]["entry"] == entry["id"]
    assert [c["id"] for c in ended["data"]["classrooms"]] == [here["id"]]
    deliveries = await (await site.admin.get(f"/api/admin/webhooks/{hook['id']}/deliveries")).json()
    absent = [json.loads(b)["data"] for _, b, s in receiver.got if json.loads(b)["event"] == "classroom.absent"]
    assert [a["classroom"]["id"] for a in absent] in ([away["id"]], [away["id"]] * 2)  # (twice: a 500 retried)
    assert absent[0]["lesson"] == lesson and absent[0]["minutes_after_start"] >= 5
    assert sorted(d["state"] for d in deliveries["deliveries"]) == ["delivered"] * 3
    assert max(d["attempts"] for d in deliveries["deliveries"]) == 2


def test_the_dashboards_and_webhooks_routes_are_in_the_document_for_administrators_only() -> None:
    """(test_accounts_security.py's parametrised test then refuses each without a session and with a teacher's.)"""
    from tests.scenario.test_accounts_security import ADMIN_ROUTES
    ours = {(m, p) for m, p in ADMIN_ROUTES if p.startswith(("/api/admin/supervision", "/api/admin/webhooks"))}
    assert len(ours) == 9, ours
    document = openapi_document()
    for method, path in ours:
        assert document["paths"][path][method.lower()]["x-roles"] == ["administrator"]

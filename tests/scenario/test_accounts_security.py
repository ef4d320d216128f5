"""Accounts on the real app (make_app over HTTP on loopback, the store on SQLite): the first administrator made by
`ketang admin create-user`, the session cookie's flags, CSRF refused, every /api/admin route refused without a session
(401) and with the wrong role (403) — parametrised over the OpenAPI document the server serves —, the password
lockout with when to try again, a revoked classroom screen refused, a teacher's lesson token for their own lesson
only, and the audit lines of it all."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ketang.cli import main as ketang_main
from signaling.accounts.web import openapi_document
from signaling.app import make_app
from signaling.audit import audit_path, read
from signaling.config import Config
from signaling.tokens import verify_token

SECRET = "accounts-test-secret-0123456789abcdef"
ADMIN_PASSWORD = "district-admin-pw"
TEACHER_PASSWORD = "teacher-pw-1234"
ADMIN_ROUTES = [(method.upper(), path) for path, ops in openapi_document()["paths"].items()
                if path.startswith("/api/admin") for method in ops]  # (read from the document, like a client)


@dataclass
class Site:
    data: Path
    client: TestClient
    admin: TestClient
    admin_csrf: str


async def sign_in(client: TestClient, login: str, password: str) -> tuple[int, dict, str]:
    resp = await client.post("/api/login", json={"login": login, "password": password})
    return resp.status, await resp.json(), resp.headers.get("Set-Cookie", "")


@pytest.fixture
async def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Site]:
    data = tmp_path / "data"
    monkeypatch.setattr("sys.stdin", io.StringIO(ADMIN_PASSWORD + "\n"))
    assert await asyncio.to_thread(ketang_main, [
        "admin", "create-user", "--role", "administrator", "--login", "admin", "--name", "王主任", "--password-stdin",
        "--data-dir", str(data)]) == 0
    app = make_app(Config(data_dir=data, secret=SECRET, record=False))
    server = TestServer(app)
    client = TestClient(server)
    admin = TestClient(server)  # (another browser on the same server: its own cookie jar)
    await client.start_server()
    status, body, _ = await sign_in(admin, "admin", ADMIN_PASSWORD)
    assert status == 200, body
    try:
        yield Site(data, client, admin, body["csrf"])
    finally:
        await admin.close()
        await client.close()


async def admin_post(site: Site, path: str, body: dict) -> dict:
    resp = await site.admin.post(path, json=body, headers={"X-CSRF-Token": site.admin_csrf})
    assert resp.status in (200, 201), (resp.status, await resp.text())
    return await resp.json()


async def test_the_session_cookie_is_httponly_lax_and_signing_out_ends_it(site: Site) -> None:
    await admin_post(site, "/api/admin/users", {"login": "li", "name": "李老师", "role": "teacher",
                                                "password": TEACHER_PASSWORD})
    status, body, cookie = await sign_in(site.client, "li", TEACHER_PASSWORD)
    assert status == 200 and body["user"]["role"] == "teacher" and body["home"] == "/me"
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert flags[0].startswith("ketang_session=") and len(flags[0]) > 40
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
    assert "secure" not in flags  # (plain http on loopback: a Secure cookie would never come back)
    me = await site.client.get("/api/me")
    assert me.status == 200 and (await me.json())["user"]["login"] == "li"
    csrf = (await me.json())["csrf"]
    assert (await site.client.post("/api/logout", headers={"X-CSRF-Token": csrf})).status == 204
    # the server forgot the session: the same cookie sent again is refused
    again = await site.client.get("/api/me", headers={"Cookie": flags[0]})
    assert again.status == 401 and (await again.json())["code"] == "unauthorized"


async def test_a_state_changing_request_without_the_csrf_token_or_from_another_site_is_refused(site: Site) -> None:
    body = {"login": "zhang", "name": "张老师", "role": "teacher", "password": TEACHER_PASSWORD}
    for headers in ({}, {"X-CSRF-Token": "forged"},
                    {"X-CSRF-Token": site.admin_csrf, "Origin": "https://evil.example"}):
        resp = await site.admin.post("/api/admin/users", json=body, headers=headers)
        assert resp.status == 403 and (await resp.json())["code"] == "csrf", headers
    users = await (await site.admin.get("/api/admin/users")).json()
    assert [u["login"] for u in users["users"]] == ["admin"]  # nothing was created
    created = await admin_post(site, "/api/admin/users", body)
    assert created["login"] == "zhang"


async def test_every_admin_route_refuses_without_a_session_and_with_a_teachers(site: Site) -> None:
    """Over every /api/admin route of the OpenAPI document: 401 `unauthorized` for nobody, 403 `forbidden` for a
    teacher (who sends a valid CSRF token: the role is what refuses)."""
    await admin_post(site, "/api/admin/users", {"login": "li", "name": "李老师", "role": "teacher",
                                                "password": TEACHER_PASSWORD})
    anonymous = TestClient(site.client.server)
    status, body, _ = await sign_in(site.client, "li", TEACHER_PASSWORD)
    assert status == 200
    answers = {}
    for method, path in ADMIN_ROUTES:
        url = re.sub(r"\{\w+\}", "x", path)
        nobody = await anonymous.request(method, url, json={})
        teacher = await site.client.request(method, url, json={}, headers={"X-CSRF-Token": body["csrf"]})
        answers[f"{method} {path}"] = (nobody.status, (await nobody.json())["code"], teacher.status,
                                       (await teacher.json())["code"])
    await anonymous.session.close()
    assert len(answers) >= 15
    assert {k: v for k, v in answers.items() if v != (401, "unauthorized", 403, "forbidden")} == {}


async def test_the_openapi_document_lists_every_api_route_the_app_registers(site: Site) -> None:
    served = await (await site.client.get("/api/openapi.json")).json()
    assert served["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}
    registered = {(r.method, r.resource.canonical) for r in site.client.app.router.routes()  # type: ignore[union-attr]
                  if r.resource is not None and r.resource.canonical.startswith(("/api/admin", "/api/me"))
                  and r.method != "HEAD"}
    assert registered and registered <= documented, registered - documented
    for (method, path) in documented:
        op = served["paths"][path][method.lower()]
        if path.startswith("/api/admin"):
            assert op["x-roles"] == ["administrator"] and {"401", "403"} <= set(op["responses"])


async def test_five_wrong_passwords_lock_the_account_even_against_the_right_one_with_when_to_try_again(
        site: Site) -> None:
    await admin_post(site, "/api/admin/users", {"login": "wang", "name": "王老师", "role": "teacher",
                                                "password": TEACHER_PASSWORD})
    for _ in range(5):
        status, body, _ = await sign_in(site.client, "wang", "wrong-password")
        assert status == 401 and body["code"] == "bad_credentials"
    resp = await site.client.post("/api/login", json={"login": "wang", "password": TEACHER_PASSWORD})
    body = await resp.json()
    assert resp.status == 429 and body["code"] == "login_locked"
    assert 850 < body["retry_after_s"] <= 900 and int(resp.headers["Retry-After"]) == body["retry_after_s"]
    assert body["until"].endswith("Z")
    # another account from the same address is not locked by it
    status, _, _ = await sign_in(site.client, "admin", ADMIN_PASSWORD)
    assert status == 200
    lines = list(read(audit_path(site.data)))
    refused = [e for e in lines if e["action"] == "login" and e.get("login") == "wang"]
    assert [e["outcome"] for e in refused] == ["bad_password"] * 5 + ["locked"]
    assert any(e["action"] == "lockout" and e["outcome"] == "account" and e["login"] == "wang" for e in lines)
    assert any(e["action"] == "login" and e["outcome"] == "ok" and e["actor"]["name"] == "王主任" for e in lines)
    assert lines[0]["action"] == "user_create" and lines[0]["actor"]["role"] == "cli"


async def test_a_revoked_classroom_screen_is_refused_and_a_teacher_gets_a_token_for_their_own_lesson(
        site: Site) -> None:
    room = await admin_post(site, "/api/admin/users", {"login": "sanxiao-3-2", "name": "第三小学 三(2)班",
                                                       "role": "classroom", "school": "第三小学"})
    made = await admin_post(site, "/api/admin/devices", {"classroom_id": room["id"], "label": "一体机"})
    assert made["screen_path"] == f"/screen#device={made['credential']}"
    li = await admin_post(site, "/api/admin/users", {"login": "li", "name": "李老师", "role": "teacher",
                                                     "password": TEACHER_PASSWORD})
    today = date.today()
    entry = await admin_post(site, "/api/admin/timetable", {
        "title": "七年级数学 · 一元一次方程", "teacher_id": li["id"], "classroom_ids": [room["id"]], "kind": "once",
        "date": today.isoformat(), "start_time": "08:00", "end_time": "08:45", "subject": "数学"})
    screen = {"Authorization": f"Device {made['credential']}"}
    resp = await site.client.get("/api/screen/lessons", headers=screen)
    assert resp.status == 200
    lessons = (await resp.json())["lessons"]
    assert [o["title"] for o in lessons] == ["七年级数学 · 一元一次方程"]
    lesson = lessons[0]["lesson"]
    assert lesson == f"{entry['id']}-{today:%Y%m%d}"
    wrong = await site.client.get("/api/screen/lessons",
                                  headers={"Authorization": f"Device {made['device']['id']}.forged"})
    assert wrong.status == 401 and (await wrong.json())["code"] == "unauthorized"
    revoke = await site.admin.post(f"/api/admin/devices/{made['device']['id']}/revoke",
                                   headers={"X-CSRF-Token": site.admin_csrf})
    assert revoke.status == 200 and (await revoke.json())["revoked"]
    resp = await site.client.get("/api/screen/lessons", headers=screen)
    assert resp.status == 401 and (await resp.json())["code"] == "device_revoked"
    # the teacher: 我的课程 holds the lesson, and starting it mints a teacher token for that lesson id
    status, body, _ = await sign_in(site.client, "li", TEACHER_PASSWORD)
    mine = await (await site.client.get("/api/me/lessons")).json()
    assert [o["lesson"] for o in mine["lessons"]] == [lesson]
    start = await site.client.post(f"/api/me/lessons/{lesson}/start", headers={"X-CSRF-Token": body["csrf"]})
    url = (await start.json())["teacher_url"]
    claims = verify_token(SECRET, url.split("#token=")[1].split("&")[0], lesson=lesson)
    assert (claims.role, claims.sub, claims.name, claims.title) == ("teacher", li["id"], "李老师",
                                                                     "七年级数学 · 一元一次方程")
    assert "&invite=" in url
    # another teacher may not start it
    await admin_post(site, "/api/admin/users", {"login": "zhao", "name": "赵老师", "role": "teacher",
                                                "password": TEACHER_PASSWORD})
    status, body, _ = await sign_in(site.client, "zhao", TEACHER_PASSWORD)
    other = await site.client.post(f"/api/me/lessons/{lesson}/start", headers={"X-CSRF-Token": body["csrf"]})
    assert other.status == 404
    actions = [e["action"] for e in read(audit_path(site.data))]
    for action in ("device_create", "device_revoke", "timetable_create", "lesson_token"):
        assert action in actions


async def test_the_session_cookie_is_secure_when_the_server_is_reached_over_https(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind a TLS proxy (--public-url https://…) the cookie is Secure: a browser never sends it over plain http."""
    data = tmp_path / "data"
    monkeypatch.setattr("sys.stdin", io.StringIO(ADMIN_PASSWORD + "\n"))
    assert await asyncio.to_thread(ketang_main, [
        "admin", "create-user", "--role", "administrator", "--login", "admin", "--name", "王主任", "--password-stdin",
        "--data-dir", str(data)]) == 0
    app = make_app(Config(data_dir=data, secret=SECRET, record=False, public_url="https://ketang.example.cn"))
    async with TestClient(TestServer(app)) as client:
        status, _, cookie = await sign_in(client, "admin", ADMIN_PASSWORD)
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert status == 200 and "secure" in flags and "httponly" in flags and "samesite=lax" in flags

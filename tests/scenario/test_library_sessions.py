"""The library for signed-in accounts (make_app over HTTP on loopback, the store on SQLite): no token pasted anywhere.
A teacher's session sees the lessons taught under the account (and not a colleague's unpublished one), a reviewer's
session reviews — a change through the cookie only with the session's CSRF token and from this site —, an
administrator and anyone signed out see what is published, a bearer token still wins over a cookie, and the
sign-in page goes back to the library after signing in."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ketang.cli import main as ketang_main
from recorder.library.catalog import PUBLISHED, Library, Viewer
from signaling.app import make_app
from signaling.config import Config
from signaling.tokens import issue_token
from tests.webm import webm_master  # noqa: F401 - a fixture

SECRET = "library-sessions-secret-0123456789abcdef"
PASSWORD = "a-good-password-42"


@dataclass
class Site:
    server: TestServer
    library: Library
    csrf: dict[str, str]  # login -> the session's CSRF token
    clients: dict[str, TestClient]  # login -> a browser signed in as it ("anyone": nobody signed in)
    ids: dict[str, str]  # published / mine (李老师's, awaiting review) / theirs (王老师's, awaiting review)
    users: dict[str, dict]


async def _file(library: Library, webm: Path, lesson: str, title: str, teacher: str, sub: str) -> str:
    file = library.recordings_dir / f"{lesson}.webm"
    shutil.copy(webm, file)
    rec_id = await library.start_recording(lesson, title, teacher, sub, file)
    await library.finish_recording(rec_id, 3.0, file.stat().st_size)
    return rec_id


@pytest.fixture
async def site(tmp_path: Path, webm_master: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Site]:  # noqa: F811
    data = tmp_path / "data"
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert await asyncio.to_thread(ketang_main, [
        "admin", "create-user", "--role", "administrator", "--login", "admin", "--name", "王主任", "--password-stdin",
        "--data-dir", str(data)]) == 0
    server = TestServer(make_app(Config(data_dir=data, secret=SECRET, record=False)))
    clients = {name: TestClient(server) for name in ("admin", "li", "wang", "zhang", "anyone")}
    await clients["admin"].start_server()
    csrf: dict[str, str] = {}
    users: dict[str, dict] = {}
    library = Library(data)  # (the same SQLite catalog as the server's)
    try:
        resp = await clients["admin"].post("/api/login", json={"login": "admin", "password": PASSWORD})
        assert resp.status == 200
        csrf["admin"] = (await resp.json())["csrf"]
        for login, name, role in (("li", "李老师", "teacher"), ("wang", "王老师", "teacher"),
                                  ("zhang", "张审核", "reviewer")):
            resp = await clients["admin"].post("/api/admin/users", headers={"X-CSRF-Token": csrf["admin"]},
                                               json={"login": login, "name": name, "role": role, "password": PASSWORD})
            assert resp.status in (200, 201), await resp.text()
            resp = await clients[login].post("/api/login", json={"login": login, "password": PASSWORD})
            body = await resp.json()
            assert resp.status == 200, body
            csrf[login], users[login] = body["csrf"], body["user"]
        ids = {
            # a lesson started from /me carries the account's id as the token's `sub` (signaling/accounts/web.py)
            "mine": await _file(library, webm_master, "math-7a", "勾股定理", "李老师", users["li"]["id"]),
            "theirs": await _file(library, webm_master, "chem-9b", "化学反应", "王老师", users["wang"]["id"]),
            "published": await _file(library, webm_master, "bio-8c", "细胞", "赵老师", "t-zhao"),
        }
        await library.review(ids["published"], "publish", "", Viewer.operator())
        yield Site(server, library, csrf, clients, ids, users)
    finally:
        for client in clients.values():
            await client.close()
        await library.close()


async def search(client: TestClient, **headers: str) -> dict:
    resp = await client.get("/api/library", headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def titles(page: dict) -> set[str]:
    return {item["title"] for item in page["items"]}


async def test_a_teacher_session_sees_the_lessons_taught_under_the_account_and_no_colleague_s(site: Site) -> None:
    page = await search(site.clients["li"])
    assert titles(page) == {"勾股定理", "细胞"}
    assert page["viewer"] == {"role": "teacher", "reviewer": False, "name": "李老师"}
    mine = await site.clients["li"].get(f"/api/library/{site.ids['mine']}")
    assert mine.status == 200 and (await mine.json())["can"].get("edit") is True
    assert (await site.clients["li"].get(f"/api/library/{site.ids['theirs']}")).status == 404
    assert titles(await search(site.clients["wang"])) == {"化学反应", "细胞"}


@pytest.mark.parametrize("who", ["anyone", "admin"])
async def test_signed_out_and_administrators_see_what_is_published(site: Site, who: str) -> None:
    page = await search(site.clients[who])
    assert titles(page) == {"细胞"}
    assert page["viewer"]["reviewer"] is False and page["viewer"]["role"] is None


async def test_a_reviewer_session_reviews_with_its_csrf_token_only(site: Site) -> None:
    reviewer, rec = site.clients["zhang"], site.ids["mine"]
    page = await search(reviewer)
    assert titles(page) == {"勾股定理", "化学反应", "细胞"} and page["viewer"]["reviewer"] is True
    url, body = f"/api/library/{rec}/review", {"decision": "publish"}
    for headers in ({}, {"X-CSRF-Token": "not-the-token"}, {"X-CSRF-Token": site.csrf["li"]},
                    {"X-CSRF-Token": site.csrf["zhang"], "Origin": "https://elsewhere.example"}):
        resp = await reviewer.post(url, json=body, headers=headers)
        assert resp.status == 403, headers
        assert (await resp.json())["code"] == "csrf"
    assert (await site.library.get(rec)).state != PUBLISHED, "a refused change changed nothing"
    resp = await reviewer.post(url, json=body, headers={"X-CSRF-Token": site.csrf["zhang"]})
    assert resp.status == 200, await resp.text()
    assert (await site.library.get(rec)).state == PUBLISHED
    assert titles(await search(site.clients["anyone"])) == {"勾股定理", "细胞"}


async def test_a_teacher_session_cannot_review_even_with_its_csrf_token(site: Site) -> None:
    resp = await site.clients["li"].post(f"/api/library/{site.ids['mine']}/review", json={"decision": "publish"},
                                         headers={"X-CSRF-Token": site.csrf["li"]})
    assert resp.status == 403 and (await resp.json())["code"] != "csrf"


async def test_a_bearer_token_wins_over_the_cookie_and_signing_out_ends_the_session_s_view(site: Site) -> None:
    token = issue_token(SECRET, "teacher", "chem-9b", name="王老师")
    page = await search(site.clients["zhang"], Authorization=f"Bearer {token}")
    assert titles(page) == {"化学反应", "细胞"} and page["viewer"]["reviewer"] is False
    resp = await site.clients["zhang"].post("/api/logout", headers={"X-CSRF-Token": site.csrf["zhang"]})
    assert resp.status in (200, 204)
    assert titles(await search(site.clients["zhang"])) == {"细胞"}

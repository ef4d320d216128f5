"""The library over HTTP: Range requests on the recordings, auth rules, signed file URLs, the MP4 export
(plays, index at the front), the poster, and the pages."""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from recorder.library.catalog import AWAITING_REVIEW, PUBLISHED, Library
from recorder.library.web import add_routes
from signaling.app import token_viewer
from signaling.tokens import issue_token

SECRET = "library-web-test-secret-0123456789"
EXPORT_TIMEOUT_S = 20.0


def bearer(role: str, lesson: str = "math-8a", name: str = "李老师", sub: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, role, lesson, name=name, sub=sub)}"}


TOKENS: dict[str, dict[str, str]] = {
    "anonymous": {},
    "teacher": bearer("teacher", sub="t-li"),
    "teacher-new-token": bearer("teacher"),  # same lesson and name, a fresh participant id
    "other-teacher": bearer("teacher", lesson="chem-9b", name="王老师"),
    "classroom": bearer("classroom", name="第三小学"),
    "reviewer": bearer("reviewer", lesson="library", name="张审核"),
    "bad-token": {"Authorization": "Bearer not.a.token"},
    "not-bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
}


@dataclass
class Site:
    client: TestClient
    library: Library
    public_id: str
    hidden_id: str
    webm: bytes


@pytest.fixture
async def site(tmp_path: Path, webm_master: Path) -> AsyncIterator[Site]:  # noqa: F811
    library = Library(tmp_path / "data")
    ids = []
    for title in ("勾股定理", "一元一次方程"):
        file = library.recordings_dir / f"{title}.webm"
        shutil.copy(webm_master, file)
        rec_id = await library.start_recording("math-8a", title, "李老师", "t-li", file)
        await library.finish_recording(rec_id, 3.0, file.stat().st_size)
        ids.append(rec_id)
    app = web.Application()
    add_routes(app, library, SECRET, token_viewer(SECRET), export_on_publish=False)
    client = TestClient(TestServer(app))
    await client.start_server()
    assert (await client.post(f"/api/library/{ids[0]}/review", json={"decision": "publish"},
                              headers=TOKENS["reviewer"])).status == 200
    try:
        yield Site(client, library, ids[0], ids[1], webm_master.read_bytes())
    finally:
        await client.close()
        await library.close()


# --- Range ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_header", "first", "last"),
    [
        pytest.param("bytes=100-199", 100, 199, id="a-middle-slice"),
        pytest.param("bytes=0-0", 0, 0, id="the-first-byte"),
        pytest.param("bytes=-50", -50, -1, id="the-last-50-bytes"),
        pytest.param("bytes=1000-", 1000, -1, id="open-ended-to-the-end"),
        pytest.param("bytes=100-99999999", 100, -1, id="an-end-past-the-file-is-clipped"),
    ],
)
async def test_a_range_request_returns_206_with_exactly_those_bytes(site: Site, range_header: str, first: int,
                                                                    last: int) -> None:
    size = len(site.webm)
    first, last = first % size, last % size
    resp = await site.client.get(f"/library/files/{site.public_id}", headers={"Range": range_header})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert resp.headers["Content-Type"] == "video/webm"
    assert await resp.read() == site.webm[first:last + 1]


async def test_a_range_starting_past_the_end_is_416_with_the_size(site: Site) -> None:
    resp = await site.client.get(f"/library/files/{site.public_id}", headers={"Range": "bytes=999999999-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(site.webm)}"


async def test_without_a_range_the_whole_file_comes_with_accept_ranges(site: Site) -> None:
    resp = await site.client.get(f"/library/files/{site.public_id}")
    assert resp.status == 200
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == site.webm


async def test_a_download_link_names_the_file_after_the_title(site: Site) -> None:
    resp = await site.client.get(f"/library/files/{site.public_id}?download=1")
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == "attachment; filename*=UTF-8''%E5%8B%BE%E8%82%A1%E5%AE%9A%E7%90%86.webm"


# --- auth -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "public_status", "hidden_status"),
    [
        pytest.param("anonymous", 200, 404, id="anonymous-sees-published-only"),
        pytest.param("classroom", 200, 404, id="a-classroom-sees-published-only"),
        pytest.param("other-teacher", 200, 404, id="another-teacher-sees-published-only"),
        pytest.param("teacher", 200, 200, id="its-teacher-sees-both"),
        pytest.param("teacher-new-token", 200, 200, id="its-teacher-with-a-new-token-sees-both"),
        pytest.param("reviewer", 200, 200, id="a-reviewer-sees-both"),
        pytest.param("bad-token", 401, 401, id="a-bad-token-is-401-not-anonymous"),
        pytest.param("not-bearer", 401, 401, id="another-auth-scheme-is-401"),
    ],
)
async def test_who_sees_what(site: Site, who: str, public_status: int, hidden_status: int) -> None:
    headers = TOKENS[who]
    for rec_id, status in ((site.public_id, public_status), (site.hidden_id, hidden_status)):
        for path in (f"/api/library/{rec_id}", f"/library/files/{rec_id}", f"/library/files/{rec_id}/poster"):
            resp = await site.client.get(path, headers=headers)
            assert resp.status == status, path
    resp = await site.client.get("/api/library", headers=headers)
    if public_status == 200:
        expected = {site.public_id, site.hidden_id} if hidden_status == 200 else {site.public_id}
        assert {item["id"] for item in (await resp.json())["items"]} == expected


@pytest.mark.parametrize(
    ("who", "decision", "status", "state"),
    [
        pytest.param("teacher", "publish", 403, AWAITING_REVIEW, id="its-teacher-cannot-publish"),
        pytest.param("anonymous", "publish", 404, AWAITING_REVIEW, id="anonymous-cannot-publish"),
        pytest.param("classroom", "publish", 404, AWAITING_REVIEW, id="a-classroom-cannot-publish"),
        pytest.param("reviewer", "approve", 400, AWAITING_REVIEW, id="an-unknown-decision-is-400"),
        pytest.param("reviewer", "publish", 200, PUBLISHED, id="a-reviewer-publishes"),
    ],
)
async def test_review_over_http(site: Site, who: str, decision: str, status: int, state: str) -> None:
    resp = await site.client.post(f"/api/library/{site.hidden_id}/review", json={"decision": decision, "note": ""},
                                  headers=TOKENS[who])
    assert resp.status == status
    body = await resp.json()
    assert body.get("state", None) == (state if status == 200 else None)
    assert (await site.library.get(site.hidden_id)).state == state  # type: ignore[union-attr]


async def test_publishing_twice_is_409_with_a_clear_message(site: Site) -> None:
    resp = await site.client.post(f"/api/library/{site.public_id}/review", json={"decision": "publish"},
                                  headers=TOKENS["reviewer"])
    assert resp.status == 409
    body = await resp.json()
    assert body["code"] == "invalid_transition"
    assert "cannot publish a recording that is published" in body["message"]


@pytest.mark.parametrize(
    ("who", "body", "status", "code"),
    [
        pytest.param("teacher", {"subject": "数学", "grade": "八年级"}, 200, None, id="its-teacher-edits"),
        pytest.param("teacher", {"file": "/etc/passwd"}, 400, "invalid_field", id="an-unknown-field"),
        pytest.param("teacher", {"title": "x" * 201}, 400, "invalid_field", id="a-title-too-long"),
        pytest.param("teacher", ["title"], 400, "bad_request", id="a-body-that-is-no-object"),
        pytest.param("teacher", {"description": "x" * 20000}, 400, "bad_request", id="a-body-over-16-kb"),
        pytest.param("other-teacher", {"title": "改"}, 404, "not_found", id="another-teacher"),
        pytest.param("anonymous", {"title": "改"}, 404, "not_found", id="anonymous"),
    ],
)
async def test_metadata_edits_over_http(site: Site, who: str, body: Any, status: int, code: str | None) -> None:
    resp = await site.client.patch(f"/api/library/{site.hidden_id}", json=body, headers=TOKENS[who])
    assert resp.status == status
    data = await resp.json()
    if code is None:
        assert (data["subject"], data["grade"]) == ("数学", "八年级")
    else:
        assert data["code"] == code


async def test_a_bad_body_is_400(site: Site) -> None:
    resp = await site.client.patch(f"/api/library/{site.hidden_id}", data=b"{not json", headers=TOKENS["teacher"])
    assert resp.status == 400


# --- search over HTTP -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "total"),
    [
        pytest.param("?q=勾股", 200, 1, id="a-chinese-keyword"),
        pytest.param("?q=勾股&subject=化学", 200, 0, id="a-keyword-and-a-filter-that-excludes"),
        pytest.param("?page=0", 400, None, id="page-zero"),
        pytest.param("?page=x", 400, None, id="page-not-a-number"),
        pytest.param("?per_page=1000", 400, None, id="per-page-too-big"),
        pytest.param("?colour=red", 400, None, id="an-unknown-parameter"),
    ],
)
async def test_search_over_http(site: Site, query: str, status: int, total: int | None) -> None:
    resp = await site.client.get(f"/api/library{query}")
    assert resp.status == status
    if total is not None:
        assert (await resp.json())["total"] == total


# --- signed file URLs for <video> -------------------------------------------------------------------------


async def test_an_unpublished_recording_plays_through_the_signed_url_the_api_gives_its_teacher(site: Site) -> None:
    info = await (await site.client.get(f"/api/library/{site.hidden_id}", headers=TOKENS["teacher"])).json()
    url = info["urls"]["webm"]
    assert "sig=" in url
    resp = await site.client.get(url, headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and await resp.read() == site.webm[:10]
    assert resp.headers["Cache-Control"] == "private, no-store"
    tampered = url[:-2] + ("AA" if not url.endswith("AA") else "BB")
    assert (await site.client.get(tampered)).status == 404
    other_recording = url.replace(site.hidden_id, site.public_id)
    assert (await site.client.get(other_recording)).status == 200  # published anyway: not thanks to the sig


async def test_a_signed_url_is_for_one_recording_only(site: Site) -> None:
    third = await site.library.start_recording("math-8a", "第三课", "李老师", "t-li",
                                               site.library.recordings_dir / "勾股定理.webm")
    info = await (await site.client.get(f"/api/library/{site.hidden_id}", headers=TOKENS["teacher"])).json()
    resp = await site.client.get(info["urls"]["webm"].replace(site.hidden_id, third))
    assert resp.status == 404


# --- export ---------------------------------------------------------------------------------------------


def top_level_boxes(data: bytes) -> list[str]:
    """The MP4's top-level box types in file order (ISO/IEC 14496-12 §4.2)."""
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        elif size == 0:
            size = len(data) - offset
        assert size >= 8, "corrupt box"
        boxes.append(kind.decode("latin-1"))
        offset += size
    assert offset == len(data), "boxes do not add up to the file"
    return boxes


async def wait_for_export(client: TestClient, rec_id: str, headers: dict[str, str]) -> dict[str, Any]:
    seen = []
    deadline = asyncio.get_running_loop().time() + EXPORT_TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        job = await (await client.get(f"/api/library/{rec_id}/export", headers=headers)).json()
        seen.append(job["progress"])
        if job["state"] not in ("queued", "running"):
            return {**job, "seen": seen}
        await asyncio.sleep(0.02)
    raise AssertionError(f"export still running after {EXPORT_TIMEOUT_S} s")


async def test_the_mp4_export_plays_both_streams_and_has_its_index_first(site: Site, tmp_path: Path) -> None:
    assert (await site.client.post(f"/api/library/{site.public_id}/export")).status == 401  # anonymous
    resp = await site.client.post(f"/api/library/{site.public_id}/export", headers=TOKENS["classroom"])
    assert resp.status == 202
    job = await wait_for_export(site.client, site.public_id, TOKENS["classroom"])
    assert (job["state"], job["progress"], job["error"]) == ("done", 1.0, None)
    assert job["seen"] == sorted(job["seen"])  # progress only goes forward

    resp = await site.client.get(f"/library/files/{site.public_id}?format=mp4")
    assert resp.status == 200 and resp.headers["Content-Type"] == "video/mp4"
    data = await resp.read()
    boxes = top_level_boxes(data)
    assert boxes[0] == "ftyp"
    assert boxes.index("moov") < boxes.index("mdat"), boxes

    ranged = await site.client.get(f"/library/files/{site.public_id}?format=mp4", headers={"Range": "bytes=-100"})
    assert ranged.status == 206 and await ranged.read() == data[-100:]

    mp4 = tmp_path / "out.mp4"
    mp4.write_bytes(data)
    with av.open(str(mp4)) as c:
        assert [(s.type, s.codec_context.name) for s in c.streams] == [("video", "h264"), ("audio", "aac")]
        frames = {"video": 0, "audio": 0}
        for frame in c.decode(*c.streams):
            frames["video" if isinstance(frame, av.VideoFrame) else "audio"] += 1
        duration_s = c.duration / av.time_base
    assert frames["video"] >= 40 and frames["audio"] >= 100, frames
    assert duration_s == pytest.approx(3.0, abs=0.2)

    again = await site.client.post(f"/api/library/{site.public_id}/export", headers=TOKENS["classroom"])
    assert (await again.json())["state"] == "done"  # no second transcode


async def test_an_unpublished_lesson_is_exported_only_for_its_teacher_or_a_reviewer(site: Site) -> None:
    assert (await site.client.post(f"/api/library/{site.hidden_id}/export",
                                   headers=TOKENS["classroom"])).status == 404
    assert (await site.client.get(f"/library/files/{site.hidden_id}?format=mp4",
                                  headers=TOKENS["teacher"])).status == 404  # nothing exported yet
    resp = await site.client.post(f"/api/library/{site.hidden_id}/export", headers=TOKENS["teacher"])
    assert resp.status == 202
    assert (await wait_for_export(site.client, site.hidden_id, TOKENS["teacher"]))["state"] == "done"
    assert (await site.client.get(f"/library/files/{site.hidden_id}?format=mp4")).status == 404  # anonymous


async def test_publishing_starts_the_export_when_enabled(tmp_path: Path, webm_master: Path) -> None:  # noqa: F811
    library = Library(tmp_path / "data")
    file = library.recordings_dir / "a.webm"
    shutil.copy(webm_master, file)
    rec_id = await library.start_recording("math-8a", "勾股定理", "李老师", "t-li", file)
    await library.finish_recording(rec_id, 3.0, file.stat().st_size)
    app = web.Application()
    add_routes(app, library, SECRET, token_viewer(SECRET))
    async with TestClient(TestServer(app)) as client:
        resp = await client.post(f"/api/library/{rec_id}/review", json={"decision": "publish"},
                                 headers=TOKENS["reviewer"])
        assert (await resp.json())["export"]["state"] in ("queued", "running")
        assert (await wait_for_export(client, rec_id, {}))["state"] == "done"
    assert library.path_of((await library.get(rec_id)).mp4).is_file()  # type: ignore[arg-type, union-attr]


# --- poster and pages -----------------------------------------------------------------------------------


async def test_the_poster_is_a_decodable_image(site: Site, tmp_path: Path) -> None:
    resp = await site.client.get(f"/library/files/{site.public_id}/poster")
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
    poster = tmp_path / "poster.jpg"
    poster.write_bytes(await resp.read())
    with av.open(str(poster)) as c:
        frame = next(c.decode(video=0))
    assert (frame.width, frame.height) == (320, 240)


@pytest.mark.parametrize(
    ("path", "content_type", "text"),
    [
        pytest.param("/library", "text/html", "资源库", id="the-library-page"),
        pytest.param("/library/play/abc", "text/html", "<video", id="the-player-page"),
        pytest.param("/library/static/library.js", "javascript", "export", id="the-list-script"),
        pytest.param("/library/static/play.js", "javascript", "export", id="the-player-script"),
        pytest.param("/library/i18n.js", "javascript", "资源库", id="the-translations, shared with the lesson pages"),
        pytest.param("/library/dom.js", "javascript", "export function byId", id="the-element-lookup, shared"),
    ],
)
async def test_the_pages_are_served(site: Site, path: str, content_type: str, text: str) -> None:
    resp = await site.client.get(path)
    assert resp.status == 200
    assert content_type in resp.headers["Content-Type"]  # text/javascript or application/javascript: both run
    assert text in await resp.text()


# --- the library for people: one item per lesson, 下架 / 重新上架, notes for the teacher, the curriculum lists ----


async def test_a_lesson_item_its_sources_take_down_and_the_note_for_its_teacher_only(tmp_path: Path,
                                                                                      webm_master: Path) -> None:
    library = Library(tmp_path / "data")
    ids = []
    for role, label, suffix in (("teacher", "李老师", ""), ("courseware", "课件 1", "-screen1"), ("stage", "二班", "-stage1")):
        file = library.recordings_dir / f"math-8a-20250301-080000{suffix}.webm"
        shutil.copy(webm_master, file)
        ids.append(await library.start_recording("math-8a", "勾股定理", "李老师", "t-li", file, role=role, label=label))
        await library.finish_recording(ids[-1], 3.0, file.stat().st_size)
    library.save_lesson_record("math-8a", {"chat": []}, "教室,时长\n", "时间,内容\n")
    audited: list[tuple[str, str]] = []
    app = web.Application()
    add_routes(app, library, SECRET, token_viewer(SECRET), export_on_publish=False,
               audit=lambda action, viewer, remote, outcome, **detail: audited.append((action, outcome)))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        words = await (await client.get("/api/library/curriculum")).json()
        assert "七年级" in words["grades"]["初中"] and "人教版" in words["editions"]
        item = await (await client.get("/api/library/lessons/math-8a", headers=TOKENS["teacher-new-token"])).json()
        assert item["id"] == ids[0] and sorted(s["role"] for s in item["sources"]) == ["courseware", "stage", "teacher"]
        # its record files: signed links that work without a header, for its teacher (not in anyone else's view)
        csv = await client.get(item["lesson_files"]["attendance.csv"])
        assert csv.status == 200 and "教室" in await csv.text()
        forged = item["lesson_files"]["attendance.csv"].replace("sig=", "sig=x")
        assert (await client.get(forged)).status == 404  # (unpublished: to anyone else it does not exist)
        # a source plays on its own page and links back to its item
        source = await (await client.get(f"/api/library/{ids[1]}", headers=TOKENS["teacher"])).json()
        assert source["item"]["id"] == ids[0] and not source["can"]["edit"] and not source["can"]["review"]
        assert (await client.get(source["urls"]["webm"], headers={"Range": "bytes=0-9"})).status == 206
        assert (await client.get(f"/api/library/{ids[1]}")).status == 404  # unpublished: nobody else

        r = await client.post(f"/api/library/{ids[0]}/review", json={"decision": "publish", "note": "很好"},
                              headers=TOKENS["reviewer"])
        assert r.status == 200
        public = await (await client.get(f"/api/library/{ids[0]}")).json()
        assert public["review_note"] is None and "lesson_files" not in public and len(public["sources"]) == 3
        assert (await client.get(f"/api/library/{ids[2]}")).status == 200  # its sources are public with it
        assert (await client.get(f"/api/library/{ids[0]}/lesson/attendance.csv")).status == 403

        assert (await client.post(f"/api/library/{ids[0]}/take-down", json={"note": "版权问题"},
                                  headers=TOKENS["teacher"])).status == 403
        assert (await client.post(f"/api/library/{ids[0]}/take-down", json={},
                                  headers=TOKENS["reviewer"])).status == 400
        down = await client.post(f"/api/library/{ids[0]}/take-down", json={"note": "版权问题"},
                                 headers=TOKENS["reviewer"])
        assert down.status == 200 and (await down.json())["state"] == "taken_down"
        assert (await client.get(f"/api/library/{ids[0]}")).status == 404
        assert (await client.get(f"/api/library/{ids[2]}")).status == 404
        mine = await (await client.get(f"/api/library/{ids[0]}", headers=TOKENS["teacher"])).json()
        assert mine["review_note"] == "版权问题" and mine["state"] == "taken_down"  # the teacher reads why
        assert not mine["can"]["edit"]
        listed = await (await client.get("/api/library?state=taken_down", headers=TOKENS["reviewer"])).json()
        assert listed["total"] == 1 and listed["viewer"]["reviewer"] is True
        up = await client.post(f"/api/library/{ids[0]}/republish", json={}, headers=TOKENS["reviewer"])
        assert up.status == 200 and (await up.json())["state"] == "published"
        assert ("library_take_down", "ok") in audited and ("library_republish", "ok") in audited
        # the curriculum: a synonym is filed canonically, an unknown grade refused with the list
        r = await client.patch(f"/api/library/{ids[0]}", json={"grade": "初二"}, headers=TOKENS["reviewer"])
        assert (await r.json())["grade"] == "八年级"
        r = await client.patch(f"/api/library/{ids[0]}", json={"grade": "初四"}, headers=TOKENS["reviewer"])
        assert r.status == 400 and "八年级" in (await r.json())["message"]
        found = await (await client.get("/api/library?grade=初二")).json()
        assert [i["id"] for i in found["items"]] == [ids[0]]
    finally:
        await client.close()
        await library.close()

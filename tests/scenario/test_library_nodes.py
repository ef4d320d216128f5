"""Two nodes on one real PostgreSQL, no shared media directory: a recording written by node A is found, played
(Range) and exported from node B, which forwards what it does not have to A (recorder/library/remote.py)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from recorder.library.catalog import Library, Viewer
from recorder.library.web import add_routes
from signaling.app import token_viewer
from signaling.tokens import issue_token
from tests.throwaway_postgres import empty_tables

SECRET = "nodes-test-secret-0123456789abcdef"
REVIEWER = Viewer(role="reviewer", sub="r-1", name="张审核")


async def _node(data_dir: Path, url: str) -> tuple[Library, TestServer]:
    library = Library(data_dir, database_url=url)
    app = web.Application()
    routes = add_routes(app, library, SECRET, token_viewer(SECRET), export_on_publish=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    library.node_url = routes.remote.node_url = str(server.make_url("")).rstrip("/")
    return library, server


async def test_a_recording_of_node_a_is_found_played_with_range_and_exported_from_node_b(
        tmp_path: Path, postgres_database: str, webm_master: Path) -> None:
    from store import Base

    await empty_tables(postgres_database, [t.name for t in Base.metadata.sorted_tables])
    a, server_a = await _node(tmp_path / "a", postgres_database)
    b, server_b = await _node(tmp_path / "b", postgres_database)
    try:
        file = a.recordings_dir / "lesson.webm"
        shutil.copy(webm_master, file)
        rec_id = await a.start_recording("math-8a", "勾股定理", "李老师", "t-li", file)
        await a.finish_recording(rec_id, 3.0, file.stat().st_size)
        await a.review(rec_id, "publish", "", REVIEWER)
        assert not (b.recordings_dir / "lesson.webm").exists()
        b_url = b.node_url
        whole = file.read_bytes()
        reviewer = {"Authorization": f"Bearer {issue_token(SECRET, 'reviewer', 'library', name='张审核')}"}
        async with ClientSession() as http:
            async with http.get(f"{b_url}/api/library", params={"q": "勾股"}) as resp:
                found = await resp.json()
            assert [i["id"] for i in found["items"]] == [rec_id]
            async with http.get(f"{b_url}/library/files/{rec_id}", headers={"Range": "bytes=100-1099"}) as resp:
                assert resp.status == 206, await resp.text()
                assert resp.headers["Content-Range"] == f"bytes 100-1099/{len(whole)}"
                assert await resp.read() == whole[100:1100]
            async with http.get(f"{b_url}/library/files/{rec_id}", headers={"Range": f"bytes={len(whole)}-"}) as resp:
                assert resp.status == 416
            async with http.get(f"{b_url}/library/files/{rec_id}/poster") as resp:
                assert resp.status == 200 and (await resp.read())[:2] == b"\xff\xd8"
            # the export is made by node A (it holds the file), asked at node B
            async with http.post(f"{b_url}/api/library/{rec_id}/export", headers=reviewer) as resp:
                assert resp.status == 202, await resp.text()
            deadline = time.monotonic() + 120
            while True:
                async with http.get(f"{b_url}/api/library/{rec_id}/export", headers=reviewer) as resp:
                    job = await resp.json()
                if job["state"] == "done":
                    break
                assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
                await asyncio.sleep(0.3)
            async with http.get(f"{b_url}/library/files/{rec_id}", params={"format": "mp4"},
                                headers={"Range": "bytes=0-7"}) as resp:
                assert resp.status == 206 and (await resp.read())[4:8] == b"ftyp"
            assert not list(b.exports_dir.iterdir()) and list(a.exports_dir.iterdir())
            # a forwarded request is never forwarded again (no loops): A does not send it back
            async with http.get(f"{b_url}/library/files/{rec_id}", headers={"X-Ketang-Forwarded": "1"}) as resp:
                assert resp.status == 404
    finally:
        await server_b.close()
        await server_a.close()
        await b.close()
        await a.close()

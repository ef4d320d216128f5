"""The audit log on the real app (make_app: websocket, library API): a refused token, a removal and a library
publish each leave one line with who did it and from which address, and `ketang audit` reads them back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ketang.audit_cmd import format_line, parse_since
from ketang.cli import main as ketang_main
from recorder.library.catalog import Library
from signaling.app import make_app
from signaling.audit import AuditLog, audit_path, read
from signaling.config import Config
from signaling.tokens import issue_token
from tests.unit.recorder.test_library import add_lesson

SECRET = "audit-test-secret-0123456789abcdef"


async def _join(client: TestClient, token: str, lesson: str) -> tuple[object, dict]:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "join", "id": 1, "token": token, "lesson": lesson})
    while True:
        msg = await ws.receive_json(timeout=10)
        if msg.get("ref") == 1:
            return ws, msg


@pytest.fixture
async def app_client(tmp_path: Path):
    config = Config(data_dir=tmp_path / "data", secret=SECRET, record=False)
    client = TestClient(TestServer(make_app(config)))
    await client.start_server()
    yield client, config
    await client.close()


async def test_a_refused_token_a_removal_and_a_publish_each_leave_one_line_with_actor_and_address(app_client,
                                                                                                   capsys):
    client, config = app_client
    lesson = "audit-1"
    good = issue_token(SECRET, "classroom", lesson, name="第一小学", sub="c-1")
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    ws, reply = await _join(client, tampered, lesson)
    assert reply["type"] == "error"
    await ws.close()

    teacher_ws, joined = await _join(client, issue_token(SECRET, "teacher", lesson, name="李老师", sub="t-li"), lesson)
    assert joined["type"] == "joined"
    room_ws, joined = await _join(client, good, lesson)
    assert joined["type"] == "joined"
    await teacher_ws.send_json({"type": "remove", "id": 2, "participant": "c-1"})
    while (await teacher_ws.receive_json(timeout=10)).get("ref") != 2:
        pass

    library = Library(config.data_dir)
    rec_id = await add_lesson(library)
    await library.close()
    reviewer = issue_token(SECRET, "reviewer", "library", name="张审核", sub="r-1")
    resp = await client.post(f"/api/library/{rec_id}/review", json={"decision": "publish", "note": ""},
                             headers={"Authorization": f"Bearer {reviewer}"})
    assert resp.status == 200, await resp.text()
    resp = await client.get("/api/library", headers={"Authorization": "Bearer not-a-token"})
    assert resp.status == 401
    await room_ws.close()
    await teacher_ws.close()

    lines = list(read(audit_path(config.data_dir)))
    refused = [e for e in lines if e["action"] == "join" and e["outcome"] != "ok"]
    assert len(refused) == 1 and refused[0]["actor"] is None and refused[0]["address"] == "127.0.0.1"
    assert refused[0]["lesson"] == lesson and tampered[:20] not in json.dumps(refused[0])  # never the token itself
    removed = [e for e in lines if e["action"] == "remove"]
    assert len(removed) == 1
    assert removed[0]["actor"] == {"role": "teacher", "sub": "t-li", "name": "李老师"}
    assert (removed[0]["address"], removed[0]["participant"], removed[0]["outcome"]) == ("127.0.0.1", "c-1", "ok")
    published = [e for e in lines if e["action"] == "library_review"]
    assert len(published) == 1 and published[0]["actor"]["sub"] == "r-1" and published[0]["address"] == "127.0.0.1"
    assert (published[0]["recording"], published[0]["decision"]) == (rec_id, "publish")
    assert [e["outcome"] for e in lines if e["action"] == "library_token"] == ["unauthorized"]
    joins = [e for e in lines if e["action"] == "join" and e["outcome"] == "ok"]
    assert {e["actor"]["sub"] for e in joins} == {"t-li", "c-1"}

    # the command reads them back, filtered by lesson
    assert ketang_main(["audit", "--data-dir", str(config.data_dir), "--lesson", lesson, "--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["action"] for e in printed] == [e["action"] for e in lines if e.get("lesson") == lesson]
    assert "remove" in [e["action"] for e in printed] and "library_review" not in [e["action"] for e in printed]


def test_the_log_rotates_keeps_every_line_in_order_and_skips_a_line_cut_by_a_crash(tmp_path: Path):
    path = audit_path(tmp_path)
    clock = iter(range(1_700_000_000, 1_700_001_000))
    log = AuditLog(path, max_bytes=400, backups=50, clock=lambda: float(next(clock)))
    for i in range(30):
        log.record("mute", actor={"role": "teacher", "sub": "t", "name": "李老师"}, address="10.0.0.9",
                   lesson="l-1", participant=f"c-{i}", muted=True)
    log.close()
    assert len(list(path.parent.glob("audit.log.*"))) > 3  # it rotated
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"at": "2023-11-14T22:')  # a crash in the middle of a line
    entries = list(read(path))
    assert [e["participant"] for e in entries] == [f"c-{i}" for i in range(30)]
    assert list(read(path, since=parse_since(entries[20]["at"]))) == entries[20:]
    assert "c-7" in format_line(entries[7]) and "10.0.0.9" in format_line(entries[7])


def test_a_hostile_field_is_cut_and_a_failing_disk_does_not_raise(tmp_path: Path):
    path = audit_path(tmp_path)
    log = AuditLog(path)
    log.record("join", actor=None, address="10.0.0.1", outcome="invalid_token", lesson="x" * 100_000)
    assert len(list(read(path))[0]["lesson"]) == 200
    path.unlink()
    path.mkdir()  # the log's file is now a directory: every write fails
    log.record("join", actor=None, address="10.0.0.1", outcome="ok", lesson="l")  # no exception
    log.close()


@pytest.mark.parametrize(("text", "ok"), [("2h", True), ("30m", True), ("7d", True), ("2026-12-03", True),
                                          ("2026-12-03T08:00+08:00", True), ("yesterday", False), ("", False)])
def test_since_accepts_relative_and_iso_times(text: str, ok: bool):
    if ok:
        assert parse_since(text).tzinfo is not None
    else:
        with pytest.raises(ValueError):
            parse_since(text)


@pytest.mark.parametrize(("trusted", "address"), [(("127.0.0.1",), "203.0.113.9"), ((), "127.0.0.1")])
async def test_behind_a_trusted_proxy_the_audit_log_names_the_client_and_a_forged_header_is_ignored(
        tmp_path: Path, trusted: tuple[str, ...], address: str):
    """nginx on this machine forwards for 203.0.113.9: with `--trusted-proxies 127.0.0.1` the refused join is logged
    from the school's address; without it the same header is a client's claim and the line says 127.0.0.1."""
    config = Config(data_dir=tmp_path / "data", secret=SECRET, record=False, trusted_proxies=trusted)
    client = TestClient(TestServer(make_app(config)))
    await client.start_server()
    try:
        ws = await client.ws_connect("/ws", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"})
        await ws.send_json({"type": "join", "id": 1, "token": "not-a-token", "lesson": "audit-proxy"})
        assert (await ws.receive_json(timeout=10))["type"] == "error"
        await ws.close()
    finally:
        await client.close()
    refused = [e for e in read(audit_path(config.data_dir)) if e["action"] == "join"]
    assert [e["address"] for e in refused] == [address]

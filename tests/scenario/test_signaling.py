"""The signalling protocol against a real `ketang serve` subprocess: tokens, roles, validation, events."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import aiohttp
import pytest

from signaling.tokens import verify_token
from tests.support import TEST_SECRET, Server, Teacher, WsClient, token


async def _client(server: Server) -> WsClient:
    return await WsClient().connect(server.ws_url)


async def _joined(server: Server, role: str, lesson: str, name: str) -> tuple[WsClient, dict]:
    ws = await _client(server)
    reply = await ws.request({"type": "join", "token": token(role, lesson, name), "lesson": lesson})
    assert reply["type"] == "joined", reply
    return ws, reply


def _tampered(tok: str) -> str:
    head, payload, sig = tok.split(".")
    middle = len(payload) // 2
    flipped = "A" if payload[middle] != "A" else "B"
    return ".".join([head, payload[:middle] + flipped + payload[middle + 1:], sig])


@pytest.mark.parametrize(
    ("make_token", "lesson", "code"),
    [
        pytest.param(lambda: token("classroom", "other-lesson"), "sig-tokens", "token_wrong_lesson",
                     id="a token for another lesson is refused"),
        pytest.param(lambda: token("classroom", "sig-tokens", now=time.time() - 7200, ttl_s=60), "sig-tokens",
                     "token_expired", id="an expired token is refused"),
        pytest.param(lambda: _tampered(token("teacher", "sig-tokens")), "sig-tokens", "token_invalid",
                     id="a tampered token is refused"),
        pytest.param(lambda: token("teacher", "sig-tokens", secret="not-the-server-secret-0123456789xx"),
                     "sig-tokens", "token_invalid", id="a token signed with another secret is refused"),
        pytest.param(lambda: "garbage", "sig-tokens", "token_invalid", id="garbage is refused"),
    ],
)
async def test_bad_tokens_are_refused_and_the_connection_can_still_join(server, make_token, lesson, code):
    ws = await _client(server)
    try:
        reply = await ws.request({"type": "join", "token": make_token(), "lesson": lesson})
        assert reply["type"] == "error" and reply["code"] == code, reply
        pong = await ws.request({"type": "ping"})
        assert pong["type"] == "pong"
        ok = await ws.request({"type": "join", "token": token("classroom", lesson), "lesson": lesson})
        assert ok["type"] == "joined"
    finally:
        await ws.close()


async def test_messages_before_join_are_refused(server):
    ws = await _client(server)
    try:
        for message in ({"type": "publish", "sdp": "v=0\r\n"}, {"type": "answer", "sdp": "v=0\r\n"},
                        {"type": "end_lesson"}):
            reply = await ws.request(message)
            assert reply["type"] == "error" and reply["code"] == "not_joined", reply
    finally:
        await ws.close()


async def test_a_classrooms_own_camera_reaches_no_other_classroom_and_an_observer_cannot_publish(server):
    lesson = "sig-roles"
    watcher, _ = await _joined(server, "classroom", lesson, "watcher")
    intruder_ws, _ = await _joined(server, "classroom", lesson, "intruder")
    intruder = Teacher(intruder_ws)  # a real offer with real media, from a classroom
    try:
        await intruder.pc.setLocalDescription(await intruder.pc.createOffer())
        sdp = intruder.pc.localDescription.sdp
        screen = await intruder_ws.request({"type": "publish", "sdp": sdp, "sources": {"0": "screen"}})
        assert screen["type"] == "error" and screen["code"] == "forbidden", screen  # courseware is the teacher's
        reply = await intruder_ws.request({"type": "publish", "sdp": sdp})
        assert reply["type"] == "answer", reply  # its camera and microphone: for the teacher's wall
        observer_ws, _ = await _joined(server, "observer", lesson, "inspector")
        refused = await observer_ws.request({"type": "publish", "sdp": intruder.pc.localDescription.sdp})
        assert refused["code"] == "forbidden"
        await asyncio.sleep(0.5)
        assert not [m for m in watcher.messages if m.get("event") == "track-added"]
        assert not [m for m in watcher.messages if m.get("type") == "tracks"
                    and any(t["track"] for t in m["tracks"])], "another classroom's camera reached a classroom"
        health = await server.health()
        assert health["status"] == "ok"
        await observer_ws.close()
    finally:
        await intruder.close()
        await intruder_ws.close()
        await watcher.close()


async def test_observers_are_not_listed_to_others_but_classrooms_and_the_teacher_are(server):
    lesson = "sig-observers"
    teacher, _ = await _joined(server, "teacher", lesson, "Ms Li")
    room, joined = await _joined(server, "classroom", lesson, "Village school")
    try:
        assert [p["role"] for p in joined["participants"]] == ["teacher", "classroom"]
        event = await teacher.wait_for(lambda m: m.get("event") == "participant-joined")
        assert event["participant"]["name"] == "Village school"
        start = len(teacher.messages)
        observer, seen = await _joined(server, "observer", lesson, "Inspector")
        assert "observer" not in [p["role"] for p in seen["participants"]]
        await observer.close()
        await asyncio.sleep(0.5)
        assert [m for m in teacher.messages[start:] if m.get("type") == "event"] == []
    finally:
        await room.close()
        await teacher.close()


async def test_a_bad_sdp_from_the_teacher_is_answered_with_an_error_and_a_good_one_still_works(server):
    lesson = "sig-sdp"
    ws, _ = await _joined(server, "teacher", lesson, "Ms Li")
    teacher = Teacher(ws)
    try:
        for sdp in ("v=0\r\nthis is not sdp", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"):
            reply = await ws.request({"type": "publish", "sdp": sdp})
            assert reply["type"] == "error" and reply["code"] in ("bad_sdp", "nothing_to_publish"), reply
        reply = await teacher.publish()
        assert reply["type"] == "answer"
        # only the lesson codecs are answered, and the teacher's Opus encoder is asked for in-band FEC
        rtpmaps = [line.split()[1].split("/")[0].lower() for line in reply["sdp"].splitlines()
                   if line.startswith("a=rtpmap:")]
        assert sorted(set(rtpmaps)) == ["opus", "rtx", "vp8"]
        opus_pt = next(line.split()[0].split(":")[1] for line in reply["sdp"].splitlines()
                       if line.startswith("a=rtpmap:") and "opus" in line.lower())
        fmtp = next(line for line in reply["sdp"].splitlines() if line.startswith(f"a=fmtp:{opus_pt} "))
        assert "useinbandfec=1" in fmtp
        started = await ws.wait_for(lambda m: m.get("event") == "lesson-started")
        assert started["lesson"]["state"] == "live"
    finally:
        await teacher.close()
        await ws.close()


async def test_ending_a_lesson_is_announced_and_refuses_new_classrooms(server):
    lesson = "sig-end"
    teacher, _ = await _joined(server, "teacher", lesson, "Ms Li")
    room, _ = await _joined(server, "classroom", lesson, "school")
    try:
        refused = await room.request({"type": "end_lesson"})
        assert refused["code"] == "forbidden"
        await teacher.send({"type": "end_lesson"})
        ended = await room.wait_for(lambda m: m.get("event") == "lesson-ended")
        assert ended["lesson"]["state"] == "ended" and ended["lesson"]["ended_at"]
        late = await _client(server)
        reply = await late.request({"type": "join", "token": token("classroom", lesson), "lesson": lesson})
        assert reply["code"] == "lesson_ended"
        await late.close()
    finally:
        await room.close()
        await teacher.close()


async def test_leave_is_acknowledged_announced_and_counted_in_healthz(server):
    lesson = "sig-leave"
    before = (await server.health())["participants"]
    teacher, _ = await _joined(server, "teacher", lesson, "Ms Li")
    room, _ = await _joined(server, "classroom", lesson, "school")
    assert (await server.health())["participants"] == before + 2
    left = await room.request({"type": "leave"})
    assert left["type"] == "left"
    event = await teacher.wait_for(lambda m: m.get("event") == "participant-left")
    assert event["participant"]["name"] == "school"
    assert (await server.health())["participants"] == before + 1
    await teacher.close()
    await asyncio.sleep(0.3)
    assert (await server.health())["participants"] == before
    await room.close()


def test_the_token_command_prints_a_token_the_server_accepts(tmp_path):
    env = {"KETANG_SECRET": TEST_SECRET, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "ketang.cli", "token", "--role", "classroom", "--lesson", "L7",
                          "--name", "第一小学", "--ttl", "600"], env=env, capture_output=True, text=True, check=True)
    claims = verify_token(TEST_SECRET, out.stdout.strip(), lesson="L7")
    assert (claims.role, claims.lesson, claims.name) == ("classroom", "L7", "第一小学")
    assert claims.exp - claims.iat == 600


def test_the_server_and_the_token_command_share_the_secret_file_in_the_data_dir(tmp_path):
    env = {"KETANG_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "ketang.cli", "token", "--role", "teacher", "--lesson", "L8"],
                         env=env, capture_output=True, text=True, check=True)
    secret = (tmp_path / "secret").read_text().strip()
    assert verify_token(secret, out.stdout.strip()).role == "teacher"
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("make_token", "status"),
    [
        pytest.param(lambda: token("observer", "sig-stats"), 200, id="an observer of the lesson may read its stats"),
        pytest.param(lambda: token("teacher", "sig-stats"), 200, id="its teacher may read them"),
        pytest.param(lambda: token("classroom", "sig-stats"), 403, id="a classroom may not"),
        pytest.param(lambda: token("observer", "another-lesson"), 401, id="a token of another lesson may not"),
        pytest.param(lambda: "nonsense", 401, id="garbage may not"),
    ],
)
async def test_lesson_stats_need_a_teacher_or_observer_token_of_that_lesson(server, make_token, status):
    async with aiohttp.ClientSession() as http, http.get(
            f"{server.url}/api/lessons/sig-stats/stats", headers={"Authorization": f"Bearer {make_token()}"}) as resp:
        body = await resp.json()
    assert resp.status == status, body
    if status == 200:
        assert body["lesson"] == "sig-stats" and body["producers"] == []
    else:
        assert body["type"] == "error" and body["code"] in ("forbidden", "token_wrong_lesson", "token_invalid")


async def test_classrooms_hear_of_the_teacher_but_not_of_each_other_while_the_teacher_hears_of_all(server):
    """400 classrooms joining must not send each of them 399 join events (O(N^2) messages)."""
    lesson = "sig-audience"
    first, _ = await _joined(server, "classroom", lesson, "first school")
    teacher, _ = await _joined(server, "teacher", lesson, "Ms Li")
    second, second_joined = await _joined(server, "classroom", lesson, "second school")
    try:
        assert [p["name"] for p in second_joined["participants"]] == ["Ms Li", "second school"]
        joined_events = await teacher.wait_for(lambda m: m.get("event") == "participant-joined")
        assert joined_events["participant"]["name"] == "second school"
        teacher_event = await first.wait_for(lambda m: m.get("event") == "participant-joined")
        assert teacher_event["participant"]["role"] == "teacher"
        await second.request({"type": "leave"})
        left = await teacher.wait_for(lambda m: m.get("event") == "participant-left")
        assert left["participant"]["name"] == "second school"
        await teacher.close()
        teacher_left = await first.wait_for(lambda m: m.get("event") == "participant-left")
        assert teacher_left["participant"]["role"] == "teacher"
        about_classrooms = [m for m in first.messages if m.get("type") == "event"
                            and m.get("participant", {}).get("role") == "classroom"]
        assert about_classrooms == []
    finally:
        await first.close()
        await second.close()

"""The interactive classroom against a real `ketang serve` with real aiortc peers: classrooms publish their own
small camera and microphone; the teacher's wall receives only the tiles it shows; a classroom on stage reaches
every classroom; a hard mute is enforced in the SFU; removal, lock, hands, chat and attendance.

Each classroom's camera has its own frame size, so a receiver's decoded frames tell whose video it got.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from tests.support import Classroom, Server, Teacher, WsClient, hang_up, token

TEACHER_SIZE = (320, 240)
CAMERAS = {"A": (160, 96), "B": (176, 144), "C": (192, 112)}


@dataclass
class Room:
    """A classroom: it receives the lesson (`rx`) and publishes its own camera and microphone (`tx`)."""

    name: str
    token: str
    ws: WsClient
    id: str
    rx: Classroom
    tx: Teacher | None = None
    extra: list = field(default_factory=list)
    answer: dict = field(default_factory=dict)  # the server's reply to its publish


async def _join(server: Server, tok: str) -> tuple[WsClient, dict]:
    ws = await WsClient().connect(server.ws_url)
    return ws, await ws.request({"type": "join", "token": tok})


async def _room(server: Server, lesson: str, name: str, publish: bool = True) -> Room:
    tok = token("classroom", lesson, name)
    ws, joined = await _join(server, tok)
    assert joined["type"] == "joined", joined
    assert joined["state"] == {"participant": joined["participant"]["id"], "hand": False, "position": None,
                               "stage": False, "muted": False}
    room = Room(name, tok, ws, joined["participant"]["id"], Classroom(ws))
    if publish:
        room.tx = Teacher(ws, size=CAMERAS[name])
        reply = room.answer = await room.tx.publish()
        assert reply["type"] == "answer", reply
    return room


async def _stats(server: Server, lesson: str) -> dict:
    return await server.stats(lesson)


def _received_owners(stats: dict, subscriber: str) -> set[str]:
    """Whose tracks a subscriber's consumers carry now."""
    owner = {p["id"]: p["participant"] for p in stats["producers"]}
    return {owner[c["producer"]] for c in stats["subscribers"].get(subscriber, []) if c["producer"] in owner}


async def _until(check, timeout_s: float = 10.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.1)


@asynccontextmanager
async def _lesson(server: Server, lesson: str) -> AsyncIterator[tuple[WsClient, Teacher, Classroom, dict[str, Room]]]:
    teacher_ws, joined = await _join(server, token("teacher", lesson, "王老师"))
    assert joined["type"] == "joined" and joined["hands"] == [] and joined["stage"] == []
    teacher = Teacher(teacher_ws, size=TEACHER_SIZE)
    assert (await teacher.publish())["type"] == "answer"
    wall = Classroom(teacher_ws)  # the teacher's receiving connection, offered after its first `wall`
    rooms = {name: await _room(server, lesson, name) for name in CAMERAS}
    try:
        yield teacher_ws, teacher, wall, rooms
    finally:
        for room in rooms.values():
            peers = [room.rx] + ([room.tx] if room.tx else [])
            await hang_up(*peers)
        await hang_up(teacher)
        await wall.close()


async def test_the_wall_receives_only_its_tiles_and_a_classroom_on_stage_reaches_every_classroom(server):
    lesson = "inter-media"
    async with _lesson(server, lesson) as (teacher_ws, teacher, wall, rooms):
        a, b, c = rooms["A"], rooms["B"], rooms["C"]
        teacher_id = next(m for m in teacher_ws.messages if m.get("type") == "joined")["participant"]["id"]

        # page 1 of the wall shows A only: A's camera (and microphone) flow to the teacher, B's and C's do not
        reply = await teacher_ws.request({"type": "wall", "visible": [a.id, "not-a-classroom"]})
        assert reply["visible"] == [a.id]
        await _until(lambda: wall.frames_by_size.get(CAMERAS["A"], 0) >= 10, what="the teacher decoding A")
        stats = await _stats(server, lesson)
        assert _received_owners(stats, teacher_id) == {a.id}
        assert not set(wall.frames_by_size) - {CAMERAS["A"]}, wall.frames_by_size
        # no classroom receives another classroom's camera, only the teacher's
        for room in rooms.values():
            await room.rx.wait_frames(5)
            assert set(room.rx.frames_by_size) == {TEACHER_SIZE}, (room.name, room.rx.frames_by_size)
            assert _received_owners(stats, room.id) == {teacher_id}

        # the classrooms' uplinks bypass aiortc's receiver; the server reports them itself: A's browser (here
        # aiortc) gets receiver reports for its camera and microphone
        async def reported_kinds() -> set[str]:
            stats = await a.tx.pc.getStats()  # type: ignore[union-attr]
            return {s.kind for s in stats.values() if s.type == "remote-inbound-rtp"}

        await _until(lambda: _eq(reported_kinds(), {"audio", "video"}), what="receiver reports for A's uplink")

        # page 2: B and C; A's tracks leave the teacher's connection
        await teacher_ws.request({"type": "wall", "visible": [b.id, c.id]})
        await _until(lambda: wall.frames_by_size.get(CAMERAS["B"], 0) >= 5
                     and wall.frames_by_size.get(CAMERAS["C"], 0) >= 5, what="the teacher decoding B and C")
        assert _received_owners(await _stats(server, lesson), teacher_id) == {b.id, c.id}

        # B on stage: A and C decode B's camera and receive its microphone; so does the teacher
        on = await teacher_ws.request({"type": "stage", "participant": b.id, "on": True})
        assert on["participants"] == [{"id": b.id, "name": "B"}]
        for room in (a, c):
            await _until(lambda room=room: room.rx.frames_by_size.get(CAMERAS["B"], 0) >= 5,
                         what=f"{room.name} decoding B on stage")
        stats = await _stats(server, lesson)
        b_audio = next(p for p in stats["producers"] if p["participant"] == b.id and p["kind"] == "audio")
        for room in (a, c):
            assert _received_owners(stats, room.id) == {teacher_id, b.id}
            mine = next(x for x in stats["subscribers"][room.id] if x["producer"] == b_audio["id"])
            assert mine["packets_out"] > 0
        assert _received_owners(stats, b.id) == {teacher_id}  # B does not receive itself

        # hard mute of B (on stage): its audio still arrives at the server and goes to nobody
        muted = await teacher_ws.request({"type": "mute", "participant": b.id, "muted": True})
        assert muted["participants"] == [b.id] and muted["muted"] is True
        await b.ws.wait_for(lambda m: m.get("event") == "classroom-state" and m["muted"])
        before = await _stats(server, lesson)
        await asyncio.sleep(1.0)
        after = await _stats(server, lesson)

        def audio_of_b(s: dict) -> tuple[int, int]:
            p = next(p for p in s["producers"] if p["id"] == b_audio["id"])
            out = sum(x["packets_out"] for xs in s["subscribers"].values() for x in xs if x["producer"] == p["id"])
            return p["packets_in"], out

        (in0, out0), (in1, out1) = audio_of_b(before), audio_of_b(after)
        assert in1 - in0 >= 25, "B's browser keeps sending its microphone"
        assert out1 == out0, "a hard-muted classroom's audio was forwarded"
        assert (await teacher_ws.request({"type": "mute", "participant": b.id, "muted": False}))["muted"] is False
        await asyncio.sleep(0.5)
        assert audio_of_b(await _stats(server, lesson))[1] > out1, "unmuted audio flows again"

        # off stage: its tracks leave A and C
        off = await teacher_ws.request({"type": "stage", "participant": b.id, "on": False})
        assert off["participants"] == []
        await _until(lambda: _stats_owners_match(server, lesson, a.id, {teacher_id}), what="B leaving A")
        for room in (a, c):
            assert _received_owners(await _stats(server, lesson), room.id) == {teacher_id}

        # the attendance lists every classroom with minutes and reception figures (sampled every 2 s)
        await asyncio.sleep(2.2)
        headers = {"Authorization": f"Bearer {token('teacher', lesson, '王老师')}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/api/lessons/{lesson}/attendance.csv", headers=headers) as resp:
                assert resp.status == 200
                raw = await resp.read()
            async with http.get(f"{server.url}/api/lessons/{lesson}/attendance",
                                headers={"Authorization": f"Bearer {c.token}"}) as resp:
                assert resp.status == 403  # a classroom does not read the others' attendance
        assert raw.startswith("\ufeff".encode())
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
        assert sorted(r["name"] for r in rows) == ["A", "B", "C"]
        for r in rows:
            assert 0 < float(r["present_min"]) < 5, r
            assert r["kbps_avg"] and float(r["kbps_avg"]) > 10, r  # it received the lesson
            assert r["loss_pct"] != "" and float(r["loss_pct"]) < 5, r
        async with aiohttp.ClientSession() as http, \
                http.get(f"{server.url}/api/lessons/{lesson}/attendance", headers=headers) as resp:
            data = await resp.json()
        b_row = next(r for r in data["classrooms"] if r["participant"] == b.id)
        assert b_row["stage_s"] > 1 and b_row["sessions"] == 1, b_row  # minutes in the CSV round this to 0.0
        assert [t["participant"] for t in data["stage_timeline"]] == [b.id]


async def test_each_classroom_is_told_whether_anyone_receives_its_camera_and_microphone(server):
    """What nobody receives, a classroom need not send (its school's uplink, the server's intake): the server
    says so in the publish answer and with `demand` events as walls, stage and mutes change."""
    lesson = "inter-demand"
    async with _lesson(server, lesson) as (teacher_ws, teacher, wall, rooms):
        a, b, c = rooms["A"], rooms["B"], rooms["C"]
        nobody = {"video": False, "audio": False}
        for room in rooms.values():
            assert room.answer["demand"] == nobody, room.answer  # the teacher shows no wall yet

        def demands(room: Room) -> list[dict]:
            return [{"video": m["video"], "audio": m["audio"]} for m in room.ws.messages
                    if m.get("event") == "demand"]

        async def told(room: Room, expected: dict) -> None:
            await _until(lambda: demands(room)[-1:] == [expected], timeout_s=5,
                         what=f"{room.name} told {expected}, was told {demands(room)}")

        await teacher_ws.request({"type": "wall", "visible": [a.id]})
        await told(a, {"video": True, "audio": True})
        await teacher_ws.request({"type": "mute", "participant": a.id, "muted": True})
        await told(a, {"video": True, "audio": False})  # hard-muted: its microphone goes to nobody
        await teacher_ws.request({"type": "wall", "visible": [b.id]})
        await told(a, {"video": False, "audio": False})
        await told(b, {"video": True, "audio": True})
        # on stage: everyone receives it (and going on stage lifts the mute)
        await teacher_ws.request({"type": "stage", "participant": a.id, "on": True})
        await told(a, {"video": True, "audio": True})
        await teacher_ws.request({"type": "stage", "participant": a.id, "on": False})
        await told(a, {"video": False, "audio": False})
        # told only of changes, and never about another classroom's tracks
        assert demands(a) == [{"video": True, "audio": True}, {"video": True, "audio": False}, nobody,
                              {"video": True, "audio": True}, nobody]
        assert demands(c) == [], demands(c)
        # a classroom publishing again (a new connection) is told where it stands in the answer
        again = await b.tx.publish()  # type: ignore[union-attr]
        assert again["demand"] == {"video": True, "audio": True}, again
        # the teacher's own publish answer carries no demand
        assert "demand" not in next(m for m in teacher_ws.messages if m.get("type") == "answer")


async def _eq(value, expected) -> bool:  # type: ignore[no-untyped-def]
    return await value == expected


async def _stats_owners_match(server: Server, lesson: str, subscriber: str, owners: set[str]) -> bool:
    return _received_owners(await _stats(server, lesson), subscriber) == owners


async def test_hands_in_order_removal_lock_and_chat(server):
    lesson = "inter-control"
    teacher_ws, joined = await _join(server, token("teacher", lesson, "王老师"))
    rooms = {name: await _room(server, lesson, name, publish=False) for name in CAMERAS}
    a, b, c = rooms["A"], rooms["B"], rooms["C"]
    extra: list[WsClient] = []
    try:
        # hands: B then A, in that order on the teacher's side; B's own page learns its state
        assert (await b.ws.request({"type": "hand", "up": True}))["position"] == 1
        assert (await a.ws.request({"type": "hand", "up": True}))["position"] == 2
        assert (await b.ws.request({"type": "hand", "up": True}))["position"] == 1  # raising again keeps the place
        hands = await teacher_ws.wait_for(lambda m: m.get("event") == "hands" and len(m["queue"]) == 2)
        assert [h["participant"] for h in hands["queue"]] == [b.id, a.id]
        assert [h["name"] for h in hands["queue"]] == ["B", "A"]
        await b.ws.wait_for(lambda m: m.get("event") == "classroom-state" and m["hand"])
        assert not [m for m in c.ws.messages if m.get("event") == "hands"], "a classroom heard of others' hands"
        # on stage lowers the hand
        start = len(teacher_ws.messages)
        await teacher_ws.request({"type": "stage", "participant": b.id, "on": True})
        hands = await teacher_ws.wait_for(lambda m: m.get("event") == "hands", start=start)
        assert [h["participant"] for h in hands["queue"]] == [a.id]
        staged = await c.ws.wait_for(lambda m: m.get("event") == "stage")
        assert staged["participants"] == [{"id": b.id, "name": "B"}]
        # the stage holds KETANG_STAGE_MAX (2) at most
        assert (await teacher_ws.request({"type": "stage", "participant": a.id, "on": True}))["type"] == "stage"
        full = await teacher_ws.request({"type": "stage", "participant": c.id, "on": True})
        assert full["code"] == "stage_full", full
        # only the teacher moderates
        assert (await a.ws.request({"type": "mute", "muted": True}))["code"] == "forbidden"
        assert (await teacher_ws.request({"type": "stage", "participant": "nobody", "on": True}))["code"] == "not_found"

        # mute all reaches every classroom's page
        everyone = await teacher_ws.request({"type": "mute", "muted": True})
        assert sorted(everyone["participants"]) == sorted(r.id for r in rooms.values())
        await c.ws.wait_for(lambda m: m.get("event") == "classroom-state" and m["muted"])
        # a page joining now (an observer; the same for a reloaded teacher page) finds every classroom's state
        watcher, seen = await _join(server, token("observer", lesson, "督导"))
        extra.append(watcher)
        assert {s["participant"]: (s["muted"], s["stage"]) for s in seen["classrooms"]} == \
            {a.id: (True, True), b.id: (True, True), c.id: (True, False)}

        # chat: a classroom writes, everyone reads; the teacher deletes it; classroom chat off
        sent = await a.ws.request({"type": "chat", "text": "老师，第三题怎么做？\x07"})
        assert sent["message"]["text"] == "老师，第三题怎么做？"
        got = await teacher_ws.wait_for(lambda m: m.get("event") == "chat")
        assert got["message"]["name"] == "A" and got["message"]["role"] == "classroom"
        assert (await teacher_ws.request({"type": "chat_delete", "message": got["message"]["id"]}))["type"] == \
            "chat_deleted"
        await c.ws.wait_for(lambda m: m.get("event") == "chat-deleted" and m["message"] == got["message"]["id"])
        mode = await teacher_ws.request({"type": "chat_mode", "classrooms": False})
        assert mode["settings"] == {"locked": False, "chat_classrooms": False}
        assert (await a.ws.request({"type": "chat", "text": "hello"}))["code"] == "chat_off"
        assert (await teacher_ws.request({"type": "chat", "text": "请安静"}))["type"] == "chat"
        assert (await a.ws.request({"type": "chat", "text": "x" * 501}))["code"] == "bad_message"

        # remove C: its socket is closed with 4003 and the same link cannot join again
        removed = await teacher_ws.request({"type": "remove", "participant": c.id})
        assert removed["participant"] == c.id
        await _until(lambda: c.ws.close_code is not None, what="C's socket closing")
        assert c.ws.close_code == 4003
        again, refused = await _join(server, c.token)
        extra.append(again)
        assert refused["type"] == "error" and refused["code"] == "removed", refused

        # lock: a new classroom is refused; A, which was in the lesson, comes back after a dropped link
        locked = await teacher_ws.request({"type": "lock", "locked": True})
        assert locked["settings"]["locked"] is True
        newcomer, refused = await _join(server, token("classroom", lesson, "D"))
        extra.append(newcomer)
        assert refused["code"] == "lesson_locked", refused
        await a.ws.close()
        back, rejoined = await _join(server, a.token)
        extra.append(back)
        assert rejoined["type"] == "joined", rejoined
        # ... and finds its state and the lesson's as they were
        assert rejoined["state"] == {"participant": a.id, "hand": False, "position": None, "stage": True,
                                     "muted": True}
        assert rejoined["settings"] == {"locked": True, "chat_classrooms": False}
        assert [m["text"] for m in rejoined["chat"]] == ["请安静"]
        assert {s["id"] for s in rejoined["stage"]} == {a.id, b.id}
    finally:
        for ws in [teacher_ws, *(r.ws for r in rooms.values()), *extra]:
            await ws.close()
        for room in rooms.values():
            await room.rx.close()


async def test_the_lessons_record_stays_with_its_library_entry_after_the_end(server):
    lesson = "inter-record"
    teacher_tok = token("teacher", lesson, "王老师")
    teacher_ws, _ = await _join(server, teacher_tok)
    teacher = Teacher(teacher_ws, size=TEACHER_SIZE)
    a = await _room(server, lesson, "A")
    try:
        assert (await teacher.publish())["type"] == "answer"
        await a.rx.wait_frames(3)
        await teacher_ws.request({"type": "stage", "participant": a.id, "on": True})
        await a.ws.request({"type": "chat", "text": "我们听得很清楚"})
        await asyncio.sleep(2.5)  # A on stage: its camera and microphone are recorded as an item of their own
        await teacher_ws.send({"type": "end_lesson"})
        await a.ws.wait_for(lambda m: m.get("event") == "lesson-ended")
        teacher_auth = {"Authorization": f"Bearer {teacher_tok}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/api/library", params={"lesson_id": lesson},
                                headers=teacher_auth) as resp:
                items = (await resp.json())["items"]
            assert len(items) == 1, items  # one item per lesson: the stage turn is one of its sources
            main = items[0]
            async with http.get(f"{server.url}/api/library/{main['id']}", headers=teacher_auth) as resp:
                sources = (await resp.json())["sources"]
            stage = next(s for s in sources if s["role"] == "stage" and s["label"] == "A")
            assert stage["duration_s"] > 1.0, stage
            base = f"{server.url}/api/library/{main['id']}/lesson"
            async with http.get(f"{base}/attendance.csv", headers=teacher_auth) as resp:
                assert resp.status == 200, await resp.text()
                rows = list(csv.DictReader(io.StringIO((await resp.read()).decode("utf-8-sig"))))
            async with http.get(f"{base}/chat.csv", headers=teacher_auth) as resp:
                chat = (await resp.read()).decode("utf-8")
            async with http.get(f"{base}/record.json", headers=teacher_auth) as resp:
                record = await resp.json()
            async with http.get(f"{base}/attendance.csv") as resp:
                assert resp.status in (401, 403, 404)  # not for the public, even once published
            async with http.get(f"{base}/../../secret") as resp:
                assert resp.status == 404
        assert [r["name"] for r in rows] == ["A"]
        assert "我们听得很清楚" in chat
        assert [t["participant"] for t in record["stage_timeline"]] == [a.id]
        assert record["stage_timeline"][0]["off_at"] is None  # still on stage when the lesson ended
        # the main recording's summary: one camera stream (this teacher sends no simulcast), never switched
        assert record["recording"]["duration_s"] > 1.0, record.get("recording")
        assert record["recording"]["layer_switches"] == 0 and record["recording"]["layer_timeline"] == []
    finally:
        await hang_up(teacher, *([a.tx] if a.tx else []))
        await a.ws.close()
        await a.rx.close()

"""The signalling hub in process, against both room-state backends (Redis a real server): what happens when a
whole lesson's classrooms drop at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from signaling.config import Config
from signaling.hub import Hub
from signaling.state import MemoryRoomStore, RedisRoomStore, RoomStore
from signaling.tokens import Claims


class _Conn:
    """What the hub reads of a websocket connection, sending nowhere (the messages are kept)."""

    def __init__(self, lesson: str, pid: str, role: str) -> None:
        now = int(time.time())
        self.claims = Claims(role=role, lesson=lesson, name=pid, sub=pid, iat=now, exp=now + 600)
        self.lesson_id = lesson
        self.participant_id = pid
        self.role = role
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def send_text(self, text: str) -> None:
        self.sent.append({"text": text})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


class _Catalog:
    """Counts the lesson records kept (what the library's save_lesson_record is given)."""

    def __init__(self, root: Path) -> None:
        self.recordings_dir = root
        self.records: list[tuple[str, int]] = []  # (lesson, classrooms in its attendance CSV)

    def save_lesson_record(self, lesson_id: str, record: dict, attendance_csv: str, chat_csv: str) -> None:
        self.records.append((lesson_id, attendance_csv.count("\n") - 1))


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> RoomStore:
    if request.param == "memory":
        yield MemoryRoomStore()
        return
    s = RedisRoomStore(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    yield s
    await s.close()


async def test_a_lesson_whose_classrooms_all_drop_at_once_keeps_its_record_once(store: RoomStore,
                                                                                tmp_path: Path) -> None:
    catalog = _Catalog(tmp_path)
    hub = Hub(Config(data_dir=tmp_path), store, catalog)  # type: ignore[arg-type]
    try:
        rooms = [_Conn("drop-all", f"school-{i}", "classroom") for i in range(40)]
        for conn in rooms:
            await hub.join(conn)  # type: ignore[arg-type]
        hub.lesson("drop-all").media()  # the lesson's SFU router, as once anyone publishes or subscribes
        await asyncio.gather(*(hub.leave(conn) for conn in rooms))  # type: ignore[arg-type]
        # one record, with every classroom in it; the lesson's router closed and forgotten
        assert catalog.records == [("drop-all", 40)]
        assert hub.lessons["drop-all"].router is None and not hub.lessons["drop-all"].connections
        # a classroom coming back starts the lesson's connections afresh, and its leaving keeps the record again
        again = _Conn("drop-all", "school-0", "classroom")
        await hub.join(again)  # type: ignore[arg-type]
        await hub.leave(again)  # type: ignore[arg-type]
        assert [lesson for lesson, _ in catalog.records] == ["drop-all", "drop-all"]
    finally:
        await hub.close()

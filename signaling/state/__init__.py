"""Room state (lessons, participants, tracks) behind one interface.

``open_store(url)`` gives a Redis-backed store shared by all server processes
when a URL is configured, and an in-process store otherwise.
"""

from __future__ import annotations

from typing import Any

from signaling.state.base import (
    LESSON_STATES,
    Admission,
    Lesson,
    Participant,
    Placement,
    RoomStore,
    StoreUnavailable,
    TrackInfo,
)
from signaling.state.memory import MemoryRoomStore
from signaling.state.redis import RedisRoomStore


def open_store(redis_url: str | None, **kw: Any) -> RoomStore:
    """RedisRoomStore(redis_url, **kw) if a URL is given, else MemoryRoomStore(**kw).

    ``prefix`` is dropped for the memory store so callers can pass the same
    configuration either way.
    """
    if redis_url:
        return RedisRoomStore(redis_url, **kw)
    kw.pop("prefix", None)
    return MemoryRoomStore(**kw)


__all__ = [
    "Admission",
    "LESSON_STATES",
    "Lesson",
    "MemoryRoomStore",
    "Participant",
    "Placement",
    "RedisRoomStore",
    "RoomStore",
    "StoreUnavailable",
    "TrackInfo",
    "open_store",
]

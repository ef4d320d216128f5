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
from signaling.state.rpc import RpcRoomStore, RpcStoreServer


def open_store(redis_url: str | None, store_socket: str = "", **kw: Any) -> RoomStore:
    """RedisRoomStore(redis_url, **kw) if a URL is given, else the supervisor's store at ``store_socket`` (a worker
    of `ketang serve --workers N`), else MemoryRoomStore(**kw).

    ``prefix`` is dropped for the other stores so callers can pass the same
    configuration either way.
    """
    if redis_url:
        return RedisRoomStore(redis_url, **kw)
    kw.pop("prefix", None)
    if store_socket:
        return RpcRoomStore(store_socket)
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
    "RpcRoomStore",
    "RpcStoreServer",
    "StoreUnavailable",
    "TrackInfo",
    "open_store",
]

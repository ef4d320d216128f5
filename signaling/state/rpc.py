"""One room state for the workers of one machine without Redis (`ketang serve --workers N`): the supervisor hosts
a MemoryRoomStore and serves it over a unix socket (`RpcStoreServer`); each worker's `RpcRoomStore` is a RoomStore
whose every call is one request on that socket. The design and its cost are in docs/architecture.md ("Workers").

Wire format: one JSON object per line. A request is {"id": n, "m": method, "a": [arguments]}, a reply
{"id": n, "r": result} or {"id": n, "e": error kind, "msg": text}. Room-state objects travel as their fields plus
"$": the class name; sets as {"$set": [...]}. Requests are answered in order per connection, but a worker may have
many in flight (one connection per worker, the calls of all its coroutines pipelined on it).

The socket lives in a directory only the server's user may enter; still, the server decodes nothing but the
RoomStore's own methods with their own argument types, and a line it cannot read costs that line's reply."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Iterable

from signaling.state.base import (
    Admission,
    Lesson,
    Participant,
    Placement,
    RoomStore,
    StoreUnavailable,
    TrackInfo,
)

log = logging.getLogger("ketang.state")

CALL_TIMEOUT_S = 3.0  # as the Redis backend's reply timeout: a join in an outage is answered `unavailable`
MAX_LINE_BYTES = 1 << 20  # a lesson's whole participant list (400 classrooms) is ~100 kB
TYPES: dict[str, type] = {cls.__name__: cls for cls in (Lesson, Participant, TrackInfo, Placement, Admission)}
# the RoomStore methods a worker may call (its abstract interface, and ping)
METHODS: frozenset[str] = frozenset(RoomStore.__abstractmethods__ - {"close"}) | {"ping"}
ERRORS: dict[str, type[Exception]] = {"KeyError": KeyError, "ValueError": ValueError, "TypeError": TypeError}


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        out["$"] = type(value).__name__
        return out
    if isinstance(value, (set, frozenset)):
        return {"$set": sorted(encode(v) for v in value)}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if "$set" in value:
            return {decode(v) for v in value["$set"]}
        kind = value.get("$")
        fields = {k: decode(v) for k, v in value.items() if k != "$"}
        if kind is None:
            return fields
        cls = TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValueError(f"unknown type {kind!r:.40}")
        return cls(**fields)
    return value


class RpcStoreServer:
    """Serves `store` (a MemoryRoomStore) on a unix socket at `path`, for the workers of this machine."""

    def __init__(self, store: RoomStore, path: Path) -> None:
        self.store, self.path = store, path
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_LINE_BYTES)
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._clients):
            writer.close()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):  # a line over MAX_LINE_BYTES: the connection goes
                    log.warning("room-state RPC: a request over %d bytes; connection closed", MAX_LINE_BYTES)
                    return
                if not line:
                    return
                writer.write(json.dumps(await self.answer(line), separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._clients.discard(writer)
            writer.close()

    async def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line (never raises)."""
        ref = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            ref, method, args = request.get("id"), request.get("m"), request.get("a", [])
            if method not in METHODS or not isinstance(args, list):
                raise ValueError(f"no method {method!r:.40}")
            call = getattr(self.store, method)
            args = decode(args)
            inspect.signature(call).bind(*args)  # TypeError for a wrong number of arguments
            return {"id": ref, "r": encode(await call(*args))}
        except (KeyError, ValueError, TypeError) as exc:
            return {"id": ref, "e": type(exc).__name__ if type(exc) in ERRORS.values() else "ValueError",
                    "msg": str(exc)[:200]}
        except Exception as exc:  # noqa: BLE001 - a bug costs this call, not the store
            log.exception("room-state RPC: %s failed", ref)
            return {"id": ref, "e": "ValueError", "msg": f"internal error: {type(exc).__name__}"}


class RpcRoomStore(RoomStore):
    """A RoomStore whose state is the supervisor's (RpcStoreServer): same contract as the other backends; a
    supervisor that cannot be reached (it restarts, or the call takes longer than CALL_TIMEOUT_S) is
    StoreUnavailable."""

    backend = "supervisor"

    def __init__(self, path: Path | str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        super().__init__()
        self.path, self.timeout_s = str(path), timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._connecting = asyncio.Lock()
        self._reading: asyncio.Future[None] | None = None

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                try:
                    self._reader, self._writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.path, limit=MAX_LINE_BYTES), self.timeout_s)
                except (OSError, asyncio.TimeoutError) as exc:
                    raise StoreUnavailable(f"the supervisor's room state at {self.path}: {exc}") from None
                self._reading = asyncio.ensure_future(self._read(self._reader))
            return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                reply = json.loads(line)
                future = self._pending.pop(reply.get("id"), None)
                if future is None or future.done():
                    continue
                if "e" in reply:
                    future.set_exception(ERRORS.get(reply["e"], ValueError)(reply.get("msg", "")))
                else:
                    future.set_result(decode(reply.get("r")))
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            self._lost("the connection to the supervisor closed")

    def _lost(self, why: str) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(StoreUnavailable(why))

    async def _call(self, method: str, *args: Any) -> Any:
        writer = await self._connection()
        self._next += 1
        ref = self._next
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            writer.write(json.dumps({"id": ref, "m": method, "a": encode(list(args))},
                                    separators=(",", ":")).encode() + b"\n")
            return await asyncio.wait_for(future, self.timeout_s)
        except (OSError, ConnectionError) as exc:
            self._lost(str(exc))
            raise StoreUnavailable(f"the supervisor's room state: {exc}") from None
        except asyncio.TimeoutError:
            raise StoreUnavailable(f"the supervisor's room state did not answer within {self.timeout_s:g} s") \
                from None
        finally:
            self._pending.pop(ref, None)

    async def ensure_lesson(self, lesson_id: str, title: str | None = None, teacher: str | None = None) -> Lesson:
        return await self._call("ensure_lesson", lesson_id, title, teacher)

    async def get_lesson(self, lesson_id: str) -> Lesson | None:
        return await self._call("get_lesson", lesson_id)

    async def list_lessons(self) -> list[Lesson]:
        return await self._call("list_lessons")

    async def set_lesson_state(self, lesson_id: str, state: str) -> Lesson:
        return await self._call("set_lesson_state", lesson_id, state)

    async def add_participant(self, p: Participant, ttl_s: float) -> None:
        await self._call("add_participant", p, ttl_s)

    async def heartbeat(self, lesson_id: str, participant_id: str, ttl_s: float) -> bool:
        return await self._call("heartbeat", lesson_id, participant_id, ttl_s)

    async def remove_participant(self, lesson_id: str, participant_id: str) -> None:
        await self._call("remove_participant", lesson_id, participant_id)

    async def get_participant(self, lesson_id: str, participant_id: str) -> Participant | None:
        return await self._call("get_participant", lesson_id, participant_id)

    async def list_participants(self, lesson_id: str) -> list[Participant]:
        return await self._call("list_participants", lesson_id)

    async def add_track(self, t: TrackInfo) -> None:
        await self._call("add_track", t)

    async def remove_track(self, lesson_id: str, track_id: str) -> None:
        await self._call("remove_track", lesson_id, track_id)

    async def list_tracks(self, lesson_id: str) -> list[TrackInfo]:
        return await self._call("list_tracks", lesson_id)

    async def restore_lesson(self, lesson: Lesson) -> None:
        await self._call("restore_lesson", lesson)

    async def place_lesson(self, lesson_id: str, node: str, url: str, ttl_s: float) -> Placement:
        return await self._call("place_lesson", lesson_id, node, url, ttl_s)

    async def node_heartbeat(self, node: str, url: str, ttl_s: float) -> bool:
        return await self._call("node_heartbeat", node, url, ttl_s)

    async def node_alive(self, node: str) -> bool:
        return await self._call("node_alive", node)

    async def set_node_ready(self, node: str, url: str, ready: bool, ttl_s: float) -> None:
        await self._call("set_node_ready", node, url, ready, ttl_s)

    async def ready_nodes(self) -> list[Placement]:
        return await self._call("ready_nodes")

    async def placement(self, lesson_id: str) -> Placement | None:
        return await self._call("placement", lesson_id)

    async def admission(self, lesson_id: str) -> Admission:
        return await self._call("admission", lesson_id)

    async def set_locked(self, lesson_id: str, locked: bool) -> None:
        await self._call("set_locked", lesson_id, locked)

    async def add_removed(self, lesson_id: str, participant_ids: Iterable[str]) -> None:
        await self._call("add_removed", lesson_id, sorted(participant_ids))

    async def add_seen(self, lesson_id: str, participant_ids: Iterable[str]) -> None:
        await self._call("add_seen", lesson_id, sorted(participant_ids))

    async def clear_admission(self, lesson_id: str) -> None:
        await self._call("clear_admission", lesson_id)

    async def ping(self) -> None:
        await self._call("ping")

    async def release_lesson(self, lesson_id: str, node: str) -> None:
        await self._call("release_lesson", lesson_id, node)

    async def remove_node(self, node: str) -> int:
        return await self._call("remove_node", node)

    async def counts(self) -> dict[str, int]:
        return await self._call("counts")

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reading
        self._lost("closed")

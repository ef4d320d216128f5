"""RoomStore shared by several server processes ("nodes") through one Redis: the key layout, the liveness model,
the atomic (Lua) check-then-write operations and what an outage raises are in docs/architecture.md, "Room state"."""

from __future__ import annotations

import functools
import inspect
import json
import math
import time
from typing import Any, Iterable
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from signaling.state.base import (
    Admission,
    Clock,
    Lesson,
    Participant,
    Placement,
    RoomStore,
    StoreUnavailable,
    TrackInfo,
    check_lesson_state,
    check_ttl,
    lesson_sort_key,
    participant_sort_key,
    track_sort_key,
)

DEFAULT_PREFIX = "ketang:"
# Redis key TTL beyond the logical expiry: covers clock skew between nodes and
# late heartbeats, while still bounding how long a crashed node's keys linger.
KEY_TTL_MARGIN_S = 30.0
# A command that cannot reach Redis fails within about these many seconds (connect, reply), after a couple of
# quick retries on a fresh connection (the first use of a pooled connection after an outage fails: it is
# replaced, not reported). Short: a join during an outage is answered `unavailable` at once, not after minutes.
CONNECT_TIMEOUT_S = 1.0
REPLY_TIMEOUT_S = 3.0
RETRIES = 2
HEALTH_CHECK_INTERVAL_S = 5.0  # a connection idle this long is PINGed before use
_OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS: lesson participants zset, all-participants zset, participant hash, tracks hash
# ARGV: pid, all-participants member, now, new expires_at, key ttl (ms)
_HEARTBEAT_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= tonumber(ARGV[3]) or redis.call('EXISTS', KEYS[3]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('HSET', KEYS[3], 'last_seen', ARGV[3], 'expires_at', ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('PEXPIRE', KEYS[4], ARGV[5])
return 1
"""

# KEYS: lesson participants zset, participant hash, tracks hash
# ARGV: pid, now, track id, track json
# The tracks hash inherits the participant hash's remaining TTL.
_ADD_TRACK_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= tonumber(ARGV[2]) then
  return 0
end
local ttl = redis.call('PTTL', KEYS[2])
if ttl <= 0 then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
"""

# KEYS: lesson participants zset, all-participants zset, participant hash, tracks hash
# ARGV: pid, all-participants member, node, now
# Checking the node inside the script means a participant that already
# reconnected through another node is left alone. Returns 1 if it was alive.
_REMOVE_IF_ON_NODE_LUA = """
if redis.call('HGET', KEYS[3], 'node') ~= ARGV[3] then
  return 0
end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3], KEYS[4])
if score and tonumber(score) > tonumber(ARGV[4]) then
  return 1
end
return 0
"""


# KEYS: the lesson's placement hash, this node's liveness key
# ARGV: node, url, now, new expires_at, key ttl (ms)
# another node's unexpired placement wins, unless that node is dead (the liveness key it placed with is gone);
# else this node's is set (or renewed). Returns {node, url, the dead node taken over from or ''}.
# (The holder's liveness key is read from the placement, not passed in KEYS: one Redis, not Cluster.)
_PLACE_LUA = """
local node = redis.call('HGET', KEYS[1], 'node')
local expires = redis.call('HGET', KEYS[1], 'expires_at')
local node_key = redis.call('HGET', KEYS[1], 'node_key')
local previous = ''
if node and node ~= ARGV[1] then
  local dead = false
  if node_key then
    local alive_until = redis.call('GET', node_key)
    dead = not alive_until or tonumber(alive_until) <= tonumber(ARGV[3])
  end
  if expires and tonumber(expires) > tonumber(ARGV[3]) and not dead then
    return {node, redis.call('HGET', KEYS[1], 'url') or '', ''}
  end
  if dead then
    previous = node
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'url', ARGV[2], 'expires_at', ARGV[4])
local mine = redis.call('GET', KEYS[2])
if mine and tonumber(mine) > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'node_key', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {ARGV[1], ARGV[2], previous}
"""

# KEYS: the lesson's placement hash; ARGV: node
_RELEASE_LUA = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _text(value: Any) -> str:
    # a caller-supplied client may not use decode_responses=True
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _num(x: float) -> str:
    return repr(float(x))  # shortest exact round-trip form


def _id(raw_id: str) -> str:
    return quote(raw_id, safe="")


def _key_ttl_ms(ttl_s: float) -> int:
    return math.ceil((ttl_s + KEY_TTL_MARGIN_S) * 1000)


def _member(lesson_id: str, participant_id: str) -> str:
    return json.dumps([lesson_id, participant_id])


def _lesson_from_hash(h: dict[str, str]) -> Lesson:
    return Lesson.from_dict(h)


def _participant_to_hash(p: Participant) -> dict[str, str]:
    return {
        "id": p.id,
        "lesson_id": p.lesson_id,
        "role": p.role,
        "name": p.name,
        "joined_at": _num(p.joined_at),
        "last_seen": _num(p.last_seen),
        "node": p.node,
        "expires_at": _num(p.expires_at),
    }


def _tracks_from_json(values: Iterable[Any]) -> list[TrackInfo]:
    return [TrackInfo.from_dict(json.loads(_text(v))) for v in values]


def _translating_outages(cls: type) -> type:
    """Every public coroutine of cls raises StoreUnavailable for a connection problem (and redis-py's own
    exception never leaves the store)."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or not inspect.iscoroutinefunction(method):
            continue

        @functools.wraps(method)
        async def wrapper(self: Any, *args: Any, __method: Any = method, **kwargs: Any) -> Any:
            try:
                return await __method(self, *args, **kwargs)
            except _OUTAGE as exc:
                raise StoreUnavailable(f"Redis unreachable: {exc}") from exc

        setattr(cls, name, wrapper)
    return cls


def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=REPLY_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError])


@_translating_outages
class RedisRoomStore(RoomStore):
    backend = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock = time.time,
        client: aioredis.Redis | None = None,
    ) -> None:
        super().__init__(clock)
        self.prefix = prefix
        self._owns_client = client is None
        self._r: aioredis.Redis = client if client is not None else _client(url)
        self._heartbeat_script = self._r.register_script(_HEARTBEAT_LUA)
        self._add_track_script = self._r.register_script(_ADD_TRACK_LUA)
        self._remove_if_on_node_script = self._r.register_script(_REMOVE_IF_ON_NODE_LUA)
        self._place_script = self._r.register_script(_PLACE_LUA)
        self._release_script = self._r.register_script(_RELEASE_LUA)

    # -- keys -----------------------------------------------------------------

    @property
    def _lessons_key(self) -> str:
        return f"{self.prefix}lessons"

    @property
    def _ended_key(self) -> str:
        return f"{self.prefix}lessons:ended"

    @property
    def _all_participants_key(self) -> str:
        return f"{self.prefix}participants"

    def lesson_key(self, lesson_id: str) -> str:
        return f"{self.prefix}lesson:{_id(lesson_id)}"

    def _participants_key(self, lesson_id: str) -> str:
        return f"{self.lesson_key(lesson_id)}:participants"

    def participant_key(self, lesson_id: str, participant_id: str) -> str:
        return f"{self.lesson_key(lesson_id)}:participant:{_id(participant_id)}"

    def tracks_key(self, lesson_id: str, participant_id: str) -> str:
        return f"{self.participant_key(lesson_id, participant_id)}:tracks"

    def _participant_keys(self, lesson_id: str, participant_id: str) -> list[str]:
        """KEYS layout shared by the heartbeat and remove-if-on-node scripts."""
        return [
            self._participants_key(lesson_id),
            self._all_participants_key,
            self.participant_key(lesson_id, participant_id),
            self.tracks_key(lesson_id, participant_id),
        ]

    async def _live_ids(self, lesson_id: str) -> list[str]:
        pids = await self._r.zrangebyscore(self._participants_key(lesson_id), f"({_num(self.clock())}", "+inf")
        return [_text(pid) for pid in pids]

    # -- lessons --------------------------------------------------------------

    async def ensure_lesson(
        self, lesson_id: str, title: str | None = None, teacher: str | None = None
    ) -> Lesson:
        key = self.lesson_key(lesson_id)
        now = self.clock()
        defaults = {
            "id": lesson_id,
            "title": lesson_id,
            "teacher": "",
            "state": "scheduled",
            "created_at": _num(now),
        }
        given = {k: v for k, v in (("title", title), ("teacher", teacher)) if v is not None}
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.zadd(self._lessons_key, {lesson_id: now}, nx=True)
            for field, value in defaults.items():
                pipe.hsetnx(key, field, value)
            if given:
                pipe.hset(key, mapping=given)
            pipe.hgetall(key)
            result = await pipe.execute()
        return _lesson_from_hash(_hash(result[-1]))

    async def get_lesson(self, lesson_id: str) -> Lesson | None:
        raw = await self._r.hgetall(self.lesson_key(lesson_id))
        return _lesson_from_hash(_hash(raw)) if raw else None

    async def list_lessons(self) -> list[Lesson]:
        ids = await self._r.zrange(self._lessons_key, 0, -1)
        async with self._r.pipeline(transaction=False) as pipe:
            for lesson_id in ids:
                pipe.hgetall(self.lesson_key(_text(lesson_id)))
            raws = await pipe.execute()
        return sorted((_lesson_from_hash(_hash(h)) for h in raws if h), key=lesson_sort_key)

    async def set_lesson_state(self, lesson_id: str, state: str) -> Lesson:
        check_lesson_state(state)
        key = self.lesson_key(lesson_id)
        # Check-then-write is safe: nothing ever deletes a lesson.
        if not await self._r.exists(key):
            raise KeyError(lesson_id)
        now = _num(self.clock())
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(key, "state", state)
            if state == "live":
                pipe.hsetnx(key, "started_at", now)
                pipe.hdel(key, "ended_at")
                pipe.srem(self._ended_key, lesson_id)
            elif state == "ended":
                pipe.hsetnx(key, "ended_at", now)
                pipe.sadd(self._ended_key, lesson_id)
            else:
                pipe.srem(self._ended_key, lesson_id)
            pipe.hgetall(key)
            result = await pipe.execute()
        return _lesson_from_hash(_hash(result[-1]))

    async def restore_lesson(self, lesson: Lesson) -> None:
        key = self.lesson_key(lesson.id)
        fields = {k: (_num(v) if isinstance(v, float) else str(v)) for k, v in lesson.to_dict().items()
                  if v is not None}
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.zadd(self._lessons_key, {lesson.id: lesson.created_at})
            if lesson.state == "ended":
                pipe.sadd(self._ended_key, lesson.id)
            else:
                pipe.srem(self._ended_key, lesson.id)
            await pipe.execute()

    # -- admission ------------------------------------------------------------

    def _admission_keys(self, lesson_id: str) -> tuple[str, str, str]:
        base = self.lesson_key(lesson_id)
        return f"{base}:locked", f"{base}:removed", f"{base}:seen"

    async def admission(self, lesson_id: str) -> Admission:
        locked_key, removed_key, seen_key = self._admission_keys(lesson_id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.exists(locked_key)
            pipe.smembers(removed_key)
            pipe.smembers(seen_key)
            locked, removed, seen = await pipe.execute()
        return Admission(bool(locked), {_text(x) for x in removed}, {_text(x) for x in seen})

    async def set_locked(self, lesson_id: str, locked: bool) -> None:
        key = self._admission_keys(lesson_id)[0]
        if locked:
            await self._r.set(key, "1")
        else:
            await self._r.delete(key)

    async def add_removed(self, lesson_id: str, participant_ids: Iterable[str]) -> None:
        members = list(participant_ids)
        if members:
            await self._r.sadd(self._admission_keys(lesson_id)[1], *members)

    async def add_seen(self, lesson_id: str, participant_ids: Iterable[str]) -> None:
        members = list(participant_ids)
        if members:
            await self._r.sadd(self._admission_keys(lesson_id)[2], *members)

    async def clear_admission(self, lesson_id: str) -> None:
        await self._r.delete(*self._admission_keys(lesson_id))

    # -- participants ---------------------------------------------------------

    async def add_participant(self, p: Participant, ttl_s: float) -> None:
        check_ttl(ttl_s)
        now = self.clock()
        expires_at = now + ttl_s
        fields = _participant_to_hash(p) | {"last_seen": _num(now), "expires_at": _num(expires_at)}
        pkey = self.participant_key(p.lesson_id, p.id)
        async with self._r.pipeline(transaction=True) as pipe:
            # new incarnation: drop the previous one's fields and tracks
            pipe.delete(pkey, self.tracks_key(p.lesson_id, p.id))
            pipe.hset(pkey, mapping=fields)
            pipe.pexpire(pkey, _key_ttl_ms(ttl_s))
            pipe.zadd(self._participants_key(p.lesson_id), {p.id: expires_at})
            pipe.zadd(self._all_participants_key, {_member(p.lesson_id, p.id): expires_at})
            await pipe.execute()

    async def heartbeat(self, lesson_id: str, participant_id: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        now = self.clock()
        ok = await self._heartbeat_script(
            keys=self._participant_keys(lesson_id, participant_id),
            args=[participant_id, _member(lesson_id, participant_id), _num(now), _num(now + ttl_s), _key_ttl_ms(ttl_s)],
        )
        return bool(ok)

    async def remove_participant(self, lesson_id: str, participant_id: str) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.zrem(self._participants_key(lesson_id), participant_id)
            pipe.zrem(self._all_participants_key, _member(lesson_id, participant_id))
            pipe.delete(self.participant_key(lesson_id, participant_id), self.tracks_key(lesson_id, participant_id))
            await pipe.execute()

    async def get_participant(self, lesson_id: str, participant_id: str) -> Participant | None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.zscore(self._participants_key(lesson_id), participant_id)
            pipe.hgetall(self.participant_key(lesson_id, participant_id))
            score, raw = await pipe.execute()
        if score is None or float(score) <= self.clock() or not raw:
            return None
        return Participant.from_dict(_hash(raw))

    async def list_participants(self, lesson_id: str) -> list[Participant]:
        zkey = self._participants_key(lesson_id)
        now = _num(self.clock())
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(zkey, "-inf", now)  # lazy prune of expired entries
            pipe.zrangebyscore(zkey, f"({now}", "+inf")
            _, pids = await pipe.execute()
        async with self._r.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.hgetall(self.participant_key(lesson_id, _text(pid)))
            raws = await pipe.execute()
        # a missing hash means Redis already collected it: treat as gone
        people = [Participant.from_dict(_hash(raw)) for raw in raws if raw]
        return sorted(people, key=participant_sort_key)

    # -- tracks ---------------------------------------------------------------

    async def add_track(self, t: TrackInfo) -> None:
        await self._add_track_script(
            keys=[
                self._participants_key(t.lesson_id),
                self.participant_key(t.lesson_id, t.participant_id),
                self.tracks_key(t.lesson_id, t.participant_id),
            ],
            args=[t.participant_id, _num(self.clock()), t.id, json.dumps(t.to_dict())],
        )

    async def remove_track(self, lesson_id: str, track_id: str) -> None:
        # The owner is not known here; HDEL on every participant's tracks
        # hash is one pipelined round trip and avoids a track->owner index
        # that would need its own cleanup.
        pids = await self._r.zrange(self._participants_key(lesson_id), 0, -1)
        if not pids:
            return
        async with self._r.pipeline(transaction=True) as pipe:
            for pid in pids:
                pipe.hdel(self.tracks_key(lesson_id, _text(pid)), track_id)
            await pipe.execute()

    async def list_tracks(self, lesson_id: str) -> list[TrackInfo]:
        pids = await self._live_ids(lesson_id)
        async with self._r.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.hvals(self.tracks_key(lesson_id, pid))
            per_participant = await pipe.execute()
        tracks = [t for values in per_participant for t in _tracks_from_json(values)]
        return sorted(tracks, key=track_sort_key)

    # -- whole store ----------------------------------------------------------

    def placement_key(self, lesson_id: str) -> str:
        return f"{self.lesson_key(lesson_id)}:node"

    def node_key(self, node: str) -> str:
        return f"{self.prefix}node:{_id(node)}"

    async def place_lesson(self, lesson_id: str, node: str, url: str, ttl_s: float) -> Placement:
        check_ttl(ttl_s)
        now = self.clock()
        held, held_url, previous = await self._place_script(
            keys=[self.placement_key(lesson_id), self.node_key(node)],
            args=[node, url, _num(now), _num(now + ttl_s), _key_ttl_ms(ttl_s)])
        return Placement(_text(held), _text(held_url), _text(previous))

    async def node_heartbeat(self, node: str, url: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        now = self.clock()
        # the value is the logical expiry (the injected clock, as for participants); the key TTL collects it
        old = await self._r.set(self.node_key(node), _num(now + ttl_s), px=_key_ttl_ms(ttl_s), get=True)
        return old is not None and float(_text(old)) > now

    async def node_alive(self, node: str) -> bool:
        alive_until = await self._r.get(self.node_key(node))
        return alive_until is not None and float(_text(alive_until)) > self.clock()

    @property
    def _ready_key(self) -> str:  # zset: node -> until when it takes new lessons
        return f"{self.prefix}nodes:ready"

    @property
    def _urls_key(self) -> str:  # hash: node -> its url
        return f"{self.prefix}nodes:url"

    async def set_node_ready(self, node: str, url: str, ready: bool, ttl_s: float) -> None:
        check_ttl(ttl_s)
        async with self._r.pipeline(transaction=True) as pipe:
            if ready:
                pipe.zadd(self._ready_key, {node: _num(self.clock() + ttl_s)})
                pipe.hset(self._urls_key, node, url)
            else:
                pipe.zrem(self._ready_key, node)
            await pipe.execute()

    async def ready_nodes(self) -> list[Placement]:
        now = self.clock()
        await self._r.zremrangebyscore(self._ready_key, "-inf", _num(now))  # lazy prune
        nodes = sorted(_text(n) for n in await self._r.zrangebyscore(self._ready_key, f"({_num(now)}", "+inf"))
        if not nodes:
            return []
        urls = await self._r.hmget(self._urls_key, nodes)
        alive = [await self.node_alive(node) for node in nodes]
        return [Placement(node, _text(url)) for node, url, up in zip(nodes, urls, alive) if url and up]

    async def placement(self, lesson_id: str) -> Placement | None:
        held = _hash(await self._r.hgetall(self.placement_key(lesson_id)))
        if not held.get("node") or float(held.get("expires_at") or 0) <= self.clock():
            return None
        node_key = held.get("node_key")
        if node_key:
            alive_until = await self._r.get(node_key)
            if alive_until is None or float(_text(alive_until)) <= self.clock():
                return None
        return Placement(held["node"], held.get("url", ""))

    async def ping(self) -> None:
        await self._r.ping()

    async def release_lesson(self, lesson_id: str, node: str) -> None:
        await self._release_script(keys=[self.placement_key(lesson_id)], args=[node])

    async def remove_node(self, node: str) -> int:
        await self._r.delete(self.node_key(node))
        await self._r.zrem(self._ready_key, node)
        members = await self._r.zrange(self._all_participants_key, 0, -1)
        if not members:
            return 0
        now = _num(self.clock())
        async with self._r.pipeline(transaction=False) as pipe:
            for member in members:
                lesson_id, pid = json.loads(_text(member))
                await self._remove_if_on_node_script(
                    keys=self._participant_keys(lesson_id, pid),
                    args=[pid, _text(member), node, now],
                    client=pipe,
                )
            results = await pipe.execute()
        return sum(int(r) for r in results)

    async def counts(self) -> dict[str, int]:
        now = _num(self.clock())
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self._all_participants_key, "-inf", now)  # lazy prune
            pipe.zcard(self._all_participants_key)
            pipe.zcard(self._lessons_key)
            pipe.scard(self._ended_key)
            _, people, lessons, ended = await pipe.execute()
        return {"lessons": int(lessons) - int(ended), "participants": int(people)}

    async def close(self) -> None:
        if self._owns_client:
            await self._r.aclose()

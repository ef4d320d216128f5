"""One contract for every RoomStore backend, plus a few Redis-only checks.

Time is a FakeClock injected into the store, so expiry is tested without
sleeping; only the Redis key-TTL test uses real time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from signaling.state import (
    Admission,
    Lesson,
    MemoryRoomStore,
    Participant,
    Placement,
    RedisRoomStore,
    RoomStore,
    RpcRoomStore,
    RpcStoreServer,
    StoreUnavailable,
    TrackInfo,
    open_store,
)
from signaling.state.redis import KEY_TTL_MARGIN_S
from tests.clock import FakeClock

T0 = 1_700_000_000.0
TTL = 30.0
LESSON = "math-1"
OTHER_LESSON = "art-2"


def person(
    pid: str,
    *,
    lesson: str = LESSON,
    role: str = "classroom",
    joined_at: float = T0,
    node: str = "node-a",
    name: str | None = None,
) -> Participant:
    return Participant(
        id=pid,
        lesson_id=lesson,
        role=role,  # type: ignore[arg-type]
        name=name or f"name of {pid}",
        joined_at=joined_at,
        last_seen=0.0,
        node=node,
        expires_at=0.0,
    )


def track(
    tid: str,
    pid: str,
    *,
    lesson: str = LESSON,
    kind: str = "video",
    source: str = "camera",
    published_at: float = T0,
) -> TrackInfo:
    return TrackInfo(
        id=tid,
        lesson_id=lesson,
        participant_id=pid,
        kind=kind,  # type: ignore[arg-type]
        source=source,
        published_at=published_at,
    )


def ids(items: list[Lesson] | list[Participant] | list[TrackInfo]) -> list[str]:
    return [x.id for x in items]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(params=["memory", "redis", "rpc"])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[RoomStore]:
    s: RoomStore
    if request.param == "memory":
        s = MemoryRoomStore(clock=clock)
    elif request.param == "rpc":
        # the workers' store (`--workers N` without Redis): a MemoryRoomStore in the supervisor, over a unix socket
        runtime = Path(tempfile.mkdtemp(prefix="ketang-rpc-"))  # (short: a unix socket path is at most 107 bytes)
        server = RpcStoreServer(MemoryRoomStore(clock=clock), runtime / "state.sock")
        await server.start()
        s = RpcRoomStore(runtime / "state.sock")
        yield s
        await s.close()
        await server.close()
        shutil.rmtree(runtime, ignore_errors=True)
        return
    else:
        # requested lazily so memory-only runs (-k memory) need no Redis
        url = request.getfixturevalue("redis_url")
        s = RedisRoomStore(url, prefix=request.getfixturevalue("redis_prefix"), clock=clock)
    yield s
    await s.close()


# -- lessons -------------------------------------------------------------------

async def test_ensure_lesson_creates_a_scheduled_lesson_titled_after_its_id(store: RoomStore) -> None:
    lesson = await store.ensure_lesson(LESSON)

    assert lesson == Lesson(id=LESSON, title=LESSON, teacher="", state="scheduled", created_at=T0,
                            started_at=None, ended_at=None)
    assert await store.get_lesson(LESSON) == lesson


async def test_get_lesson_of_an_unknown_id_returns_none(store: RoomStore) -> None:
    assert await store.get_lesson("nope") is None


ENSURE_CASES = [
    # first call kwargs, second call kwargs, expected title, expected teacher
    ({}, {}, LESSON, ""),
    ({"title": "Algebra"}, {}, "Algebra", ""),
    ({"title": "Algebra", "teacher": "Ms Li"}, {}, "Algebra", "Ms Li"),
    ({}, {"title": "Algebra"}, "Algebra", ""),
    ({"teacher": "Ms Li"}, {"title": "Algebra"}, "Algebra", "Ms Li"),
    ({"title": "Algebra", "teacher": "Ms Li"}, {"teacher": "Mr Wu"}, "Algebra", "Mr Wu"),
    ({"title": "Algebra", "teacher": "Ms Li"}, {"title": "", "teacher": ""}, "", ""),  # "" is a value
]


@pytest.mark.parametrize("first, second, title, teacher", ENSURE_CASES)
async def test_ensure_lesson_again_keeps_the_lesson_and_fills_only_given_fields(
    store: RoomStore, clock: FakeClock, first: dict[str, str], second: dict[str, str], title: str, teacher: str
) -> None:
    await store.ensure_lesson(LESSON, **first)
    clock.advance(60)

    lesson = await store.ensure_lesson(LESSON, **second)

    expected = Lesson(id=LESSON, title=title, teacher=teacher, state="scheduled", created_at=T0)
    assert lesson == expected
    assert await store.get_lesson(LESSON) == expected
    assert await store.list_lessons() == [expected]


async def test_ensure_lesson_leaves_state_and_timestamps_alone(store: RoomStore, clock: FakeClock) -> None:
    await store.ensure_lesson(LESSON)
    clock.advance(5)
    live = await store.set_lesson_state(LESSON, "live")
    clock.advance(5)

    assert await store.ensure_lesson(LESSON) == live
    assert live.state == "live" and live.started_at == T0 + 5


async def test_list_lessons_is_sorted_by_creation_time_not_by_id(store: RoomStore, clock: FakeClock) -> None:
    for lesson_id in ["b", "a", "c"]:
        await store.ensure_lesson(lesson_id)
        clock.advance(1)

    lessons = await store.list_lessons()

    assert ids(lessons) == ["b", "a", "c"]
    assert [x.created_at for x in lessons] == [T0, T0 + 1, T0 + 2]


STATE_SCENARIOS = {
    "live, end, end again, live again, end": [
        # seconds after creation, new state, expected started_at, expected ended_at (offsets from T0)
        (10, "live", 10, None),
        (20, "ended", 10, 20),
        (25, "ended", 10, 20),  # ending twice keeps the first ended_at
        (30, "live", 10, None),  # live again: started_at kept, ended_at cleared
        (40, "ended", 10, 40),
    ],
    "ended straight from scheduled": [(5, "ended", None, 5)],
    "back to scheduled keeps the timestamps": [(10, "live", 10, None), (20, "scheduled", 10, None)],
}


@pytest.mark.parametrize("steps", STATE_SCENARIOS.values(), ids=STATE_SCENARIOS.keys())
async def test_state_transitions_stamp_started_once_and_ended_per_ending(
    store: RoomStore, clock: FakeClock, steps: list[tuple[float, str, float | None, float | None]]
) -> None:
    await store.ensure_lesson(LESSON)
    for at, state, started, ended in steps:
        clock.now = T0 + at

        lesson = await store.set_lesson_state(LESSON, state)

        expected = (
            state,
            None if started is None else T0 + started,
            None if ended is None else T0 + ended,
        )
        assert (lesson.state, lesson.started_at, lesson.ended_at) == expected, f"{state} at +{at}s"
        assert await store.get_lesson(LESSON) == lesson


@pytest.mark.parametrize("bad_state", ["paused", "", "LIVE", "live "])
async def test_set_lesson_state_rejects_an_unknown_state_and_changes_nothing(
    store: RoomStore, bad_state: str
) -> None:
    before = await store.ensure_lesson(LESSON)

    with pytest.raises(ValueError):
        await store.set_lesson_state(LESSON, bad_state)

    assert await store.get_lesson(LESSON) == before


async def test_set_lesson_state_of_an_unknown_lesson_raises_key_error_and_creates_nothing(
    store: RoomStore,
) -> None:
    with pytest.raises(KeyError):
        await store.set_lesson_state("nope", "live")

    assert await store.get_lesson("nope") is None
    assert await store.list_lessons() == []


async def test_ids_containing_key_separators_stay_distinct(store: RoomStore) -> None:
    # with naive key building, lesson "a:participants" would land on lesson a's participant index
    await store.ensure_lesson("a", title="A")
    await store.add_participant(person("p1", lesson="a"), ttl_s=TTL)
    await store.ensure_lesson("a:participants", title="colon")
    await store.ensure_lesson("a:participant:p1", title="deeper")

    # equal created_at: the id breaks the tie
    assert [(x.id, x.title) for x in await store.list_lessons()] == [
        ("a", "A"), ("a:participant:p1", "deeper"), ("a:participants", "colon")
    ]
    assert ids(await store.list_participants("a")) == ["p1"]


# -- participants --------------------------------------------------------------

async def test_add_participant_stamps_last_seen_and_expiry_from_the_clock(
    store: RoomStore, clock: FakeClock
) -> None:
    clock.advance(5)
    given = person("p1", role="teacher", name="Ms Li", node="node-7")

    await store.add_participant(given, ttl_s=TTL)

    expected = Participant(id="p1", lesson_id=LESSON, role="teacher", name="Ms Li", joined_at=T0,
                           last_seen=T0 + 5, node="node-7", expires_at=T0 + 5 + TTL)
    assert await store.get_participant(LESSON, "p1") == expected
    assert await store.list_participants(LESSON) == [expected]
    assert (given.last_seen, given.expires_at) == (0.0, 0.0), "the caller's object is not mutated"


async def test_list_participants_is_sorted_by_join_time_not_insertion_order(store: RoomStore) -> None:
    for pid, joined in [("c", T0 + 3), ("a", T0 + 1), ("b", T0 + 2)]:
        await store.add_participant(person(pid, joined_at=joined), ttl_s=TTL)

    assert ids(await store.list_participants(LESSON)) == ["a", "b", "c"]


async def test_add_participant_with_an_existing_id_replaces_it(store: RoomStore, clock: FakeClock) -> None:
    await store.add_participant(person("p1", name="Room 1", node="node-a"), ttl_s=TTL)
    clock.advance(3)

    await store.add_participant(person("p1", role="observer", name="Room 1b", node="node-b"), ttl_s=TTL)

    [p] = await store.list_participants(LESSON)
    assert (p.id, p.role, p.name, p.node, p.last_seen) == ("p1", "observer", "Room 1b", "node-b", T0 + 3)


async def test_participants_belong_to_their_own_lesson(store: RoomStore) -> None:
    await store.add_participant(person("p1", lesson=LESSON), ttl_s=TTL)
    await store.add_participant(person("p2", lesson=OTHER_LESSON), ttl_s=TTL)

    assert ids(await store.list_participants(LESSON)) == ["p1"]
    assert ids(await store.list_participants(OTHER_LESSON)) == ["p2"]
    assert await store.get_participant(OTHER_LESSON, "p1") is None


async def test_heartbeat_extends_life_past_the_original_expiry(store: RoomStore, clock: FakeClock) -> None:
    await store.add_participant(person("p1"), ttl_s=10)  # would expire at T0+10
    clock.advance(8)

    assert await store.heartbeat(LESSON, "p1", ttl_s=10) is True  # now expires at T0+18

    clock.advance(8)  # T0+16
    p = await store.get_participant(LESSON, "p1")
    assert p is not None and (p.last_seen, p.expires_at) == (T0 + 8, T0 + 18)
    assert ids(await store.list_participants(LESSON)) == ["p1"]
    clock.advance(2)  # T0+18: expires_at is no longer in the future
    assert await store.get_participant(LESSON, "p1") is None


async def _never_added(store: RoomStore, clock: FakeClock) -> None:
    pass


async def _removed(store: RoomStore, clock: FakeClock) -> None:
    await store.add_participant(person("p1"), ttl_s=TTL)
    await store.remove_participant(LESSON, "p1")


async def _expired(store: RoomStore, clock: FakeClock) -> None:
    await store.add_participant(person("p1"), ttl_s=10)
    clock.advance(10)


async def _in_another_lesson(store: RoomStore, clock: FakeClock) -> None:
    await store.add_participant(person("p1", lesson=OTHER_LESSON), ttl_s=TTL)


GONE = {"never added": _never_added, "removed": _removed, "expired": _expired,
        "in another lesson": _in_another_lesson}
Setup = Callable[[RoomStore, FakeClock], Awaitable[None]]


@pytest.mark.parametrize("make_gone", GONE.values(), ids=GONE.keys())
async def test_heartbeat_of_a_gone_participant_returns_false_and_does_not_revive_it(
    store: RoomStore, clock: FakeClock, make_gone: Setup
) -> None:
    await make_gone(store, clock)

    assert await store.heartbeat(LESSON, "p1", ttl_s=TTL) is False

    assert await store.get_participant(LESSON, "p1") is None
    assert await store.list_participants(LESSON) == []


async def test_expiry_hides_participants_and_their_tracks(store: RoomStore, clock: FakeClock) -> None:
    await store.add_participant(person("teacher", role="teacher", joined_at=T0), ttl_s=10)
    await store.add_participant(person("room-1", joined_at=T0 + 1), ttl_s=TTL)
    await store.add_track(track("t-audio", "teacher", kind="audio", source="microphone", published_at=T0))
    await store.add_track(track("t-video", "teacher", published_at=T0 + 1))
    await store.add_track(track("r-video", "room-1", published_at=T0 + 2))
    assert ids(await store.list_tracks(LESSON)) == ["t-audio", "t-video", "r-video"]

    clock.advance(10)  # the teacher's server stopped heart-beating

    assert ids(await store.list_participants(LESSON)) == ["room-1"]
    assert await store.get_participant(LESSON, "teacher") is None
    assert ids(await store.list_tracks(LESSON)) == ["r-video"]
    assert (await store.counts())["participants"] == 1


@pytest.mark.parametrize("gap", [0, 11], ids=["replaced while alive", "re-added after expiry"])
async def test_a_new_incarnation_of_a_participant_starts_without_the_old_tracks(
    store: RoomStore, clock: FakeClock, gap: float
) -> None:
    await store.add_participant(person("teacher", node="node-a"), ttl_s=10)
    await store.add_track(track("t-video", "teacher"))
    clock.advance(gap)

    await store.add_participant(person("teacher", node="node-b"), ttl_s=10)

    assert await store.list_tracks(LESSON) == []
    assert ids(await store.list_participants(LESSON)) == ["teacher"]


async def test_remove_participant_removes_it_with_its_tracks_and_is_idempotent(store: RoomStore) -> None:
    await store.add_participant(person("p1"), ttl_s=TTL)
    await store.add_participant(person("p2", joined_at=T0 + 1), ttl_s=TTL)
    await store.add_track(track("v1", "p1"))
    await store.add_track(track("v2", "p2"))

    await store.remove_participant(LESSON, "p1")
    await store.remove_participant(LESSON, "p1")
    await store.remove_participant("no-such-lesson", "p1")

    assert ids(await store.list_participants(LESSON)) == ["p2"]
    assert ids(await store.list_tracks(LESSON)) == ["v2"]
    assert await store.get_participant(LESSON, "p1") is None


async def test_returned_objects_are_copies_of_the_stored_state(store: RoomStore) -> None:
    lesson = await store.ensure_lesson(LESSON, title="Algebra")
    await store.add_participant(person("p1", name="Room 1"), ttl_s=TTL)
    await store.add_track(track("v1", "p1", source="camera"))

    lesson.title = "changed"
    (await store.list_participants(LESSON))[0].name = "changed"
    (await store.get_participant(LESSON, "p1")).role = "observer"  # type: ignore[union-attr]
    (await store.list_tracks(LESSON))[0].source = "changed"

    assert (await store.get_lesson(LESSON)).title == "Algebra"  # type: ignore[union-attr]
    p1 = await store.get_participant(LESSON, "p1")
    assert p1 is not None and (p1.name, p1.role) == ("Room 1", "classroom")
    assert (await store.list_tracks(LESSON))[0].source == "camera"


# -- nodes and counts ----------------------------------------------------------

async def test_remove_node_removes_that_nodes_participants_and_tracks_in_every_lesson(
    store: RoomStore,
) -> None:
    await store.add_participant(person("teacher", lesson=LESSON, node="node-a"), ttl_s=TTL)
    await store.add_participant(person("room-1", lesson=OTHER_LESSON, node="node-a"), ttl_s=TTL)
    await store.add_participant(person("room-2", lesson=LESSON, node="node-b", joined_at=T0 + 1), ttl_s=TTL)
    await store.add_track(track("t-video", "teacher"))
    await store.add_track(track("r2-video", "room-2"))

    assert await store.remove_node("node-a") == 2

    assert ids(await store.list_participants(LESSON)) == ["room-2"]
    assert await store.list_participants(OTHER_LESSON) == []
    assert ids(await store.list_tracks(LESSON)) == ["r2-video"]
    assert await store.remove_node("node-a") == 0
    assert await store.remove_node("node-z") == 0
    assert (await store.counts())["participants"] == 1


async def test_remove_node_counts_only_participants_that_had_not_expired(
    store: RoomStore, clock: FakeClock
) -> None:
    await store.add_participant(person("p1", node="node-a"), ttl_s=10)
    await store.add_participant(person("p2", node="node-a"), ttl_s=TTL)
    clock.advance(10)

    assert await store.remove_node("node-a") == 1
    assert await store.list_participants(LESSON) == []


async def test_remove_node_spares_a_participant_that_reconnected_through_another_node(
    store: RoomStore,
) -> None:
    await store.add_participant(person("p1", node="node-a"), ttl_s=TTL)
    await store.add_participant(person("p1", node="node-b"), ttl_s=TTL)

    assert await store.remove_node("node-a") == 0
    assert [(p.id, p.node) for p in await store.list_participants(LESSON)] == [("p1", "node-b")]


# -- placement: which node carries a lesson -----------------------------------------------------------------

async def test_the_first_node_places_a_lesson_and_another_node_is_told_where_it_is(store: RoomStore,
                                                                                    clock: FakeClock) -> None:
    a = await store.place_lesson(LESSON, "node-a", "http://a:8080", TTL)
    assert a == Placement("node-a", "http://a:8080")
    assert await store.place_lesson(LESSON, "node-b", "http://b:8080", TTL) == a
    # another lesson is placed independently
    assert await store.place_lesson(OTHER_LESSON, "node-b", "http://b:8080", TTL) == Placement("node-b", "http://b:8080")


async def test_the_holder_renews_its_placement_and_an_expired_one_goes_to_the_next_node(store: RoomStore,
                                                                                        clock: FakeClock) -> None:
    await store.place_lesson(LESSON, "node-a", "http://a:8080", TTL)
    clock.advance(TTL - 1)
    assert (await store.place_lesson(LESSON, "node-a", "http://a:8080", TTL)).node == "node-a"  # renewed
    clock.advance(TTL - 1)  # within the renewed TTL
    assert (await store.place_lesson(LESSON, "node-b", "http://b:8080", TTL)).node == "node-a"
    clock.advance(2)  # node-a crashed: it renewed nothing
    assert await store.place_lesson(LESSON, "node-b", "http://b:8080", TTL) == Placement("node-b", "http://b:8080")
    assert (await store.place_lesson(LESSON, "node-a", "http://a:8080", TTL)).node == "node-b"


async def test_only_the_holder_releases_a_placement(store: RoomStore) -> None:
    await store.place_lesson(LESSON, "node-a", "http://a:8080", TTL)
    await store.release_lesson(LESSON, "node-b")  # not its own: nothing happens
    assert (await store.place_lesson(LESSON, "node-b", "http://b:8080", TTL)).node == "node-a"
    await store.release_lesson(LESSON, "node-a")
    await store.release_lesson(LESSON, "node-a")  # idempotent
    assert (await store.place_lesson(LESSON, "node-b", "http://b:8080", TTL)).node == "node-b"


async def test_a_placement_needs_a_positive_ttl(store: RoomStore) -> None:
    with pytest.raises(ValueError):
        await store.place_lesson(LESSON, "node-a", "http://a:8080", 0)


# -- node liveness: a dead node's lessons are free at once (failover in seconds) -----------------------------

NODE_TTL = 3.0


async def test_node_heartbeat_says_whether_the_node_was_alive_already(store: RoomStore, clock: FakeClock) -> None:
    assert await store.node_alive("node-a") is False
    assert await store.node_heartbeat("node-a", "http://a:8080", NODE_TTL) is False  # first beat
    assert await store.node_alive("node-a") is True
    clock.advance(NODE_TTL - 1)
    assert await store.node_heartbeat("node-a", "http://a:8080", NODE_TTL) is True  # renewed in time
    clock.advance(NODE_TTL - 0.5)
    assert await store.node_alive("node-a") is True
    clock.advance(1)  # stopped beating (crashed, or the store lost it): the next beat says so
    assert await store.node_alive("node-a") is False
    assert await store.node_heartbeat("node-a", "http://a:8080", NODE_TTL) is False
    assert await store.node_alive("node-b") is False
    with pytest.raises(ValueError):
        await store.node_heartbeat("node-a", "http://a:8080", 0)


async def test_a_dead_nodes_placement_goes_to_the_next_node_before_the_placement_expires(
        store: RoomStore, clock: FakeClock) -> None:
    await store.node_heartbeat("node-a", "http://a:8080", NODE_TTL)
    await store.node_heartbeat("node-b", "http://b:8080", NODE_TTL)
    assert await store.place_lesson(LESSON, "node-a", "http://a:8080", TTL) == Placement("node-a", "http://a:8080")
    clock.advance(NODE_TTL - 1)
    await store.node_heartbeat("node-b", "http://b:8080", NODE_TTL)
    held = await store.place_lesson(LESSON, "node-b", "http://b:8080", TTL)
    assert held == Placement("node-a", "http://a:8080") and held.previous == ""  # node-a is alive
    clock.advance(1.5)  # node-a crashed: its node key is gone long before the placement's TTL
    await store.node_heartbeat("node-b", "http://b:8080", NODE_TTL)
    taken = await store.place_lesson(LESSON, "node-b", "http://b:8080", TTL)
    assert taken == Placement("node-b", "http://b:8080")
    assert taken.previous == "node-a"  # (the taker then clears the dead node's participants)
    again = await store.place_lesson(LESSON, "node-b", "http://b:8080", TTL)
    assert again.previous == ""
    # node-b carries it while it beats; dead too, the lesson goes back to a live node
    clock.advance(NODE_TTL + 1)
    await store.node_heartbeat("node-a", "http://a:8080", NODE_TTL)
    assert (await store.place_lesson(LESSON, "node-a", "http://a:8080", TTL)).node == "node-a"


async def test_remove_node_ends_its_liveness_and_frees_its_placements(store: RoomStore) -> None:
    await store.node_heartbeat("node-a", "http://a:8080", NODE_TTL)
    await store.place_lesson(LESSON, "node-a", "http://a:8080", TTL)
    await store.add_participant(person("p1", node="node-a"), ttl_s=TTL)
    assert await store.remove_node("node-a") == 1
    assert await store.node_alive("node-a") is False
    assert (await store.place_lesson(LESSON, "node-b", "http://b:8080", TTL)).node == "node-b"


async def test_ready_nodes_list_the_live_nodes_taking_new_lessons_and_placement_only_reads(
        store: RoomStore, clock: FakeClock) -> None:
    for node in ("node-b", "node-a"):
        await store.node_heartbeat(node, f"http://{node[-1]}:8080", NODE_TTL)
        await store.set_node_ready(node, f"http://{node[-1]}:8080", True, NODE_TTL)
    assert await store.ready_nodes() == [Placement("node-a", "http://a:8080"), Placement("node-b", "http://b:8080")]
    await store.set_node_ready("node-a", "http://a:8080", False, NODE_TTL)  # draining: off the list at once
    assert await store.ready_nodes() == [Placement("node-b", "http://b:8080")]
    clock.advance(NODE_TTL + 0.5)  # node-b stopped renewing: no longer ready
    assert await store.ready_nodes() == []
    await store.node_heartbeat("node-b", "http://b:8080", NODE_TTL)
    await store.set_node_ready("node-b", "http://b:8080", True, NODE_TTL)
    assert await store.placement(LESSON) is None
    await store.place_lesson(LESSON, "node-b", "http://b:8080", TTL)
    assert await store.placement(LESSON) == Placement("node-b", "http://b:8080")
    assert await store.remove_node("node-b") == 0
    assert await store.ready_nodes() == [] and await store.placement(LESSON) is None  # a dead holder holds nothing


# -- rebuilding what a node knows (the store lost it) ----------------------------------------------------------

@pytest.mark.parametrize("lesson", [
    Lesson(id=LESSON, title="Algebra", teacher="Ms Li", state="live", created_at=T0 - 100, started_at=T0 - 50),
    Lesson(id=LESSON, title="Algebra", teacher="", state="ended", created_at=T0 - 100, started_at=T0 - 50,
           ended_at=T0 - 10),
    Lesson(id=LESSON, title=LESSON, teacher="", state="scheduled", created_at=T0 - 100),
], ids=lambda x: x.state)
async def test_restore_lesson_writes_it_back_as_it_was(store: RoomStore, lesson: Lesson) -> None:
    await store.ensure_lesson(OTHER_LESSON)
    await store.restore_lesson(lesson)
    assert await store.get_lesson(LESSON) == lesson
    assert ids(await store.list_lessons()) == [LESSON, OTHER_LESSON]  # by its own created_at
    assert (await store.counts())["lessons"] == (1 if lesson.state == "ended" else 2)
    # over a lesson the store has (different now): the node's version wins
    await store.set_lesson_state(LESSON, "live")
    await store.ensure_lesson(LESSON, title="changed")
    await store.restore_lesson(lesson)
    assert await store.get_lesson(LESSON) == lesson


# -- admission: removal and lock outlive the node -----------------------------------------------------------

async def test_admission_of_an_unknown_lesson_is_open(store: RoomStore) -> None:
    assert await store.admission(LESSON) == Admission()


async def test_lock_removed_and_seen_are_kept_per_lesson_until_cleared(store: RoomStore) -> None:
    await store.set_locked(LESSON, True)
    await store.add_removed(LESSON, ["room-3"])
    await store.add_removed(LESSON, ["room-3", "room:4"])  # idempotent, ids with separators
    await store.add_removed(LESSON, [])
    await store.add_seen(LESSON, ["room-1", "room-2"])
    await store.add_seen(LESSON, ["room-1"])
    await store.add_seen(OTHER_LESSON, ["room-9"])
    assert await store.admission(LESSON) == Admission(True, {"room-3", "room:4"}, {"room-1", "room-2"})
    assert await store.admission(OTHER_LESSON) == Admission(False, set(), {"room-9"})
    got = await store.admission(LESSON)
    got.removed.add("mutated")  # a copy
    assert "mutated" not in (await store.admission(LESSON)).removed
    await store.set_locked(LESSON, False)
    await store.set_locked(LESSON, False)
    assert (await store.admission(LESSON)).locked is False
    await store.clear_admission(LESSON)
    await store.clear_admission(LESSON)
    assert await store.admission(LESSON) == Admission()
    assert await store.admission(OTHER_LESSON) == Admission(False, set(), {"room-9"})


async def test_counts_open_lessons_and_unexpired_participants(store: RoomStore, clock: FakeClock) -> None:
    assert await store.counts() == {"lessons": 0, "participants": 0}

    for lesson_id in ["l1", "l2", "l3"]:
        await store.ensure_lesson(lesson_id)
    await store.set_lesson_state("l1", "live")
    await store.set_lesson_state("l2", "ended")
    await store.add_participant(person("p1", lesson="l1"), ttl_s=10)
    await store.add_participant(person("p2", lesson="l1"), ttl_s=TTL)
    await store.add_participant(person("p3", lesson="l2"), ttl_s=TTL)  # ended lessons' people still count
    assert await store.counts() == {"lessons": 2, "participants": 3}

    clock.advance(10)
    assert await store.counts() == {"lessons": 2, "participants": 2}

    await store.set_lesson_state("l2", "live")
    await store.remove_participant("l1", "p2")
    assert await store.counts() == {"lessons": 3, "participants": 1}


# -- tracks --------------------------------------------------------------------

async def test_tracks_are_listed_by_publication_time_and_re_adding_replaces(store: RoomStore) -> None:
    await store.add_participant(person("teacher"), ttl_s=TTL)
    await store.add_participant(person("room-1"), ttl_s=TTL)
    screen = track("screen", "teacher", source="screen", published_at=T0 + 3)
    mic = track("mic", "teacher", kind="audio", source="microphone", published_at=T0 + 1)
    cam = track("cam", "room-1", published_at=T0 + 2)
    for t in [screen, mic, cam]:
        await store.add_track(t)
    moved_cam = track("cam", "room-1", published_at=T0 + 4)
    await store.add_track(moved_cam)

    assert await store.list_tracks(LESSON) == [mic, screen, moved_cam]
    assert await store.list_tracks(OTHER_LESSON) == []


async def test_remove_track_removes_only_that_track_and_is_idempotent(store: RoomStore) -> None:
    await store.add_participant(person("teacher"), ttl_s=TTL)
    await store.add_track(track("mic", "teacher", kind="audio", source="microphone", published_at=T0))
    await store.add_track(track("cam", "teacher", published_at=T0 + 1))

    await store.remove_track(LESSON, "mic")
    await store.remove_track(LESSON, "mic")
    await store.remove_track(LESSON, "never-published")
    await store.remove_track("no-such-lesson", "cam")

    assert ids(await store.list_tracks(LESSON)) == ["cam"]


async def test_add_track_for_a_participant_that_is_not_present_is_ignored(
    store: RoomStore, clock: FakeClock
) -> None:
    await store.add_participant(person("expired"), ttl_s=10)
    clock.advance(10)
    await store.add_track(track("ghost-video", "nobody"))
    await store.add_track(track("late-video", "expired"))

    await store.add_participant(person("nobody"), ttl_s=TTL)  # joining later must not surface it

    assert await store.list_tracks(LESSON) == []


# -- model and factory ---------------------------------------------------------

@pytest.mark.parametrize("obj", [
    Lesson(id="l1", title="Algebra", teacher="Ms Li", state="live", created_at=T0, started_at=T0 + 1,
           ended_at=None),
    Participant(id="p1", lesson_id="l1", role="teacher", name="Ms Li", joined_at=T0, last_seen=T0 + 1,
                node="node-a", expires_at=T0 + 31),
    TrackInfo(id="t1", lesson_id="l1", participant_id="p1", kind="audio", source="microphone",
              published_at=T0 + 2),
], ids=lambda o: type(o).__name__)
def test_model_objects_round_trip_through_json(obj: Lesson | Participant | TrackInfo) -> None:
    data = json.loads(json.dumps(obj.to_dict()))

    assert type(obj).from_dict(data) == obj
    assert data["id"] == obj.id


@pytest.mark.parametrize("url, expected", [
    (None, MemoryRoomStore),
    ("", MemoryRoomStore),
    ("redis://127.0.0.1:6379/0", RedisRoomStore),  # no connection is made until first use
])
async def test_open_store_picks_redis_only_when_given_a_url(url: str | None, expected: type) -> None:
    s = open_store(url, prefix="ketang-test:factory:")
    try:
        assert type(s) is expected
    finally:
        await s.close()


# -- Redis only ----------------------------------------------------------------

async def test_redis_participant_keys_carry_a_real_redis_ttl(redis_url: str, redis_prefix: str) -> None:
    store = RedisRoomStore(redis_url, prefix=redis_prefix)  # real clock
    client = aioredis.Redis.from_url(redis_url)
    ttl_s = 5.0
    max_ms = (ttl_s + KEY_TTL_MARGIN_S) * 1000
    try:
        await store.add_participant(person("p1"), ttl_s=ttl_s)
        await store.add_track(track("v1", "p1"))
        pkey, tkey = store.participant_key(LESSON, "p1"), store.tracks_key(LESSON, "p1")
        assert pkey.startswith(redis_prefix) and tkey.startswith(redis_prefix)

        assert 0 < await client.pttl(pkey) <= max_ms
        assert 0 < await client.pttl(tkey) <= max_ms

        # a heartbeat pushes the garbage-collection deadline out again
        await client.pexpire(pkey, 1000)
        await client.pexpire(tkey, 1000)
        assert await store.heartbeat(LESSON, "p1", ttl_s=ttl_s) is True
        assert 1000 < await client.pttl(pkey) <= max_ms
        assert 1000 < await client.pttl(tkey) <= max_ms
    finally:
        await store.close()
        await client.aclose()


async def test_two_redis_nodes_sharing_a_prefix_see_each_others_participants(
    redis_url: str, redis_prefix: str
) -> None:
    clock = FakeClock(T0)
    a = RedisRoomStore(redis_url, prefix=redis_prefix, clock=clock)
    b = RedisRoomStore(redis_url, prefix=redis_prefix, clock=clock)
    elsewhere = RedisRoomStore(redis_url, prefix=f"{redis_prefix}other:", clock=clock)
    try:
        await a.ensure_lesson(LESSON, title="Algebra")
        await a.add_participant(person("teacher", role="teacher", node="node-a", joined_at=T0), ttl_s=10)
        await b.add_participant(person("room-1", node="node-b", joined_at=T0 + 1), ttl_s=TTL)
        await a.add_track(track("t-video", "teacher"))

        for node in (a, b):
            assert (await node.get_lesson(LESSON)).title == "Algebra"  # type: ignore[union-attr]
            assert ids(await node.list_participants(LESSON)) == ["teacher", "room-1"]
            assert ids(await node.list_tracks(LESSON)) == ["t-video"]
            assert await node.counts() == {"lessons": 1, "participants": 2}
        assert await elsewhere.list_lessons() == []
        assert await elsewhere.list_participants(LESSON) == []

        clock.advance(10)  # node-a crashed: its teacher is no longer heart-beaten
        assert await b.heartbeat(LESSON, "room-1", ttl_s=TTL) is True
        assert await b.heartbeat(LESSON, "teacher", ttl_s=TTL) is False
        assert ids(await b.list_participants(LESSON)) == ["room-1"]
        assert await b.list_tracks(LESSON) == []

        assert await b.remove_node("node-b") == 1  # node-b shuts down cleanly
        assert await a.list_participants(LESSON) == []
        assert await a.counts() == {"lessons": 1, "participants": 0}
    finally:
        for s in (a, b, elsewhere):
            await s.close()


async def test_redis_store_works_with_a_supplied_bytes_client_and_leaves_it_open(
    redis_url: str, redis_prefix: str
) -> None:
    name = f"ketang-test-{uuid.uuid4().hex}"
    # decode_responses=False: replies are bytes, which the store must cope with
    client = aioredis.Redis.from_url(redis_url, client_name=name)
    observer = aioredis.Redis.from_url(redis_url, decode_responses=True)
    clock = FakeClock(T0)
    store = RedisRoomStore(redis_url, prefix=redis_prefix, clock=clock, client=client)
    try:
        await store.ensure_lesson(LESSON, title="Algebra")
        await store.add_participant(person("p1", name="Room 1"), ttl_s=TTL)
        await store.add_track(track("v1", "p1"))

        assert (await store.list_lessons())[0].title == "Algebra"
        assert (await store.get_participant(LESSON, "p1")).name == "Room 1"  # type: ignore[union-attr]
        assert ids(await store.list_tracks(LESSON)) == ["v1"]
        assert await store.remove_node("node-a") == 1

        await store.close()
        # ask the server: a PING would just reconnect a closed client
        assert name in [c["name"] for c in await observer.client_list()]
    finally:
        await client.aclose()
        await observer.aclose()


async def test_redis_unreachable_raises_store_unavailable_quickly_and_nothing_else() -> None:
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisRoomStore(f"redis://127.0.0.1:{port}/0", prefix="ketang-test:down:")
    try:
        started = time.monotonic()
        for call in (store.ping(), store.counts(), store.place_lesson(LESSON, "n", "http://n", TTL),
                     store.node_heartbeat("n", "http://n", 3.0), store.admission(LESSON),
                     store.remove_participant(LESSON, "p1")):
            with pytest.raises(StoreUnavailable):
                await call
        print(f"6 calls to an unreachable Redis failed in {time.monotonic() - started:.2f} s")
        assert time.monotonic() - started < 20  # (not minutes of retries)
    finally:
        await store.close()

"""The pure parts of `ketang serve --workers N`: the worker count, media port slices, the routing claim, and the
room-state RPC's answers to bad requests and an unreachable supervisor."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from signaling.config import workers_from
from signaling.state import MemoryRoomStore, Participant, RpcRoomStore, RpcStoreServer, StoreUnavailable
from signaling.supervisor import lesson_claim, media_port_slices
from signaling.tokens import issue_token


def test_workers_come_from_the_flag_then_the_environment_then_the_cores() -> None:
    assert workers_from(3, {"KETANG_WORKERS": "5"}) == 3
    assert workers_from(None, {"KETANG_WORKERS": "5"}) == 5
    assert workers_from(None, {}) >= 1
    for bad in ("0", "two", "-1", "999"):
        with pytest.raises(ValueError, match="KETANG_WORKERS|--workers"):
            workers_from(None, {"KETANG_WORKERS": bad})


def test_each_worker_gets_its_own_slice_of_the_media_ports() -> None:
    assert media_port_slices("40000-49999", 2) == ["40000-44999", "45000-49999"]
    assert media_port_slices("40000-40010", 3) == ["40000-40002", "40003-40005", "40006-40010"]
    assert media_port_slices("", 2) == ["", ""]
    with pytest.raises(ValueError, match="cannot be shared by 4 workers"):
        media_port_slices("40000-40002", 4)


def test_the_routing_claim_is_the_join_tokens_lesson_and_nothing_else() -> None:
    good = issue_token("secret-1" * 4, "classroom", "math-7a", name="north")
    forged = issue_token("not-the-servers-secret" * 2, "classroom", "art-2", name="x")
    assert lesson_claim(json.dumps({"type": "join", "token": good})) == "math-7a"
    assert lesson_claim(json.dumps({"type": "join", "token": forged})) == "art-2"  # routed; the worker refuses it
    for raw in ("", "null", "[1]", '{"type": "ping"}', '{"type": "join", "token": 5}',
                '{"type": "join", "token": "a.b.c"}', json.dumps({"type": "join", "token": "x" * 5000}), b"\xff"):
        assert lesson_claim(raw) is None, raw


@pytest.fixture
async def rpc():  # type: ignore[no-untyped-def]
    runtime = Path(tempfile.mkdtemp(prefix="ketang-rpc-"))
    server = RpcStoreServer(MemoryRoomStore(), runtime / "state.sock")
    await server.start()
    yield server
    await server.close()
    shutil.rmtree(runtime, ignore_errors=True)


async def test_the_rpc_answers_a_bad_request_with_an_error_and_serves_on(rpc) -> None:  # type: ignore[no-untyped-def]
    for line in (b"not json", b"[]", b'{"id": 1, "m": "__class__", "a": []}', b'{"id": 2, "m": "close", "a": []}',
                 b'{"id": 3, "m": "counts", "a": [1, 2]}', b'{"id": 4, "m": "add_track", "a": [{"$": "os"}]}',
                 b'{"id": 5, "m": "add_participant", "a": [{"$": "Participant", "id": 1}, 30]}'):
        reply = await rpc.answer(line)
        assert "e" in reply and "r" not in reply, (line, reply)
    client = RpcRoomStore(rpc.path)
    try:
        p = Participant(id="p", lesson_id="l", role="classroom", name="n", joined_at=1.0)
        await client.add_participant(p, 30)
        assert [x.id for x in await client.list_participants("l")] == ["p"]
        with pytest.raises(KeyError):
            await client.set_lesson_state("nope", "live")
        with pytest.raises(ValueError):
            await client.add_participant(p, -1)
    finally:
        await client.close()


async def test_an_unreachable_supervisor_is_store_unavailable(rpc) -> None:  # type: ignore[no-untyped-def]
    client = RpcRoomStore(rpc.path, timeout_s=0.5)
    try:
        assert await client.counts() == {"lessons": 0, "participants": 0}
        await rpc.close()
        with pytest.raises(StoreUnavailable):
            await client.counts()
        with pytest.raises(StoreUnavailable):  # (and again: reconnecting to nothing)
            await client.counts()
    finally:
        await client.close()

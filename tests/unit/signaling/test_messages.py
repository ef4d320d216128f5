"""Client -> server websocket message validation."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from signaling import messages
from signaling.messages import (
    MAX_MESSAGE_BYTES,
    Message,
    ProtocolError,
    error_reply,
    parse_message,
)

SDP = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoidGVhY2hlciJ9.c2ln"


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def refused(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_message(raw)
    assert info.value.message
    return info.value


# --- valid messages ------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param({"type": "join", "token": TOKEN}, Message("join", None, {"token": TOKEN}), id="join"),
        pytest.param({"type": "publish", "sdp": SDP}, Message("publish", None, {"sdp": SDP}), id="publish"),
        pytest.param({"type": "answer", "sdp": SDP}, Message("answer", None, {"sdp": SDP}), id="answer"),
        pytest.param(
            {"type": "unpublish", "track": "cam-1"},
            Message("unpublish", None, {"track": "cam-1"}),
            id="unpublish-one-track",
        ),
        pytest.param({"type": "unpublish"}, Message("unpublish", None, {}), id="unpublish-all-tracks"),
        pytest.param({"type": "prefer", "video": False}, Message("prefer", None, {"video": False}), id="audio-only"),
        pytest.param({"type": "prefer", "video": True, "camera": False},
                     Message("prefer", None, {"video": True, "camera": False}), id="courseware-and-sound"),
        pytest.param({"type": "end_lesson"}, Message("end_lesson", None, {}), id="end_lesson"),
        pytest.param({"type": "leave"}, Message("leave", None, {}), id="leave"),
        pytest.param({"type": "ping"}, Message("ping", None, {}), id="ping"),
        pytest.param({"type": "ping", "id": "abc"}, Message("ping", "abc", {}), id="string-id"),
        pytest.param({"type": "ping", "id": 7}, Message("ping", 7, {}), id="int-id"),
        pytest.param({"type": "ping", "id": 0}, Message("ping", 0, {}), id="zero-id"),
        pytest.param({"type": "ping", "id": -1}, Message("ping", -1, {}), id="negative-id"),
        pytest.param({"type": "ping", "id": ""}, Message("ping", "", {}), id="empty-string-id"),
        pytest.param({"type": "ping", "id": "x" * 64}, Message("ping", "x" * 64, {}), id="64-char-id"),
        pytest.param({"type": "ping", "id": 2**53 - 1}, Message("ping", 2**53 - 1, {}), id="max-safe-int-id"),
        pytest.param({"type": "leave", "id": 3}, Message("leave", 3, {}), id="leave-with-id"),
        pytest.param(
            {"type": "join", "token": "t" * 4096}, Message("join", None, {"token": "t" * 4096}), id="4096-char-token"
        ),
        pytest.param(
            {"type": "unpublish", "track": "t" * 128},
            Message("unpublish", None, {"track": "t" * 128}),
            id="128-char-track",
        ),
        pytest.param(
            {"type": "publish", "sdp": "v=0" + "a" * (60000 - 3)},
            Message("publish", None, {"sdp": "v=0" + "a" * 59997}),
            id="60000-char-sdp",
        ),
        pytest.param(
            {"type": "join", "token": "学生"}, Message("join", None, {"token": "学生"}), id="non-ascii-value"
        ),
    ],
)
def test_each_valid_message_parses_to_its_schema_fields(obj: dict[str, Any], expected: Message) -> None:
    assert parse_message(dumps(obj)) == expected
    assert parse_message(dumps(obj).encode("utf-8")) == expected


def test_unknown_extra_fields_are_dropped() -> None:
    msg = parse_message(dumps({"type": "join", "token": TOKEN, "role": "teacher", "sdp": SDP, "id": 1}))
    assert msg == Message("join", 1, {"token": TOKEN})


def test_fields_of_other_types_are_not_carried_over() -> None:
    # "track" belongs to unpublish, not to ping.
    assert parse_message(dumps({"type": "ping", "track": "cam"})).fields == {}


def test_whitespace_around_the_json_is_accepted() -> None:
    assert parse_message('  \n{"type": "ping"}\r\n ').type == "ping"


def test_a_bytearray_is_accepted_like_bytes() -> None:
    assert parse_message(bytearray(b'{"type":"ping","id":1}')) == Message("ping", 1, {})


def test_a_non_text_argument_is_a_caller_bug() -> None:
    with pytest.raises(TypeError):
        parse_message({"type": "ping"})  # type: ignore[arg-type]


# --- size ----------------------------------------------------------------------


def padded(total_bytes: int, pad_char: str) -> str:
    """A valid ping whose UTF-8 encoding is exactly ``total_bytes`` long,
    padded mostly with ``pad_char`` (topped up with ASCII)."""
    skeleton_bytes = len(dumps({"type": "ping", "pad": ""}).encode("utf-8"))
    room = total_bytes - skeleton_bytes
    char_bytes = len(pad_char.encode("utf-8"))
    raw = dumps({"type": "ping", "pad": pad_char * (room // char_bytes) + "x" * (room % char_bytes)})
    assert len(raw.encode("utf-8")) == total_bytes
    return raw


PAD_CHARS = [pytest.param("x", id="ascii"), pytest.param("é", id="2-byte"), pytest.param("€", id="3-byte")]


@pytest.mark.parametrize("pad_char", PAD_CHARS)
def test_a_message_of_exactly_the_maximum_size_is_accepted(pad_char: str) -> None:
    raw = padded(MAX_MESSAGE_BYTES, pad_char)
    assert parse_message(raw).type == "ping"
    assert parse_message(raw.encode("utf-8")).type == "ping"


@pytest.mark.parametrize("pad_char", PAD_CHARS)
def test_a_message_one_byte_over_the_maximum_is_too_large(pad_char: str) -> None:
    raw = padded(MAX_MESSAGE_BYTES + 1, pad_char)
    assert refused(raw).code == "too_large"
    assert refused(raw.encode("utf-8")).code == "too_large"


def test_size_is_counted_in_utf8_bytes_not_characters() -> None:
    # "€" is 3 bytes: under the limit in characters, over it in bytes.
    skeleton_bytes = len(dumps({"type": "ping", "pad": ""}))
    raw = dumps({"type": "ping", "pad": "€" * ((MAX_MESSAGE_BYTES - skeleton_bytes) // 3 + 1)})
    assert len(raw) <= MAX_MESSAGE_BYTES < len(raw.encode("utf-8"))
    assert refused(raw).code == "too_large"


def test_size_is_checked_before_parsing() -> None:
    # Not JSON at all, but too big: the size verdict comes first.
    assert refused("{" * (MAX_MESSAGE_BYTES + 1)).code == "too_large"
    assert refused(b"\xff" * (MAX_MESSAGE_BYTES + 1)).code == "too_large"


# --- bad_json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"type": "ping", "x": "\xff"}', id="invalid-utf8-byte"),
        pytest.param(b'{"type": "ping", "x": "\xc3"}', id="truncated-utf8-sequence"),
        pytest.param(b'{"type": "ping", "x": "\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
        pytest.param('{"type": "ping"}'.encode("utf-16"), id="utf16-bytes"),
        pytest.param(b"\xef\xbb\xbf" + b'{"type": "ping"}', id="utf8-bom"),
        pytest.param('{"type": "ping", "x": "\ud800"}', id="str-with-lone-surrogate"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("{", id="truncated"),
        pytest.param("{'type': 'ping'}", id="single-quotes"),
        pytest.param('{"type": "ping"} {}', id="two-documents"),
        pytest.param('{"type": "ping",}', id="trailing-comma"),
        pytest.param('{"type": "ping", "x": NaN}', id="nan"),
        pytest.param('{"type": "ping", "x": Infinity}', id="infinity"),
        pytest.param('{"type": "ping", "x": -Infinity}', id="negative-infinity"),
        pytest.param('{"type": "ping", "x": 1e999}', id="float-overflowing-to-infinity"),
        pytest.param('{"type": "ping", "x": ' + "9" * 5000 + "}", id="integer-with-too-many-digits"),
        pytest.param('{"type": "ping", "x": ' + "[" * 30000 + "]" * 30000 + "}", id="deep-nesting"),
        pytest.param('[{"type": "ping"}]', id="array-top-level"),
        pytest.param('"ping"', id="string-top-level"),
        pytest.param("42", id="number-top-level"),
        pytest.param("null", id="null-top-level"),
        pytest.param("true", id="bool-top-level"),
    ],
)
def test_text_that_is_not_a_utf8_json_object_is_bad_json(raw: str | bytes) -> None:
    error = refused(raw)
    assert error.code == "bad_json"
    assert error.ref is None


# --- bad_message and unknown_type -----------------------------------------------


@pytest.mark.parametrize(
    ("obj", "code", "names"),
    [
        pytest.param({"id": 1}, "bad_message", "type", id="missing-type"),
        pytest.param({"type": 5, "id": 1}, "bad_message", "type", id="type-not-a-string"),
        pytest.param({"type": None, "id": 1}, "bad_message", "type", id="type-null"),
        pytest.param({"type": "shout", "id": 1}, "unknown_type", "shout", id="unknown-type"),
        pytest.param({"type": "PING", "id": 1}, "unknown_type", "PING", id="type-is-case-sensitive"),
        pytest.param({"type": "", "id": 1}, "unknown_type", "", id="empty-type"),
        pytest.param({"type": "join", "id": 1}, "bad_message", "token", id="join-without-token"),
        pytest.param({"type": "join", "token": 5, "id": 1}, "bad_message", "token", id="token-not-a-string"),
        pytest.param({"type": "join", "token": "", "id": 1}, "bad_message", "token", id="empty-token"),
        pytest.param({"type": "join", "token": "t" * 4097, "id": 1}, "bad_message", "token", id="token-too-long"),
        pytest.param({"type": "publish", "id": 1}, "bad_message", "sdp", id="publish-without-sdp"),
        pytest.param({"type": "publish", "sdp": None, "id": 1}, "bad_message", "sdp", id="sdp-null"),
        pytest.param({"type": "publish", "sdp": "hello", "id": 1}, "bad_message", "sdp", id="sdp-not-starting-v0"),
        pytest.param({"type": "publish", "sdp": " v=0", "id": 1}, "bad_message", "sdp", id="sdp-leading-space"),
        pytest.param(
            {"type": "publish", "sdp": "v=0" + "a" * 59998, "id": 1}, "bad_message", "sdp", id="sdp-too-long"
        ),
        pytest.param({"type": "answer", "sdp": ["v=0"], "id": 1}, "bad_message", "sdp", id="answer-sdp-a-list"),
        pytest.param({"type": "answer", "id": 1}, "bad_message", "sdp", id="answer-without-sdp"),
        pytest.param({"type": "unpublish", "track": 3, "id": 1}, "bad_message", "track", id="track-not-a-string"),
        pytest.param({"type": "unpublish", "track": "", "id": 1}, "bad_message", "track", id="empty-track"),
        pytest.param(
            {"type": "unpublish", "track": "t" * 129, "id": 1}, "bad_message", "track", id="track-too-long"
        ),
        pytest.param(
            {"type": "unpublish", "track": None, "id": 1}, "bad_message", "track", id="track-null-is-not-absent"
        ),
        pytest.param({"type": "join", "token": True, "id": 1}, "bad_message", "token", id="token-a-bool"),
        pytest.param({"type": "prefer", "video": True, "camera": "no", "id": 1}, "bad_message", "camera",
                     id="camera-not-a-bool"),
    ],
)
def test_ill_formed_messages_are_refused_naming_the_field_and_echoing_the_id(
    obj: dict[str, Any], code: str, names: str
) -> None:
    error = refused(dumps(obj))
    assert error.code == code
    assert names in error.message
    assert error.ref == 1


def test_a_json_escaped_lone_surrogate_in_a_field_is_bad_message() -> None:
    raw = '{"type": "join", "token": "abc\\ud800", "id": "r1"}'
    error = refused(raw)
    assert (error.code, error.ref) == ("bad_message", "r1")
    assert "token" in error.message


def test_an_unknown_type_is_quoted_but_truncated_in_the_error() -> None:
    error = refused(dumps({"type": "x" * 10000}))
    assert error.code == "unknown_type"
    assert len(error.message) < 100


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("x" * 65, id="65-char-string"),
        pytest.param(1.5, id="float"),
        pytest.param(1.0, id="integral-float"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="null"),
        pytest.param([1], id="list"),
        pytest.param({"n": 1}, id="object"),
        pytest.param(2**53, id="int-beyond-javascript-precision"),
        pytest.param(-(2**53), id="negative-int-beyond-javascript-precision"),
    ],
)
def test_an_unreadable_id_is_bad_message_without_a_ref(bad_id: Any) -> None:
    error = refused(dumps({"type": "ping", "id": bad_id}))
    assert error.code == "bad_message"
    assert "id" in error.message
    assert error.ref is None


@pytest.mark.parametrize(
    ("obj", "ref"),
    [
        pytest.param({"type": "nope", "id": "req-9"}, "req-9", id="string-id"),
        pytest.param({"type": "nope", "id": 9}, 9, id="int-id"),
        pytest.param({"type": "nope"}, None, id="no-id"),
    ],
)
def test_the_ref_is_the_id_when_it_could_be_read(obj: dict[str, Any], ref: Any) -> None:
    assert refused(dumps(obj)).ref == ref


# --- error_reply ---------------------------------------------------------------


def test_an_error_reply_carries_the_ref_only_when_known() -> None:
    assert error_reply("bad_json", "nope") == {"type": "error", "code": "bad_json", "message": "nope"}
    assert error_reply("unknown_type", "what", ref="r1") == {
        "type": "error",
        "code": "unknown_type",
        "message": "what",
        "ref": "r1",
    }
    # 0 is a real id, not "no id".
    assert error_reply("bad_message", "m", ref=0)["ref"] == 0


def test_an_error_reply_built_from_a_protocol_error_is_json_serialisable() -> None:
    error = refused(dumps({"type": "nope", "id": 4}))
    reply = error_reply(error.code, error.message, error.ref)
    assert json.loads(json.dumps(reply)) == {
        "type": "error",
        "code": "unknown_type",
        "message": error.message,
        "ref": 4,
    }


def test_the_schema_table_covers_exactly_the_protocol_types() -> None:
    assert set(messages.SCHEMA) == {"join", "publish", "answer", "unpublish", "prefer", "end_lesson", "leave", "ping",
                                    "hand", "wall", "stage", "mute", "remove", "lock", "chat", "chat_delete",
                                    "chat_mode", "probe", "probe_answer", "probe_report"}


def test_random_damage_to_messages_only_ever_raises_protocol_error() -> None:
    rng = random.Random(4321)
    seeds = [
        dumps({"type": "join", "token": TOKEN, "id": 1}),
        dumps({"type": "publish", "sdp": SDP, "id": "a"}),
        dumps({"type": "unpublish", "track": "cam"}),
    ]
    alphabet = '{}[]",:0123456789.eE+-tfnulNIaINF\\ \x00\xff'
    codes = {"too_large", "bad_json", "bad_message", "unknown_type"}
    for _ in range(3000):
        data = bytearray(rng.choice(seeds).encode("utf-8"))
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = ord(rng.choice(alphabet)) & 0xFF
        try:
            msg = parse_message(bytes(data))
        except ProtocolError as error:
            assert error.code in codes
        else:
            assert msg.type in messages.SCHEMA

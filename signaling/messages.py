"""Validation of client -> server websocket messages.

Every message is a JSON object with a "type" and an optional client
correlation "id" that the server echoes (as "ref") in its reply. What each
type may carry is declared once, in SCHEMA; parse_message is a single
generic walk over that table, so adding a message type is adding a row.

The parser is deliberately strict: the websocket is reachable before
authentication, so anything unexpected is refused with a ProtocolError
whose code the caller can send back with error_reply().
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from sfu.peers.sdp import MID_MAX_CHARS  # the SFU's own caps, checked again there
from sfu.peers.sdp import SDP_MAX_CHARS as MAX_SDP_CHARS
from signaling.lesson.interaction import CHAT_MAX_CHARS as MAX_CHAT_CHARS
from signaling.probe import check_report as _is_probe_report
from signaling.tokens import MAX_TOKEN_CHARS

# Largest accepted message, in encoded bytes. An SDP offer for a teacher
# with camera, screen and audio is ~10-20 KB; 64 KiB leaves room while
# bounding what one frame can cost us to parse.
MAX_MESSAGE_BYTES: Final[int] = 65536

# Field limits, in characters.
MAX_ID_CHARS: Final[int] = 64
MAX_TRACK_CHARS: Final[int] = 128
MAX_LESSON_CHARS: Final[int] = 128

# "sources" in publish: which of the teacher's m-lines (by mid) carries what. A teacher sends a handful
# (microphone, camera, screen); mids are short tokens (RFC 8843 allows up to 16 characters in practice).
SOURCES: Final[tuple[str, ...]] = ("camera", "screen", "microphone")
MAX_SOURCES: Final[int] = 16
MAX_MID_CHARS: Final[int] = MID_MAX_CHARS

# The classroom tiles a teacher's wall shows at once (a page of 16, or a few pages' worth on a big screen).
MAX_WALL_TILES: Final[int] = 64
# Chat text, in characters (checked again after cleaning, in signaling.interaction).

# Integer ids must survive a round trip through a browser's JavaScript
# number (IEEE double) unchanged, or the client could not match the reply.
MAX_SAFE_INT: Final[int] = 2**53 - 1

# Every SDP body starts with its version line (RFC 8866 section 5).
SDP_PREFIX: Final[str] = "v=0"

# How much of an offending value to quote back in an error message.
MAX_QUOTED_CHARS: Final[int] = 32

TOO_LARGE: Final[str] = "too_large"
BAD_JSON: Final[str] = "bad_json"
BAD_MESSAGE: Final[str] = "bad_message"
UNKNOWN_TYPE: Final[str] = "unknown_type"


class ProtocolError(Exception):
    """A client message was refused. ``ref`` is the message's id when it
    could be read, so the client can tell which request failed."""

    def __init__(self, code: str, message: str, ref: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r}, ref={self.ref!r})"


@dataclass(frozen=True)
class Message:
    type: str
    id: str | int | None
    fields: dict[str, Any]


# An extra check returns None when the value is fine, else what is wrong
# with it (completed into "field 'x' <reason>").
Check = Callable[[Any], str | None]


class Field(NamedTuple):
    types: type | tuple[type, ...]
    required: bool
    max_len: int | None  # characters, for str values; None: no limit
    check: Check | None


def _non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _is_sdp(value: str) -> str | None:
    return None if value.startswith(SDP_PREFIX) else f"must start with {SDP_PREFIX!r}"


def _is_sources(value: dict) -> str | None:
    if len(value) > MAX_SOURCES:
        return f"has more than {MAX_SOURCES} entries"
    for mid, source in value.items():
        if not mid or len(mid) > MAX_MID_CHARS:
            return f"keys must be mids of 1 to {MAX_MID_CHARS} characters"
        if source not in SOURCES:
            return f"values must be one of {', '.join(SOURCES)}"
    return None


def _is_id_list(value: list) -> str | None:
    if len(value) > MAX_WALL_TILES:
        return f"has more than {MAX_WALL_TILES} entries"
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_ID_CHARS for v in value):
        return f"must hold participant ids (strings of 1 to {MAX_ID_CHARS} characters)"
    return None


def _is_layer_choice(value: str) -> str | None:
    return None if value in ("auto", "low") else "must be 'auto' or 'low'"


_SDP: Final[Field] = Field(str, True, MAX_SDP_CHARS, _is_sdp)
_PARTICIPANT: Final[Field] = Field(str, True, MAX_ID_CHARS, _non_empty)

# type -> {field: (python type(s), required, max length, extra check)}
SCHEMA: Final[Mapping[str, Mapping[str, Field]]] = {
    # "lesson", when given, must be the token's lesson: a token for another lesson is refused
    "join": {"token": Field(str, True, MAX_TOKEN_CHARS, _non_empty),
             "lesson": Field(str, False, MAX_LESSON_CHARS, _non_empty)},
    # the teacher's offer; "sources" optionally names what each sending mid carries ({"2": "screen"})
    # "record": false keeps this lesson out of the library (recording is on by default)
    "publish": {"sdp": _SDP, "sources": Field(dict, False, None, _is_sources), "record": Field(bool, False, None, None)},
    "answer": {"sdp": _SDP},  # a subscriber's answer to a server offer
    # "track" absent means all of the sender's tracks; "" would be ambiguous.
    "unpublish": {"track": Field(str, False, MAX_TRACK_CHARS, _non_empty)},
    # a classroom's own choice: "video": false is audio only (weak links), true brings video back
    # "layer": "low" pins the smallest simulcast layer (a school that wants its link calm), "auto" lets the
    # server choose again
    "prefer": {"video": Field(bool, True, None, None), "layer": Field(str, False, 8, _is_layer_choice),
               "camera": Field(bool, False, None, None)},
    # the interactive classroom (docs/protocol.md): a classroom's hand, the teacher's wall, stage and moderation
    "hand": {"up": Field(bool, True, None, None)},
    "wall": {"visible": Field(list, True, None, _is_id_list)},
    "stage": {"participant": _PARTICIPANT, "on": Field(bool, True, None, None)},
    "mute": {"muted": Field(bool, True, None, None), "participant": Field(str, False, MAX_ID_CHARS, _non_empty)},
    "remove": {"participant": _PARTICIPANT},
    "lock": {"locked": Field(bool, True, None, None)},
    "chat": {"text": Field(str, True, MAX_CHAT_CHARS, _non_empty)},
    "chat_delete": {"message": Field(str, True, MAX_ID_CHARS, _non_empty)},
    "chat_mode": {"classrooms": Field(bool, True, None, None)},
    "end_lesson": {},
    "leave": {},
    "ping": {},
    # the pre-class network check (signaling/probe.py): a lesson token, no join needed
    "probe": {"token": Field(str, True, MAX_TOKEN_CHARS, _non_empty)},
    "probe_answer": {"sdp": _SDP},
    "probe_report": {"steps": Field(list, True, None, _is_probe_report)},
}

_ID_FIELD: Final[Field] = Field((str, int), False, MAX_ID_CHARS, None)


def _type_name(types: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", dict: "an object", list: "an array", bool: "a boolean"}
    options = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in options)


def _quote(value: str) -> str:
    if len(value) > MAX_QUOTED_CHARS:
        value = value[:MAX_QUOTED_CHARS] + "..."
    return repr(value)


def _field_problem(name: str, value: Any, spec: Field) -> str | None:
    """None if ``value`` satisfies ``spec``, else a message naming the field."""
    # bool is an int subclass: true/false is valid only where the schema asks for a bool
    wants_bool = spec.types is bool or (isinstance(spec.types, tuple) and bool in spec.types)
    if (isinstance(value, bool) and not wants_bool) or not isinstance(value, spec.types):
        return f"field {name!r} must be {_type_name(spec.types)}"
    if isinstance(value, str):
        if spec.max_len is not None and len(value) > spec.max_len:
            return f"field {name!r} is longer than {spec.max_len} characters"
        try:
            # JSON "\ud800" escapes decode to lone surrogates, which would
            # blow up later when the value is encoded (aiortc, logs, redis).
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"field {name!r} is not valid Unicode"
    if spec.check is not None:
        reason = spec.check(value)
        if reason is not None:
            return f"field {name!r} {reason}"
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    # "1e999" is valid JSON syntax but parses to inf: refuse it like Infinity.
    if not math.isfinite(value):
        raise ValueError(f"number {text[:MAX_QUOTED_CHARS]} is out of range")
    return value


def _decode(raw: str | bytes | bytearray) -> Any:
    if isinstance(raw, str):
        # Every character is at least one byte: a cheap early refusal before
        # paying for the encode of a huge string.
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ProtocolError(TOO_LARGE, f"message exceeds {MAX_MESSAGE_BYTES} bytes")
        try:
            size = len(raw.encode("utf-8"))
        except UnicodeEncodeError:
            raise ProtocolError(BAD_JSON, "message is not valid UTF-8") from None
        if size > MAX_MESSAGE_BYTES:
            raise ProtocolError(TOO_LARGE, f"message exceeds {MAX_MESSAGE_BYTES} bytes")
        text = raw
    elif isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ProtocolError(TOO_LARGE, f"message exceeds {MAX_MESSAGE_BYTES} bytes")
        try:
            # Decoded here, strictly: json.loads(bytes) would also guess
            # UTF-16/32, which the protocol does not allow.
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(BAD_JSON, "message is not valid UTF-8") from None
    else:
        raise TypeError(f"raw message must be str or bytes, not {type(raw).__name__}")

    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        # 64 KiB of "[" nests deeper than the C scanner will go.
        raise ProtocolError(BAD_JSON, "message nests too deeply") from None
    except ValueError as exc:
        # JSONDecodeError is a ValueError; so are our constant/float
        # refusals and Python's limit on digits in a huge integer.
        raise ProtocolError(BAD_JSON, f"message is not valid JSON: {exc}") from None


def parse_message(raw: str | bytes) -> Message:
    """Validate one client websocket message against SCHEMA.

    Raises ProtocolError with code ``too_large`` (over MAX_MESSAGE_BYTES
    encoded, checked before parsing), ``bad_json`` (not UTF-8, not JSON,
    non-finite numbers, not an object), ``bad_message`` (a missing, wrongly
    typed, too long or malformed field; the message names it) or
    ``unknown_type``. Fields not in the schema are dropped.
    """
    obj = _decode(raw)
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_JSON, "message must be a JSON object")

    msg_id: str | int | None = None
    if "id" in obj:
        problem = _field_problem("id", obj["id"], _ID_FIELD)
        if problem is None and isinstance(obj["id"], int) and abs(obj["id"]) > MAX_SAFE_INT:
            problem = f"field 'id' must be within +/-{MAX_SAFE_INT}"
        if problem is not None:
            raise ProtocolError(BAD_MESSAGE, problem)
        msg_id = obj["id"]

    if "type" not in obj:
        raise ProtocolError(BAD_MESSAGE, "field 'type' is required", msg_id)
    msg_type = obj["type"]
    if not isinstance(msg_type, str):
        raise ProtocolError(BAD_MESSAGE, "field 'type' must be a string", msg_id)
    schema = SCHEMA.get(msg_type)
    if schema is None:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {_quote(msg_type)}", msg_id)

    fields: dict[str, Any] = {}
    for name, spec in schema.items():
        if name not in obj:
            if spec.required:
                raise ProtocolError(BAD_MESSAGE, f"field {name!r} is required", msg_id)
            continue
        problem = _field_problem(name, obj[name], spec)
        if problem is not None:
            raise ProtocolError(BAD_MESSAGE, problem, msg_id)
        fields[name] = obj[name]
    return Message(type=msg_type, id=msg_id, fields=fields)


def error_reply(code: str, message: str, ref: str | int | None = None) -> dict[str, Any]:
    """The server -> client error frame; "ref" only when the id was known."""
    reply: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        reply["ref"] = ref
    return reply

"""The interactive classroom's lesson state: hands, stage, chat, attendance and moderation of one lesson.

These are pure units: no I/O, no asyncio, and every method that depends on time takes ``now`` (unix seconds),
so the rules of docs/protocol.md ("The interactive classroom") are tested here without sockets or sleeps, and the
websocket handlers and the SFU only apply what these objects decide. Refusals are exceptions carrying the
protocol's error ``code`` (the handlers turn them into ``error {code, message}`` replies).

Everything a lesson keeps for its library entry (stage timeline, chat transcript, attendance) is built so that
memory stays bounded by the number of classrooms and messages, never by the lesson's length: attendance keeps
running sums of the 2 s reception samples, not the samples.
"""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

DEFAULT_STAGE_MAX = 2  # KETANG_STAGE_MAX: a few classrooms on stage are a conversation, more are a din
CHAT_MAX_CHARS = 500
CHAT_RECENT = 100  # what `joined` carries, so a reconnecting page finds the conversation
# a message keeps at most one empty line in a row: enough for paragraphs, not for pushing the chat off screen
CHAT_MAX_NEWLINES = 2
# Chat rates (docs/protocol.md): every message goes to every page of the lesson, so what one writer or all the
# classrooms together may write bounds what the server fans out (10 classrooms once wrote 5,570 messages in 30 s,
# 61,270 events). In any CHAT_WINDOW_S: at most CHAT_PER_SENDER messages from one participant (teacher included),
# and at most CHAT_PER_LESSON from the lesson's classrooms together (the teacher is never crowded out by them).
CHAT_WINDOW_S = 10.0
CHAT_PER_SENDER = 5
CHAT_PER_LESSON = 20

ERR_STAGE_FULL = "stage_full"
ERR_BAD_MESSAGE = "bad_message"
ERR_CHAT_OFF = "chat_off"
ERR_REMOVED = "removed"
ERR_LESSON_LOCKED = "lesson_locked"
ERR_RATE_LIMITED = "rate_limited"

CSV_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
UTF8_BOM = "\ufeff"  # spreadsheet programs read a CSV as UTF-8 only when it starts with one

# Characters that change the direction of the text around them: a chat line could show the teacher something
# other than what was written (and, in the transcript, disguise a name), so they go with the control characters.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
# A spreadsheet runs a cell that starts with one of these as a formula: a classroom's chat line must not.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class InteractionError(Exception):
    """A refused request; ``code`` is the protocol's error code, ``message`` says why to a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StageFull(InteractionError):
    def __init__(self, max_on: int) -> None:
        super().__init__(ERR_STAGE_FULL, f"{max_on} classrooms are on stage already")


class ChatRejected(InteractionError):
    pass


def local_time(at: float | None, tz: tzinfo | None = None) -> str:
    """Unix seconds as local ``YYYY-MM-DD HH:MM:SS`` (tz None: the server's zone); "" for None."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at, tz).strftime(CSV_TIME_FORMAT)


def _csv_text(value: str) -> str:
    """A text cell a spreadsheet shows as written: a leading formula character is escaped with a quote."""
    return "'" + value if value.startswith(_FORMULA_START) else value


# -- hands --------------------------------------------------------------------------------------------------


@dataclass
class _Hand:
    name: str
    raised_at: float


class HandQueue:
    """Raised hands in the order raised (举手). A raised hand keeps its place until lowered: raising again
    while up changes nothing, so a page that resends its state never loses its turn."""

    def __init__(self) -> None:
        self._up: dict[str, _Hand] = {}  # insertion order is the queue order
        self._raises: dict[str, int] = {}

    def raise_hand(self, participant: str, name: str, now: float) -> int:
        """Raise (or keep raised) a hand; returns its 1-based place in the queue."""
        if participant not in self._up:
            self._up[participant] = _Hand(name, now)
            self._raises[participant] = self._raises.get(participant, 0) + 1
        return self.position(participant) or 0

    def lower(self, participant: str) -> bool:
        """Lower a hand; False when it was not up."""
        return self._up.pop(participant, None) is not None

    def is_up(self, participant: str) -> bool:
        return participant in self._up

    def position(self, participant: str) -> int | None:
        if participant not in self._up:
            return None
        for place, pid in enumerate(self._up, start=1):
            if pid == participant:
                return place
        return None  # not reached

    def queue(self) -> list[dict[str, Any]]:
        return [{"participant": pid, "name": h.name, "raised_at": h.raised_at} for pid, h in self._up.items()]

    def raises(self, participant: str) -> int:
        """How many times this participant raised its hand this lesson (re-raising while up does not count)."""
        return self._raises.get(participant, 0)

    def forget(self, participant: str) -> None:
        """The participant left the lesson: out of the queue; its count stays for attendance."""
        self._up.pop(participant, None)

    def __len__(self) -> int:
        return len(self._up)


# -- stage --------------------------------------------------------------------------------------------------


@dataclass
class _StageTurn:
    participant: str
    name: str
    on_at: float
    off_at: float | None = None

    def seconds(self, now: float) -> float:
        end = now if self.off_at is None else self.off_at
        return max(0.0, end - self.on_at)


class Stage:
    """Who is on stage (上台), heard and seen by every classroom, at most ``max_on`` at a time. Every turn on
    stage is kept (the lesson record says who was on stage when)."""

    def __init__(self, max_on: int = DEFAULT_STAGE_MAX) -> None:
        if max_on < 1:
            raise ValueError("max_on must be at least 1")
        self.max_on = max_on
        self._turns: list[_StageTurn] = []
        self._current: dict[str, _StageTurn] = {}  # insertion order: the order put on

    def put_on(self, participant: str, name: str, now: float) -> bool:
        """Put on stage; True when it was not on already (then nothing changes). Raises StageFull."""
        if participant in self._current:
            return False
        if len(self._current) >= self.max_on:
            raise StageFull(self.max_on)
        turn = _StageTurn(participant, name, now)
        self._turns.append(turn)
        self._current[participant] = turn
        return True

    def take_off(self, participant: str, now: float) -> bool:
        """Take off stage; False when it was not on."""
        turn = self._current.pop(participant, None)
        if turn is None:
            return False
        turn.off_at = max(now, turn.on_at)
        return True

    def is_on(self, participant: str) -> bool:
        return participant in self._current

    def on(self) -> list[dict[str, str]]:
        return [{"id": t.participant, "name": t.name} for t in self._current.values()]

    def timeline(self) -> list[dict[str, Any]]:
        return [{"participant": t.participant, "name": t.name, "on_at": t.on_at, "off_at": t.off_at}
                for t in self._turns]

    def seconds_on(self, participant: str, now: float) -> float:
        return sum(t.seconds(now) for t in self._turns if t.participant == participant)


# -- chat ---------------------------------------------------------------------------------------------------


@dataclass
class _Message:
    id: str
    participant: str
    name: str
    role: str
    text: str
    at: float
    deleted_at: float | None = None
    deleted_by: str | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "participant": self.participant, "name": self.name, "role": self.role,
                "text": self.text, "at": self.at}


_NEWLINE_RUN = re.compile(f"\n{{{CHAT_MAX_NEWLINES + 1},}}")


def clean_chat_text(text: str) -> str:
    """A chat line as shown to everyone: newlines kept (as ``\\n``; a question can have lines), tabs as spaces,
    other control characters, direction overrides and lone surrogates removed, at most one empty line in a row,
    stripped at both ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    text = text.replace("\t", " ")
    kept = [c for c in text
            if c == "\n" or (unicodedata.category(c) not in ("Cc", "Cs") and c not in _BIDI_CONTROLS)]
    return _NEWLINE_RUN.sub("\n" * CHAT_MAX_NEWLINES, "".join(kept)).strip()


class ChatLog:
    """The lesson's chat. A deleted message disappears from what pages are shown but stays in the transcript,
    with when and by whom, for the lesson record. Ids are ``m1``, ``m2``... in the order written."""

    def __init__(self, max_chars: int = CHAT_MAX_CHARS, classrooms_enabled: bool = True) -> None:
        self.max_chars = max_chars
        self.classrooms_enabled = classrooms_enabled
        self._messages: list[_Message] = []
        self._by_id: dict[str, _Message] = {}
        self._visible = 0

    def add(self, participant: str, name: str, role: str, text: str, now: float) -> dict[str, Any]:
        """Add a message; returns it as the `chat` event carries it. Raises ChatRejected (chat_off, bad_message)."""
        if role == "classroom" and not self.classrooms_enabled:
            raise ChatRejected(ERR_CHAT_OFF, "the teacher has turned classroom chat off")
        if not isinstance(text, str):
            raise ChatRejected(ERR_BAD_MESSAGE, "chat text must be a string")
        cleaned = clean_chat_text(text)
        if not cleaned:
            raise ChatRejected(ERR_BAD_MESSAGE, "the message is empty")
        if len(cleaned) > self.max_chars:
            raise ChatRejected(ERR_BAD_MESSAGE, f"a message has at most {self.max_chars} characters")
        msg = _Message(f"m{len(self._messages) + 1}", participant, name, role, cleaned, now)
        self._messages.append(msg)
        self._by_id[msg.id] = msg
        self._visible += 1
        return msg.public()

    def delete(self, message_id: str, by: str, now: float) -> bool:
        """Delete a message (by: who, the teacher's participant id); False when unknown or deleted already."""
        msg = self._by_id.get(message_id)
        if msg is None or msg.deleted_at is not None:
            return False
        msg.deleted_at, msg.deleted_by = now, by
        self._visible -= 1
        return True

    def recent(self, n: int = CHAT_RECENT) -> list[dict[str, Any]]:
        """The last n messages that are not deleted, oldest first."""
        out: list[dict[str, Any]] = []
        if n <= 0:
            return out
        for msg in reversed(self._messages):
            if msg.deleted_at is None:
                out.append(msg.public())
                if len(out) == n:
                    break
        out.reverse()
        return out

    def transcript(self) -> list[dict[str, Any]]:
        """Every message, deleted ones included, with ``deleted_at`` and ``deleted_by`` (None when not deleted)."""
        return [{**m.public(), "deleted_at": m.deleted_at, "deleted_by": m.deleted_by} for m in self._messages]

    def transcript_csv(self, tz: tzinfo | None = None) -> str:
        """The transcript as CSV text (header row; times local ``YYYY-MM-DD HH:MM:SS``; no BOM)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["id", "at", "participant", "name", "role", "text", "deleted_at", "deleted_by"])
        for m in self._messages:
            writer.writerow([m.id, local_time(m.at, tz), m.participant, _csv_text(m.name), m.role,
                             _csv_text(m.text), local_time(m.deleted_at, tz), m.deleted_by or ""])
        return out.getvalue()

    def __len__(self) -> int:
        """Visible (not deleted) messages."""
        return self._visible


class ChatLimiter:
    """Sliding windows of accepted chat messages: per sender and, for classrooms, per lesson. Memory: at most
    ``per_sender`` times per participant that wrote in the last window, and ``per_lesson`` for the lesson."""

    def __init__(self, window_s: float = CHAT_WINDOW_S, per_sender: int = CHAT_PER_SENDER,
                 per_lesson: int = CHAT_PER_LESSON) -> None:
        self.window_s, self.per_sender, self.per_lesson = window_s, per_sender, per_lesson
        self._senders: dict[str, deque[float]] = {}
        self._classrooms: deque[float] = deque()
        self.refused = 0

    def _recent(self, times: deque[float], now: float) -> deque[float]:
        while times and (times[0] <= now - self.window_s or times[0] > now):  # (a clock stepped back: forget)
            times.popleft()
        return times

    def check(self, participant: str, role: str, now: float) -> None:
        """Raises ChatRejected(rate_limited) when this message would exceed a limit; nothing is counted then."""
        mine = self._recent(self._senders.get(participant, deque()), now)
        if len(mine) >= self.per_sender:
            self.refused += 1
            wait = max(1, math.ceil(mine[0] + self.window_s - now))
            raise ChatRejected(ERR_RATE_LIMITED, f"at most {self.per_sender} chat messages in {self.window_s:g} s: "
                                                 f"wait {wait} s")
        if role == "classroom" and len(self._recent(self._classrooms, now)) >= self.per_lesson:
            self.refused += 1
            wait = max(1, math.ceil(self._classrooms[0] + self.window_s - now))
            raise ChatRejected(ERR_RATE_LIMITED, f"the classrooms wrote {self.per_lesson} chat messages in the last "
                                                 f"{self.window_s:g} s: wait {wait} s")

    def count(self, participant: str, role: str, now: float) -> None:
        """An accepted message."""
        self._senders.setdefault(participant, deque()).append(now)
        if role == "classroom":
            self._classrooms.append(now)
        if len(self._senders) > 64:  # forget writers whose window has passed (a lesson of 400 classrooms)
            for pid in [p for p, t in self._senders.items() if not self._recent(t, now)]:
                del self._senders[pid]


# -- attendance ---------------------------------------------------------------------------------------------


@dataclass
class _Mean:
    """A running mean: constant size however many samples."""

    total: float = 0.0
    count: int = 0

    def add(self, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            return
        self.total += value
        self.count += 1

    def value(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class _Presence:
    name: str
    joined_at: float
    left_at: float | None = None
    open: int = 0  # connections joined and not yet left (a reconnect can join before the old one has left)
    present_since: float | None = None
    present_s: float = 0.0
    sessions: int = 0
    last_sample_at: float | None = None
    loss: _Mean = field(default_factory=_Mean)
    rtt_ms: _Mean = field(default_factory=_Mean)
    kbps: _Mean = field(default_factory=_Mean)
    video: _Mean = field(default_factory=_Mean)  # mean of 1/0: the share of samples with video

    def present(self, now: float) -> float:
        running = 0.0 if self.present_since is None else max(0.0, now - self.present_since)
        return self.present_s + running


CSV_HEADER = ["participant", "name", "joined_at", "left_at", "present_min", "sessions", "hands", "stage_min",
              "loss_pct", "rtt_ms_avg", "kbps_avg", "video_pct"]


def _fmt(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "" if value is None else f"{value * scale:.{digits}f}"


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class Attendance:
    """Who of the lesson's classrooms was there, for how long, and how well they received it.

    A classroom is present while at least one of its connections has joined and not left: ``joined`` and
    ``left`` are called once per connection, so a reconnecting page whose new socket joins before the old one
    is closed does not count twice. A session is one unbroken period of presence.
    """

    def __init__(self) -> None:
        self._people: dict[str, _Presence] = {}

    def joined(self, participant: str, name: str, now: float) -> None:
        p = self._people.get(participant)
        if p is None:
            p = self._people[participant] = _Presence(name, now)
        p.name = name
        if p.open == 0:
            p.present_since, p.left_at = now, None
            p.sessions += 1
        p.open += 1

    def left(self, participant: str, now: float) -> bool:
        """One connection left; False when the participant had none open. Absent once its last one has left."""
        p = self._people.get(participant)
        if p is None or p.open == 0:
            return False
        p.open -= 1
        if p.open == 0:
            p.present_s = p.present(now)
            p.present_since, p.left_at = None, now
        return True

    def is_present(self, participant: str) -> bool:
        p = self._people.get(participant)
        return p is not None and p.open > 0

    def sample(self, participant: str, now: float, loss: float | None = None, rtt_ms: float | None = None,
               kbps: float | None = None, video: bool | None = None) -> None:
        """One of the server's 2 s reception figures for a classroom (None: not known this time, not averaged).
        Loss is clamped to 0..1. Samples of a participant that never joined are ignored."""
        p = self._people.get(participant)
        if p is None:
            return
        p.last_sample_at = now
        p.loss.add(None if loss is None else min(1.0, max(0.0, loss)))
        p.rtt_ms.add(rtt_ms)
        p.kbps.add(kbps)
        p.video.add(None if video is None else float(bool(video)))

    def rows(self, now: float, hands: HandQueue, stage: Stage) -> list[dict[str, Any]]:
        """One row per classroom, in the order they first joined (seconds to 0.1, averages rounded)."""
        out = []
        for pid, p in self._people.items():
            out.append({
                "participant": pid, "name": p.name, "joined_at": p.joined_at, "left_at": p.left_at,
                "present_s": round(p.present(now), 1), "sessions": p.sessions, "hands": hands.raises(pid),
                "stage_s": round(stage.seconds_on(pid, now), 1),
                "loss_avg": _rounded(p.loss.value(), 4), "rtt_ms_avg": _rounded(p.rtt_ms.value(), 1),
                "kbps_avg": _rounded(p.kbps.value(), 1), "video_share": _rounded(p.video.value(), 3),
            })
        return out

    def to_csv(self, now: float, hands: HandQueue, stage: Stage, tz: tzinfo | None = None) -> str:
        """The rows as CSV text for spreadsheet programs: a UTF-8 BOM, a header row, local times, minutes to
        0.1, loss and video as percent (loss to 0.01), rtt and kbps whole; an unknown average is an empty cell."""
        out = io.StringIO()
        out.write(UTF8_BOM)
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_HEADER)
        for r in self.rows(now, hands, stage):
            writer.writerow([
                r["participant"], _csv_text(r["name"]), local_time(r["joined_at"], tz),
                local_time(r["left_at"], tz), _fmt(r["present_s"], 1, 1 / 60), r["sessions"], r["hands"],
                _fmt(r["stage_s"], 1, 1 / 60), _fmt(r["loss_avg"], 2, 100), _fmt(r["rtt_ms_avg"], 0),
                _fmt(r["kbps_avg"], 0), _fmt(r["video_share"], 1, 100),
            ])
        return out.getvalue()

    def __len__(self) -> int:
        return len(self._people)


# -- the lesson's bundle ------------------------------------------------------------------------------------


class LessonInteraction:
    """One lesson's interactive state and the rules that tie its parts together: being put on stage lowers the
    hand and lifts a hard mute; taking a classroom off stage leaves its mute as it was; a removed classroom is
    off stage, out of the hand queue and cannot join again; a locked lesson admits only classrooms it has seen.
    """

    def __init__(self, stage_max: int = DEFAULT_STAGE_MAX, locked: bool = False,
                 chat_classrooms: bool = True) -> None:
        self.hands = HandQueue()
        self.stage = Stage(stage_max)
        self.chat = ChatLog(classrooms_enabled=chat_classrooms)
        self.chat_limit = ChatLimiter()
        self.attendance = Attendance()
        self._locked = locked
        self.removed: set[str] = set()
        self.muted: set[str] = set()
        # called after the lock or the removed classrooms changed (the hub keeps them in the room store, so that
        # they outlive this process)
        self.on_admission: Callable[[], None] | None = None

    @property
    def locked(self) -> bool:
        return self._locked

    @locked.setter
    def locked(self, value: bool) -> None:
        changed = bool(value) != self._locked
        self._locked = bool(value)
        if changed and self.on_admission is not None:
            self.on_admission()

    # settings

    @property
    def chat_classrooms(self) -> bool:
        return self.chat.classrooms_enabled

    @chat_classrooms.setter
    def chat_classrooms(self, enabled: bool) -> None:
        self.chat.classrooms_enabled = bool(enabled)

    def settings_dict(self) -> dict[str, bool]:
        return {"locked": self.locked, "chat_classrooms": self.chat_classrooms}

    def write_chat(self, participant: str, name: str, role: str, text: str, now: float) -> dict[str, Any]:
        """A chat message within the lesson's rates (ChatLimiter); raises ChatRejected (rate_limited, chat_off,
        bad_message). Only accepted messages count towards the rates."""
        self.chat_limit.check(participant, role, now)
        message = self.chat.add(participant, name, role, text, now)
        self.chat_limit.count(participant, role, now)
        return message

    # admission

    def may_join(self, participant: str, known: bool) -> str | None:
        """None when the participant may join, else the error code; known: it has been in this lesson before."""
        if participant in self.removed:
            return ERR_REMOVED
        if self.locked and not known:
            return ERR_LESSON_LOCKED
        return None

    def remove(self, participant: str, now: float) -> bool:
        """The teacher removes a classroom: never again in this lesson. False when it was removed already."""
        if participant in self.removed:
            return False
        self.removed.add(participant)
        self.hands.forget(participant)
        self.stage.take_off(participant, now)
        if self.on_admission is not None:
            self.on_admission()
        return True

    # stage

    def put_on_stage(self, participant: str, name: str, now: float) -> bool:
        """Put on stage (raises StageFull); when newly on, its hand goes down and its hard mute is lifted."""
        if not self.stage.put_on(participant, name, now):
            return False
        self.hands.lower(participant)
        self.muted.discard(participant)
        return True

    def take_off_stage(self, participant: str, now: float) -> bool:
        return self.stage.take_off(participant, now)

    # hard mute

    def mute(self, participant: str) -> bool:
        """Hard-mute; False when it was muted already."""
        if participant in self.muted:
            return False
        self.muted.add(participant)
        return True

    def unmute(self, participant: str) -> bool:
        if participant not in self.muted:
            return False
        self.muted.discard(participant)
        return True

    def mute_all(self, participants: Iterable[str]) -> list[str]:
        """Mute every given classroom; returns the ones that were not muted before, in the order given."""
        return [pid for pid in participants if self.mute(pid)]

    def unmute_all(self) -> list[str]:
        """Lift every hard mute; returns the ones that were muted (sorted)."""
        was = sorted(self.muted)
        self.muted.clear()
        return was

    def is_muted(self, participant: str) -> bool:
        return participant in self.muted

    # views

    def state_of(self, participant: str) -> dict[str, Any]:
        """What the `classroom-state` event carries."""
        return {"participant": participant, "hand": self.hands.is_up(participant),
                "position": self.hands.position(participant),
                "stage": self.stage.is_on(participant), "muted": self.is_muted(participant)}

    def record(self, now: float) -> dict[str, Any]:
        """What the lesson's library entry keeps (JSON-serialisable)."""
        return {
            "settings": self.settings_dict(),
            "stage_timeline": self.stage.timeline(),
            "chat": self.chat.transcript(),
            "attendance": self.attendance.rows(now, self.hands, self.stage),
            "removed": sorted(self.removed),
        }

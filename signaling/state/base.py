"""Room state model and the storage interface every backend implements (in this process, or shared by nodes
through Redis); the expiry, liveness and admission model is in docs/architecture.md, "Room state"."""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Literal, get_args

LessonState = Literal["scheduled", "live", "ended"]
Role = Literal["teacher", "classroom", "observer"]
TrackKind = Literal["audio", "video"]

LESSON_STATES: tuple[str, ...] = get_args(LessonState)
TRACK_KINDS: tuple[str, ...] = get_args(TrackKind)

Clock = Callable[[], float]


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class Lesson:
    id: str
    title: str
    teacher: str
    state: LessonState
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lesson:
        return cls(
            id=str(d["id"]),
            title=str(d["title"]),
            teacher=str(d.get("teacher") or ""),
            state=d["state"],
            created_at=float(d["created_at"]),
            started_at=_opt_float(d.get("started_at")),
            ended_at=_opt_float(d.get("ended_at")),
        )


@dataclass
class Participant:
    id: str
    lesson_id: str
    role: Role
    name: str
    joined_at: float
    # last_seen / expires_at are owned by the store (add_participant, heartbeat)
    last_seen: float = 0.0
    node: str = ""
    expires_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Participant:
        return cls(
            id=str(d["id"]),
            lesson_id=str(d["lesson_id"]),
            role=d["role"],
            name=str(d["name"]),
            joined_at=float(d["joined_at"]),
            last_seen=float(d["last_seen"]),
            node=str(d["node"]),
            expires_at=float(d["expires_at"]),
        )


@dataclass
class TrackInfo:
    id: str
    lesson_id: str
    participant_id: str
    kind: TrackKind
    source: str  # "camera", "microphone", "screen"
    published_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrackInfo:
        return cls(
            id=str(d["id"]),
            lesson_id=str(d["lesson_id"]),
            participant_id=str(d["participant_id"]),
            kind=d["kind"],
            source=str(d["source"]),
            published_at=float(d["published_at"]),
        )


def check_lesson_state(state: str) -> None:
    if state not in LESSON_STATES:
        raise ValueError(f"bad lesson state {state!r}; expected one of {LESSON_STATES}")


def check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")


def lesson_sort_key(lesson: Lesson) -> tuple[float, str]:
    # id breaks ties so both backends return the same order for equal times
    return (lesson.created_at, lesson.id)


def participant_sort_key(p: Participant) -> tuple[float, str]:
    return (p.joined_at, p.id)


def track_sort_key(t: TrackInfo) -> tuple[float, str]:
    return (t.published_at, t.id)


class StoreUnavailable(Exception):
    """The room store cannot be reached (Redis down, restarting or out of reach): an outage, not a bug."""


@dataclass(frozen=True)
class Placement:
    """Which server process (node) carries a lesson's media, and the URL browsers reach it at.

    ``previous``: the node this call took the lesson over from because that node is dead (its node key
    expired), else "". Not part of equality."""

    node: str
    url: str
    previous: str = field(default="", compare=False)


@dataclass
class Admission:
    """Who may join a lesson: locked (only classrooms in ``seen`` may), ``removed`` classrooms never."""

    locked: bool = False
    removed: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)


class RoomStore(abc.ABC):
    """Lessons, their live participants and published tracks.

    Semantics shared by all backends (beyond the method docstrings):
    * a participant is alive while ``expires_at > clock()``; expired ones are
      never returned, and neither are their tracks;
    * ``add_participant`` starts a new incarnation: a participant replaced under
      the same id loses the tracks of the previous one (they belonged to a
      connection that no longer exists);
    * ``add_track`` for a participant that is missing or expired is ignored,
      since such a track could never be listed.
    """

    backend = ""  # "memory" or "redis": what /healthz names

    def __init__(self, clock: Clock = time.time) -> None:
        # injected so tests can move time without sleeping
        self.clock = clock

    @abc.abstractmethod
    async def ensure_lesson(
        self, lesson_id: str, title: str | None = None, teacher: str | None = None
    ) -> Lesson:
        """Create a "scheduled" lesson if missing (title defaults to the id);
        on an existing lesson only the given fields are overwritten."""

    @abc.abstractmethod
    async def get_lesson(self, lesson_id: str) -> Lesson | None: ...

    @abc.abstractmethod
    async def list_lessons(self) -> list[Lesson]:
        """All lessons, sorted by created_at."""

    @abc.abstractmethod
    async def set_lesson_state(self, lesson_id: str, state: str) -> Lesson:
        """"live" sets started_at the first time only and clears ended_at;
        "ended" sets ended_at (a repeated "ended" keeps the first one).
        KeyError for an unknown lesson, ValueError for a bad state."""

    @abc.abstractmethod
    async def add_participant(self, p: Participant, ttl_s: float) -> None:
        """Store p (a copy; p is not mutated) with last_seen=clock() and
        expires_at=clock()+ttl_s, replacing any participant with the same id."""

    @abc.abstractmethod
    async def heartbeat(self, lesson_id: str, participant_id: str, ttl_s: float) -> bool:
        """Extend life by ttl_s from now; False if missing or already expired."""

    @abc.abstractmethod
    async def remove_participant(self, lesson_id: str, participant_id: str) -> None:
        """Remove the participant and its tracks; idempotent."""

    @abc.abstractmethod
    async def get_participant(self, lesson_id: str, participant_id: str) -> Participant | None: ...

    @abc.abstractmethod
    async def list_participants(self, lesson_id: str) -> list[Participant]:
        """Unexpired participants, sorted by joined_at."""

    @abc.abstractmethod
    async def add_track(self, t: TrackInfo) -> None: ...

    @abc.abstractmethod
    async def remove_track(self, lesson_id: str, track_id: str) -> None:
        """Idempotent."""

    @abc.abstractmethod
    async def list_tracks(self, lesson_id: str) -> list[TrackInfo]:
        """Tracks of unexpired participants, sorted by published_at."""

    @abc.abstractmethod
    async def restore_lesson(self, lesson: Lesson) -> None:
        """Write the lesson exactly as given (what the node carrying it knows), e.g. after the store lost it;
        its state, times and place in list_lessons included."""

    @abc.abstractmethod
    async def place_lesson(self, lesson_id: str, node: str, url: str, ttl_s: float) -> Placement:
        """The node that carries the lesson: ``node`` (placed there, or its placement renewed, until
        clock()+ttl_s) unless another node holds an unexpired placement, which is returned instead.

        A lesson's teacher and classrooms must meet in one SFU process; several processes sharing one store
        carry more lessons, each lesson on one of them. A crashed node's placements expire like its
        participants; and when the holder placed it while its node key was alive (``node_heartbeat``), the
        placement is released as soon as that key has expired (the node is dead), whatever the ttl_s."""

    @abc.abstractmethod
    async def node_heartbeat(self, node: str, url: str, ttl_s: float) -> bool:
        """Mark ``node`` alive until clock()+ttl_s. True when it was alive already; False when the key is new
        (first beat), had expired, or the store lost it (Redis restarted empty): the node then writes again
        what it knows."""

    @abc.abstractmethod
    async def node_alive(self, node: str) -> bool: ...

    @abc.abstractmethod
    async def set_node_ready(self, node: str, url: str, ready: bool, ttl_s: float) -> None:
        """``ready``: the node takes new lessons, listed by ``ready_nodes`` until clock()+ttl_s (renewed with its
        liveness); not ready (draining, later overloaded): taken off the list at once."""

    @abc.abstractmethod
    async def ready_nodes(self) -> list[Placement]:
        """The nodes that take new lessons now (ready, unexpired, alive), as (node, url), sorted by node."""

    @abc.abstractmethod
    async def placement(self, lesson_id: str) -> Placement | None:
        """The lesson's placement when a live node holds it (unexpired, its holder not dead); else None.
        Reads only: a draining node asks where a lesson is without placing it on itself."""

    @abc.abstractmethod
    async def admission(self, lesson_id: str) -> Admission:
        """The lesson's lock, removed and seen classrooms (an empty Admission for an unknown lesson)."""

    @abc.abstractmethod
    async def set_locked(self, lesson_id: str, locked: bool) -> None: ...

    @abc.abstractmethod
    async def add_removed(self, lesson_id: str, participant_ids: Iterable[str]) -> None:
        """The teacher removed these classrooms: they never join this lesson again (until clear_admission)."""

    @abc.abstractmethod
    async def add_seen(self, lesson_id: str, participant_ids: Iterable[str]) -> None:
        """These classrooms have been in the lesson (a locked lesson still admits them)."""

    @abc.abstractmethod
    async def clear_admission(self, lesson_id: str) -> None:
        """Forget lock, removed and seen (the lesson ended: starting it again starts afresh); idempotent."""

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    @abc.abstractmethod
    async def release_lesson(self, lesson_id: str, node: str) -> None:
        """Drop the lesson's placement if ``node`` holds it (its last participant left); idempotent."""

    @abc.abstractmethod
    async def remove_node(self, node: str) -> int:
        """Remove every participant held by node (and their tracks), its node key and its readiness, e.g. on clean
        shutdown or when another node found it dead; returns how many unexpired participants were removed."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """{"lessons": lessons not ended, "participants": unexpired participants}."""

    @abc.abstractmethod
    async def close(self) -> None: ...

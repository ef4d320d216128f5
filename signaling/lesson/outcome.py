"""What a lesson's decision returns: the events to send and the media the SFU must forward from now on.

The Lesson's decisions change its state and return an Outcome; `Lesson.apply` sends the events and tells the
SFU Router. Decisions are then tested as tables (state before, request, Outcome) without sockets or a router.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from signaling.state import Participant, TrackInfo


def sees(viewer: str | None, role: str | None, itself: bool = False) -> bool:
    """Who is told about whom: the teacher and observers see everyone; a classroom sees the teacher (and
    itself), not the hundreds of other classrooms."""
    return viewer != "classroom" or role != "classroom" or itself


def public_participant(p: Participant) -> dict[str, Any]:
    """A participant as the events and the `joined` reply show it."""
    return {"id": p.id, "role": p.role, "name": p.name, "joined_at": p.joined_at}


def public_track(t: TrackInfo) -> dict[str, Any]:
    """A track as the events and the `joined` reply show it."""
    return {"id": t.id, "kind": t.kind, "source": t.source, "participant": t.participant_id}


@dataclass(frozen=True)
class Event:
    """One message to the lesson: to one participant (`to`), else to every connection, or, with `about` (the
    role it concerns), to those who see that role (`sees`)."""

    message: dict[str, Any]
    about: str | None = None
    to: str | None = None


@dataclass
class Outcome:
    """A decision's effects, in the order they are applied: hard mutes, then the stage, then the events."""

    reply: dict[str, Any] = field(default_factory=dict)  # the reply's fields besides `type` and `ref`
    events: list[Event] = field(default_factory=list)
    muted: dict[str, bool] = field(default_factory=dict)  # classroom -> its hard mute now (those that changed)
    stage: list[dict[str, str]] | None = None  # who is on stage now ({id, name}), when the SFU must be told

    @property
    def changes_media(self) -> bool:
        return bool(self.muted) or self.stage is not None

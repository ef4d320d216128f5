"""A lesson as classrooms saw it: from the files the recorder wrote (each placed on the wall clock) to spans of
one layout each (courseware shared or not, who was on stage) and the chapters of the composite. Pure: no media.

The lesson's record (record.json, written at the lesson's end) keeps under ``recording.files`` every file of the
lesson: ``file`` (its name in the recordings directory), ``role`` (``teacher``: camera + microphone, a new part
when the teacher reconnected; ``courseware``: a screen share 「（课件 n）」; ``stage``: one classroom's turn on
stage 「（上台 …）」), ``label``, ``start`` (unix time of the file's 0 ms, from the senders' RTCP reports) and
``end`` (when its source ended: the share stopped, the turn was over, the lesson ended). See
recorder/record/recorder.py (LessonRecorder.timeline).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

ROLES: Final[tuple[str, ...]] = ("teacher", "courseware", "stage")
MAX_SOURCES: Final[int] = 1000  # a lesson of hours with many shares and turns stays far below
MAX_LABEL_CHARS: Final[int] = 200
# a chapter shorter than this (a share stopped at once, a turn of a second) joins the chapter before it
MIN_CHAPTER_S: Final[float] = 2.0
TITLE_TEACHING: Final[str] = "讲授"
TITLE_COURSEWARE: Final[str] = "课件"
TITLE_STAGE: Final[str] = "上台"
_FILE_RE = re.compile(r"^[\w.-]{1,200}\.webm$")


class TimelineError(ValueError):
    """The lesson's record does not describe its files usably; the message says which entry and why."""


@dataclass(frozen=True)
class Source:
    """One recorded file on the wall clock."""

    file: str
    role: str
    label: str
    start: float  # unix time of the file's 0 ms
    end: float  # unix time its source ended

    def active(self, at: float) -> bool:
        return self.start <= at < self.end


@dataclass(frozen=True)
class Span:
    """A stretch of the lesson (seconds from its start) with one layout: whose picture is where."""

    start: float
    end: float
    teacher: Source | None
    courseware: Source | None
    stage: tuple[Source, ...] = ()

    @property
    def title(self) -> str:
        """Its chapter: 上台 <names> while classrooms are on stage, else 课件 while courseware is shared, else 讲授."""
        if self.stage:
            return f"{TITLE_STAGE} {'、'.join(s.label for s in self.stage)}"
        if self.courseware is not None:
            return TITLE_COURSEWARE
        return TITLE_TEACHING


@dataclass(frozen=True)
class Chapter:
    start: float
    end: float
    title: str


@dataclass(frozen=True)
class Timeline:
    origin: float  # unix time of the composite's 0 s
    duration: float
    sources: tuple[Source, ...]
    spans: tuple[Span, ...]
    chapters: tuple[Chapter, ...]

    def span_at(self, t: float) -> Span | None:
        """The span at `t` seconds (the last one at or after the end)."""
        for span in self.spans:
            if t < span.end:
                return span if t >= span.start else None
        return self.spans[-1] if self.spans else None

    def offset(self, source: Source) -> float:
        """Where the source's 0 s sits on the composite's time."""
        return source.start - self.origin


def _number(entry: Mapping[str, Any], key: str, index: int) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TimelineError(f"recording file {index}: {key} must be a number (unix seconds), not {value!r:.40}")
    return float(value)


def parse_sources(record: Mapping[str, Any]) -> list[Source]:
    """The recorded files listed in a lesson's record (TimelineError for anything malformed)."""
    recording = record.get("recording") if isinstance(record, Mapping) else None
    files = recording.get("files") if isinstance(recording, Mapping) else None
    if not isinstance(files, list) or not files:
        raise TimelineError("the lesson's record lists no recorded files (recording.files)")
    if len(files) > MAX_SOURCES:
        raise TimelineError(f"the lesson's record lists {len(files)} files, more than {MAX_SOURCES}")
    sources = []
    for i, entry in enumerate(files):
        if not isinstance(entry, Mapping):
            raise TimelineError(f"recording file {i}: not an object")
        name, role, label = entry.get("file"), entry.get("role"), entry.get("label", "")
        if not isinstance(name, str) or not _FILE_RE.match(name) or name.startswith("."):
            raise TimelineError(f"recording file {i}: {name!r:.60} is not the name of a .webm file")
        if role not in ROLES:
            raise TimelineError(f"recording file {i}: role must be one of {', '.join(ROLES)}, not {role!r:.40}")
        if not isinstance(label, str):
            raise TimelineError(f"recording file {i}: label must be text")
        start, end = _number(entry, "start", i), _number(entry, "end", i)
        if end < start:
            raise TimelineError(f"recording file {i}: ends ({end}) before it starts ({start})")
        sources.append(Source(name, role, label[:MAX_LABEL_CHARS], start, end))
    return sources


def _latest(sources: Iterable[Source], at: float) -> Source | None:
    active = [s for s in sources if s.active(at)]
    return max(active, key=lambda s: s.start) if active else None


def build(sources: list[Source]) -> Timeline:
    """The spans and chapters of a lesson from its files. The composite starts with the teacher's first file
    (or the first file, when the teacher's camera was not recorded) and ends with the last source."""
    if not sources:
        raise TimelineError("no recorded files")
    teachers = [s for s in sources if s.role == "teacher"]
    shares = [s for s in sources if s.role == "courseware"]
    stage = [s for s in sources if s.role == "stage"]
    origin = min(s.start for s in (teachers or sources))
    end = max(s.end for s in sources)
    cuts = sorted({origin, end, *(t for s in sources for t in (s.start, s.end) if origin < t < end)})
    spans: list[Span] = []
    for a, b in zip(cuts, cuts[1:]):
        mid = (a + b) / 2
        span = Span(a - origin, b - origin, _latest(teachers, mid), _latest(shares, mid),
                    tuple(sorted((s for s in stage if s.active(mid)), key=lambda s: (s.start, s.file))))
        last = spans[-1] if spans else None
        if last is not None and (last.teacher, last.courseware, last.stage) == (span.teacher, span.courseware,
                                                                              span.stage):
            spans[-1] = Span(last.start, span.end, last.teacher, last.courseware, last.stage)
        else:
            spans.append(span)
    return Timeline(origin, end - origin, tuple(sources), tuple(spans), chapters(spans))


def chapters(spans: Iterable[Span]) -> tuple[Chapter, ...]:
    """One chapter per run of spans with the same title; a chapter under MIN_CHAPTER_S joins the one before."""
    out: list[Chapter] = []
    for span in spans:
        if out and (out[-1].title == span.title or span.end - span.start < MIN_CHAPTER_S):
            out[-1] = Chapter(out[-1].start, span.end, out[-1].title)
        elif out and out[-1].end - out[-1].start < MIN_CHAPTER_S:
            # the one before was too short to stand alone: it becomes the start of this one
            out[-1] = Chapter(out[-1].start, span.end, span.title)
        else:
            out.append(Chapter(span.start, span.end, span.title))
    merged: list[Chapter] = []
    for chapter in out:  # (a short one in between can leave two neighbours with the same title)
        if merged and merged[-1].title == chapter.title:
            merged[-1] = Chapter(merged[-1].start, chapter.end, chapter.title)
        else:
            merged.append(chapter)
    return tuple(merged)


def webvtt_chapters(chapters_: Iterable[Chapter]) -> str:
    """The chapters as a WebVTT file (<track kind="chapters"> in the player)."""
    def ts(t: float) -> str:
        ms = round(max(0.0, t) * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"

    cues = [f"{i}\n{ts(c.start)} --> {ts(c.end)}\n{c.title}" for i, c in enumerate(chapters_, 1)]
    return "WEBVTT\n\n" + "\n\n".join(cues) + "\n"

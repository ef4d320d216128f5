"""Where each picture goes on the composite's canvas for one span of the lesson. Pure arithmetic.

* courseware shared: the courseware large (the whole canvas, letterboxed), the teacher in the bottom-right corner
  (picture-in-picture, a quarter of the width) and each classroom on stage in an inset above the teacher;
* otherwise, classrooms on stage: the teacher on the left half, the classrooms on the right half, one above the
  other;
* otherwise the teacher full.

Every picture keeps its aspect ratio (letterboxed in its box); every rectangle has even coordinates and size,
as 4:2:0 chroma needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from recorder.compose.timeline import Source, Span

CANVAS: Final[tuple[int, int]] = (1280, 720)
INSET_FRACTION: Final[float] = 0.25  # a picture-in-picture's width, of the canvas's
MARGIN_FRACTION: Final[float] = 0.0125  # 16 px at 1280


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    w: int
    h: int


def _even(v: float) -> int:
    return max(0, int(v) // 2 * 2)


def fit(src_w: int, src_h: int, box: Rect, align: str = "center") -> Rect:
    """The largest rectangle of the source's aspect ratio inside `box` (letterboxed), centred, or against the
    box's bottom-right corner (align="end"); at least 2×2, even everywhere."""
    if src_w <= 0 or src_h <= 0:
        return box
    scale = min(box.w / src_w, box.h / src_h)
    w, h = max(2, _even(src_w * scale)), max(2, _even(src_h * scale))
    w, h = min(w, box.w), min(h, box.h)
    if align == "end":
        x, y = box.x + box.w - w, box.y + box.h - h
    else:
        x, y = box.x + _even((box.w - w) / 2), box.y + _even((box.h - h) / 2)
    return Rect(_even(x), _even(y), w, h)


def boxes(span: Span, canvas: tuple[int, int] = CANVAS) -> list[tuple[Source, Rect, str]]:
    """(source, box, align) for each picture of the span, in drawing order (later ones on top)."""
    width, height = canvas
    full = Rect(0, 0, width, height)
    stage = list(span.stage)
    out: list[tuple[Source, Rect, str]] = []
    if span.courseware is not None:
        out.append((span.courseware, full, "center"))
        insets = stage + ([span.teacher] if span.teacher is not None else [])  # the teacher lowest
        margin = _even(width * MARGIN_FRACTION)
        inset_w = _even(width * INSET_FRACTION)
        inset_h = _even(inset_w * 9 / 16)
        if insets:  # as many as fit in the right-hand column
            inset_h = min(inset_h, _even((height - margin * (len(insets) + 1)) / len(insets)))
        for i, source in enumerate(reversed(insets)):  # from the bottom up
            y = height - margin - inset_h - i * (inset_h + margin)
            out.append((source, Rect(width - margin - inset_w, _even(y), inset_w, inset_h), "end"))
        return out
    if stage:
        half = _even(width / 2)
        if span.teacher is not None:
            out.append((span.teacher, Rect(0, 0, half, height), "center"))
        else:
            half = 0
        row_h = _even(height / len(stage))
        for i, source in enumerate(stage):
            out.append((source, Rect(half, i * row_h, width - half, row_h), "center"))
        return out
    if span.teacher is not None:
        out.append((span.teacher, full, "center"))
    return out

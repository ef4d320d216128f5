"""The incomplete marker: a file `<recording>.incomplete` next to a recording that stopped before its lesson ended.

The writer leaves it when a write fails (its text says why; on a disk too full for even that, it is empty and its
name is the mark). It is removed once the library knows the recording is incomplete; after a restart, start-up
repair reads it to finish the library item as incomplete. It lives here, below the writer, the catalog hand-off
and the repair, which all use it.
"""

from __future__ import annotations

from pathlib import Path

INCOMPLETE_SUFFIX = ".incomplete"
# why, when the marker file is empty (the disk was too full for its few bytes of text)
INCOMPLETE_UNKNOWN = "the recording stopped before the lesson ended: writing it failed (the disk was full)"


def incomplete_marker(path: Path) -> Path:
    """The file next to a recording that says it stopped early (its text: why; it may be empty)."""
    return path.with_name(path.name + INCOMPLETE_SUFFIX)


def mark_incomplete(path: Path, reason: str) -> None:
    """Leave the marker next to `path` (never raises: a full disk may still take the empty file)."""
    try:
        incomplete_marker(path).write_text(reason, encoding="utf-8")
    except OSError:
        pass  # a full disk may still take the empty file (an inode, no data block): its name is the mark


def read_incomplete(path: Path) -> str | None:
    """Why the recording at `path` is incomplete (INCOMPLETE_UNKNOWN when the marker says nothing), or None
    when there is no marker."""
    marker = incomplete_marker(path)
    if not marker.exists():
        return None
    try:
        reason = marker.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        reason = ""
    return reason or INCOMPLETE_UNKNOWN


def clear_incomplete(path: Path) -> None:
    """The library knows now: the marker goes."""
    incomplete_marker(path).unlink(missing_ok=True)

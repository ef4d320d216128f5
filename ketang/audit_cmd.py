"""`ketang audit`: read the audit log (who joined, was refused, moderated, ended a lesson, reviewed or exported a
library item; when and from which address), filtered by lesson and time, as text or JSON lines."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timedelta, timezone

from signaling.audit import audit_path, read
from signaling.config import Config

RELATIVE = re.compile(r"^(\d+)([mhd])$")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`2h`, `30m`, `7d` (ago), or an ISO date or time (`2026-12-03`, `2026-12-03T08:00`; local time when it has no
    offset)."""
    now = now or datetime.now(timezone.utc)
    match = RELATIVE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now - timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: give a time such as 2026-12-03, 2026-12-03T08:00, 2h or 7d") from None
    return at if at.tzinfo else at.astimezone()


def format_line(entry: dict) -> str:
    actor = entry.get("actor") or {}
    who = f"{actor.get('role')} {actor.get('name') or ''} ({actor.get('sub')})".replace("  ", " ") if actor \
        else "(no valid token)"
    skip = {"at", "action", "outcome", "actor", "address", "lesson"}
    detail = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in entry.items() if k not in skip)
    lesson = f" lesson {entry['lesson']}" if entry.get("lesson") else ""
    return (f"{entry.get('at', '?')}  {entry.get('action', '?'):<16} {entry.get('outcome', '?'):<14} {who} "
            f"@{entry.get('address') or '-'}{lesson} {detail}").rstrip()


def _run(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"ketang audit: {exc}", file=sys.stderr)
        return 2
    path = audit_path(Config.data_dir_from(args.data_dir))
    if not path.parent.is_dir():
        print(f"ketang audit: no audit log at {path} (the server writes it in its data dir: give the same "
              "--data-dir or KETANG_DATA_DIR as `ketang serve`)", file=sys.stderr)
        return 1
    for entry in read(path, lesson=args.lesson, since=since):
        print(json.dumps(entry, ensure_ascii=False) if args.json else format_line(entry))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("audit", help="read the audit log: joins, refusals, moderation, library reviews",
                              description="Print the audit log, oldest first.")
    p.add_argument("--lesson", default=None, help="only this lesson's records")
    p.add_argument("--since", default=None, metavar="T", help="from this time: 2026-12-03, 2026-12-03T08:00, 2h, 7d")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--data-dir", default=None, help="the server's data dir (or KETANG_DATA_DIR; ./data)")
    p.set_defaults(func=_run)
    return p

"""`ketang lesson create`: a new lesson in one step — the teacher link and one link per classroom.

Tokens travel in the URL fragment (``#token=...``), which browsers never send to a server, so they stay out
of access logs. Each classroom gets its own link: a token names one participant (``sub``), and a second
page joining with the same token replaces the first (close code 4001). The teacher link also carries the
classroom tokens (``&invite=...``) so the teacher page can show and copy them.
"""

from __future__ import annotations

import argparse
import secrets
import string
import sys
from dataclasses import dataclass
from urllib.parse import quote

from signaling.config import DEFAULT_HOST, DEFAULT_PORT, Config

DEFAULT_BASE_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_TTL_S = 6 * 3600  # a school day
DEFAULT_CLASSROOMS = 2
LESSON_ID_CHARS = 8  # 36^8 ≈ 2.8e12: unguessable enough for a lesson name, short enough to read out
LESSON_ID_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class LessonLinks:
    lesson: str
    title: str
    teacher: str  # the teacher page URL, with its token and the classroom tokens in the fragment
    classrooms: list[tuple[str, str]]  # (classroom name, classroom page URL)


def new_lesson_id() -> str:
    return "".join(secrets.choice(LESSON_ID_ALPHABET) for _ in range(LESSON_ID_CHARS))


def create_lesson(secret: str, title: str, base_url: str = DEFAULT_BASE_URL, teacher_name: str = "主讲教师",
                  classroom_names: list[str] | None = None, ttl_s: int = DEFAULT_TTL_S,
                  lesson: str | None = None) -> LessonLinks:
    """Mint the tokens of a new lesson and build the page links (pure: no printing, no files)."""
    from signaling.tokens import issue_token

    lesson = lesson or new_lesson_id()
    names = classroom_names or [f"教室{i + 1}" for i in range(DEFAULT_CLASSROOMS)]
    base = base_url.rstrip("/")
    teacher_token = issue_token(secret, "teacher", lesson, name=teacher_name, ttl_s=ttl_s, title=title)
    invites = [(name, issue_token(secret, "classroom", lesson, name=name, ttl_s=ttl_s, title=title))
               for name in names]
    fragment = f"token={teacher_token}" + "".join(f"&invite={quote(tok)}" for _, tok in invites)
    return LessonLinks(lesson=lesson, title=title, teacher=f"{base}/teacher#{fragment}",
                       classrooms=[(name, f"{base}/classroom#token={tok}") for name, tok in invites])


def format_links(links: LessonLinks) -> str:
    lines = [f"课程 lesson: {links.lesson}  「{links.title}」", "",
             "教师链接 teacher link (open in the teacher's browser):", f"  {links.teacher}", "",
             "教室链接 classroom links (one per classroom):"]
    lines += [f"  {name}: {url}" for name, url in links.classrooms]
    return "\n".join(lines)


def _create(args: argparse.Namespace) -> int:
    from signaling.tokens import load_or_create_secret

    try:
        secret = load_or_create_secret(Config.data_dir_from(args.data_dir))
        names = args.classroom or [f"教室{i + 1}" for i in range(args.classrooms)]
        links = create_lesson(secret, args.title, args.base_url, args.teacher, names, args.ttl, args.lesson)
    except ValueError as exc:
        print(f"ketang lesson create: {exc}", file=sys.stderr)
        return 2
    print(format_links(links))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register `ketang lesson create ...` on the CLI's subparsers."""
    lesson = subparsers.add_parser("lesson", help="make a lesson's teacher and classroom links")
    actions = lesson.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new lesson: print the teacher link and the classroom links")
    create.add_argument("--title", required=True, help='the lesson title, e.g. "七年级数学 · 一元一次方程"')
    create.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"the server as browsers reach it ({DEFAULT_BASE_URL})")
    create.add_argument("--data-dir", default=None, help="where the server's secret is (or KETANG_DATA_DIR; ./data)")
    create.add_argument("--teacher", default="主讲教师", help="the teacher's display name")
    create.add_argument("--classrooms", type=int, default=DEFAULT_CLASSROOMS, help="how many classroom links")
    create.add_argument("--classroom", action="append", default=None, metavar="NAME",
                        help="a classroom by name (repeat; overrides --classrooms)")
    create.add_argument("--lesson", default=None, help="the lesson id (default: a short random slug)")
    create.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, help="link lifetime in seconds (default 6 h)")
    create.set_defaults(func=_create)
    return lesson

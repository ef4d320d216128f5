"""`ketang lesson create`: a new lesson in one step — the teacher link and one link per classroom.

Tokens travel in the URL fragment (``#token=...``), which browsers never send to a server, so they stay out
of access logs. Each classroom gets its own link: a token names one participant (``sub``), and a second
page joining with the same token replaces the first (close code 4001). The teacher link also carries the
classroom tokens (``&invite=...``) so the teacher page can show and copy them.

The links are signed with the server's own secret and point where the server is reached: the command reads the
same flags and environment as `ketang serve` (data dir or KETANG_SECRET; public URL, or host, port and TLS). With
no secret there it refuses: a secret made up here would sign links that no running server accepts.
"""

from __future__ import annotations

import argparse
import secrets
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

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


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def no_secret_message(data_dir: Path) -> str:
    return (f"服务器的密钥不存在（{data_dir / 'secret'}），用其他密钥生成的链接服务器不会接受。"
            "请用与 ketang serve 相同的 --data-dir（或 KETANG_DATA_DIR / KETANG_SECRET）运行本命令，"
            "或先启动一次服务器（它会生成密钥）。\n"
            f"no server secret in {data_dir}: links signed with any other secret would not work. Run this with "
            "the same --data-dir (or KETANG_DATA_DIR / KETANG_SECRET) as `ketang serve`, or start the server once "
            "(it creates the secret).")


def insecure_link_warning(base_url: str) -> str | None:
    """A note when the teacher's browser will refuse the camera: an http page on anything but this machine."""
    parts = urlsplit(base_url)
    if parts.scheme == "http" and (parts.hostname or "") not in LOOPBACK_HOSTS:
        return ("注意：浏览器只在 HTTPS 页面打开摄像头和麦克风，http:// 链接上教师无法开摄像头。"
                "请为服务器配置 HTTPS（--tls-cert/--tls-key 或 TLS 反向代理，见 docs/deploy.md）。\n"
                "note: browsers open the camera only on https pages (or localhost); with this http:// link the "
                "teacher cannot publish. Serve HTTPS (--tls-cert/--tls-key or a TLS proxy, docs/deploy.md).")
    return None


def _create(args: argparse.Namespace) -> int:
    from signaling.tokens import load_secret

    data_dir = Config.data_dir_from(args.data_dir)
    try:
        secret = load_secret(data_dir)
        if secret is None:
            print(f"ketang lesson create: {no_secret_message(data_dir)}", file=sys.stderr)
            return 2
        tls_cert, _ = Config.tls_from(args.tls_cert, args.tls_key)
        base_url = Config.public_url_from(args.url, args.host, args.port, tls=tls_cert is not None)
        names = args.classroom or [f"教室{i + 1}" for i in range(args.classrooms)]
        links = create_lesson(secret, args.title, base_url, args.teacher, names, args.ttl, args.lesson)
    except ValueError as exc:
        print(f"ketang lesson create: {exc}", file=sys.stderr)
        return 2
    print(format_links(links))
    warning = insecure_link_warning(base_url)
    if warning:
        print(warning, file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register `ketang lesson create ...` on the CLI's subparsers."""
    lesson = subparsers.add_parser("lesson", help="make a lesson's teacher and classroom links")
    actions = lesson.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new lesson: print the teacher link and the classroom links")
    create.add_argument("--title", required=True, help='the lesson title, e.g. "七年级数学 · 一元一次方程"')
    create.add_argument("--url", "--public-url", "--base-url", dest="url", default=None,
                        help="the server as browsers reach it, as `ketang serve --public-url` (or KETANG_PUBLIC_URL; "
                             f"default http(s)://HOST:PORT, {DEFAULT_BASE_URL})")
    create.add_argument("--host", default=DEFAULT_HOST, help="the server's --host, when no URL is given")
    create.add_argument("--port", type=int, default=DEFAULT_PORT, help="the server's --port, when no URL is given")
    create.add_argument("--tls-cert", default=None, metavar="FILE",
                        help="the server's --tls-cert (or KETANG_TLS_CERT): the links are https")
    create.add_argument("--tls-key", default=None, metavar="FILE", help="the server's --tls-key (or KETANG_TLS_KEY)")
    create.add_argument("--data-dir", default=None,
                        help="the server's data dir, where its secret is (or KETANG_DATA_DIR; ./data); "
                             "KETANG_SECRET wins, as for the server")
    create.add_argument("--teacher", default="主讲教师", help="the teacher's display name")
    create.add_argument("--classrooms", type=int, default=DEFAULT_CLASSROOMS, help="how many classroom links")
    create.add_argument("--classroom", action="append", default=None, metavar="NAME",
                        help="a classroom by name (repeat; overrides --classrooms)")
    create.add_argument("--lesson", default=None, help="the lesson id (default: a short random slug)")
    create.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, help="link lifetime in seconds (default 6 h)")
    create.set_defaults(func=_create)
    return lesson

"""`ketang library …`: the resource library from the server's shell, acting as the operator (a reviewer).

    ketang library list    [--state S] [--page N] [--per-page N] [--json]
    ketang library search  QUERY [--subject 数学 --grade 八年级 …] [--json]
    ketang library show    ID
    ketang library import  FILE --title T [--teacher N] [--lesson L] [--subject …]   (copies FILE in)
    ketang library export  ID [--out FILE.mp4]
    ketang library review  ID publish|reject|take-down|republish [--note TEXT]

`--data-dir` (or KETANG_DATA_DIR, default ./data) is the server's data directory; `--database-url` (or
KETANG_DATABASE_URL) the store when it is not the SQLite file in it (several nodes on one PostgreSQL). Exit code 0 on success,
2 on a refused or failed operation (the reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from recorder.library.catalog import (
    CURRICULUM_FIELDS,
    DEFAULT_PER_PAGE,
    METADATA_FIELDS,
    REVIEW_DECISIONS,
    STATES,
    Library,
    LibraryError,
    Recording,
    Viewer,
)
from store import redact

DEFAULT_DATA_DIR = "data"
IMPORT_SUFFIXES = (".webm", ".mkv")
# Metadata flags on `import` (the title has its own required flag).
_IMPORT_FIELDS = tuple(f for f in METADATA_FIELDS if f not in ("title", "teacher"))


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "data_dir", None) or os.environ.get("KETANG_DATA_DIR") or DEFAULT_DATA_DIR)


def _print_table(items: list[Recording], total: int) -> None:
    for r in items:
        duration = f"{r.duration_s / 60:.0f}min" if r.duration_s else "-"
        curriculum = "/".join(x for x in (r.stage, r.subject, r.grade, r.chapter) if x) or "-"
        state = r.state + ("*" if r.incomplete else "")  # * incomplete: the recording stopped early (`show`)
        print(f"{r.id}  {state:<16}  {r.created_at}  {duration:>6}  {r.teacher or '-'}  {curriculum}  {r.title}")
    print(f"({len(items)} of {total})")


def _emit(items: list[Recording], total: int, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"total": total, "items": [r.to_dict() for r in items]}, ensure_ascii=False, indent=1))
    else:
        _print_table(items, total)


def _filters(args: argparse.Namespace) -> dict[str, str]:
    names = (*CURRICULUM_FIELDS, "teacher", "school", "state")
    return {n: v for n in names if (v := getattr(args, n, None))}


async def _list(args: argparse.Namespace, lib: Library) -> int:
    items, total = await lib.search("", _filters(args), args.page, args.per_page, Viewer.operator())
    _emit(items, total, args.json)
    return 0


async def _search(args: argparse.Namespace, lib: Library) -> int:
    items, total = await lib.search(args.query, _filters(args), args.page, args.per_page, Viewer.operator())
    _emit(items, total, args.json)
    return 0


async def _show(args: argparse.Namespace, lib: Library) -> int:
    rec = await lib.get_for(args.id, Viewer.operator())
    print(json.dumps({**rec.to_dict(), "history": await lib.history(rec.id)}, ensure_ascii=False, indent=1))
    return 0


async def _import(args: argparse.Namespace, lib: Library) -> int:
    from recorder.library.export import MediaError, probe

    src = Path(args.file)
    if not src.is_file():
        raise LibraryError("bad_request", f"no such file: {src}")
    if src.suffix.lower() not in IMPORT_SUFFIXES:
        raise LibraryError("bad_request", f"import takes {' or '.join(IMPORT_SUFFIXES)} files")
    try:
        info = probe(src)
    except MediaError as exc:
        raise LibraryError("bad_request", str(exc)) from exc
    dst = lib.recordings_dir / f"import-{secrets.token_hex(6)}{src.suffix.lower()}"
    shutil.copyfile(src, dst)
    meta = {f: getattr(args, f) for f in ("title", *_IMPORT_FIELDS) if getattr(args, f) is not None}
    teacher = args.teacher or ""
    try:
        rec_id = await lib.import_file(dst, lesson_id=args.lesson or f"import-{secrets.token_hex(4)}", teacher=teacher,
                                 teacher_sub=args.teacher_sub or f"import:{teacher or 'operator'}", metadata=meta,
                                 duration_s=info["duration_s"], size_bytes=dst.stat().st_size)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    print(f"imported {rec_id}")
    return 0


async def _export(args: argparse.Namespace, lib: Library) -> int:
    from recorder.library.export import MediaError, export_mp4

    rec = await lib.get_for(args.id, Viewer.operator())
    dst = lib.exports_dir / f"{rec.id}.mp4"

    def progress(fraction: float) -> None:
        print(f"\rexporting {rec.id}: {fraction:4.0%}", end="", file=sys.stderr, flush=True)

    try:
        export_mp4(lib.path_of(rec.file), dst, progress)
    except MediaError as exc:
        raise LibraryError("export_failed", str(exc)) from exc
    print(file=sys.stderr)
    await lib.set_mp4(rec.id, dst)
    if args.out:
        shutil.copyfile(dst, args.out)
    print(args.out or dst)
    return 0


async def _review(args: argparse.Namespace, lib: Library) -> int:
    viewer = Viewer.operator(args.reviewer)
    if args.decision == "take-down":
        rec = await lib.take_down(args.id, args.note or "", viewer)
    elif args.decision == "republish":
        rec = await lib.republish(args.id, args.note or "", viewer)
    else:
        rec = await lib.review(args.id, args.decision, args.note or "", viewer)
    print(f"{rec.id} {rec.state}")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        lib = Library(_data_dir(args), database_url=getattr(args, "database_url", None))
    except ValueError as exc:  # a --database-url of an engine the store does not support
        print(f"ketang library: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run_async(args, lib))


async def _run_async(args: argparse.Namespace, lib: Library) -> int:
    try:
        return int(await args.library_func(args, lib) or 0)
    except LibraryError as exc:
        print(f"ketang library: {exc.message} ({exc.code})", file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
            raise
        print(f"ketang library: the library's database {redact(lib.store.url)} cannot be reached or written: "
              f"{' '.join(str(exc).split())[:300]}", file=sys.stderr)
        return 2
    finally:
        await lib.close()


def _add_filters(p: argparse.ArgumentParser) -> None:
    for name in (*CURRICULUM_FIELDS, "teacher", "school"):
        p.add_argument(f"--{name}", default=None, help=f"only this {name} (exact value)")
    p.add_argument("--state", choices=STATES, default=None)
    p.add_argument("--page", type=int, default=1)
    p.add_argument("--per-page", type=int, default=DEFAULT_PER_PAGE)
    p.add_argument("--json", action="store_true", help="JSON instead of a table")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `library` on ``ketang``'s subparsers; the caller runs ``args.func(args)``."""
    # --data-dir works before or after the sub-command; SUPPRESS keeps the later one from erasing the earlier
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help="the server's data directory (or KETANG_DATA_DIR; ./data)")
    common.add_argument("--database-url", default=argparse.SUPPRESS,
                        help="the store (or KETANG_DATABASE_URL; default: the SQLite file in the data directory), "
                             "e.g. postgresql+asyncpg://ketang@db/ketang")
    library = subparsers.add_parser("library", parents=[common], help="the resource library (资源库)",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    library.set_defaults(func=_run)
    sub = library.add_subparsers(dest="library_command", required=True)

    p = sub.add_parser("list", parents=[common], help="recordings, newest first")
    _add_filters(p)
    p.set_defaults(library_func=_list)

    p = sub.add_parser("search", parents=[common], help="full-text search (Chinese and English) plus filters")
    p.add_argument("query")
    _add_filters(p)
    p.set_defaults(library_func=_search)

    p = sub.add_parser("show", parents=[common], help="one recording as JSON, with its history")
    p.add_argument("id")
    p.set_defaults(library_func=_show)

    p = sub.add_parser("import", parents=[common], help="add an existing WebM/MKV recording (it is copied in)")
    p.add_argument("file")
    p.add_argument("--title", required=True)
    p.add_argument("--teacher", default=None, help="the teacher's display name")
    p.add_argument("--teacher-sub", default=None, help="the teacher's participant id (ownership)")
    p.add_argument("--lesson", default=None, help="lesson id (ownership: a teacher token for it may edit)")
    for name in _IMPORT_FIELDS:
        p.add_argument(f"--{name}", default=None)
    p.set_defaults(library_func=_import)

    p = sub.add_parser("export", parents=[common], help="write the recording as an MP4 (H.264/AAC, faststart)")
    p.add_argument("id")
    p.add_argument("--out", default=None, help="also copy the MP4 here")
    p.set_defaults(library_func=_export)

    p = sub.add_parser("review", parents=[common],
                       help="publish, reject, take-down (下架) or republish, as the operator")
    p.add_argument("id")
    p.add_argument("decision", choices=(*REVIEW_DECISIONS, "take-down", "republish"))
    p.add_argument("--note", default="")
    p.add_argument("--reviewer", default="operator", help="name recorded as the reviewer")
    p.set_defaults(library_func=_review)
    return library


def main(argv: list[str] | None = None) -> int:
    """`python -m recorder.library.cli …` = `ketang library …` (for tests and before the lead wires it in)."""
    parser = argparse.ArgumentParser(prog="ketang")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["library", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

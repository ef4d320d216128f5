"""`ketang admin create-user`: an account from the server's shell — the district's first administrator, or anyone
when the pages cannot be reached. The password comes from a prompt (asked twice, not echoed) or, with
``--password-stdin``, from the first line of standard input (for scripts); never from a flag, which `ps` would show.

It opens the same store as `ketang serve` (--data-dir / --database-url, or KETANG_DATA_DIR / KETANG_DATABASE_URL,
migrating it if new) and writes an audit line (`user_create`, actor "cli").
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from signaling.config import Config


async def create_user(database_url: str, login: str, name: str, role: str, school: str,
                      password: str | None) -> dict:
    from signaling.accounts import Accounts
    from store import Store

    accounts = Accounts(Store(database_url))
    try:
        return await accounts.create_user(login=login, name=name, role=role, school=school, password=password)
    finally:
        await accounts.close()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("密码 password: ")
    if getpass.getpass("再输入一次 again: ") != first:
        raise ValueError("两次输入的密码不一致 the passwords differ")
    return first


def _create_user(args: argparse.Namespace) -> int:
    from signaling.accounts import CLASSROOM, AccountError
    from signaling.audit import AuditLog, audit_path

    data_dir = Config.data_dir_from(args.data_dir)
    try:
        url = Config.database_url_from(args.database_url, data_dir)
        password = None if args.role == CLASSROOM else _read_password(args.password_stdin)
        user = asyncio.run(create_user(url, args.login, args.name, args.role, args.school, password))
    except AccountError as exc:
        print(f"ketang admin create-user: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except (ValueError, EOFError, KeyboardInterrupt) as exc:
        print(f"ketang admin create-user: {exc}", file=sys.stderr)
        return 2
    audit = AuditLog(audit_path(data_dir))
    audit.record("user_create", actor={"role": "cli", "sub": "cli", "name": getpass.getuser()}, address=None,
                 user=user["id"], login=user["login"], role=user["role"])
    audit.close()
    print(f"已创建 created {user['role']} {user['login']} ({user['name']}), id {user['id']}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    from signaling.accounts import ROLES

    admin = subparsers.add_parser("admin", help="accounts from the shell (the first administrator)")
    actions = admin.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create-user", help="create an account; the password is asked for (or read from "
                                                    "stdin with --password-stdin)")
    create.add_argument("--role", required=True, choices=list(ROLES))
    create.add_argument("--login", required=True, help="the sign-in name: letters, digits and . _ - @")
    create.add_argument("--name", required=True, help='the name shown, e.g. "王主任"')
    create.add_argument("--school", default="", help="the account's school (optional)")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin instead of a prompt")
    create.add_argument("--data-dir", default=None, help="the server's data dir (or KETANG_DATA_DIR; ./data)")
    create.add_argument("--database-url", default=None,
                        help="the server's store, as `ketang serve --database-url` (or KETANG_DATABASE_URL)")
    create.set_defaults(func=_create_user)
    return admin

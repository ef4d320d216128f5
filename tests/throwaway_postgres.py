"""PostgreSQL for the store's contract tests: a real server, never a fake.

Resolution order for ``postgres_admin_url`` (a superuser URL on a server the tests may create databases on):
  1. $KETANG_TEST_DATABASE_URL (must answer, or the tests fail);
  2. a server already listening on 127.0.0.1:5432 (user postgres, trust authentication);
  3. a throwaway cluster (Debian's ``postgresql``: ``initdb`` + ``postgres``) in a temporary directory on a free
     port, stopped and removed at the session's end;
  4. otherwise the tests fail with instructions (scripts/bootstrap.sh test installs the package).
Each test session works in a database of its own (``ketang_test_<random>``), dropped afterwards.

PostgreSQL refuses to run as root: under root the throwaway cluster runs as ``nobody``, its directory under
/tmp (pytest's own temporary directories are private to root) and owned by that user.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

DATABASE_URL_ENV = "KETANG_TEST_DATABASE_URL"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 2.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
UNPRIVILEGED_USER = "nobody"


def plain(url: str) -> str:
    """asyncpg's form of a SQLAlchemy URL (no "+asyncpg")."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    """The same server and user, another database; as a SQLAlchemy (asyncpg) URL."""
    base = plain(url).split("?", 1)[0].rsplit("/", 1)[0]
    return f"postgresql+asyncpg://{base.split('://', 1)[1]}/{name}"


def answers(url: str) -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(plain(url), timeout=CONNECT_TIMEOUT_S)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
            return False
        await conn.close()
        return True
    return asyncio.run(probe())


def find_binary(name: str) -> str | None:
    """On PATH, else where Debian puts it (/usr/lib/postgresql/<version>/bin), newest version first."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


class ThrowawayPostgres:
    """A cluster of its own: initdb in a temporary directory, postgres on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        initdb, postgres = find_binary("initdb"), find_binary("postgres")
        if initdb is None or postgres is None:
            pytest.fail("the store's tests need PostgreSQL: set KETANG_TEST_DATABASE_URL, run one on "
                        "127.0.0.1:5432, or install Debian's `postgresql` (`bash scripts/bootstrap.sh test` does)")
        self.initdb, self.postgres = initdb, postgres
        from tests.conftest import _free_port
        self.port = _free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="ketang-pg-"))
        self.data = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        self.user = pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.workdir, self.user.pw_uid, self.user.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_user(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def start(self) -> ThrowawayPostgres:
        env = {**os.environ, "HOME": str(self.workdir), "LC_ALL": "C.UTF-8"}
        done = subprocess.run([self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                               "--locale=C.UTF-8", "--no-sync"], env=env, capture_output=True, cwd=self.workdir,
                              **self._as_user())  # type: ignore[call-overload]
        if done.returncode != 0:
            pytest.fail(f"initdb failed: {done.stderr.decode(errors='replace')}")
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([self.postgres, "-D", str(self.data), "-p", str(self.port),
                                      "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.workdir}",
                                      "-c", "fsync=off", "-c", "full_page_writes=off"],
                                     env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     **self._as_user())  # type: ignore[call-overload]
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if answers(self.url):
                return self
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"postgres on port {self.port} did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: no waiting for clients
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def admin_url() -> Iterator[str]:
    """The superuser URL of a server for the session (see the module's docstring)."""
    configured = os.environ.get(DATABASE_URL_ENV)
    if configured:
        if not answers(configured):
            pytest.fail(f"{DATABASE_URL_ENV}={configured} does not answer")
        yield with_database(configured, plain(configured).split("?", 1)[0].rsplit("/", 1)[1] or "postgres")
        return
    if answers(LOCAL_URL):
        yield with_database(LOCAL_URL, "postgres")
        return
    server = ThrowawayPostgres().start()
    try:
        yield server.url
    finally:
        server.stop()


async def create_database(admin: str, prefix: str = "ketang_test") -> str:
    """A new, uniquely named database (UTF-8, a UTF-8 LC_CTYPE so that pg_trgm indexes Chinese); its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(plain(admin), timeout=CONNECT_TIMEOUT_S)
    try:
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\' '
                               "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'")
        except asyncpg.InvalidParameterValueError:  # a server without that locale: its default
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\'')
    finally:
        await conn.close()
    return with_database(admin, name)


async def drop_database(admin: str, url: str) -> None:
    name = plain(url).rsplit("/", 1)[1]
    conn = await asyncpg.connect(plain(admin), timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def empty_tables(url: str, tables: list[str]) -> None:
    """Every row of the store's tables gone (the schema stays): a clean start for the next test."""
    conn = await asyncpg.connect(plain(url), timeout=CONNECT_TIMEOUT_S)
    try:
        present = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = "
                                                            "current_schema()")}
        names = [f'"{t}"' for t in tables if t in present]
        if names:
            await conn.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()

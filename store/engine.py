"""An async engine from a database URL, set up for each engine the store supports.

SQLite: WAL (readers never wait for the writer), a busy timeout (another process writing makes us wait, not
fail), and write transactions that take the write lock at BEGIN (``BEGIN IMMEDIATE``): two processes that read
and then write cannot deadlock on a lock upgrade. PostgreSQL: asyncpg, a small pool, pre-ping (a restarted
server's dead connections are replaced, not raised).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

DEFAULT_FILE_NAME: Final[str] = "ketang.db"
SQLITE_BUSY_TIMEOUT_S: Final[float] = 5.0
SUPPORTED: Final[tuple[str, ...]] = ("sqlite+aiosqlite", "postgresql+asyncpg")


def sqlite_url(data_dir: Path) -> str:
    """The embedded default: a SQLite file in the data directory."""
    return f"sqlite+aiosqlite:///{(Path(data_dir) / DEFAULT_FILE_NAME).resolve()}"


def database_url_from(flag: str | None, data_dir: Path, env: Mapping[str, str] = os.environ) -> str:
    """--database-url, else KETANG_DATABASE_URL, else the SQLite file in ``data_dir``. ValueError for a URL
    of an engine the store does not support (``postgresql://`` is taken as ``postgresql+asyncpg://``)."""
    url = flag or env.get("KETANG_DATABASE_URL") or ""
    if not url:
        return sqlite_url(data_dir)
    for plain, driver in (("postgresql://", "postgresql+asyncpg://"), ("postgres://", "postgresql+asyncpg://"),
                          ("sqlite://", "sqlite+aiosqlite://")):
        if url.startswith(plain):
            url = driver + url[len(plain):]
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy's ArgumentError: the URL is malformed
        raise ValueError(f"--database-url: {redact(url)!r} is not a database URL") from exc
    if parsed.drivername not in SUPPORTED:
        raise ValueError(f"--database-url: {parsed.drivername!r} is not supported (use postgresql+asyncpg:// "
                         f"or sqlite+aiosqlite://)")
    return url


def redact(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "<unparsable database URL>"


def dialect_of(url: str) -> str:
    """"sqlite" or "postgresql"."""
    return make_url(url).get_backend_name()


def _sqlite_setup(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # the driver issues no BEGIN of its own: we do, in "begin" below
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # Two processes opening one new database at once: the second to switch it to WAL gets "database is
        # locked" at once (SQLite's busy wait does not apply there): tried again until the busy timeout
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
        while True:
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except Exception as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


class Store:
    """The engine of one database URL, and transactions on it."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = url
        self.dialect = dialect_of(url)
        if self.dialect == "sqlite":
            Path(make_url(url).database or ".").parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            _sqlite_setup(self.engine)
        else:
            self.engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (a consistent snapshot), rolled back at the end."""
        async with self.engine.connect() as conn:
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction, committed when the block ends without an exception, rolled back otherwise.
        On SQLite it holds the write lock from its start (BEGIN IMMEDIATE)."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(write=True)
            async with conn.begin():
                yield conn

    async def close(self) -> None:
        await self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({redact(self.url)})"

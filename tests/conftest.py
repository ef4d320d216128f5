"""Shared fixtures.

Redis: tests that need it get a real server, never a skip (CI must exercise the
Redis backend). Resolution order for ``redis_url``:
  1. $KETANG_TEST_REDIS_URL (must answer PING, or the tests fail);
  2. a server already listening on 127.0.0.1:6379;
  3. a throwaway ``redis-server`` on a free port, stopped at session end;
  4. otherwise the tests fail with instructions.
Each test isolates its keys with ``redis_prefix``.

PostgreSQL (the store on several nodes) likewise: ``postgres_admin_url`` is $KETANG_TEST_DATABASE_URL, else
127.0.0.1:5432, else a throwaway cluster (tests/throwaway_postgres.py); ``postgres_database`` a database of the
session's own, dropped at its end; ``database_url`` runs a test once per engine of the store (sqlite, postgresql).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis

# fixtures every test directory uses (unit/, scenario/, browser/): defined with their helpers, offered here
from tests.chromium import browser  # noqa: F401 - headless Chromium with a fake camera
from tests.loopback import loopback_server  # noqa: F401 - a ketang server whose media stays on 127.0.0.1
from tests.webm import webm_master  # noqa: F401 - one real WebM lesson for the library tests

# every `ketang serve` a test starts is one process unless the test asks for workers (--workers N,
# tests/scenario/test_workers.py): the default (one worker per core) would change what the other tests measure
os.environ.setdefault("KETANG_WORKERS", "1")

REDIS_URL_ENV = "KETANG_TEST_REDIS_URL"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
PING_TIMEOUT_S = 0.5
SERVER_START_TIMEOUT_S = 10.0
SERVER_STOP_TIMEOUT_S = 5.0
TEST_PREFIX_ROOT = "ketang-test:"
DELETE_BATCH = 500


def _answers_ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=PING_TIMEOUT_S, socket_timeout=PING_TIMEOUT_S)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis_server(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log_path = workdir / "redis.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            # no persistence: the data is throwaway and must not touch the cwd
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _answers_ping(url):
            return proc, url
        time.sleep(0.05)
    _stop(proc)
    pytest.fail(f"started {binary} on port {port} but it never answered PING; log:\n{log_path.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get(REDIS_URL_ENV)
    if configured:
        # an explicit setting that does not work is an error, not a fallback
        if not _answers_ping(configured):
            pytest.fail(f"{REDIS_URL_ENV}={configured} does not answer PING")
        yield configured
        return
    if _answers_ping(LOCAL_REDIS_URL):
        yield LOCAL_REDIS_URL
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "These tests need a real Redis: set KETANG_TEST_REDIS_URL, run one on "
            "127.0.0.1:6379, or install redis-server (e.g. `apt-get install redis-server`)."
        )
    proc, url = _start_redis_server(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        _stop(proc)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; its keys are deleted afterwards."""
    prefix = f"{TEST_PREFIX_ROOT}{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=_glob_escape(prefix) + "*", count=DELETE_BATCH):
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A `ketang serve` subprocess (embedded room state) shared by one test module."""
    from tests.support import Server

    srv = Server(tmp_path_factory.mktemp("server"))
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    from tests.throwaway_postgres import admin_url

    yield from admin_url()


@pytest.fixture(scope="session")
def postgres_database(postgres_admin_url: str) -> Iterator[str]:
    """A database of this test session's own on the PostgreSQL server (dropped at the end): its URL."""
    import asyncio

    from tests.throwaway_postgres import create_database, drop_database

    url = asyncio.run(create_database(postgres_admin_url))
    try:
        yield url
    finally:
        asyncio.run(drop_database(postgres_admin_url, url))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL, once per engine: a SQLite file of the test's own, or the session's PostgreSQL database
    emptied of every row."""
    from store import Base, sqlite_url

    import asyncio

    if request.param == "sqlite":
        return sqlite_url(tmp_path / "data")
    from tests.throwaway_postgres import empty_tables

    url = request.getfixturevalue("postgres_database")
    asyncio.run(empty_tables(url, [t.name for t in Base.metadata.sorted_tables]))
    return url

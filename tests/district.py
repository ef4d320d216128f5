"""A district's ketang for the account pages' tests: the real app (make_app) on 127.0.0.1 with a first administrator
made the way the README says (`ketang admin create-user ... --password-stdin`): login `admin`, password below."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from aiohttp.test_utils import TestServer

from ketang.cli import main as ketang_main
from signaling.app import make_app
from signaling.config import Config

ADMIN_LOGIN, ADMIN_PASSWORD, ADMIN_NAME = "admin", "district-admin-pw", "王主任"


@dataclass
class Site:
    url: str
    data: Path


@asynccontextmanager
async def district_site(data: Path, secret: str, record: bool = False) -> AsyncIterator[Site]:
    with mock.patch("sys.stdin", io.StringIO(f"{ADMIN_PASSWORD}\n")):
        assert await asyncio.to_thread(ketang_main, [
            "admin", "create-user", "--role", "administrator", "--login", ADMIN_LOGIN, "--name", ADMIN_NAME,
            "--password-stdin", "--data-dir", str(data)]) == 0
    server = TestServer(make_app(Config(data_dir=data, secret=secret, record=record)), host="127.0.0.1")
    await server.start_server()
    try:
        yield Site(f"http://127.0.0.1:{server.port}", data)
    finally:
        await server.close()

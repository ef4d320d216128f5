"""Accounts behind `ketang serve --workers 2` (the supervisor's proxy in front of the workers): a session cookie one
browser got is never handed to another — the proxy keeps no cookies of its own — and the lockout counts every
worker's failures (they share the store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support import Server


def create_admin(data: Path) -> None:
    env = dict(os.environ, KETANG_DATA_DIR=str(data))
    subprocess.run([sys.executable, "-m", "ketang.cli", "admin", "create-user", "--role", "administrator",
                    "--login", "admin", "--name", "王主任", "--password-stdin"], input="district-admin-pw\n",
                   text=True, env=env, check=True, capture_output=True, timeout=60)


async def test_behind_the_supervisor_a_session_stays_with_its_browser_and_lockout_spans_workers(tmp_path: Path) -> None:
    create_admin(tmp_path)
    server = Server(tmp_path, env={"KETANG_WORKERS": "2", "KETANG_NO_RECORD": "1"})
    try:
        server.wait_ready(timeout_s=60)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as admin, aiohttp.ClientSession() as nobody:
            async with admin.post(f"{server.url}/api/login",
                                  json={"login": "admin", "password": "district-admin-pw"}) as resp:
                assert resp.status == 200
                assert "HttpOnly" in resp.headers["Set-Cookie"]
            for _ in range(4):  # (new connections: spread over both workers)
                async with admin.get(f"{server.url}/api/me") as resp:
                    assert resp.status == 200
                async with nobody.get(f"{server.url}/api/me") as resp:
                    assert resp.status == 401, "another browser got the administrator's session"
            for _ in range(5):
                async with nobody.post(f"{server.url}/api/login", json={"login": "admin", "password": "x"}) as r:
                    assert r.status == 401
                await nobody.close()
                nobody = aiohttp.ClientSession()
            async with nobody.post(f"{server.url}/api/login",
                                   json={"login": "admin", "password": "district-admin-pw"}) as resp:
                assert resp.status == 429 and (await resp.json())["code"] == "login_locked"
            await nobody.close()
    finally:
        server.stop()

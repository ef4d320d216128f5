"""A `ketang serve` subprocess whose media stays on 127.0.0.1, and this process's aiortc peers with it
(aioice leaves 127.0.0.1 out of its host candidates by default): for tests that throw datagrams at media ports
(tests/support.py has the clients)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aioice import ice as aioice_ice

from tests.support import Server


@pytest.fixture
def loopback_server(tmp_path, monkeypatch) -> Iterator[Server]:
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else [])
    srv = Server(tmp_path, env={"KETANG_MEDIA_ADDRESSES": "127.0.0.1"})
    srv.wait_ready()
    yield srv
    srv.stop()


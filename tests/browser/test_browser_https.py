"""The teacher page over https by a real name (not localhost, which browsers treat as secure even over http):
a secure context, so the camera opens, the lesson is published over wss, and a classroom decodes it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.chromium import CHROMIUM, CHROMIUM_ARGS, lesson, wait_decoding
from tests.scenario.test_tls import wait_https
from tests.support import Server
from tests.tlscerts import TEST_HOST, TlsFiles, make_certs


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, TlsFiles]]:
    tmp = tmp_path_factory.mktemp("https-server")
    certs = make_certs(tmp / "tls")
    srv = Server(tmp, env={"KETANG_TLS_CERT": str(certs.cert), "KETANG_TLS_KEY": str(certs.key)})
    try:
        wait_https(certs, srv)
        yield srv, certs
    finally:
        srv.stop()


@pytest.fixture
async def https_browser(https_server: tuple[Server, TlsFiles]) -> AsyncIterator[object]:
    """Chromium that finds TEST_HOST at 127.0.0.1 and trusts the test server's key (as a county's computers trust
    their CA or Let's Encrypt): no certificate warning, a secure context."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `bash scripts/test.sh` installs it")
    from playwright.async_api import async_playwright

    _, certs = https_server
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {TEST_HOST} 127.0.0.1",
            f"--ignore-certificate-errors-spki-list={certs.spki_sha256}"]
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield b
        finally:
            await b.close()


@pytest.mark.slow
async def test_the_teacher_page_over_https_by_name_publishes_and_a_classroom_decodes(
        https_server: tuple[Server, TlsFiles], https_browser: object) -> None:
    srv, _ = https_server
    # what `lesson` needs of a server: the address the links point to (the stats are read only to explain a failure)
    by_name = SimpleNamespace(url=f"https://{TEST_HOST}:{srv.port}", stats=lambda lesson_id: _no_stats())
    async with lesson(by_name, https_browser) as (teacher, [room]):
        assert teacher.url.startswith(f"https://{TEST_HOST}:{srv.port}/teacher")
        assert await teacher.evaluate("window.isSecureContext") is True
        assert await teacher.evaluate("location.protocol") == "https:"
        stats = await wait_decoding(room, timeout_s=20)
        assert any(s["kind"] == "video" and s["frameWidth"] > 0 for s in stats)
        assert await room.evaluate("window.isSecureContext") is True  # its websocket is wss (protocol.js)


async def _no_stats() -> dict:
    return {}

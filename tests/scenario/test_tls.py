"""HTTPS: `ketang serve --tls-cert --tls-key` serves pages, REST and wss:// on one port, reached by a real name
with a certificate from a (throwaway) CA; plain http to that port gets nothing; bad TLS files stop the start with
one clear line."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from loadtest.wsclient import WsClient
from signaling.config import Config
from tests.support import TEST_SECRET, Server, token
from tests.tlscerts import TEST_HOST, TlsFiles, make_certs, other_key

START_TIMEOUT_S = 20.0


class NameMap(AbstractResolver):
    """Resolves TEST_HOST to 127.0.0.1, as a county's DNS would resolve the server's name to its address."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        if host != TEST_HOST:
            raise OSError(f"unknown host {host}")
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


def session(certs: TlsFiles) -> aiohttp.ClientSession:
    """A client that finds the server by its name and trusts only the test CA."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=certs.client_context(), resolver=NameMap()))


def wait_https(certs: TlsFiles, srv: Server, timeout_s: float = START_TIMEOUT_S) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"server exited with {srv.proc.returncode}")
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{srv.port}/healthz", timeout=1,
                                        context=certs.client_context()):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("the https server did not answer /healthz")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: TlsFiles) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tls-server")
    srv = Server(tmp, env={"KETANG_TLS_CERT": str(certs.cert), "KETANG_TLS_KEY": str(certs.key)})
    srv.url = f"https://{TEST_HOST}:{srv.port}"
    srv.ws_url = f"wss://{TEST_HOST}:{srv.port}/ws"
    try:
        wait_https(certs, srv)
        yield srv
    finally:
        srv.stop()


async def test_healthz_and_a_page_answer_over_https_by_name_with_the_cas_certificate(
        tls_server: Server, certs: TlsFiles) -> None:
    async with session(certs) as http:
        async with http.get(f"{tls_server.url}/healthz") as resp:
            assert resp.status == 200
            assert "participants" in await resp.json()
        async with http.get(f"{tls_server.url}/teacher") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"


async def test_a_client_that_does_not_trust_the_ca_is_refused_by_its_own_check(tls_server: Server) -> None:
    """The certificate really is checked: the system's CAs do not know the test CA."""
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(), resolver=NameMap())
    async with aiohttp.ClientSession(connector=connector) as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"{tls_server.url}/healthz")


async def test_a_teacher_joins_over_wss(tls_server: Server, certs: TlsFiles) -> None:
    async with session(certs) as http:
        ws = await WsClient(http).connect(tls_server.ws_url)
        try:
            reply = await ws.request({"type": "join", "token": token("teacher", "tls-lesson", "李老师"),
                                      "lesson": "tls-lesson"})
            assert reply["type"] == "joined", reply
        finally:
            await ws.close()


async def test_plain_http_to_the_tls_port_gets_no_answer(tls_server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{tls_server.port}/healthz",
                                timeout=aiohttp.ClientTimeout(total=10)) as resp:
                await resp.read()
    # and the server is still there for https clients
    await asyncio.sleep(0)
    assert tls_server.proc.poll() is None


def test_the_printed_urls_are_https_and_wss(tls_server: Server) -> None:
    log = Path(tls_server.log.name).read_text()
    assert f"ketang serving on https://127.0.0.1:{tls_server.port}" in log
    assert f"signalling: wss://127.0.0.1:{tls_server.port}/ws" in log
    assert f"teacher:    https://127.0.0.1:{tls_server.port}/teacher#token=" in log
    assert "http://" not in log and "ws://" not in log


def test_the_public_url_is_https_when_tls_is_on() -> None:
    on = Config(host="10.0.0.5", port=8443, tls_cert=Path("c.pem"), tls_key=Path("k.pem"))
    assert on.url == "https://10.0.0.5:8443"
    assert Config(host="10.0.0.5", port=8080).url == "http://10.0.0.5:8080"
    assert Config(public_url="https://ketang.example.cn/", tls_cert=Path("c"), tls_key=Path("k")).url == \
        "https://ketang.example.cn"


def _serve(tmp: Path, *tls_args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("KETANG_TLS_CERT", "KETANG_TLS_KEY")}
    full_env.update(KETANG_SECRET=TEST_SECRET, KETANG_DATA_DIR=str(tmp), **(env or {}))
    return subprocess.run([sys.executable, "-m", "ketang.cli", "serve", "--port", "0", *tls_args],
                          env=full_env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("case", "words"), [
    pytest.param("mismatch", "does not belong to the certificate", id="a key of another certificate"),
    pytest.param("missing", "does not exist", id="a certificate file that is not there"),
    pytest.param("swapped", "not a PEM certificate and its private key", id="key and certificate swapped"),
    pytest.param("only-cert", "needs both --tls-cert and --tls-key", id="a certificate without its key"),
    pytest.param("only-key-env", "needs both --tls-cert and --tls-key", id="KETANG_TLS_KEY alone"),
])
def test_bad_tls_files_stop_the_start_with_one_clear_line(tmp_path: Path, certs: TlsFiles, case: str,
                                                           words: str) -> None:
    cert, key = str(certs.cert), str(certs.key)
    env: dict[str, str] = {}
    args = {"mismatch": ["--tls-cert", cert, "--tls-key", str(other_key(tmp_path / "other.key"))],
            "missing": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", key],
            "swapped": ["--tls-cert", key, "--tls-key", cert],
            "only-cert": ["--tls-cert", cert],
            "only-key-env": []}[case]
    if case == "only-key-env":
        env["KETANG_TLS_KEY"] = key
    out = _serve(tmp_path, *args, env=env)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ketang: "), out.stderr
    assert words in lines[0]
    assert "Traceback" not in out.stderr and "ketang serving" not in out.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file: the unreadable case cannot happen")
def test_an_unreadable_key_stops_the_start_with_one_clear_line(tmp_path: Path, certs: TlsFiles) -> None:
    key = tmp_path / "server.key"
    key.write_bytes(certs.key.read_bytes())
    key.chmod(0)
    out = _serve(tmp_path, "--tls-cert", str(certs.cert), "--tls-key", str(key))
    assert out.returncode == 2 and "is not readable" in out.stderr and "Traceback" not in out.stderr

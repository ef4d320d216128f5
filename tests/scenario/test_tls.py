"""HTTPS: `ketang serve --tls-cert --tls-key` serves pages, REST and wss:// on one port, reached by a real name
with a certificate from a (throwaway) CA; plain http to that port gets nothing; bad TLS files stop the start with
one clear line."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
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
from tests.support import TEST_SECRET, Server, free_port, token
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


# --- nginx in front (docs/deploy.md): the site configuration from the docs, run for real ---------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DEPLOY_DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def nginx_site_from_docs(https_port: int, http_port: int, upstream_port: int, certs: TlsFiles) -> str:
    """The nginx site of docs/deploy.md with this test's ports, name and certificate: what the docs tell a county
    to write is what is tested."""
    site = re.search(r"```nginx\n(.*?)```", DEPLOY_DOC.read_text(), re.S).group(1)
    replacements = {"listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
                    "listen 80;": f"listen 127.0.0.1:{http_port};",
                    "server_name ketang.county.cn;": f"server_name {TEST_HOST};",
                    "/etc/ketang/tls/fullchain.pem": str(certs.cert),
                    "/etc/ketang/tls/privkey.pem": str(certs.key),
                    "proxy_pass http://127.0.0.1:8080;": f"proxy_pass http://127.0.0.1:{upstream_port};"}
    for old, new in replacements.items():
        assert site.count(old) >= 1, f"docs/deploy.md's nginx site no longer has {old!r}"
        site = site.replace(old, new)
    return site


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory, certs: TlsFiles, server: Server) -> Iterator[tuple[int, int]]:
    """A throwaway nginx on free ports, TLS in front of the plain-http `server` (scripts/bootstrap.sh installs
    nginx); yields its https and http ports."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is missing: `bash scripts/bootstrap.sh test` installs it (Debian's nginx)")
    tmp = tmp_path_factory.mktemp("nginx")
    https_port, http_port = free_port(), free_port()
    temp_paths = "\n".join(f"{name}_temp_path {tmp}/{name};" for name in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp / "nginx.conf").write_text(
        f"{'user root;' if os.geteuid() == 0 else ''}\nworker_processes 1;\npid {tmp}/nginx.pid;\n"
        f"error_log {tmp}/error.log;\nevents {{ worker_connections 256; }}\n"
        f"http {{\naccess_log {tmp}/access.log;\n{temp_paths}\n"
        f"{nginx_site_from_docs(https_port, http_port, server.port, certs)}\n}}\n")
    proc = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited: {proc.stdout.read().decode()} {(tmp / 'error.log').read_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", https_port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail("nginx did not listen")
            time.sleep(0.05)
        yield https_port, http_port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_through_nginx_https_pages_and_a_wss_join_reach_ketang(nginx: tuple[int, int],
                                                                     certs: TlsFiles) -> None:
    base = f"https://{TEST_HOST}:{nginx[0]}"
    async with session(certs) as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200 and "participants" in await resp.json()
        ws = await WsClient(http).connect(f"wss://{TEST_HOST}:{nginx[0]}/ws")
        try:
            reply = await ws.request({"type": "join", "token": token("teacher", "proxied", "李老师"),
                                      "lesson": "proxied"})
            assert reply["type"] == "joined", reply
        finally:
            await ws.close()


async def test_nginx_sends_an_http_link_to_the_https_page(nginx: tuple[int, int]) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=NameMap())) as http:
        async with http.get(f"http://{TEST_HOST}:{nginx[1]}/teacher", allow_redirects=False) as resp:
            assert resp.status == 301
            # $host has no port: a county's server answers on the default ports 80 and 443
            assert resp.headers["Location"] == f"https://{TEST_HOST}/teacher"

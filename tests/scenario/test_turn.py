"""Firewalled schools: the TURN relay path over TCP (docs/weak-networks.md).

Unit tests of the credentials (the TURN REST API scheme coturn implements with `use-auth-secret`), then
a throwaway coturn on 127.0.0.1 that listens on TCP only (`--no-udp`: a client can reach it only over TCP,
as from a school whose firewall drops UDP) and a `ketang serve` that hands out credentials for it in
`joined.ice_servers`. A Chromium classroom page opened with `?relay=1` (media through the relay only) and
an aiortc classroom with a relay-only policy receive the lesson through it: their selected candidate pair
has a relay candidate (Chromium's stats also say `relayProtocol: "tcp"`; coturn listens on nothing else), and
coturn's own log shows the allocations under the participants' minted usernames. coturn runs with the peer
restriction docs/weak-networks.md recommends (every address denied except the ketang server's).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice.ice import get_host_addresses
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

from signaling.config import Config
from signaling.turn import ice_servers_for, turn_credential
from tests import chromium, support
from tests.chromium import lesson, wait_decoding
from tests.support import (
    Classroom,
    Server,
    Teacher,
    WsClient,
    free_port,
    hang_up,
    token,
)

TURN_SECRET = "coturn-static-auth-secret-for-tests"
TURN_REALM = "ketang.test"
TURN_START_TIMEOUT_S = 10.0

# the classroom's selected ICE candidate pair, as its RTCPeerConnection reports it
SELECTED_PAIR_JS = """async () => {
  const stats = new Map();
  (await window.ketang.pc.getStats()).forEach((s) => stats.set(s.id, s));
  const transport = [...stats.values()].find((s) => s.type === "transport" && s.selectedCandidatePairId);
  if (!transport) return null;
  const pair = stats.get(transport.selectedCandidatePairId);
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return {state: pair.state, bytesReceived: pair.bytesReceived,
          local: {candidateType: local.candidateType, relayProtocol: local.relayProtocol, protocol: local.protocol,
                  address: local.address, url: local.url},
          remote: {candidateType: remote.candidateType, protocol: remote.protocol}};
}"""


# -- credentials (pure) ----------------------------------------------------------------------------------------

def test_credentials_follow_the_turn_rest_api_scheme() -> None:
    urls = ("turn:turn.school.cn:3478?transport=tcp", "turns:turn.school.cn:5349?transport=tcp")
    servers = ice_servers_for(urls, "s3cret", "3fYlrsLJOXS8qCOH", ttl_s=12 * 3600, now=1_700_000_000.7)
    assert servers == [{
        "urls": list(urls),
        "username": "1700043200:3fYlrsLJOXS8qCOH",  # the expiry (now + 12 h), then the participant
        # computed independently: base64(HMAC-SHA1(secret, username))
        "credential": base64.b64encode(hmac.new(b"s3cret", b"1700043200:3fYlrsLJOXS8qCOH", "sha1").digest()).decode(),
    }]
    assert turn_credential("s3cret", "1700043200:3fYlrsLJOXS8qCOH") == servers[0]["credential"]


def test_credentials_expire_after_the_ttl_and_differ_per_participant() -> None:
    now = 1_800_000_000.0
    a = ice_servers_for(["turn:h:3478?transport=tcp"], "k", "a", ttl_s=600, now=now)[0]
    b = ice_servers_for(["turn:h:3478?transport=tcp"], "k", "b", ttl_s=600, now=now)[0]
    later = ice_servers_for(["turn:h:3478?transport=tcp"], "k", "a", ttl_s=600, now=now + 1)[0]
    assert int(a["username"].split(":")[0]) == now + 600
    assert a["credential"] != b["credential"] and a["credential"] != later["credential"]
    assert len(base64.b64decode(a["credential"])) == hashlib.sha1().digest_size


def test_no_turn_configured_means_no_ice_servers() -> None:
    assert ice_servers_for((), "k", "a", ttl_s=600) == []
    assert ice_servers_for(("turn:h:3478",), "", "a", ttl_s=600) == []


def test_turn_urls_from_the_environment() -> None:
    env = {"KETANG_TURN_URLS": " turn:t.school.cn:3478?transport=tcp, turns:t.school.cn:443?transport=tcp ,",
           "KETANG_TURN_SECRET": "k"}
    assert Config.turn_urls_from(None, env) == ("turn:t.school.cn:3478?transport=tcp",
                                                "turns:t.school.cn:443?transport=tcp")
    assert Config.turn_urls_from(None, {}) == ()
    with pytest.raises(ValueError, match="KETANG_TURN_SECRET"):
        Config.turn_urls_from("turn:t.school.cn:3478", {})
    with pytest.raises(ValueError, match="not a turn"):
        Config.turn_urls_from("stun:stun.school.cn:3478", {"KETANG_TURN_SECRET": "k"})


# -- a real coturn -----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Coturn:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=tcp"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def allocations(self) -> list[str]:
        """The usernames of the successful allocations, from coturn's log."""
        text = self.log_text()
        users = re.findall(r"session (\d+): realm <[^>]*> user <([^>]*)>: incoming packet ALLOCATE processed, success",
                           text)
        return [user for _, user in users]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("the TURN tests need coturn's `turnserver`: `bash scripts/test.sh` installs it "
                    "(Debian's coturn), or `apt-get install coturn`")
    tmp = tmp_path_factory.mktemp("coturn")
    port = free_port()
    args = [binary, "-n",  # no config file: everything is here
            "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1", "--listening-port", str(port),
            "--no-udp", "--no-tls", "--no-dtls", "--no-cli",  # clients reach it over plain TCP only
            "--use-auth-secret", "--static-auth-secret", TURN_SECRET, "--realm", TURN_REALM,
            # the relay may reach only the ketang server (as docs/weak-networks.md asks): its host candidates are
            # this machine's own interface addresses (aioice never offers 127.0.0.1, so no --allow-loopback-peers)
            "--denied-peer-ip", "0.0.0.0-255.255.255.255",
            *[arg for ip in get_host_addresses(use_ipv4=True, use_ipv6=False) for arg in ("--allowed-peer-ip", ip)],
            "--userdb", str(tmp / "turndb"), "--pidfile", str(tmp / "turnserver.pid"),
            "--log-file", str(tmp / "turnserver.log"), "--simple-log", "--no-stdout-log", "--verbose"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Coturn(port=port, log=tmp / "turnserver.log", proc=proc)
    deadline = time.monotonic() + TURN_START_TIMEOUT_S
    try:
        while not _accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"turnserver did not listen on 127.0.0.1:{port} (exit {proc.poll()}); "
                            f"log:\n{server.log_text()[-3000:]}")
            time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def turn_ketang(tmp_path_factory: pytest.TempPathFactory, coturn: Coturn) -> Iterator[Server]:
    """`ketang serve` that hands out credentials for the coturn above."""
    srv = Server(tmp_path_factory.mktemp("server"),
                 env={"KETANG_TURN_URLS": coturn.url, "KETANG_TURN_SECRET": TURN_SECRET, "KETANG_TURN_TTL_S": "3600"})
    srv.wait_ready()
    yield srv
    srv.stop()


async def test_joined_carries_turn_credentials_for_the_participant(turn_ketang: Server, coturn: Coturn) -> None:
    ws = await WsClient().connect(turn_ketang.ws_url)
    try:
        reply = await ws.request({"type": "join", "token": token("teacher", "turn-joined", "Ms Li"),
                                  "lesson": "turn-joined"})
        assert reply["type"] == "joined", reply
        [entry] = reply["ice_servers"]
        assert entry["urls"] == [coturn.url]
        expiry, participant = entry["username"].split(":")
        assert participant == reply["participant"]["id"]
        assert abs(int(expiry) - (time.time() + 3600)) < 30
        expected = base64.b64encode(hmac.new(TURN_SECRET.encode(), entry["username"].encode(), "sha1").digest())
        assert entry["credential"] == expected.decode()
    finally:
        await ws.close()


@pytest.mark.slow
async def test_an_aiortc_classroom_forced_through_turn_over_tcp_receives_the_lesson(turn_ketang: Server,
                                                                                   coturn: Coturn) -> None:
    lesson_id = "turn-aiortc"
    teacher_ws = await WsClient().connect(turn_ketang.ws_url)
    assert (await teacher_ws.request({"type": "join", "token": token("teacher", lesson_id, "Ms Li"),
                                      "lesson": lesson_id}))["type"] == "joined"
    teacher = Teacher(teacher_ws)
    assert (await teacher.publish())["type"] == "answer"

    ws = await WsClient().connect(turn_ketang.ws_url)
    joined = await ws.request({"type": "join", "token": token("classroom", lesson_id, "山区小学"), "lesson": lesson_id})
    [entry] = joined["ice_servers"]
    relay_only = RTCConfiguration(iceServers=[RTCIceServer(**entry)], iceTransportPolicy=RTCIceTransportPolicy.RELAY)
    with pytest.MonkeyPatch.context() as patch:
        # tests.support.Classroom builds its peer connection with RTCConfiguration(iceServers=[]): give it ours
        patch.setattr(support, "RTCConfiguration", lambda **_: relay_only)
        room = Classroom(ws)
    try:
        await room.wait_frames(10, timeout_s=20)
        for _ in range(40):
            if room.audio_frames:
                break
            await asyncio.sleep(0.25)
        assert room.audio_frames > 0, "no audio through the relay"
        pair = room.pc.getTransceivers()[0].receiver.transport.transport.iceGatherer._connection._nominated
        [(local, _remote)] = [(p.local_candidate, p.remote_candidate) for p in pair.values()]
        assert local.type == "relay", local
        assert any(user.endswith(":" + joined["participant"]["id"]) for user in coturn.allocations()), \
            coturn.log_text()[-3000:]
    finally:
        await hang_up(room, teacher)


@pytest.mark.slow
async def test_a_chromium_classroom_behind_a_udp_firewall_receives_the_lesson_through_turn_tcp(
        turn_ketang: Server, coturn: Coturn, browser, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    real_create_lesson = chromium.create_lesson

    def relay_links(*args, **kwargs):  # type: ignore[no-untyped-def]
        # the classroom pages open with ?relay=1 (media only through the relay); the teacher page as usual
        links = real_create_lesson(*args, **kwargs)
        return dataclasses.replace(links, classrooms=[(name, url.replace("/classroom#", "/classroom?relay=1#"))
                                                      for name, url in links.classrooms])

    monkeypatch.setattr(chromium, "create_lesson", relay_links)
    before = len(coturn.allocations())
    async with lesson(turn_ketang, browser) as (teacher, [room]):
        assert "?relay=1#" in room.url
        await wait_decoding(room, timeout_s=20)  # video decoding and audio arriving
        # (the receiving connection exists from the server's first offer on)
        assert await room.evaluate("window.ketang.pc.getConfiguration().iceTransportPolicy") == "relay"
        first = await room.evaluate(SELECTED_PAIR_JS)
        await asyncio.sleep(1)
        await wait_decoding(room, timeout_s=5)  # and still decoding
        pair = await room.evaluate(SELECTED_PAIR_JS)
        assert pair is not None and pair["state"] == "succeeded", pair
        assert pair["local"]["candidateType"] == "relay", pair
        assert pair["local"]["relayProtocol"] == "tcp", pair
        assert pair["local"]["url"] == coturn.url, pair
        assert pair["bytesReceived"] > first["bytesReceived"] + 10_000, (first, pair)  # the lesson flows through it
        # the teacher's page did not ask for the relay: it is on a direct path
        assert await teacher.evaluate("window.ketang.sendPc.getConfiguration().iceTransportPolicy") == "all"
        me = await room.evaluate("window.ketang.session.me.id")
        allocations = coturn.allocations()[before:]
        assert any(user.endswith(":" + me) for user in allocations), coturn.log_text()[-3000:]
        print(f"classroom via TURN/TCP: {pair}; coturn allocations this test: {len(allocations)}")

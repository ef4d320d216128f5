"""The datagram guard on aioice (sfu/seams.py): two real aiortc peer connections in this process, over loopback,
and datagrams thrown at their ICE sockets from strangers and from the peer's own address."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest
from aioice import ice as aioice_ice
from aiortc import RTCPeerConnection

from sfu.seams import GUARD, guard_datagrams

STUN_COOKIE = 0x2112A442


def _connection(pc: RTCPeerConnection):
    """pc's aioice Connection (through its SCTP transport's DTLS and ICE transports)."""
    return pc.sctp.transport.transport._connection


async def _connected_pair() -> tuple[RTCPeerConnection, RTCPeerConnection, asyncio.Queue]:
    """Two peer connections with a data channel; messages pc1 sends arrive on the returned queue."""
    pc1, pc2 = RTCPeerConnection(), RTCPeerConnection()
    received: asyncio.Queue = asyncio.Queue()
    opened = asyncio.Event()

    @pc2.on("datachannel")
    def on_channel(channel) -> None:
        channel.on("message", received.put_nowait)
        opened.set()

    channel = pc1.createDataChannel("lesson")
    await pc1.setLocalDescription(await pc1.createOffer())
    await pc2.setRemoteDescription(pc1.localDescription)
    await pc2.setLocalDescription(await pc2.createAnswer())
    await pc1.setRemoteDescription(pc2.localDescription)
    await asyncio.wait_for(opened.wait(), 10)
    pc1._test_channel = channel  # type: ignore[attr-defined]
    return pc1, pc2, received


async def _still_talks(pc1: RTCPeerConnection, received: asyncio.Queue, text: str) -> None:
    pc1._test_channel.send(text)  # type: ignore[attr-defined]
    while True:
        got = await asyncio.wait_for(received.get(), 5)
        if got == text:
            return


def _malformed_stun() -> bytes:
    """A binding response whose XOR-MAPPED-ADDRESS is one byte long: aioice's parser raises struct.error."""
    attribute = struct.pack("!HH", 0x0020, 1) + b"\x01\x00\x00\x00"
    return struct.pack("!HHI12s", 0x0101, len(attribute), STUN_COOKIE, os.urandom(12)) + attribute


@pytest.fixture
def guarded(monkeypatch):
    """The guard on, and ICE on loopback only (aioice leaves 127.0.0.1 out by default): datagrams stay here."""
    guard_datagrams()
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    return GUARD


async def test_strangers_datagrams_never_reach_dtls_and_the_peer_connection_lives_on(guarded):
    pc1, pc2, received = await _connected_pair()
    conn = _connection(pc2)
    seen: list[bytes] = []
    stock = conn.data_received

    def recording(data: bytes, component: int) -> None:
        seen.append(bytes(data))
        stock(data, component)

    conn.data_received = recording  # the instance's: what aioice hands up to DTLS/SRTP
    try:
        ports = [p.local_candidate.port for p in conn._protocols]
        assert ports and all(p.local_candidate.host == "127.0.0.1" for p in conn._protocols)
        marker = os.urandom(8)
        payloads = [b"", b"\x00", b"\x16", b"\x16\xfe\xfd" + marker + os.urandom(40), b"\x80" + marker,
                    b"\x80\xc8" + marker + b"\x00" * 4, b"\x90" + marker + os.urandom(200), _malformed_stun(),
                    b"\x00\x01\x00\x08" + marker, b"\xff" * 30, b"\x40" + marker]
        before = GUARD.counts()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for _ in range(20):
                for port in ports:
                    for payload in payloads:
                        stranger.sendto(payload, ("127.0.0.1", port))
        await asyncio.sleep(0.3)
        await _still_talks(pc1, received, "after the strangers")
        assert not any(marker in data for data in seen), "a stranger's datagram reached DTLS/SRTP"
        after = GUARD.counts()
        assert after["dropped_unproven"] > before["dropped_unproven"]
        assert after["dropped_malformed"] > before["dropped_malformed"]
        assert pc2.connectionState == "connected" and pc1.connectionState == "connected"
    finally:
        await pc1.close()
        await pc2.close()


async def test_an_empty_or_garbled_datagram_from_the_peers_own_address_does_not_end_the_connection(guarded):
    """aiortc's DTLS receive loop reads data[0]: one empty datagram from the validated address used to end it."""
    pc1, pc2, received = await _connected_pair()
    try:
        pair = _connection(pc1)._nominated[1]
        # the peer's own socket (a duplicate of its descriptor: asyncio's sendto would skip an empty datagram)
        own = socket.fromfd(pair.protocol.transport.get_extra_info("socket").fileno(), socket.AF_INET,
                            socket.SOCK_DGRAM)
        send = own.sendto
        for payload in (b"", b"\x80", b"\x81\xc9", b"\x16", b"\x17\xfe\xfd" + os.urandom(30), _malformed_stun(),
                        b"\x90" + os.urandom(1200), b"\x3f" * 3):
            for _ in range(5):
                send(payload, pair.remote_addr)
        await asyncio.sleep(0.3)
        await _still_talks(pc1, received, "after the garbage")
        assert pc2.connectionState == "connected"
        own.close()
    finally:
        await pc1.close()
        await pc2.close()

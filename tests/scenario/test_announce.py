"""A server behind a 1:1 NAT (`--announce-addresses`): it binds 127.0.0.1 and tells browsers 127.0.0.3, where a
user-space NAT forwards each media port to the same port of 127.0.0.1. The classroom's own candidates are made
unreachable (their port changed to a closed one, as a school's private address is from a cloud server), so the only
way its media can flow is through the announced address: the classroom decodes, and the NAT counts the packets."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from tests.scenario.test_media_ports import _free_range
from tests.support import Classroom, Server, Teacher, free_port, hang_up, join_lesson

BOUND, PUBLIC = "127.0.0.1", "127.0.0.3"


class OneToOneNat(asyncio.DatagramProtocol):
    """PUBLIC:port <-> BOUND:port for one port: what comes from outside goes to the server (from PUBLIC:port), what
    the server sends back goes to whoever last came from outside."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.outside: tuple[str, int] | None = None
        self.inbound = self.outbound = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == (BOUND, self.port):
            if self.outside is not None:
                self.outbound += 1
                self.transport.sendto(data, self.outside)
        else:
            self.outside = addr
            self.inbound += 1
            self.transport.sendto(data, (BOUND, self.port))


def unreachable_candidates(sdp: str) -> str:
    """The classroom's host candidates on a port where nothing listens: the server cannot reach it directly."""
    dead = free_port()
    return re.sub(r"^(a=candidate:\S+ \d+ udp \d+ \S+) \d+ (typ host.*)$", rf"\1 {dead} \2", sdp, flags=re.M)


@pytest.mark.slow
async def test_media_flows_through_the_announced_address_of_a_one_to_one_nat(tmp_path: Path, monkeypatch) -> None:
    import aioice.ice as aioice_ice
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [BOUND] if use_ipv4 else [])
    first, last = _free_range(12)
    loop = asyncio.get_running_loop()
    nats: list[OneToOneNat] = []
    for port in range(first, last + 1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((PUBLIC, port))
        _, nat = await loop.create_datagram_endpoint(lambda port=port: OneToOneNat(port), sock=sock)
        nats.append(nat)
    server = Server(tmp_path, env={"KETANG_MEDIA_ADDRESSES": BOUND, "KETANG_MEDIA_PORTS": f"{first}-{last}",
                                   "KETANG_ANNOUNCE_ADDRESSES": f"{BOUND}={PUBLIC}"})
    server.wait_ready()
    lesson = "nat"
    room = teacher = None
    try:
        room = Classroom(await join_lesson(server, "classroom", lesson, "school"),
                         answer_filter=unreachable_candidates)
        offer = await room.ws.wait_for(lambda m: m.get("type") == "offer")
        offered = re.findall(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", offer["sdp"], flags=re.M)
        assert offered and {address for address, _ in offered} == {PUBLIC}, offered
        assert all(first <= int(port) <= last for _, port in offered), offered
        assert f"c=IN IP4 {PUBLIC}" in offer["sdp"]
        teacher = Teacher(await join_lesson(server, "teacher", lesson, "Ms Li"))
        answer = await teacher.publish()
        assert answer["type"] == "answer" and f" {PUBLIC} " in answer["sdp"], answer
        await room.wait_frames(60, timeout_s=20)
        carried = {nat.port: (nat.inbound, nat.outbound) for nat in nats if nat.inbound or nat.outbound}
        print("packets through the NAT (in, out) by port:", carried)
        # the classroom's receiving connection: its media came out through the NAT (60 frames of video: 2 s, with
        # the audio well over 100 packets)
        assert max(out for _, out in carried.values()) > 100, carried
    finally:
        await hang_up(*(p for p in (room, teacher) if p is not None))
        server.stop()
        for nat in nats:
            if nat.transport is not None:
                nat.transport.close()

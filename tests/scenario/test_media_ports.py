"""Media ports a firewall can allow: with `--media-addresses 127.0.0.1` and a media port range, every UDP socket
of a live lesson's server is on that address within that range (read from the process's socket table), the
classrooms decode, and the range is handed out round it with ports in use skipped."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import psutil
import pytest

from sfu.seams import MediaPorts, _RangedLoop, set_media_ports
from tests.support import Classroom, Server, Teacher, free_port, hang_up, join_lesson


def _free_range(size: int) -> tuple[int, int]:
    """`size` consecutive UDP ports nobody holds now (probed by binding them)."""
    for _ in range(50):
        first = free_port()
        if first + size > 65000:
            continue
        socks = []
        try:
            for port in range(first, first + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first, first + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


@pytest.mark.slow
async def test_every_media_socket_of_a_live_lesson_is_on_the_media_address_within_the_range(tmp_path: Path,
                                                                                            monkeypatch):
    import aioice.ice as aioice_ice
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else [])
    first, last = _free_range(40)
    server = Server(tmp_path, env={"KETANG_MEDIA_ADDRESSES": "127.0.0.1", "KETANG_MEDIA_PORTS": f"{first}-{last}"})
    server.wait_ready()
    lesson = "firewall"
    rooms: list[Classroom] = []
    teacher = None
    try:
        rooms = [Classroom(await join_lesson(server, "classroom", lesson, f"school {i}")) for i in range(2)]
        teacher = Teacher(await join_lesson(server, "teacher", lesson, "Ms Li"))
        answer = await teacher.publish()
        assert answer["type"] == "answer", answer
        for room in rooms:
            await room.wait_frames(5, timeout_s=20)
        udp = psutil.Process(server.proc.pid).net_connections(kind="udp")
        assert len(udp) >= 3  # the teacher's and both classrooms' peer connections
        outside = [c.laddr for c in udp if c.laddr.ip != "127.0.0.1" or not first <= c.laddr.port <= last]
        assert outside == [], f"media sockets outside 127.0.0.1:{first}-{last}: {outside}"
    finally:
        await hang_up(*rooms, *([teacher] if teacher else []))
        server.stop()


@pytest.mark.parametrize(("text", "expected"), [("40000-49999", (40000, 49999)), ("50000", (50000, 50000)),
                                                (" 40000-40001 ", (40000, 40001))])
def test_a_range_is_read_from_its_text(text: str, expected: tuple[int, int]):
    ports = MediaPorts.parse(text)
    assert (ports.first, ports.last) == expected


@pytest.mark.parametrize("text", ["", "abc", "49999-40000", "80-90", "40000-70000", "1-2-3"])
def test_a_bad_range_is_refused_with_what_to_give(text: str):
    with pytest.raises(ValueError, match="media ports"):
        MediaPorts.parse(text)


def test_the_range_is_handed_out_round_it():
    ports = MediaPorts(40000, 40002)
    walk = ports.candidates()
    assert next(walk) == 40000  # taken: the next walk starts after it, and goes round
    assert list(ports.candidates()) == [40001, 40002, 40000]


async def test_a_port_in_use_is_skipped_and_a_full_range_says_so():
    first, last = _free_range(2)
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", first))
    try:
        set_media_ports(MediaPorts(first, last))
        loop = _RangedLoop(asyncio.get_running_loop())
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        assert transport.get_extra_info("sockname")[1] == last  # `first` is held by someone else
        with pytest.raises(OSError, match="no free UDP port in the media range"):
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        transport.close()
    finally:
        set_media_ports(None)
        held.close()

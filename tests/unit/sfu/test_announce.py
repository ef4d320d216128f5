"""`--announce-addresses`: the server's descriptions as browsers see them behind a 1:1 NAT (pure text rewriting)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sfu.peers.sdp import announce, set_announced_addresses

SDP = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 40001 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 10.0.0.5",
    "a=candidate:1 1 udp 2130706431 10.0.0.5 40001 typ host",
    "a=candidate:2 1 udp 2130706431 192.168.7.2 40002 typ host",
    "a=candidate:3 1 udp 2130706431 fd00::5 40003 typ host",
    "a=candidate:4 1 udp 1694498815 198.51.100.9 40001 typ srflx raddr 10.0.0.5 rport 40001",
    "a=end-of-candidates", "",
])


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    set_announced_addresses([])


def _candidates(sdp: str) -> list[str]:
    return [line.split(" ")[4] for line in sdp.split("\r\n") if line.startswith("a=candidate:")]


def test_nothing_announced_leaves_the_description_as_it_is() -> None:
    set_announced_addresses([])
    assert announce(SDP) == SDP


def test_one_public_address_replaces_every_ipv4_host_candidate_and_the_c_line_only() -> None:
    set_announced_addresses(["203.0.113.7"])
    out = announce(SDP)
    assert _candidates(out) == ["203.0.113.7", "203.0.113.7", "fd00::5", "198.51.100.9"]
    assert "c=IN IP4 203.0.113.7" in out
    assert " 40001 typ host" in out and " 40002 typ host" in out  # the ports stay
    assert "raddr 10.0.0.5" in out  # a server-reflexive candidate already says where it is seen


def test_a_mapping_replaces_its_own_bound_address_only_ipv6_too() -> None:
    set_announced_addresses(["10.0.0.5=203.0.113.7", " fd00::5=2001:db8::7 "])
    assert _candidates(announce(SDP)) == ["203.0.113.7", "192.168.7.2", "2001:db8::7", "198.51.100.9"]


@pytest.mark.parametrize("entry", ["ketang.example.cn", "10.0.0.5=", "=203.0.113.7", "300.1.1.1", "2001:db8::7",
                                   "10.0.0.5=public"])
def test_anything_but_ip_addresses_is_refused_naming_the_entry(entry: str) -> None:
    with pytest.raises(ValueError, match="announce address"):
        set_announced_addresses([entry])

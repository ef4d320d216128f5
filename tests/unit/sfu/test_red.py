"""RED (RFC 2198) towards classrooms: the encoder's payloads read back block by block, what it leaves out, and the
offer/answer text (sfu/rtp/red.py, sfu/peers/sdp.py offer_red / answered_red)."""

from __future__ import annotations

import pytest
from aiortc import sdp

from sfu.peers.sdp import answered_red, offer_red
from sfu.rtp.red import MAX_BLOCK, RedEncoder, red_blocks

OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0", "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1", "a=ssrc:1 cname:x",
    "m=video 9 UDP/TLS/RTP/SAVPF 97 98", "c=IN IP4 0.0.0.0", "a=mid:1", "a=rtpmap:97 VP8/90000",
    "a=rtpmap:98 rtx/90000", "a=fmtp:98 apt=97", ""])


def test_each_packet_carries_the_previous_one_and_reads_back() -> None:
    red = RedEncoder(111)
    first = red.encode(1000, b"one")
    assert red_blocks(first) == [(111, 0, b"one")]  # nothing before it: the primary alone
    second = red.encode(1960, b"two!")
    assert red_blocks(second) == [(111, 960, b"one"), (111, 0, b"two!")]
    assert second[:4] == bytes((0x80 | 111,)) + ((960 << 10) | 3).to_bytes(3, "big")


def test_what_red_cannot_describe_is_left_out() -> None:
    red = RedEncoder(111)
    red.encode(0, bytes(MAX_BLOCK + 1))
    assert len(red_blocks(red.encode(960, b"x"))) == 1  # the previous block is too long
    red.encode(100_000, b"y")
    assert len(red_blocks(red.encode(100_000 + (1 << 14), b"z"))) == 1  # its timestamp too far behind
    red.reset()
    assert len(red_blocks(red.encode(200_000, b"w"))) == 1


def test_a_broken_red_payload_is_refused() -> None:
    with pytest.raises(ValueError):
        red_blocks(bytes((0x80 | 111, 0, 0x0F, 0xFF, 111)) + b"short")
    with pytest.raises(ValueError):
        red_blocks(b"")


def test_the_offer_gets_red_after_opus_and_an_answer_that_keeps_it_is_read() -> None:
    offer = offer_red(OFFER)
    parsed = sdp.SessionDescription.parse(offer)  # aiortc's parser takes it
    assert [c.name for c in parsed.media[0].rtp.codecs] == ["opus", "red"]
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111 63" in offer and "a=fmtp:63 111/111" in offer
    assert [c.name for c in parsed.media[1].rtp.codecs] == ["VP8", "rtx"]  # video untouched
    assert offer_red(offer) == offer  # once
    assert answered_red(offer) == {"0": (63, 111)}
    assert answered_red(OFFER) == {}
    # an answer that names RED with a block of another codec, or drops it from its m-line, does not count
    assert answered_red(offer.replace("a=fmtp:63 111/111", "a=fmtp:63 0/0")) == {}
    assert answered_red(offer.replace("SAVPF 111 63", "SAVPF 111")) == {}

"""Simulcast building blocks: SDP (parse the teacher's RIDs, munge aiortc's answer), the layer demux, the VP8
descriptor rewriter, layer selection over link traces, and one subscriber's layer switching.

Real VP8 comes from aiortc's encoder (``encode_clip`` from test_forwarding) at three sizes; TL0PICIDX and the
temporal index, which aiortc's packetizer does not write, are added to those real descriptors the way
Chromium's L1T3 encoder fills them. The last test runs headless Chromium against an aiortc peer connection
in this process.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
import types
from dataclasses import dataclass
from itertools import pairwise

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import depayload, get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from loadtest.bench.simulcast import OutputCheck
from recorder.record.depacketize import vp8_dimensions
from sfu.adapt.select import (
    DOWN_HOLD_S,
    TRIAL_MAX_S,
    UP_AFTER_S,
    LayerReport,
    LayerSelector,
)
from sfu.consumer.base import ResumePoint
from sfu.consumer.simulcast import SimulcastConsumer
from sfu.producer import Producer
from sfu.rtp.header import RTP_HEADER, RTP_HEADER_LEN, ExtensionLayout
from sfu.rtp.vp8 import (
    Vp8Rewriter,
    vp8_descriptor_len,
    vp8_is_keyframe_start,
    vp8_parse_descriptor,
    vp8_picture_id,
)
from sfu.simulcast.demux import BITRATE_WINDOW_S, LAYER_IDLE_S, LayerDemux
from sfu.simulcast.sdp import (
    MAX_LAYERS,
    URI_RID,
    URI_RRID,
    SimulcastOffer,
    add_rid_extensions,
    layers_low_to_high,
    munge_answer,
    parse_simulcast_offer,
)
from sfu.simulcast.switch import PENDING_MAX_S, LayerSwitcher, Out
from tests.clock import FakeClock
from tests.unit.sfu import test_forwarding
from tests.unit.sfu.test_forwarding import VIDEO_CLOCK, Frame, encode_clip

# fixtures shared with other modules: the real VP8 clip, and headless Debian chromium
clip = test_forwarding.clip

# -- SDP ---------------------------------------------------------------------------------------------------------

# Chromium's offer for one audio track and one video track with sendEncodings f, h, q (captured from the
# Debian chromium used by the browser tests; the codec list shortened to VP8, RTX and one H264)
CHROMIUM_OFFER = "\r\n".join([
    "v=0", "o=- 8452247642862667414 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed", "a=msid-semantic: WMS",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:JRFV", "a=ice-pwd:ww7lEAeotLHUl/yi3KjINGsL", "a=ice-options:trickle",
    "a=fingerprint:sha-256 36:3D:DB:88:B3:5F:FD:50:A3:3A:92:CF:E6:23:19:FE:54:1D:9C:8A:5D:F1:CD:D7:97:9B:7A:35:86:6F:70:DE",
    "a=setup:actpass", "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendonly", "a=msid:- 89357b7c-1d0d-4700-98c5-188394a26428", "a=rtcp-mux", "a=rtcp-rsize",
    "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc", "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=ssrc:3831016669 cname:FaxUwLLnv+ybt5Iq",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103", "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:JRFV", "a=ice-pwd:ww7lEAeotLHUl/yi3KjINGsL", "a=ice-options:trickle",
    "a=fingerprint:sha-256 36:3D:DB:88:B3:5F:FD:50:A3:3A:92:CF:E6:23:19:FE:54:1D:9C:8A:5D:F1:CD:D7:97:9B:7A:35:86:6F:70:DE",
    "a=setup:actpass", "a=mid:1",
    "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:13 urn:3gpp:video-orientation",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "a=sendonly", "a=msid:- bb095149-12b2-4664-8e58-e96dc5ea7888", "a=rtcp-mux", "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 goog-remb", "a=rtcp-fb:96 transport-cc", "a=rtcp-fb:96 ccm fir",
    "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli", "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96",
    "a=rtpmap:102 H264/90000", "a=rtcp-fb:102 nack", "a=rtcp-fb:102 nack pli",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=rtpmap:103 rtx/90000", "a=fmtp:103 apt=102",
    "a=rid:f send", "a=rid:h send", "a=rid:q send", "a=simulcast:send f;h;q",
]) + "\r\n"


def _section(sdp_text: str, mid: str) -> list[str]:
    sections = sdp_text.split("\r\nm=")
    return next(("m=" + s).splitlines() for s in sections[1:] if f"a=mid:{mid}" in s.splitlines())


def test_the_offer_names_three_rids_and_the_rid_extension_ids_of_the_video_section() -> None:
    offers = parse_simulcast_offer(CHROMIUM_OFFER)
    assert offers == {"1": SimulcastOffer("1", ("f", "h", "q"), 10, 11)}
    assert layers_low_to_high(offers["1"]) == ("q", "h", "f")


async def _aiortc_answer(offer: str, rid_extensions: bool = False) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        if rid_extensions:
            for t in pc.getTransceivers():
                found = parse_simulcast_offer(offer).get(t.mid or "")
                if found:
                    add_rid_extensions(t, found)
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def test_aiortc_drops_the_rids_and_the_munged_answer_accepts_them_with_the_offers_ids() -> None:
    answer = await _aiortc_answer(CHROMIUM_OFFER)
    # what aiortc 1.16 does on its own: no RID extension, no a=rid, no a=simulcast
    assert "rtp-stream-id" not in answer and "a=rid" not in answer and "a=simulcast" not in answer
    munged = munge_answer(answer, parse_simulcast_offer(CHROMIUM_OFFER))
    video = _section(munged, "1")
    assert [x for x in video if x.startswith(("a=rid", "a=simulcast"))] == [
        "a=rid:f recv", "a=rid:h recv", "a=rid:q recv", "a=simulcast:recv f;h;q"]
    assert f"a=extmap:10 {URI_RID}" in video and f"a=extmap:11 {URI_RRID}" in video
    assert _section(munged, "0") == _section(answer, "0")  # audio untouched
    assert munged.endswith("\r\n") and "\n" not in munged.replace("\r\n", "")
    # still an SDP aiortc reads, with the extensions in the video section
    parsed = aiortc_sdp.SessionDescription.parse(munged)
    uris = {e.uri: e.id for e in parsed.media[1].rtp.headerExtensions}
    assert uris[URI_RID] == 10 and uris[URI_RRID] == 11
    assert munge_answer(munged, parse_simulcast_offer(CHROMIUM_OFFER)) == munged  # idempotent


async def test_with_the_extensions_in_aiortcs_negotiated_list_its_answer_lists_them_and_munging_adds_no_copy() -> None:
    answer = await _aiortc_answer(CHROMIUM_OFFER, rid_extensions=True)
    assert f"a=extmap:10 {URI_RID}" in answer
    munged = munge_answer(answer, parse_simulcast_offer(CHROMIUM_OFFER))
    assert sum(URI_RID in x for x in munged.splitlines()) == 1
    assert "a=simulcast:recv f;h;q" in munged


def _video_offer(*lines: str, port: int = 9) -> str:
    return "\r\n".join(["v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
                        f"m=video {port} UDP/TLS/RTP/SAVPF 96", "a=mid:v", "a=sendonly",
                        "a=rtpmap:96 VP8/90000", *lines]) + "\r\n"


RID_EXT = f"a=extmap:7 {URI_RID}"
RRID_EXT = f"a=extmap:8/sendonly {URI_RRID}"


@pytest.mark.parametrize("lines, expected", [
    # alternatives ("a,b"): the first declared one; "~" marks a paused stream
    ((RID_EXT, RRID_EXT, "a=rid:a send", "a=rid:b send", "a=rid:c send pt=96;max-width=320",
      "a=simulcast:send a,b;~c"), SimulcastOffer("v", ("a", "c"), 7, 8, ("c",))),
    # a RID declared for receiving, or never declared, is not a layer we receive
    ((RID_EXT, "a=rid:x recv", "a=rid:y send", "a=rid:z send", "a=simulcast:send x;y;z;w"),
     SimulcastOffer("v", ("y", "z"), 7, 0)),
    # more layers than MAX_LAYERS: the first ones are kept
    ((RID_EXT, *[f"a=rid:r{i} send" for i in range(6)], "a=simulcast:send " + ";".join(f"r{i}" for i in range(6))),
     SimulcastOffer("v", tuple(f"r{i}" for i in range(MAX_LAYERS)), 7, 0)),
    # "recv" listed first, duplicates collapse
    ((RID_EXT, "a=rid:p send", "a=rid:q send", "a=simulcast:recv z send p;q;p"), SimulcastOffer("v", ("p", "q"), 7, 0)),
])
def test_simulcast_attributes_are_read_as_rfc_8853_writes_them(lines, expected) -> None:
    assert parse_simulcast_offer(_video_offer(*lines)) == {"v": expected}


@pytest.mark.parametrize("text", [
    _video_offer("a=rid:f send", "a=rid:h send", "a=simulcast:send f;h"),  # no RID extension: not demuxable
    _video_offer(RID_EXT, "a=rid:f send", "a=simulcast:send f"),  # one layer is not simulcast
    _video_offer(RID_EXT, "a=rid:f send", "a=rid:h send"),  # no a=simulcast
    _video_offer(RID_EXT, "a=rid:f send", "a=rid:h send", "a=simulcast:send f;h", port=0),  # rejected
    _video_offer(RID_EXT, "a=rid:this-rid-is-far-too-long send", "a=rid:ok send",
                 "a=simulcast:send this-rid-is-far-too-long;ok"),  # a RID longer than an extension can carry
    _video_offer(RID_EXT, "a=rid:f send", "a=rid:h send", "a=simulcast:send f;h").replace("a=sendonly", "a=recvonly"),
    "", "v=0", "garbage\r\nm=video\r\na=simulcast\r\na=rid\r\na=extmap:x y\r\n", None, 42, b"v=0",
])
def test_offers_without_usable_simulcast_and_garbage_give_nothing(text) -> None:
    assert parse_simulcast_offer(text) == {}


def test_random_text_never_makes_the_parser_or_the_munger_raise() -> None:
    rng = random.Random(5)
    pieces = ["m=video 9 X 96", "m=audio 0 X", "a=mid:v", "a=mid:", "a=rid:", "a=rid:f send", "a=rid:f",
              "a=simulcast:", "a=simulcast:send", "a=simulcast:send ;;~", "a=simulcast:send f;h",
              f"a=extmap:7 {URI_RID}", "a=extmap:999 x", "a=extmap:", "a=extmap:7", "a=recvonly", "\x00", "é"]
    for _ in range(2000):
        text = "\r\n".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        offers = parse_simulcast_offer(text)
        munge_answer(text, offers)
        munge_answer(text, {"v": SimulcastOffer("v", ("f", "h"), 7, 8)})


def test_munging_leaves_a_rejected_or_send_only_section_and_an_id_clash_alone() -> None:
    offer = {"v": SimulcastOffer("v", ("f", "h"), 7, 8)}
    rejected = _video_offer(port=0).replace("a=sendonly", "a=recvonly")
    assert munge_answer(rejected, offer) == rejected
    sending = _video_offer()
    assert munge_answer(sending, offer) == sending
    clash = _video_offer("a=extmap:7 urn:ietf:params:rtp-hdrext:toffset").replace("a=sendonly", "a=recvonly")
    assert munge_answer(clash, offer) == clash
    # LF-only text keeps LF; a section with no extmap gets them after its media line
    plain = _video_offer().replace("a=sendonly", "a=recvonly").replace("\r\n", "\n")
    munged = munge_answer(plain, offer)
    assert "\r" not in munged
    assert munged.splitlines()[5:7] == [f"a=extmap:7 {URI_RID}", f"a=extmap:8 {URI_RRID}"]
    assert munged.splitlines()[-1] == "a=simulcast:recv f;h"


# -- VP8 descriptors ---------------------------------------------------------------------------------------------

def with_temporal(payload: bytes, tl0: int, tid: int, sync: bool = False) -> bytes:
    """A real aiortc VP8 payload with TL0PICIDX and TID/Y added to its descriptor, as Chromium's L1T3 sends."""
    d = vp8_parse_descriptor(payload)
    assert d is not None and d.picture_id_long and d.tl0picidx is None
    head = bytearray(payload[:d.size])
    head[1] |= 0x40 | 0x20  # L, T
    return bytes(head) + bytes((tl0 & 0xFF, (tid << 6) | (0x20 if sync else 0))) + payload[d.size:]


def test_real_encoder_payloads_parse_as_the_existing_helpers_read_them(clip) -> None:
    for frame in clip[:60]:
        for i, payload in enumerate(frame.payloads):
            d = vp8_parse_descriptor(payload)
            assert d is not None
            assert d.size == vp8_descriptor_len(payload)
            assert d.picture_id == vp8_picture_id(payload) and d.picture_id_long
            assert d.keyframe == vp8_is_keyframe_start(payload) == (frame.keyframe and i == 0)
            assert d.start == (i == 0) and d.partition == 0 and d.tl0picidx is None and d.tid is None


@pytest.mark.parametrize("payload, fields", [
    # X I M(15-bit) L T K: picture id 0x1234, TL0PICIDX 0xAB, TID 2 Y, KEYIDX 5, then a key frame header
    (bytes((0x90, 0xF0, 0x92, 0x34, 0xAB, 0xA5, 0x00)),
     dict(size=6, start=True, picture_id=0x1234, picture_id_long=True, picture_id_at=2, tl0picidx=0xAB,
          tl0picidx_at=4, tid=2, layer_sync=True, keyidx=5, keyframe=True)),
    # 7-bit picture id, no L/T/K, a delta frame (P=1)
    (bytes((0x90, 0x80, 0x05, 0x01)), dict(size=3, picture_id=5, picture_id_long=False, tl0picidx=None, keyframe=False)),
    # only K: KEYIDX without TID
    (bytes((0x80, 0x10, 0x1F, 0x00)), dict(size=3, tid=None, keyidx=31, picture_id=None, keyframe=False)),
    # no extension octet; N bit, partition 3, not a start
    (bytes((0x23, 0x00)), dict(size=1, non_reference=True, partition=3, start=False, keyframe=False)),
    # descriptor only, no VP8 payload header: parsed, but nothing starts here
    (bytes((0x90, 0x80, 0x85, 0x01)), dict(size=4, picture_id=0x501, keyframe=False)),
])
def test_hand_built_descriptors_give_every_field(payload, fields) -> None:
    d = vp8_parse_descriptor(payload)
    assert d is not None
    for name, value in fields.items():
        assert getattr(d, name) == value, name


@pytest.mark.parametrize("payload", [b"", b"\x80", b"\x90\x80", b"\x90\x80\x85", b"\x90\x40", b"\x90\x20",
                                     b"\x90\xe0\x85\x01\x07"])
def test_a_truncated_descriptor_is_none(payload) -> None:
    assert vp8_parse_descriptor(payload) is None


def test_random_bytes_never_make_the_descriptor_parser_raise_and_agree_with_the_old_helpers() -> None:
    rng = random.Random(11)
    for _ in range(20000):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 8)))
        d = vp8_parse_descriptor(payload)
        try:
            size = vp8_descriptor_len(payload)
        except ValueError:
            size = None
        if d is not None:
            assert d.size == size
            assert d.keyframe == vp8_is_keyframe_start(payload)
            assert d.picture_id == vp8_picture_id(payload)


def _pid(payload: bytes) -> int:
    d = vp8_parse_descriptor(payload)
    assert d is not None and d.picture_id is not None
    return d.picture_id


def test_the_rewriter_continues_picture_ids_across_sources_each_numbered_its_own_way(clip) -> None:
    rw = Vp8Rewriter()
    a = clip[:10]
    b = encode_clip(12, (0, 6))  # another encoder: its own random picture id start
    assert _pid(a[0].payloads[0]) != _pid(b[0].payloads[0])
    out: list[int] = []
    for frame in a:
        out += [_pid(rw.rewrite(p, "a")) for p in frame.payloads]
    assert out[0] == _pid(a[0].payloads[0])  # the first source passes through unchanged...
    assert Vp8Rewriter().rewrite(a[0].payloads[0], "a") is a[0].payloads[0]  # ...not even copied
    for frame in b[6:]:  # switched at b's key frame
        for p in frame.payloads:
            q = rw.rewrite(p, "b")
            assert len(q) == len(p) and q[_pid_end(p):] == p[_pid_end(p):]  # only the id changed
            out.append(_pid(q))
    firsts = _frame_starts(out)
    assert all((y - x) % 32768 == 1 for x, y in pairwise(firsts)), firsts
    # a retransmission of a's packets after the switch keeps a's numbers; live state is untouched
    assert _pid(rw.remap(a[3].payloads[0], "a")) == _pid(a[3].payloads[0])
    assert rw.last_picture_id == out[-1] and rw.remap(a[3].payloads[0], "never seen") is None


def _pid_end(payload: bytes) -> int:
    d = vp8_parse_descriptor(payload)
    assert d is not None
    return d.picture_id_at + (2 if d.picture_id_long else 1)


def _frame_starts(pids: list[int]) -> list[int]:
    return [p for i, p in enumerate(pids) if i == 0 or p != pids[i - 1]]


def test_a_7_bit_picture_id_is_widened_to_15_bits_and_unwrapped_past_127() -> None:
    rw = Vp8Rewriter()
    first = bytes((0x90, 0x80, 0x80 | 0x7F, 0xF0, 0x10)) + b"\x00xx"  # 15-bit id 0x7FF0, key frame
    rw.rewrite(first, "long")
    ids = []
    for n in range(120, 140):  # a 7-bit source wrapping 127 -> 0 in the middle
        p = bytes((0x90, 0xC0, n & 0x7F, 9 + n, 0x01)) + b"yy"  # I and L: 7-bit id, TL0PICIDX
        q = rw.rewrite(p, "short")
        assert len(q) == len(p) + 1  # widened by one byte
        d = vp8_parse_descriptor(q)
        assert d is not None and d.picture_id_long and q[d.size:] == p[3 + 1:]
        ids.append(d.picture_id)
    assert ids == [(0x7FF0 + 1 + k) % 32768 for k in range(20)]


def test_tl0picidx_continues_across_a_switch_and_follows_the_base_layer() -> None:
    rw = Vp8Rewriter()

    def pkt(pid: int, tl0: int, tid: int, key: bool = False) -> bytes:
        return bytes((0x90, 0xE0, 0x80 | pid >> 8, pid & 0xFF, tl0 & 0xFF, tid << 6, 0x00 if key else 0x01))

    pattern = [0, 2, 1, 2]  # L1T3
    out = []
    for n in range(12):  # source a: TL0PICIDX 254, 255, 0: wraps
        tid = pattern[n % 4]
        out.append(rw.rewrite(pkt(100 + n, 254 + n // 4, tid), "a"))
    for n in range(8):  # source b from its key frame: TL0PICIDX 17..
        tid = pattern[n % 4]
        out.append(rw.rewrite(pkt(9000 + n, 17 + n // 4, tid, key=n == 0), "b"))
    descs = [vp8_parse_descriptor(p) for p in out]
    tl0s = [d.tl0picidx for d in descs]
    for prev, d, tl0 in zip(descs, descs[1:], tl0s[1:]):
        step = (tl0 - prev.tl0picidx) % 256
        assert step == (1 if d.tid == 0 else 0), tl0s
    assert [d.picture_id for d in descs] == [100 + n for n in range(20)]


def test_payloads_without_picture_id_or_tl0_pass_through_and_garbage_never_raises() -> None:
    rw = Vp8Rewriter()
    assert rw.rewrite(b"\x10\x00abc", "a") == b"\x10\x00abc"
    assert rw.rewrite(b"", "a") == b""
    rng = random.Random(3)
    for i in range(5000):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 10)))
        rw.rewrite(payload, i % 3)
        rw.remap(payload, i % 5)


# -- the layer demux ---------------------------------------------------------------------------------------------

RID_ID, RRID_ID, OTHER_ID = 10, 11, 3
VP8_PT, RTX_PT = 96, 97


def rtp(ssrc: int, seq: int, ts: int, payload: bytes, ext: dict[int, bytes] | None = None, marker: int = 0,
        pt: int = VP8_PT, two_byte: bool = False, padding: int = 0) -> bytes:
    """An RTP packet with RFC 8285 header extensions."""
    body = bytearray()
    for ext_id, value in (ext or {}).items():
        body += bytes((ext_id, len(value))) if two_byte else bytes(((ext_id << 4) | (len(value) - 1),))
        body += value
    while len(body) % 4:
        body.append(0)
    b0 = 0x80 | (0x10 if ext else 0) | (0x20 if padding else 0)
    head = struct.pack("!BBHII", b0, (marker << 7) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    if ext:
        head += struct.pack("!HH", 0x1000 if two_byte else 0xBEDE, len(body) // 4) + bytes(body)
    tail = bytes(padding - 1) + bytes((padding,)) if padding else b""
    return head + payload + tail


def test_ssrcs_are_learned_from_the_rid_on_first_packets_and_kept_after_it_is_gone(clip) -> None:
    demux = LayerDemux(("q", "h", "f"), RID_ID, RRID_ID)
    ssrcs = {"q": 111, "h": 222, "f": 333}
    payloads = [p for f in clip[:41] for p in f.payloads]  # key frames 0 and 40
    for n, payload in enumerate(payloads):
        for rid, ssrc in ssrcs.items():
            ext = {OTHER_ID: b"\x01\x02\x03"}
            if n < 3:  # Chromium stops sending the RID once a receiver report acknowledged the SSRC
                ext[RID_ID] = rid.encode()
            arrival = demux.receive(rtp(ssrc, 1000 + n, 0, payload, ext), now=n * 0.01)
            assert arrival is not None and arrival.layer == "qhf".index(rid) and not arrival.rtx
            assert arrival.keyframe == vp8_is_keyframe_start(payload)
    assert [s.ssrc for s in demux.layers] == [111, 222, 333]
    assert all(s.packets == len(payloads) and s.lost == 0 for s in demux.layers)
    assert demux.layers[0].keyframes == 2 and demux.unrouted == 0


def test_loss_bitrate_keyframe_time_and_rtx_repairs_are_counted_per_layer() -> None:
    demux = LayerDemux(("q", "h"), RID_ID, RRID_ID)
    key = bytes((0x90, 0x80, 0x80, 0x01, 0x00)) + bytes(95)  # a key frame start, 100 bytes
    delta = bytes((0x90, 0x80, 0x80, 0x01, 0x01)) + bytes(95)
    lost = {5, 6, 9}
    for n in range(20):
        if n in lost:
            continue
        demux.receive(rtp(7, 65530 + n, 0, key if n == 10 else delta, {RID_ID: b"h"} if n == 0 else None),
                      now=100.0 + n * 0.1)
    h = demux.layers[1]
    assert (h.packets, h.bytes, h.lost, h.expected) == (17, 1700, 3, 20)  # across the 16-bit wrap
    assert h.last_keyframe_at == pytest.approx(101.0) and h.keyframes == 1
    assert h.bitrate_bps(101.9) == pytest.approx(10 * 100 * 8 / BITRATE_WINDOW_S)  # the 10 after 100.9
    assert h.active(101.9) and not h.active(101.9 + LAYER_IDLE_S + 0.01)
    assert demux.rates(101.9) == (0.0, pytest.approx(8000.0))
    # RTX: named by the repaired RID; original seq first in its payload
    repair = demux.receive(rtp(8, 1, 0, struct.pack("!H", (65530 + 6) & 0xFFFF) + delta, {RRID_ID: b"h"},
                               pt=RTX_PT), now=102.0)
    assert repair is not None and repair.rtx and repair.repair and repair.layer == 1
    probe = demux.receive(rtp(8, 2, 0, struct.pack("!H", (65530 + 7) & 0xFFFF) + delta, pt=RTX_PT), now=102.0)
    assert probe is not None and probe.rtx and not probe.repair  # 7 was never missing: a bandwidth probe
    again = demux.receive(rtp(8, 3, 0, struct.pack("!H", (65530 + 6) & 0xFFFF) + delta, pt=RTX_PT), now=102.0)
    assert again is not None and not again.repair  # already repaired
    assert (h.rtx_ssrc, h.rtx_repairs, h.rtx_probes, h.lost) == (8, 1, 2, 2)
    # a late original counts as received, not lost; padding counts for the sequence, not the rate
    demux.receive(rtp(7, (65530 + 9) & 0xFFFF, 0, delta), now=102.0)
    demux.receive(rtp(7, (65530 + 20) & 0xFFFF, 0, b"", padding=4), now=102.0)
    assert (h.lost, h.padding, h.packets) == (1, 1, 18)


def test_two_byte_extensions_rebinding_and_unknown_rids() -> None:
    demux = LayerDemux(("lo", "hi"), 20, 21)  # ids above 14 need the two-byte form
    payload = bytes((0x90, 0x80, 0x80, 0x01, 0x01, 0x00))
    assert demux.receive(rtp(1, 1, 0, payload, {20: b"hi"}, two_byte=True), 0.0).layer == 1
    assert demux.receive(rtp(2, 1, 0, payload, {20: b"zz"}, two_byte=True), 0.0) is None
    assert demux.receive(rtp(3, 1, 0, payload), 0.0) is None  # never named
    assert (demux.unknown_rid, demux.unrouted) == (1, 1)
    # the browser re-created its encoder: "hi" moves to a new SSRC, the old one is forgotten
    assert demux.receive(rtp(4, 500, 0, payload, {20: b"hi"}, two_byte=True), 0.0).layer == 1
    assert demux.receive(rtp(1, 2, 0, payload), 0.0) is None
    assert demux.rebinds == 1 and demux.layers[1].ssrc == 4


def test_garbage_never_makes_the_demux_raise() -> None:
    demux = LayerDemux(("q", "h", "f"), RID_ID, RRID_ID)
    rng = random.Random(9)
    good = rtp(5, 1, 0, b"\x90\x80\x80\x01\x00", {RID_ID: b"q"})
    for _ in range(20000):
        n = rng.randrange(0, 40)
        data = bytes(rng.getrandbits(8) for _ in range(n))
        if rng.random() < 0.5:  # mutate a valid packet instead
            data = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            data = bytes(data[:rng.randrange(len(data) + 1)])
        demux.receive(data, now=rng.random())
    assert demux.malformed > 0
    demux.stats(1.0)


# -- layer selection over link traces ----------------------------------------------------------------------------

TICK_S = 0.25  # Chromium sends REMB every 200-250 ms
RR_EVERY_TICKS = 4  # and a receiver report about once a second
LAYER_BPS = (150_000.0, 500_000.0, 1_500_000.0)  # 180p, 360p, 720p as the teacher sends them
# the classroom's link capacity in kbit/s, one entry per second: 2 Mbit/s, a drop to 300 kbit/s at 40 s,
# back at 70 s
LINK_KBPS = [2000] * 40 + [300] * 30 + [2000] * 90
# loss bursts on the link (from s, to s, fraction lost): one short burst (one lossy report), one sustained
LOSS_BURSTS = [(33.0, 33.5, 0.30), (120.0, 122.5, 0.30)]


@dataclass
class Tick:
    t: float
    layer: int
    state: str
    reason: str
    remb: int
    loss: float


def run_link(link_kbps: list[int], bursts: list[tuple[float, float, float]],
             rates: tuple[float, ...] = LAYER_BPS, start_layer: int = 0) -> list[Tick]:
    """Closed loop: the selector's choice sets what the classroom receives; a receiver modelled on Chromium's
    delay-based estimate answers with REMB (grows ~8 %/s up to 1.5x what arrives; 0.85x of what gets through
    on overuse) and receiver reports (the loss over the last second)."""
    selector = LayerSelector(0.0, start_layer)
    estimate = 300_000.0  # Chromium's start estimate
    losses: list[float] = []
    report = (0.0, None)
    out = []
    for k in range(int(len(link_kbps) / TICK_S)):
        t = k * TICK_S
        capacity = link_kbps[int(t)] * 1000
        sent = rates[selector.layer]
        if sent <= capacity:
            estimate, loss = min(estimate * 1.08 ** TICK_S, 1.5 * sent), 0.0
        else:
            estimate, loss = 0.85 * capacity, (sent - capacity) / sent
        for start, end, fraction in bursts:
            if start <= t < end:
                loss = max(loss, fraction)
        losses.append(loss)
        if k % RR_EVERY_TICKS == RR_EVERY_TICKS - 1:
            report = (sum(losses[-RR_EVERY_TICKS:]) / RR_EVERY_TICKS, t)
        layer = selector.update(LayerReport(int(estimate), t, report[0], report[1], rates), t)
        out.append(Tick(t, layer, selector.state, selector.reason, int(estimate), report[0]))
    return out


def changes(ticks: list[Tick]) -> list[tuple[Tick, Tick]]:
    """(before, after) for every tick where the layer or the state changed."""
    return [(a, b) for a, b in pairwise(ticks) if (a.layer, a.state) != (b.layer, b.state)]


def test_a_link_dropping_to_300_kbit_and_back_goes_down_at_once_and_up_by_tries_with_growing_back_off() -> None:
    ticks = run_link(LINK_KBPS, LOSS_BURSTS)
    at = {round(x.t, 2): x for x in ticks}
    log = [f"{b.t:6.2f} {a.layer}->{b.layer} {b.state} {b.reason}" for a, b in changes(ticks)]

    # up from 180p to 720p by two tries that succeed (the REMB never shows room for the next layer by itself)
    first_720p = next(x.t for x in ticks if x.layer == 2 and x.state == "steady")
    assert first_720p < 40, log
    assert [b.reason for a, b in changes(ticks) if b.t < first_720p + 1] == [
        "trying layer 1", "try succeeded", "trying layer 2", "try succeeded"], log
    # one lossy report (the short burst at 33 s) changes nothing
    assert {x.layer for x in ticks if first_720p <= x.t < 40} == {2}, log

    # the drop: straight from 720p to 180p within the hold time, not through 360p
    down = next((a, b) for a, b in changes(ticks) if b.t >= 40)
    assert (down[0].layer, down[1].layer) == (2, 0) and down[1].t <= 40 + DOWN_HOLD_S + 2 * TICK_S, log

    # on 300 kbit/s: tries of 360p fail at once, each waiting twice as long; 720p is never tried
    poor = [x for x in ticks if down[1].t <= x.t < 70]
    assert max(x.layer for x in poor) == 1
    assert sum(TICK_S for x in poor if x.layer > 0) <= 4.0, log
    tries = [b.t for a, b in changes(ticks) if b.state == "trial" and down[1].t <= b.t < 70]
    assert len(tries) >= 2 and tries[1] - tries[0] >= 2 * UP_AFTER_S, log

    # back at 2 Mbit/s: 720p again; the sustained loss at 120 s takes it one layer down, and it comes back
    assert at[119.0].layer == 2 and at[119.0].state == "steady", log
    after_burst = [b for a, b in changes(ticks) if 120 <= b.t < 124]
    assert [(b.layer, b.reason.split()[0]) for b in after_burst] == [(1, "loss")], log
    assert ticks[-1].layer == 2 and ticks[-1].state == "steady", log

    # no flapping: a try starts only after UP_AFTER_S without any change, and nothing else moves up
    for (a, b), prev in zip(changes(ticks)[1:], changes(ticks)):
        if b.layer > a.layer:
            assert b.state == "trial" and b.t - prev[1].t >= UP_AFTER_S, log
    assert len(changes(ticks)) <= 20, log


def test_a_remb_that_dips_below_the_layer_now_and_then_does_not_switch_a_sustained_one_does() -> None:
    selector = LayerSelector(0.0, start_layer=2)
    # recorded REMB (kbit/s), one every 250 ms, on 720p (1.5 Mbit/s: the down threshold is 1.2 Mbit/s):
    # dips of 250-750 ms below it, then a sustained fall
    remb_kbps = [1400, 1100, 1300, 1150, 1100, 1350, 1000, 1000, 1000, 1400, 1500, 1100, 1450] * 3 \
        + [1000, 950, 900, 900, 880, 870]
    layers = []
    for k, remb in enumerate(remb_kbps):
        t = 10.0 + k * TICK_S
        layers.append(selector.update(LayerReport(remb * 1000, t, 0.0, t, LAYER_BPS), t))
    dips = len(remb_kbps) - 6
    assert set(layers[:dips]) == {2}
    # the fall: down after DOWN_HOLD_S, to the largest layer that fits 0.8 x REMB (360p), once
    assert layers[dips:] == [2, 2, 2, 2, 1, 1] and selector.changes == 1


def test_a_layer_the_teacher_stops_sending_is_left_at_once_and_never_tried_while_it_is_missing() -> None:
    selector = LayerSelector(0.0, start_layer=2)
    no_top = (150_000.0, 500_000.0, 0.0)
    t = 0.0
    assert selector.update(LayerReport(None, None, 0.0, None, no_top), t) == 1
    assert selector.reason == "layer stopped by the teacher"
    for k in range(1, 200):  # 50 s without 720p: no try of it
        t = k * TICK_S
        assert selector.update(LayerReport(None, None, 0.0, None, no_top), t) == 1
    t += TICK_S
    assert selector.update(LayerReport(None, None, 0.0, None, LAYER_BPS), t) == 2  # back: tried at once
    assert selector.state == "trial"
    # nothing arriving at all: the choice stays as it was
    assert selector.update(LayerReport(None, None, 0.0, None, (0.0, 0.0, 0.0)), t + 1) == 2


def test_without_remb_a_try_is_judged_by_loss_alone_and_failures_double_the_wait() -> None:
    selector = LayerSelector(0.0)
    starts = []
    t = 0.0
    while t < 200:
        t += TICK_S
        before = selector.state
        # a receiver report every second; on a try the link loses 20 % (it cannot carry the layer)
        report_at = float(int(t))
        loss = 0.2 if selector.state == "trial" and report_at >= selector._since + 1 else 0.0
        selector.update(LayerReport(None, None, loss, report_at, LAYER_BPS), t)
        if selector.state == "trial" and before != "trial":
            starts.append(t)
    gaps = [b - a for a, b in pairwise(starts)]
    assert starts[0] == UP_AFTER_S
    assert all(later > earlier * 1.5 for earlier, later in pairwise(gaps)), gaps
    assert selector.failed_trials == len(starts) and selector.layer == 0
    # a classroom with a clean link and no REMB is moved up after TRIAL_S
    clean = LayerSelector(0.0)
    t = 0.0
    while clean.layer < 2 and t < 60:
        t += TICK_S
        clean.update(LayerReport(None, None, 0.0, float(int(t)), LAYER_BPS), t)
    assert clean.layer == 2 and clean.failed_trials == 0 and t < 2 * (UP_AFTER_S + TRIAL_MAX_S)


def test_stale_reports_say_nothing() -> None:
    selector = LayerSelector(0.0, start_layer=2)
    # one low REMB and one lossy report, then silence: after they go stale nothing moves
    selector.update(LayerReport(100_000, 1.0, 0.5, 1.0, LAYER_BPS), 1.0)
    for k in range(1, 40):
        t = 1.0 + 3.5 + k * TICK_S
        assert selector.update(LayerReport(100_000, 1.0, 0.5, 1.0, LAYER_BPS), t) == 2


# -- switching layers for one subscriber --------------------------------------------------------------------------

LAYER_SIZES = ((64, 48), (128, 96), (320, 240))
LAYER_KEYFRAMES = ((0, 30, 50), (0, 12, 40), (0, 22, 48))  # the layers' key frames come at different frames
SEQ_BASES = (100, 65500, 30000)  # each layer its own sequence (360p's wraps)
TS_BASES = (1000, 2**32 - 20000, 123456789)  # and its own timestamps (360p's wrap)
TL0_BASES = (3, 250, 77)
FRAME_S = 1 / 30
CHUNK = 120  # bytes of VP8 data per packet: frames span several packets, as at 720p
L1T3 = (0, 2, 1, 2)


@dataclass
class In:
    layer: int
    ext_seq: int
    ts: int
    marker: int
    keyframe: bool
    payload: bytes
    at: float
    frame: int
    index: int  # position in its frame
    count: int  # packets in its frame


def repacketize(frame: Frame, tl0: int, tid: int) -> list[bytes]:
    """The frame's VP8 data (from aiortc's encoder) in CHUNK-byte packets, descriptor with TL0PICIDX/TID."""
    first = frame.payloads[0]
    d = vp8_parse_descriptor(first)
    assert d is not None
    data = b"".join(p[vp8_descriptor_len(p):] for p in frame.payloads)
    head = with_temporal(first[:d.size] + b"\x00", tl0, tid)[:-1]
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    return [(head if i == 0 else bytes((head[0] & ~0x10,)) + head[1:]) + c for i, c in enumerate(chunks)]


@pytest.fixture(scope="module")
def simulcast() -> list[In]:
    """Three layers of one scene as the teacher's browser sends them: per frame, the layers' packets
    interleaved (so a layer's key frame starts while another layer's frame is half sent)."""
    clips = [encode_clip(60, keys, w, h) for (w, h), keys in zip(LAYER_SIZES, LAYER_KEYFRAMES)]
    counters = [0, 0, 0]
    tl0 = list(TL0_BASES)
    since_key = [0, 0, 0]
    packets: list[In] = []
    for n in range(60):
        per_layer = []
        for layer, frames in enumerate(clips):
            frame = frames[n]
            assert frame.keyframe == (n in LAYER_KEYFRAMES[layer])
            since_key[layer] = 0 if frame.keyframe else since_key[layer] + 1
            tid = L1T3[since_key[layer] % 4]
            if tid == 0 and n:
                tl0[layer] += 1
            payloads = repacketize(frame, tl0[layer], tid)
            rows = []
            for i, payload in enumerate(payloads):
                rows.append(In(layer, SEQ_BASES[layer] + 65536 + counters[layer],
                               (TS_BASES[layer] + frame.ts) & 0xFFFFFFFF, int(i == len(payloads) - 1),
                               frame.keyframe and i == 0, payload, 0.0, n, i, len(payloads)))
                counters[layer] += 1
            per_layer.append(rows)
        k = 0
        for i in range(max(len(r) for r in per_layer)):
            for rows in per_layer:
                if i < len(rows):
                    rows[i].at = n * FRAME_S + 0.0005 * k
                    packets.append(rows[i])
                    k += 1
    return packets


# the subscriber's target layer, set at the start of these frames; the switch waits for the target's key frame
PLAN = {5: 2, 25: 1, 44: 2, 49: 0}
# (frame, layer) of each frame sent. When the target's key frame starts while the current layer's frame of
# the same instant is half sent (22: 720p's key frame after 180p's first packet; 48 likewise after 360p's),
# that frame is finished first, so the instant is sent twice: the old layer's frame, then the key frame
EXPECTED_FRAMES = ([(n, 0) for n in range(23)] + [(n, 2) for n in range(22, 40)] + [(n, 1) for n in range(40, 49)]
                   + [(n, 2) for n in range(48, 50)] + [(n, 0) for n in range(50, 60)])


def run_switcher(packets: list[In], plan: dict[int, int] = PLAN) -> tuple[LayerSwitcher, list[Out], list[bool]]:
    sw = LayerSwitcher(first_seq_out=500, first_ts_out=7777, clock_rate=VIDEO_CLOCK, target=0)
    out: list[Out] = []
    asks = []
    frame = -1
    for p in packets:
        if p.frame != frame:
            frame = p.frame
            if frame in plan:
                asks.append(sw.set_target(plan[frame], p.at))
        out += sw.push(p.layer, p.ext_seq, p.ts, p.marker, p.keyframe, p.payload, p.at)
    return sw, out, asks


def _frames_out(out: list[Out]) -> list[list[Out]]:
    frames: list[list[Out]] = []
    for o in out:
        if frames and frames[-1][-1].ts == o.ts:
            frames[-1].append(o)
        else:
            frames.append([o])
    return frames


def test_switching_up_and_down_keeps_seq_ts_picture_id_and_tl0picidx_continuous(simulcast) -> None:
    sw, out, asks = run_switcher(simulcast)
    assert asks == [True] * 4 and sw.switches == 4 and sw.cut_frames == 0
    # sequence numbers: one after another, the other layers' packets leave no gap
    assert [o.seq for o in out] == list(range(500, 500 + len(out)))
    by_key = {(p.layer, p.ext_seq): p for p in simulcast}
    frames = _frames_out(out)
    assert [(by_key[(f[0].layer, f[0].ext_seq)].frame, f[0].layer) for f in frames] == EXPECTED_FRAMES
    previous = None
    for f in frames:
        src = [by_key[(o.layer, o.ext_seq)] for o in f]
        # never mid-frame: every frame sent whole, from one layer, in order, marker on its last packet only
        assert len({o.layer for o in f}) == 1 and [s.index for s in src] == list(range(src[0].count))
        assert [o.marker for o in f] == [0] * (len(f) - 1) + [1]
        if previous is not None:
            step = (f[0].ts - previous[0].ts) & 0xFFFFFFFF
            assert 0 < step < 2**31  # timestamps only go forward
            if f[0].layer == previous[0].layer:
                before = by_key[(previous[0].layer, previous[0].ext_seq)]
                assert step == (src[0].ts - before.ts) & 0xFFFFFFFF  # within a layer, its own spacing
            else:
                assert src[0].keyframe  # a new layer starts at its key frame start
        previous = f
    descriptors = [vp8_parse_descriptor(f[0].payload) for f in frames]
    pids = [d.picture_id for d in descriptors]
    assert all((b - a) % 32768 == 1 for a, b in pairwise(pids)), pids
    for a, b in pairwise(descriptors):
        assert (b.tl0picidx - a.tl0picidx) % 256 == (1 if b.tid == 0 else 0)
    assert all(len(o.payload) == len(by_key[(o.layer, o.ext_seq)].payload) for o in out)


def test_a_switch_waits_for_the_current_frame_to_end_when_the_key_frame_starts_in_its_middle(simulcast) -> None:
    _, out, _ = run_switcher(simulcast)
    order = {(p.layer, p.ext_seq): k for k, p in enumerate(simulcast)}
    frames = _frames_out(out)
    waited = 0
    for before, after in pairwise(frames):
        # a switch where the old frame ended after the new layer's key frame had started arriving: it waited
        if before[0].layer != after[0].layer and \
                order[(before[-1].layer, before[-1].ext_seq)] > order[(after[0].layer, after[0].ext_seq)]:
            waited += 1
    assert waited >= 2


def test_the_switched_stream_decodes_at_every_layers_size(simulcast) -> None:
    _, out, _ = run_switcher(simulcast)
    decoder = get_decoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=VIDEO_CLOCK, payloadType=96))
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=VIDEO_CLOCK, payloadType=96)
    sizes = []
    for f in _frames_out(out):
        data = b"".join(depayload(codec, o.payload) for o in f)
        if f[0].payload and vp8_parse_descriptor(f[0].payload).keyframe:
            assert vp8_dimensions(data) == LAYER_SIZES[f[0].layer]
        decoded = decoder.decode(JitterFrame(data, f[0].ts))
        sizes += [(frame.width, frame.height) for frame in decoded]
    assert sizes == [LAYER_SIZES[layer] for _, layer in EXPECTED_FRAMES]


def test_every_output_sequence_number_maps_back_for_nack_and_a_resend_matches_what_was_sent(simulcast) -> None:
    sw, out, _ = run_switcher(simulcast)
    by_key = {(p.layer, p.ext_seq): p for p in simulcast}
    for o in out:
        assert sw.lookup(o.seq & 0xFFFF) == (o.layer, o.ext_seq)
        p = by_key[(o.layer, o.ext_seq)]
        assert sw.resend(o.layer, o.ext_seq, p.ts, p.payload) == (o.ts, o.payload)
    newest = out[-1].seq
    assert sw.lookup((newest + 1) & 0xFFFF) is None and sw.lookup((newest + 40000) & 0xFFFF) is None
    last = by_key[(out[-1].layer, out[-1].ext_seq)]
    assert sw.map_ts(last.ts) == out[-1].ts


def test_upstream_loss_of_the_current_layer_leaves_real_holes_that_map_back_for_nack(simulcast) -> None:
    lost = {(0, p.ext_seq) for p in simulcast if p.layer == 0 and p.frame in (3, 4, 17) and p.index == 0}
    lost |= {(1, p.ext_seq) for p in simulcast if p.layer == 1 and p.frame == 3}  # another layer: no hole
    sw, out, _ = run_switcher([p for p in simulcast if (p.layer, p.ext_seq) not in lost], plan={})
    seqs = [o.seq for o in out]
    holes = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
    assert len(holes) == 3
    assert sorted(sw.lookup(h & 0xFFFF) for h in holes) == sorted(x for x in lost if x[0] == 0)


def test_padding_on_the_current_layer_leaves_no_hole(simulcast) -> None:
    sw = LayerSwitcher(500, 0, target=0)
    out = []
    for p in simulcast[:200]:
        if p.layer == 0 and p.frame == 4:
            out += sw.push(0, p.ext_seq, p.ts, p.marker, False, b"", p.at)  # padding in its place
        else:
            out += sw.push(p.layer, p.ext_seq, p.ts, p.marker, p.keyframe, p.payload, p.at)
    assert [o.seq for o in out] == list(range(500, 500 + len(out)))


def test_when_the_old_frames_end_is_lost_the_switch_is_made_after_a_bounded_wait(simulcast) -> None:
    # the 180p frame in progress when 720p's key frame starts (frame 22) loses its last packet upstream
    end = next(p for p in simulcast if p.layer == 0 and p.frame == 22 and p.marker)
    packets = [p for p in simulcast if p is not end]
    sw = LayerSwitcher(500, 0, target=0)
    out: list[Out] = []
    switched_at = None
    for p in packets:
        if p.frame == 5 and sw.target == 0:
            sw.set_target(2, p.at)
        got = sw.push(p.layer, p.ext_seq, p.ts, p.marker, p.keyframe, p.payload, p.at)
        if switched_at is None and any(o.layer == 2 for o in got):
            switched_at = p.at
        out += got
    kf = next(p for p in simulcast if p.layer == 2 and p.frame == 22 and p.keyframe)
    # held until PENDING_MAX_S, or sooner when PENDING_MAX_PACKETS of the key frame are waiting
    assert sw.cut_frames == 1 and kf.at < switched_at <= kf.at + PENDING_MAX_S + FRAME_S
    assert [o.seq for o in out] == list(range(500, 500 + len(out)))
    first_720p = next(k for k, o in enumerate(out) if o.layer == 2)
    assert out[first_720p].ext_seq == kf.ext_seq  # the held key frame, from its start


def test_late_packets_of_the_old_layer_fill_only_its_own_holes(simulcast) -> None:
    # a 180p packet from before the switch arrives after it (reordered): it fills its hole in the old
    # stretch; a 180p packet from after the switch never reaches the subscriber
    late = next(p for p in simulcast if p.layer == 0 and p.frame == 20)
    after = next(p for p in simulcast if p.layer == 0 and p.frame == 30)
    packets = [p for p in simulcast if p is not late and p.frame < 30]
    sw, out, _ = run_switcher(packets)
    assert sw.current == 2
    hole = sorted(set(range(out[0].seq, out[-1].seq + 1)) - {o.seq for o in out})
    assert len(hole) == 1 and sw.lookup(hole[0] & 0xFFFF) == (0, late.ext_seq)
    filled = sw.push(0, late.ext_seq, late.ts, late.marker, late.keyframe, late.payload, 2.0)
    assert [o.seq for o in filled] == hole and filled[0].ts == (late.ts + (out[0].ts - simulcast[0].ts)) & 0xFFFFFFFF
    assert sw.push(0, after.ext_seq, after.ts, after.marker, after.keyframe, after.payload, 2.0) == []


def test_set_target_asks_for_a_key_frame_once_and_again_only_when_overdue() -> None:
    sw = LayerSwitcher(1, 0, target=0)
    assert sw.keyframe_overdue(0.0) == 0  # at the start: ask for the first key frame
    assert sw.keyframe_overdue(0.5) is None and sw.keyframe_overdue(1.0) == 0
    key = bytes((0x90, 0x80, 0x80, 0x01, 0x00, 0x00))
    assert [o.seq for o in sw.push(0, 10, 0, 1, True, key, 1.1)] == [1]
    assert sw.current == 0 and sw.waiting is None and sw.keyframe_overdue(5.0) is None
    assert sw.set_target(2, 2.0) is True and sw.set_target(2, 2.1) is False
    assert sw.keyframe_overdue(2.5) is None and sw.keyframe_overdue(3.0) == 2
    assert sw.set_target(0, 3.1) is False and sw.waiting is None  # back to the current one: nothing to wait for
    assert sw.set_target(1, 3.2) is True and sw.waiting == 1


def test_garbage_never_makes_the_switcher_raise_or_give_one_sequence_number_to_two_packets() -> None:
    rng = random.Random(17)
    sw = LayerSwitcher(100, 0, target=0)
    seen: dict[int, tuple[int, int]] = {}
    newest = [70000, 70000, 70000]
    for k in range(20000):
        layer = rng.randrange(3)
        if rng.random() < 0.02:
            sw.set_target(rng.randrange(3), k * 0.001)
        newest[layer] += rng.choice((1, 1, 1, 2, -3, 0))
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 9)))
        for o in sw.push(layer, newest[layer], rng.getrandbits(32), rng.getrandbits(1), rng.random() < 0.05,
                         payload, k * 0.001):
            assert seen.setdefault(o.seq, (o.layer, o.ext_seq)) == (o.layer, o.ext_seq)
        sw.lookup(rng.getrandbits(16))
        sw.resend(layer, newest[layer] - rng.randrange(50), 0, payload)
    assert sw.switches > 10 and len(seen) > 1000


# -- SimulcastConsumer: the steady-state fast path does what the full path does ------------------------------------

SUB_SSRC, SUB_RTX_SSRC, SUB_PT, SUB_RTX_PT = 0x5151, 0x5252, 96, 97
BLOCK = len(ExtensionLayout("1", 1, 3, 0).block)  # the extension block the tests' subscriber gets


class _Layer:
    """One layer's VP8 stream for the consumer tests: own seq, ts, PictureID (15- or 7-bit), TL0PICIDX (L1T3)."""

    def __init__(self, index: int, per_frame: int, seq: int, pid: int, short_pid: bool = False) -> None:
        self.index, self.per_frame, self.seq, self.pid, self.tl0 = index, per_frame, seq & 0xFFFF, pid, 10 * index
        self.short = short_pid
        self.short_from: int | None = None  # from this picture on, 7-bit picture ids
        self.ts = 1000 * (index + 1)
        self.since_key = -1

    def frame(self, key: bool, pad: bool = False) -> list[tuple[int, int, int, bytes]]:
        """(seq16, ts, marker, payload) of the next frame (``pad``: a padding packet after its first)."""
        if self.short_from is not None and self.pid >= self.short_from:
            self.short = True
        self.since_key = 0 if key else self.since_key + 1
        tid = L1T3[self.since_key % 4]
        if tid == 0:
            self.tl0 = (self.tl0 + 1) & 0xFF
        pid = self.pid & (0x7F if self.short else 0x7FFF)
        out = []
        for i in range(self.per_frame):
            head = bytes((0x90 if i == 0 else 0x80, 0xE0))
            numbers = bytes((pid,)) if self.short else bytes((0x80 | pid >> 8, pid & 0xFF))
            vp8 = bytes(((0x00 if key else 0x01) if i == 0 else 0x5A,)) + bytes((self.index, i)) * 20
            out.append((self.seq, self.ts, int(i == self.per_frame - 1),
                        head + numbers + bytes((self.tl0, tid << 6)) + vp8))
            self.seq = (self.seq + 1) & 0xFFFF
            if pad and i == 0:
                out.append((self.seq, self.ts, 0, b""))
                self.seq = (self.seq + 1) & 0xFFFF
        self.pid += 1
        self.ts = (self.ts + 3000) & 0xFFFFFFFF
        return out


def _stream(frames: int, keys: dict[int, set[int]] | None = None, seqs=(100, 200, 300), short=(False, False, False),
            per_frame=(1, 2, 3), pads: dict[int, set[int]] | None = None, short_from: int | None = None) -> list[tuple]:
    """Events ("rtp", layer, seq16, ts, marker, payload, frame): the layers' frames interleaved as a pacer sends
    them; every layer starts with a key frame, ``keys[layer]`` are further key frames, ``pads[layer]`` the frames
    with a padding packet after their first packet."""
    keys, pads = keys or {}, pads or {}
    layers = [_Layer(i, per_frame[i], seqs[i], 1000 + 7000 * i if not short[i] else 100 + 3 * i, short[i])
              for i in range(3)]
    if short_from is not None:
        layers[1].short_from = layers[1].pid + short_from
    events = []
    for n in range(frames):
        rows = [layer.frame(n == 0 or n in keys.get(layer.index, ()), n in pads.get(layer.index, ()))
                for layer in layers]
        for k in range(max(len(r) for r in rows)):
            for layer, r in zip(layers, rows):
                if k < len(r):
                    events.append(("rtp", layer.index, *r[k], n))
    return events


def _at(events: list[tuple], layer: int, frame: int, first: bool = True) -> int:
    """Index of the first (or last) packet of a layer's frame."""
    found = [k for k, e in enumerate(events) if e[0] == "rtp" and e[1] == layer and e[6] == frame]
    return found[0] if first else found[-1]


def run_consumer(events: list[tuple], fast: bool = True, next_seq: int = 500, start_layer: int = 1) -> dict:
    """Feed ``events`` to one SimulcastConsumer on three layer Producers; what it sent (plaintext, RTX
    included), the key frames it asked for, its state, and the NACK mapping of every output. ``fast=False``:
    the fast path is off (``LayerSwitcher.steady`` always None), so every packet takes the full path."""
    pushes = [0]
    real_push = LayerSwitcher.push

    def counting_push(self, *args):
        pushes[0] += 1
        return real_push(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LayerSwitcher, "push", counting_push)
        if not fast:
            mp.setattr(LayerSwitcher, "steady", property(lambda self: None, lambda self, value: None), raising=False)
        # a fake wall clock too: abs-send-time is the same in the runs compared (a new bytes object each fan-out)
        clock = FakeClock(wall_offset=1_700_000_000.0)
        plis: list[tuple[int, float]] = []
        producers = [Producer("cam" if i == 0 else f"cam~{i}", "video", "vp8", VIDEO_CLOCK,
                              send_pli=lambda ssrc: plis.append((ssrc, clock.now)), clock=clock) for i in range(3)]
        for i, p in enumerate(producers):
            p.ssrc = 0xA0 + i
        producers[0].layers = list(producers)
        sender = types.SimpleNamespace(_ssrc=SUB_SSRC, _rtx_ssrc=SUB_RTX_SSRC, _handle_rtcp_packet=None)
        layout = ExtensionLayout("1", 1, 3, 0)
        assert len(layout.block) == BLOCK
        c = SimulcastConsumer(producers[0], sender, SUB_PT, SUB_RTX_PT, layout, clock=clock,  # type: ignore[arg-type]
                              resume=ResumePoint(next_seq, 0x7000, clock(), 40), start_layer=start_layer)
        sent: list[bytes] = []
        c._protect = lambda data: (sent.append(bytes(data)), data)[1]
        c._send = lambda data: None
        c._started = True
        resumes = []
        for ev in events:
            kind = ev[0]
            clock.advance(0.002)
            if kind == "rtp":
                _, layer, seq16, ts, marker, payload, _ = ev
                producers[layer].on_packet(seq16, ts, marker, payload, 0x7F)
            elif kind == "layer":
                c.set_layer(ev[1])
            elif kind == "nack":  # the last ev[1] media packets sent, and numbers never sent
                media = [s for s in sent if s[1] & 0x7F == SUB_PT]
                lost = [RTP_HEADER.unpack_from(s)[2] for s in media[-ev[1]:]]
                c.on_nack(lost + [(lost[-1] + 5) & 0xFFFF])
            elif kind == "pause":
                c.pause()
            elif kind == "unpause":
                c.unpause()
            elif kind == "resume":
                resumes.append(c.resume_point())
        media = [s for s in sent if s[1] & 0x7F == SUB_PT]
        lookups = [c.switcher.lookup(RTP_HEADER.unpack_from(s)[2]) for s in media]
        return {"sent": sent, "media": media, "plis": plis, "lookups": lookups, "pushes": pushes[0],
                "resume": c.resume_point(), "resumes": resumes, "stats": c.stats(),
                "switcher": c.switcher.stats(), "packets_out": c.packets_out, "octets_out": c.octets_out,
                "pid": c.switcher.rewriter.last_picture_id, "tl0": c.switcher.rewriter.last_tl0picidx,
                "rebases": c.switcher.rewriter.rebases}


def assert_fast_path_matches(events: list[tuple], **kw) -> tuple[dict, dict]:
    fast, slow = run_consumer(events, True, **kw), run_consumer(events, False, **kw)
    for k, (a, b) in enumerate(zip(fast["sent"], slow["sent"])):
        assert a == b, f"packet {k} differs"
    assert len(fast["sent"]) == len(slow["sent"])
    for key in ("plis", "lookups", "resume", "resumes", "stats", "switcher", "packets_out", "octets_out", "pid",
                "tl0", "rebases"):
        assert fast[key] == slow[key], key
    # the fast path was taken: most packets never went through push
    assert fast["pushes"] < 0.6 * slow["pushes"], (fast["pushes"], slow["pushes"])
    return fast, slow


def checked(media: list[bytes]) -> OutputCheck:
    check = OutputCheck()
    for pkt in media:
        check.add(pkt)
    return check


def test_the_fast_path_sends_what_the_full_path_sends_through_switches_up_and_down() -> None:
    events = _stream(40, keys={0: {12, 30}, 1: {25}, 2: {7, 19}})
    events.insert(_at(events, 1, 3) + 1, ("layer", 2))
    events.insert(_at(events, 2, 10), ("layer", 0))
    events.insert(_at(events, 0, 20), ("layer", 1))
    fast, _ = assert_fast_path_matches(events)
    check = checked(fast["media"])
    assert check.errors() == 0 and fast["switcher"]["switches"] == 3, fast["switcher"]
    assert None not in fast["lookups"]  # every output maps back


def test_a_switch_asked_while_in_the_fast_path_waits_for_the_key_frame_then_continues_the_numbers() -> None:
    # set_layer in the middle of a layer-1 frame (fast path); the layer-2 key frame starts while a layer-1
    # frame is half sent: that frame is finished first, then layer 2 from its key frame on
    events = _stream(20, keys={2: {9}})
    events.insert(_at(events, 1, 5) + 1, ("layer", 2))
    events.insert(_at(events, 1, 5) + 1, ("resume",))
    fast, _ = assert_fast_path_matches(events)
    check = checked(fast["media"])
    assert check.errors() == 0, (check.seq_gaps, check.picture_id_breaks, check.tl0_breaks, check.cut_frames)
    assert fast["switcher"]["switches"] == 1 and fast["stats"]["layer"] == 2
    assert [ssrc for ssrc, _ in fast["plis"]] == [0xA2]
    # layer 1's frames 0-9 (its frame 9 was half sent when layer 2's key frame 9 started: finished first), then
    # layer 2's frames 9-19
    assert len(fast["media"]) == 2 * 10 + 3 * 11


def test_late_packets_after_a_switch_fill_their_own_holes_or_are_dropped() -> None:
    # 1 -> 2 at layer 2's key frame 9, back to 1 at layer 1's key frame 25. Arriving late (after frame 31):
    # a layer-1 packet of frame 3 (its first segment: fills its hole there), one of frame 12 (layer 2 was sent
    # then: dropped) and one of frame 28 (the open segment, reordered: fills its hole)
    events = _stream(36, keys={1: {25}, 2: {9}})
    events.insert(_at(events, 1, 4), ("layer", 2))
    events.insert(_at(events, 2, 20), ("layer", 1))
    late = [events[_at(events, 1, f, first=False)] for f in (3, 12, 28)]
    events = [e for e in events if all(e is not x for x in late)]
    cut = _at(events, 0, 32)
    events[cut:cut] = late
    fast, _ = assert_fast_path_matches(events)
    seqs = [RTP_HEADER.unpack_from(p)[2] for p in fast["media"]]
    assert sorted(seqs) == list(range(500, 500 + len(seqs)))  # the holes filled, no number used twice
    assert fast["switcher"]["switches"] == 2
    late_out = [k for k in range(1, len(seqs)) if seqs[k] < max(seqs[:k])]
    assert [fast["lookups"][k] for k in late_out] == [(1, 65536 + 200 + 2 * 3 + 1), (1, 65536 + 200 + 2 * 28 + 1)]


def test_the_fast_path_across_input_and_output_sequence_wraps() -> None:
    # layer 1's input seq wraps 65535 -> 0, and the output (started at 65530) wraps, in the fast path
    events = _stream(30, seqs=(100, 65530, 65500))
    fast, _ = assert_fast_path_matches(events, next_seq=65530)
    seqs = [RTP_HEADER.unpack_from(p)[2] for p in fast["media"]]
    assert 0 in seqs and 65535 in seqs and all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))
    assert checked(fast["media"]).errors() == 0
    assert fast["lookups"][-1] == (1, 65536 + 65530 + 2 * 30 - 1)


def test_a_7_bit_picture_id_is_widened_in_the_fast_path_and_counted_past_127() -> None:
    # layer 1 numbers its pictures with 7 bits from 103: past 127 they wrap; the output keeps counting, 15 bits
    events = _stream(60, short=(False, True, False))
    fast, _ = assert_fast_path_matches(events)
    pids = [vp8_parse_descriptor(p[RTP_HEADER_LEN + BLOCK:]).picture_id for p in fast["media"]]
    assert checked(fast["media"]).errors() == 0 and max(pids) > 127
    inputs = [e for e in events if e[0] == "rtp" and e[1] == 1]
    assert len(fast["media"][-1]) == RTP_HEADER_LEN + BLOCK + len(inputs[-1][5]) + 1  # widened: one byte more
    assert fast["octets_out"] == sum(len(e[5]) + 1 for e in inputs)


def test_switches_to_and_from_layers_with_7_bit_picture_ids() -> None:
    events = _stream(50, keys={0: {10, 30}, 2: {20}}, short=(True, False, True))
    events.insert(_at(events, 1, 4) + 1, ("layer", 0))
    events.insert(_at(events, 0, 14), ("layer", 2))
    fast, _ = assert_fast_path_matches(events)
    assert checked(fast["media"]).errors() == 0 and fast["switcher"]["switches"] == 2


def test_a_switch_asked_just_before_the_key_frame_after_a_frame_sent_in_the_fast_path_is_made_at_once() -> None:
    # layer 1's frame 9 ended (its marker went out in the fast path); set_layer(0) right before layer 0's key frame
    # 10: the switch is made at once, its timestamp from the arrival of layer 1's frame 9
    events = _stream(20, keys={0: {10}})
    events.insert(_at(events, 0, 10), ("layer", 0))
    fast, _ = assert_fast_path_matches(events)
    assert checked(fast["media"]).errors() == 0 and fast["switcher"]["switches"] == 1
    assert len(fast["media"]) == 2 * 10 + 10


def test_a_switch_called_off_before_its_key_frame_goes_back_to_the_fast_path() -> None:
    events = _stream(60)
    events.insert(_at(events, 1, 5), ("layer", 2))
    events.insert(_at(events, 1, 6), ("layer", 1))
    fast, slow = assert_fast_path_matches(events)
    assert fast["switcher"]["switches"] == 0 and len(fast["media"]) == 2 * 60
    assert fast["pushes"] < 15 and slow["pushes"] > 120


def test_a_layer_whose_picture_ids_turn_7_bit_is_unwrapped_from_the_last_one_the_fast_path_saw() -> None:
    events = _stream(130, short_from=100)  # more than 64 pictures after the switch: a stale unwrap would show
    fast, _ = assert_fast_path_matches(events)
    assert checked(fast["media"]).errors() == 0


def test_padding_on_the_forwarded_layer_in_the_fast_path_leaves_no_hole() -> None:
    events = _stream(20, pads={1: {3, 4, 11}, 2: {5}})
    assert sum(1 for e in events if e[0] == "rtp" and not e[5]) == 4
    # a media packet under the number of the padding just before it: that number was dropped, never forwarded
    pad = next(k for k, e in enumerate(events) if e[0] == "rtp" and e[1] == 1 and e[6] == 11 and not e[5])
    events.insert(pad + 1, ("rtp", 1, events[pad][2], events[pad][3], 0, events[pad - 3][5], 11))
    fast, _ = assert_fast_path_matches(events)
    seqs = [RTP_HEADER.unpack_from(p)[2] for p in fast["media"]]
    assert seqs == list(range(500, 500 + len(seqs))) and len(seqs) == 2 * 20
    assert checked(fast["media"]).errors() == 0


def test_nacks_after_the_fast_path_resend_what_was_sent() -> None:
    events = _stream(30, keys={2: {9}})
    events.insert(_at(events, 1, 5) + 1, ("layer", 2))
    events.append(("nack", 12))
    fast, _ = assert_fast_path_matches(events)
    rtx = [s for s in fast["sent"] if s[1] & 0x7F == SUB_RTX_PT]
    assert len(rtx) == 12
    by_seq = {RTP_HEADER.unpack_from(p)[2]: p for p in fast["media"]}
    for r in rtx:
        original = by_seq[struct.unpack_from("!H", r, RTP_HEADER_LEN + BLOCK)[0]]
        assert r[RTP_HEADER_LEN + BLOCK + 2:] == original[RTP_HEADER_LEN + BLOCK:]  # same payload and numbers


def test_pause_and_unpause_restart_at_a_key_frame_through_the_full_path() -> None:
    events = _stream(40, keys={1: {20, 30}})
    events.insert(_at(events, 1, 8), ("pause",))
    events.insert(_at(events, 1, 15), ("unpause",))
    fast, _ = assert_fast_path_matches(events)
    assert fast["switcher"]["current"] == 1 and fast["switcher"]["switches"] == 0
    seqs = [RTP_HEADER.unpack_from(p)[2] for p in fast["media"]]
    assert [b - a for a, b in pairwise(seqs) if b - a != 1] == [1 + 1024]  # the jump at the restart


def test_the_renumbered_packet_is_one_join_of_the_stamped_block_and_the_shared_payload_rest() -> None:
    layout = ExtensionLayout("1", 1, 3, 4)
    ast = b"\x01\x02\x03"
    payload = bytes(range(40))
    assert layout.stamped(ast, 0x22) + payload == layout.tail(ast, 0x22, payload)
    assert layout.stamped(ast, 0x22) is layout.stamped(ast, 0x22)  # kept for the fan-out
    assert layout.stamped(b"\x01\x02\x04", 0x22) + payload == layout.tail(b"\x01\x02\x04", 0x22, payload)
    assert layout.stamped(ast, 0x23) + payload == layout.tail(ast, 0x23, payload)
    assert ExtensionLayout(None, 0, 0, 0).stamped(ast, 1) == b""


# -- real Chromium -----------------------------------------------------------------------------------------------

SIMULCAST_URL = "http://localhost/simulcast"  # served by the test (page.route): localhost is a secure context
SIMULCAST_PAGE = "<!doctype html><meta charset=utf-8><title>simulcast</title>"
# the teacher's three layers, as the brief and the teacher page ask for them
SEND_ENCODINGS = """[{rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000},
                     {rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000},
                     {rid: "f", maxBitrate: 1500000}]"""
OFFER_JS = """async (name) => {
  window.camera = window.camera || await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}});
  const pc = new RTCPeerConnection();
  const transceiver = pc.addTransceiver(window.camera.getVideoTracks()[0],
                                        {direction: "sendonly", sendEncodings: SEND_ENCODINGS});
  window[name] = {pc, transceiver};
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== "complete") {
    await new Promise((done) => pc.addEventListener("icegatheringstatechange",
                                                   () => pc.iceGatheringState === "complete" && done()));
  }
  return pc.localDescription.sdp;
}""".replace("SEND_ENCODINGS", SEND_ENCODINGS)
ANSWER_JS = """async ([name, sdp]) => {
  const {pc, transceiver} = window[name];
  await pc.setRemoteDescription({type: "answer", sdp});
  return transceiver.sender.getParameters().encodings.map((e) => e.rid || null);
}"""
OUTBOUND_JS = """async (name) => {
  const out = {};
  (await window[name].pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp") out[s.rid] = {width: s.frameWidth || 0, bytes: s.bytesSent || 0};
  });
  return out;
}"""
# what the test asks of Chromium's uplink (REMB), so it need not wait for aiortc's slow estimate (DESIGN.md)
UPLINK_REMB_BPS = 3_000_000
LAYERS_DEADLINE_S = 30.0
LAYER_MIN_PACKETS = 40


@pytest.mark.slow
async def test_chromium_keeps_three_encodings_with_the_munged_answer_and_sends_every_layer(browser, monkeypatch):
    from aiortc import rtcrtpreceiver
    from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

    from sfu.seams import _forward_only_decoder_worker

    monkeypatch.setattr(rtcrtpreceiver, "decoder_worker", _forward_only_decoder_worker)  # forward-only, as the SFU
    context = await browser.new_context()
    await context.route(SIMULCAST_URL, lambda route: route.fulfill(body=SIMULCAST_PAGE, content_type="text/html"))
    page = await context.new_page()
    await page.goto(SIMULCAST_URL)
    pcs: list[RTCPeerConnection] = []
    try:
        # control: aiortc's own answer makes Chromium drop to one encoding
        control = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.append(control)
        await control.setRemoteDescription(RTCSessionDescription(await page.evaluate(OFFER_JS, "control"), "offer"))
        await control.setLocalDescription(await control.createAnswer())
        assert len(await page.evaluate(ANSWER_JS, ["control", control.localDescription.sdp])) == 1
        await page.evaluate("() => window.control.pc.close()")
        await control.close()

        offer = await page.evaluate(OFFER_JS, "teacher")
        offers = parse_simulcast_offer(offer)
        assert len(offers) == 1
        sim = next(iter(offers.values()))
        assert layers_low_to_high(sim) == ("q", "h", "f")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        receiver = pc.getTransceivers()[0].receiver
        receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # our REMB instead of its slow one

        # the ingress seam, in place before any media flows: each packet through the demux, then to aiortc
        demux = LayerDemux(layers_low_to_high(sim), sim.rid_ext_id, sim.rrid_ext_id)
        dimensions: dict[int, tuple[int, int] | None] = {}
        dtls = receiver.transport
        original = dtls._handle_rtp_data
        plis = []
        stock_pli = receiver._send_rtcp_pli

        async def count_pli(media_ssrc: int) -> None:
            plis.append(media_ssrc)
            await stock_pli(media_ssrc)

        async def hook(data: bytes, arrival_time_ms: int) -> None:
            try:
                arrival = demux.receive(data, time.monotonic())
                if arrival is not None and arrival.keyframe:
                    h = arrival.header
                    payload = data[h.payload_start:h.payload_end]
                    dimensions[arrival.layer] = vp8_dimensions(payload[vp8_descriptor_len(payload):])
            except Exception as exc:  # noqa: BLE001 - never into the DTLS loop
                dimensions[-1] = (0, 0)
                print("hook failed:", exc)
            await original(data, arrival_time_ms)

        dtls._handle_rtp_data = hook
        receiver._send_rtcp_pli = count_pli

        encodings = await page.evaluate(ANSWER_JS, ["teacher", munge_answer(pc.localDescription.sdp, offers)])
        assert encodings == ["q", "h", "f"]

        started = time.monotonic()
        deadline = started + LAYERS_DEADLINE_S
        while True:
            await asyncio.sleep(0.5)
            rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc
            media = [s.ssrc for s in demux.layers if s.ssrc is not None]
            if rtcp_ssrc is not None and media:
                await receiver._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                                                         fci=pack_remb_fci(UPLINK_REMB_BPS, media)))
            if all(s.packets >= LAYER_MIN_PACKETS and s.keyframes for s in demux.layers) \
                    or time.monotonic() > deadline:
                break
        now = time.monotonic()
        report = {"seconds": round(now - started, 1), "layers": demux.stats(now), "dimensions": dimensions,
                  "stock_receiver_plis": len(plis),
                  "unrouted": demux.unrouted, "chromium": await page.evaluate(OUTBOUND_JS, "teacher")}
        print(report)
        assert -1 not in dimensions, report
        # every layer arrived on its own SSRC, learned from the RID extension, at its own size
        assert len({s.ssrc for s in demux.layers} - {None}) == 3, report
        assert all(s.packets >= LAYER_MIN_PACKETS for s in demux.layers), report
        assert dimensions == {0: (320, 180), 1: (640, 360), 2: (1280, 720)}, report
        assert demux.unknown_rid == 0 and demux.malformed == 0, report
    finally:
        for p in pcs:
            await p.close()
        await context.close()


def test_a_down_switch_with_hold_stops_the_current_layer_at_its_frames_end_until_the_key_frame(simulcast) -> None:
    # the link collapsed at frame 25 (layer 2 -> 1, held; frame 24 had ended): nothing more of layer 2
    # goes out, and layer 1 follows from its key frame (40) on, its numbers continuing the last ones sent
    sw = LayerSwitcher(first_seq_out=500, first_ts_out=7777, clock_rate=VIDEO_CLOCK, target=0)
    out: list[Out] = []
    frame = -1
    for p in simulcast:
        if p.frame != frame:
            frame = p.frame
            if frame == 5:
                sw.set_target(2, p.at)
            elif frame == 25:
                assert sw.set_target(1, p.at, hold=True) and sw.holding
        out += sw.push(p.layer, p.ext_seq, p.ts, p.marker, p.keyframe, p.payload, p.at)
        if sw.holding:
            assert sw.superseded(2)  # while holding, the current layer's NACKs are not answered either
    assert not sw.holding and sw.held > 0 and sw.switches == 2
    # a NACK of layer 2's last packets: not resent now that layer 1 is forwarded (its key frame replaced them);
    # one of layer 1's own packets is
    layer2_last = next(o for o in reversed(out) if o.layer == 2)
    assert sw.lookup(layer2_last.seq & 0xFFFF) == (2, layer2_last.ext_seq) and sw.superseded(2)
    assert not sw.superseded(out[-1].layer) and not sw.superseded(0)
    assert [o.seq for o in out] == list(range(500, 500 + len(out)))  # no hole for the classroom to NACK
    by_key = {(p.layer, p.ext_seq): p for p in simulcast}
    frames = [(by_key[(f[0].layer, f[0].ext_seq)].frame, f[0].layer) for f in _frames_out(out)]
    assert frames == [(n, 0) for n in range(23)] + [(n, 2) for n in range(22, 25)] + [(n, 1) for n in range(40, 60)]
    for f in _frames_out(out):  # whole frames only
        assert [o.marker for o in f] == [0] * (len(f) - 1) + [1]


def test_without_hold_or_going_up_the_current_layer_flows_until_the_switch(simulcast) -> None:
    sw = LayerSwitcher(first_seq_out=500, first_ts_out=7777, clock_rate=VIDEO_CLOCK, target=0)
    assert sw.set_target(0, 0.0, hold=True) is False and not sw.holding  # nothing to go down from
    _, out, _ = run_switcher(simulcast)
    assert [(f[0].layer) for f in _frames_out(out)].count(2) > 0
    sw2 = LayerSwitcher(first_seq_out=500, first_ts_out=7777, clock_rate=VIDEO_CLOCK, target=0)
    for p in simulcast[:40]:
        sw2.push(p.layer, p.ext_seq, p.ts, p.marker, p.keyframe, p.payload, p.at)
    assert sw2.current == 0 and sw2.set_target(2, 1.0, hold=True) and not sw2.holding  # up: never held

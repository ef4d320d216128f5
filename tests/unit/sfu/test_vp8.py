"""Tests for sfu/rtp/vp8.py: real payloads from aiortc's VP8 encoder, plus hand-built descriptors and garbage."""

from __future__ import annotations

import fractions
import random

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.rtp.vp8 import (
    Vp8Rewriter,
    vp8_descriptor_len,
    vp8_is_keyframe_start,
    vp8_numbering,
    vp8_picture_id,
)

VP8_KEYFRAME_START_CODE = b"\x9d\x01\x2a"  # RFC 6386 9.1: follows the 3-byte frame tag of every key frame


# --- real encoder output ----------------------------------------------------------------------------------------------


def _frames(count: int, width: int = 320, height: int = 240, seed: int = 7) -> list[av.VideoFrame]:
    """Moving content with noise, so the keyframe spans several packets and delta frames are not empty."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        img = np.empty((height, width, 3), dtype=np.uint8)
        img[..., 0] = (xs + 8 * i) % 256
        img[..., 1] = (ys + 4 * i) % 256
        img[..., 2] = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def encoded() -> list[tuple[list[bytes], bool]]:
    """(payloads, forced) per frame: frame 0 is the natural first keyframe, frame 6 is forced, the rest are deltas."""
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    enc = get_encoder(codec)
    out = []
    for i, frame in enumerate(_frames(9)):
        forced = i == 6
        payloads, _ts = enc.encode(frame, forced)
        assert payloads, f"frame {i} produced no payloads"
        out.append((payloads, forced))
    return out


def test_the_first_frame_starts_with_a_keyframe_start(encoded) -> None:
    payloads, _ = encoded[0]
    assert vp8_is_keyframe_start(payloads[0])
    # Independent check on the bitstream itself: a key frame carries the start code after its frame tag.
    d = vp8_descriptor_len(payloads[0])
    assert payloads[0][d + 3 : d + 6] == VP8_KEYFRAME_START_CODE


def test_continuation_packets_of_a_keyframe_are_not_keyframe_starts(encoded) -> None:
    payloads, _ = encoded[0]
    assert len(payloads) > 1, "the test needs a keyframe spanning several packets"
    assert [vp8_is_keyframe_start(p) for p in payloads[1:]] == [False] * (len(payloads) - 1)


def test_no_packet_of_a_delta_frame_is_a_keyframe_start(encoded) -> None:
    for i in (1, 2, 3, 4, 5, 7, 8):
        payloads, _ = encoded[i]
        assert not any(vp8_is_keyframe_start(p) for p in payloads), f"frame {i}"
        d = vp8_descriptor_len(payloads[0])
        assert payloads[0][d + 3 : d + 6] != VP8_KEYFRAME_START_CODE, f"frame {i} is really a key frame"


def test_forcing_a_keyframe_gives_a_keyframe_start_again(encoded) -> None:
    payloads, forced = encoded[6]
    assert forced
    assert vp8_is_keyframe_start(payloads[0])
    assert not any(vp8_is_keyframe_start(p) for p in payloads[1:])


def test_picture_ids_are_15_bit_shared_by_a_frame_and_count_up_per_frame(encoded) -> None:
    per_frame = []
    for payloads, _ in encoded:
        ids = {vp8_picture_id(p) for p in payloads}
        assert len(ids) == 1 and None not in ids
        per_frame.append(ids.pop())
    first = per_frame[0]
    assert per_frame == [(first + i) % (1 << 15) for i in range(len(per_frame))]


def test_descriptor_length_of_real_payloads_matches_aiortc_parser(encoded) -> None:
    for payloads, _ in encoded:
        for p in payloads:
            _, rest = VpxPayloadDescriptor.parse(p)
            assert vp8_descriptor_len(p) == len(p) - len(rest) == 4  # X, I|M and a 15-bit picture id


# --- hand-built descriptors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, desc_len, keyframe_start, picture_id",
    [
        pytest.param(b"\x10\x00", 1, True, None, id="a minimal descriptor with S set before a key frame header"),
        pytest.param(b"\x10\x01", 1, False, None, id="the P bit set means an interframe"),
        pytest.param(b"\x10\x9d", 1, False, None, id="only the low bit of the payload header is the P bit"),
        pytest.param(b"\x10\x9c", 1, True, None, id="other payload header bits do not matter"),
        pytest.param(b"\x00\x00", 1, False, None, id="a continuation packet without S is not a start"),
        pytest.param(b"\x11\x00", 1, False, None, id="a start of partition one is not a frame start"),
        pytest.param(b"\x18\x00", 1, True, None, id="the reserved bit after S is not part of the 3-bit partition index"),
        pytest.param(b"\x14\x00", 1, False, None, id="a start of partition four is not a frame start"),
        pytest.param(b"\x30\x00", 1, True, None, id="the non-reference bit is ignored"),
        pytest.param(b"\x90\x00\x00", 2, True, None, id="an extension octet with no fields is two bytes"),
        pytest.param(b"\x90\x80\x05\x00", 3, True, 5, id="a 7-bit picture id is one byte"),
        pytest.param(b"\x90\x80\x7f\x01", 3, False, 127, id="the largest 7-bit picture id"),
        pytest.param(b"\x90\x80\x81\x23\x00", 4, True, 0x0123, id="a 15-bit picture id is two bytes"),
        pytest.param(b"\x90\x80\xff\xff\x00", 4, True, 0x7FFF, id="the largest 15-bit picture id"),
        pytest.param(b"\x90\xc0\x81\x23\x07\x00", 5, True, 0x0123, id="a tl0picidx adds one byte"),
        pytest.param(b"\x90\xe0\x05\x07\x20\x00", 5, True, 5, id="a tid adds one byte"),
        pytest.param(b"\x90\x10\x03\x00", 3, True, None, id="a keyidx without picture id adds one byte"),
        pytest.param(b"\x90\x30\xe3\x00", 3, True, None, id="tid and keyidx share one byte"),
        pytest.param(b"\x90\x40\x07\x01", 3, False, None, id="a tl0picidx alone adds one byte"),
        pytest.param(b"\x90\xf0\x81\x23\x07\xe3\x01", 6, False, 0x0123, id="all extension fields make six bytes"),
        pytest.param(b"\x90\xff\x05\x07\x20\x00", 5, True, 5, id="reserved extension bits are ignored"),
        pytest.param(b"\x10", 1, False, None, id="a descriptor with no payload header is not a keyframe start"),
        pytest.param(b"\x90\x80\x81\x23", 4, False, 0x0123, id="a full descriptor with nothing after it"),
    ],
)
def test_hand_built_descriptor(payload: bytes, desc_len: int, keyframe_start: bool, picture_id: int | None) -> None:
    assert vp8_descriptor_len(payload) == desc_len
    assert vp8_is_keyframe_start(payload) is keyframe_start
    assert vp8_picture_id(payload) == picture_id


@pytest.mark.parametrize(
    "payload, picture_id",
    [
        pytest.param(b"", None, id="an empty payload"),
        pytest.param(b"\x80", None, id="X set but no extension octet"),
        pytest.param(b"\x90", None, id="S and X set but no extension octet"),
        pytest.param(b"\x90\x80", None, id="I set but no picture id"),
        pytest.param(b"\x90\x80\x81", None, id="M set but only one picture id byte"),
        pytest.param(b"\x90\xc0\x05", 5, id="L set but no tl0picidx still yields the picture id before it"),
        pytest.param(b"\x90\x20", None, id="T set but no tid byte"),
        pytest.param(b"\x90\x10", None, id="K set but no keyidx byte"),
        pytest.param(b"\x90\xf0\x81\x23\x07", 0x0123, id="everything set but the last byte missing"),
    ],
)
def test_truncated_descriptor(payload: bytes, picture_id: int | None) -> None:
    with pytest.raises(ValueError):
        vp8_descriptor_len(payload)
    assert vp8_is_keyframe_start(payload) is False
    assert vp8_picture_id(payload) == picture_id


def test_garbage_never_raises_and_lengths_agree_with_aiortc_parser() -> None:
    rng = random.Random(1234)
    samples = [bytes([a]) for a in range(256)] + [bytes([a, b]) for a in range(256) for b in range(0, 256, 3)]
    samples += [rng.randbytes(rng.randrange(1, 8)) for _ in range(20000)]
    for p in samples:
        vp8_is_keyframe_start(p)  # must not raise
        pid = vp8_picture_id(p)
        try:
            parsed, rest = VpxPayloadDescriptor.parse(p)
        except ValueError:
            with pytest.raises(ValueError):
                vp8_descriptor_len(p)
            continue
        assert vp8_descriptor_len(p) == len(p) - len(rest), p.hex()
        assert pid == parsed.picture_id, p.hex()
        # aiortc reads PID as 4 bits; RFC 7741 makes it 3 bits with a reserved bit above.
        pid0 = parsed.partition_id & 0x07 == 0
        expected_key = parsed.partition_start == 1 and pid0 and bool(rest) and not rest[0] & 1
        assert vp8_is_keyframe_start(p) is expected_key, p.hex()


def test_memoryview_payloads_are_accepted() -> None:
    p = memoryview(b"\x90\x80\x81\x23\x00")
    assert (vp8_descriptor_len(p), vp8_is_keyframe_start(p), vp8_picture_id(p)) == (4, True, 0x0123)  # type: ignore[arg-type]


# --- numbering parsed once per packet, renumbered per subscriber --------------------------------------------------


def _desc(pid: int | None, tl0: int | None, tid: int | None, long: bool = True) -> bytes:
    ext = (0x80 if pid is not None else 0) | (0x40 if tl0 is not None else 0) | (0x20 if tid is not None else 0)
    out = bytearray((0x90, ext))
    if pid is not None:
        out += bytes((0x80 | pid >> 8, pid & 0xFF)) if long else bytes((pid & 0x7F,))
    if tl0 is not None:
        out.append(tl0)
    if tid is not None:
        out.append(tid << 6)
    return bytes(out) + b"\x10payload"


@pytest.mark.parametrize(
    "payload, fields",
    [
        (_desc(300, 7, 2), (300, 1, 7, 2, b"\x90\xe0", b"\x80\x10payload", 0)),
        (_desc(100, 7, 0, long=False), (100, 0, 7, 0, b"\x90\xe0", b"\x00\x10payload", 1)),
        (_desc(300, None, None), (300, 1, -1, -1, b"\x90\x80", b"\x10payload", 0)),
        (_desc(None, 9, 1), (-1, 0, 9, 1, b"\x90\x60", b"\x40\x10payload", 0)),
        (_desc(None, None, 1), None),  # nothing to renumber
        (b"\x10payload", None),  # no X
        (b"\x90\xc0\x81", None),  # cut short
    ],
)
def test_the_numbering_fields_of_a_packet(payload: bytes, fields) -> None:
    got = vp8_numbering(payload)
    if fields is None:
        assert got is None
        return
    assert got[:5] == fields[:5] and bytes(got[5]) == fields[5] and got[6] == fields[6]


def _renumbered(payload: bytes, fields, nums: bytes | None) -> bytes:
    return payload if nums is None else fields[4] + nums + bytes(fields[5])


def test_renumber_gives_what_rewrite_gives_and_shares_an_unchanged_payload() -> None:
    """Two rewriters fed the same packets from changing sources: one through rewrite, one through renumber (the
    fast path) whenever the source is its current one, else rewrite; same output, same state."""
    rng = random.Random(5)
    a, b = Vp8Rewriter(), Vp8Rewriter()
    sources = [object() for _ in range(3)]
    pid = [rng.randrange(0x8000) for _ in sources]
    tl0 = [rng.randrange(256) for _ in sources]
    source = 0
    renumbered = shared = 0
    for k in range(20000):
        if rng.random() < 0.01:
            source = rng.randrange(3)
        step = rng.choice((0, 0, 1, 1, 1, 2, -1, 70, 20000))
        pid[source] = (pid[source] + step) % 0x8000
        tl0[source] = (tl0[source] + rng.choice((0, 0, 1, -1))) % 256
        long = rng.random() < 0.8 or source != 1
        payload = _desc(pid[source] if rng.random() < 0.9 else None, tl0[source] if rng.random() < 0.9 else None,
                        rng.randrange(4) if rng.random() < 0.9 else None, long)
        if rng.random() < 0.01:
            payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(6)))  # garbage
        want = a.rewrite(payload, sources[source])
        fields = vp8_numbering(payload)
        if fields is not None and b.current_source is sources[source]:
            nums = b.renumber(fields)
            got = _renumbered(payload, fields, nums)
            renumbered += 1
            if nums is None:
                assert want is payload  # the subscriber shares the packet's payload: no copy either way
                shared += 1
        else:
            got = b.rewrite(payload, sources[source])
        assert got == want, k
        assert (a.last_picture_id, a.last_tl0picidx, a.rebases) == (b.last_picture_id, b.last_tl0picidx, b.rebases)
        if rng.random() < 0.05:  # a retransmission of this packet from any source
            other = sources[rng.randrange(3)]
            assert a.remap(payload, other) == b.remap(payload, other)
    assert renumbered > 15000 and shared > 100


def test_a_subscriber_that_never_switched_shares_the_payload() -> None:
    rw = Vp8Rewriter()
    src = object()
    first = _desc(500, 3, 0)
    assert rw.rewrite(first, src) is first
    for k in range(1, 300):
        payload = _desc(500 + k, 3 + k // 4, (0, 2, 1, 2)[k % 4])
        assert rw.renumber(vp8_numbering(payload)) is None
    assert rw.last_picture_id == 799 and rw.rebases == 0


def test_a_7_bit_picture_id_is_widened_by_renumber_even_when_its_value_stays() -> None:
    a, b = Vp8Rewriter(), Vp8Rewriter()
    src = object()
    first = _desc(5, 3, 0, long=False)
    assert a.rewrite(first, src) == b.rewrite(first, src) != first
    for pid in range(6, 140):
        payload = _desc(pid, 3, 2, long=False)
        nums = b.renumber(vp8_numbering(payload))
        assert nums is not None and _renumbered(payload, vp8_numbering(payload), nums) == a.rewrite(payload, src)
    assert b.last_picture_id == 139

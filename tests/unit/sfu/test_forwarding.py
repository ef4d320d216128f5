"""The forwarding graph with real aiortc objects and no network.

A real Producer fans real VP8 packets (made by aiortc's own encoder, so keyframe detection runs for real) out to
real Consumers, each on a real, unconnected aiortc RTCRtpSender. Because no transport is connected, a consumer is
started by hand: SRTP protect is the identity (SRTP is not under test here) and "sending" appends to a list, which
the tests parse back with aiortc's RtpPacket. Time comes from a fake clock handed to the producer and consumers.
"""

from __future__ import annotations

import asyncio
import fractions
import random
import time
from dataclasses import dataclass, field
from itertools import pairwise

import av
import numpy as np
import pytest
from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCRtpSender,
)
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

import sfu.consumer.base
from sfu.consumer.base import (
    NACK_REPEAT_MIN_S,
    NACK_RETRANSMIT_PER_S,
    OUTPUT_SEQ_START_MAX,
    RESUME_SEQ_JUMP,
)
from sfu.consumer.simple import Consumer
from sfu.ingress import Ingress, Route
from sfu.producer import CONSUMER_MAX_ERRORS, KEYFRAME_REPLAY_MAX_PACKETS, Producer
from sfu.rtp.header import (
    URI_ABS_SEND_TIME,
    URI_MID,
    ExtensionLayout,
    abs_send_time_bytes,
    ntp_from_unix,
)
from sfu.rtp.packetcache import PACKET_CACHE_S
from tests.clock import FakeClock

VIDEO_CLOCK = 90000
TEACHER_PT = 96
TEACHER_RTX_PT = 97
SEQ_MASK = 0xFFFF
TS_MASK = 0xFFFFFFFF
TEACHER_SSRC = 0x1234ABCD

# the clip: keyframes at these frame indexes, deltas in between (a delta is 1-4 packets, a keyframe ~15)
CLIP_FRAMES = 200
CLIP_KEYFRAMES = (0, 40, 190)


# -- real VP8 from aiortc's encoder ------------------------------------------------------------------------


@dataclass
class Frame:
    ts: int  # the encoder's RTP timestamp (from pts)
    payloads: list[bytes]
    keyframe: bool


def encode_clip(n_frames: int, keyframes: tuple[int, ...], width: int = 160, height: int = 120) -> list[Frame]:
    """A moving square over a fixed noisy texture: keyframes span many packets, deltas one to a few."""
    encoder = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=VIDEO_CLOCK, payloadType=TEACHER_PT))
    texture = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    frames = []
    for n in range(n_frames):
        img = texture.copy()
        x = (n * 4) % (width - 32)
        img[40:72, x:x + 32] = (255, 40, 40)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = n * VIDEO_CLOCK // 30
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        payloads, ts = encoder.encode(frame, n in keyframes)
        frames.append(Frame(ts, payloads, n in keyframes))
    return frames


@pytest.fixture(scope="module")
def clip() -> list[Frame]:
    frames = encode_clip(CLIP_FRAMES, CLIP_KEYFRAMES)
    # the premise of these tests: the encoder made keyframes exactly where asked, and several packets each
    for i, f in enumerate(frames):
        assert f.keyframe == (i in CLIP_KEYFRAMES)
        if f.keyframe:
            assert len(f.payloads) >= 3
    return frames


@dataclass
class Pkt:
    """One packet as the teacher sends it."""

    seq: int  # 16 bits
    ts: int  # 32 bits
    marker: int
    payload: bytes
    frame: int  # index of the clip frame it belongs to
    first_of_keyframe: bool = False


def packetize(frames: list[Frame], first_seq: int = 1000, ts_base: int = 5_000_000, first_frame: int = 0) -> list[Pkt]:
    """The clip as RTP: consecutive 16-bit sequence numbers from first_seq, marker on each frame's last packet."""
    out = []
    seq = first_seq
    for k, frame in enumerate(frames):
        for i, payload in enumerate(frame.payloads):
            out.append(Pkt(seq & SEQ_MASK, (frame.ts + ts_base) & TS_MASK, int(i == len(frame.payloads) - 1),
                           payload, first_frame + k, frame.keyframe and i == 0))
            seq += 1
    return out


# -- the graph -------------------------------------------------------------------------------------------------


EXTMAP = HeaderExtensionsMap()
EXTMAP.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=1, uri=URI_MID),
                                                    RTCRtpHeaderExtensionParameters(id=3, uri=URI_ABS_SEND_TIME)]))


def parse(data: bytes) -> RtpPacket:
    return RtpPacket.parse(data, EXTMAP)


def layout() -> ExtensionLayout:
    return ExtensionLayout(mid="1", mid_id=1, abs_send_time_id=3, audio_level_id=0)


def make_dtls() -> RTCDtlsTransport:
    return RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])


def make_sender(kind: str = "video") -> RTCRtpSender:
    """A real aiortc sender on a real, unconnected transport (needs a running event loop)."""
    return RTCRtpSender(kind, make_dtls())


def start_by_hand(consumer: Consumer) -> list[bytes]:
    """What Consumer._start does once ICE/DTLS are up, minus SRTP and the socket: returns the 'wire'."""
    wire: list[bytes] = []
    consumer._protect = lambda b: b
    consumer._send = wire.append
    consumer._started = True
    return wire


@dataclass
class Graph:
    clock: FakeClock = field(default_factory=FakeClock)
    plis: list[int] = field(default_factory=list)
    producer: Producer = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.producer = self.new_producer()

    def new_producer(self, track_id: str = "cam") -> Producer:
        producer = Producer(track_id, "video", "vp8", VIDEO_CLOCK, send_pli=self.plis.append, clock=self.clock)
        producer.ssrc = TEACHER_SSRC
        return producer

    def consumer(self, payload_type: int = 100, rtx: int | None = None, waiting_keyframe: bool = True,
                 producer: Producer | None = None, sender: RTCRtpSender | None = None,
                 **kwargs) -> tuple[Consumer, list[bytes]]:
        c = Consumer(producer or self.producer, sender or make_sender(), payload_type, rtx, layout(),
                     clock=self.clock, **kwargs)
        wire = start_by_hand(c)
        c._waiting_keyframe = waiting_keyframe
        return c, wire

    def feed(self, pkts: list[Pkt], producer: Producer | None = None) -> None:
        producer = producer or self.producer
        for p in pkts:
            producer.on_packet(p.seq, p.ts, p.marker, p.payload, 127)


@pytest.fixture
def graph() -> Graph:
    return Graph()


def seq_step(a: int, b: int) -> int:
    return (b - a) & SEQ_MASK


# -- 1. rewriting ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_seq, ts_base", [
    pytest.param(1000, 5_000_000, id="plain"),
    pytest.param(65520, 5_000_000, id="input sequence crosses the 16-bit wrap"),
    pytest.param(3000, TS_MASK - 30000, id="input timestamp crosses the 32-bit wrap"),
    pytest.param(65530, TS_MASK - 10000, id="both wrap"),
])
async def test_every_forwarded_packet_is_rewritten_into_the_consumers_stream(clip, graph, first_seq, ts_base):
    pkts = packetize(clip[:15], first_seq, ts_base)
    assert pkts[0].first_of_keyframe
    consumers = [graph.consumer(payload_type=pt) for pt in (100, 102, 96)]

    graph.feed(pkts)

    now_ast = int.from_bytes(abs_send_time_bytes(time.time()), "big")
    for consumer, wire in consumers:
        assert len(wire) == len(pkts)
        out = [parse(d) for d in wire]
        for o, p in zip(out, pkts):
            assert o.ssrc == consumer.ssrc == consumer.sender._ssrc
            assert o.payload_type == consumer.payload_type
            assert o.extensions.mid == "1"
            assert o.extensions.abs_send_time is not None
            # restamped now (6.18 fixed point, wraps every 64 s): within a second of the clock
            assert min((now_ast - o.extensions.abs_send_time) & 0xFFFFFF,
                       (o.extensions.abs_send_time - now_ast) & 0xFFFFFF) < (1 << 18)
            assert o.payload == p.payload
            assert o.marker == p.marker
        assert out[0].sequence_number < OUTPUT_SEQ_START_MAX
        assert all(seq_step(a.sequence_number, b.sequence_number) == 1 for a, b in pairwise(out))
        offsets = {(o.timestamp - p.ts) & TS_MASK for o, p in zip(out, pkts)}
        assert len(offsets) == 1
    # the premise: the wraps under test really happened in the input
    if first_seq > 60000:
        assert any(b.seq < a.seq for a, b in pairwise(pkts))
    if ts_base > 1 << 31:
        assert any(b.ts < a.ts for a, b in pairwise(pkts))


# -- 2. isolation of a failing subscriber ---------------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError, BlockingIOError, RuntimeError, ValueError])
async def test_a_consumer_whose_send_raises_neither_stops_the_others_nor_reaches_the_teacher(clip, graph, error):
    pkts = packetize(clip[:CONSUMER_MAX_ERRORS + 20])
    first, first_wire = graph.consumer()
    bad, _ = graph.consumer()
    last, last_wire = graph.consumer()
    attempts = []

    def broken(data: bytes) -> None:
        attempts.append(data)
        raise error("socket gone")

    bad._send = broken

    graph.feed(pkts[:CONSUMER_MAX_ERRORS - 1])  # never raises out of on_packet
    assert bad in graph.producer.consumers and not bad.closed
    assert bad.errors == CONSUMER_MAX_ERRORS - 1
    graph.feed(pkts[CONSUMER_MAX_ERRORS - 1:CONSUMER_MAX_ERRORS])
    assert bad not in graph.producer.consumers
    assert bad.closed
    graph.feed(pkts[CONSUMER_MAX_ERRORS:])

    assert len(attempts) == CONSUMER_MAX_ERRORS  # nothing more is tried once detached
    for wire in (first_wire, last_wire):
        assert [parse(d).payload for d in wire] == [p.payload for p in pkts]
    assert graph.producer.consumers == (first, last)


async def test_a_consumer_that_fails_now_and_then_is_not_detached(clip, graph):
    pkts = packetize(clip[:100])
    assert len(pkts) > 2 * CONSUMER_MAX_ERRORS
    flaky, _ = graph.consumer()
    sent = []

    calls = {"n": 0}

    def every_nth_succeeds(data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] % (CONSUMER_MAX_ERRORS - 1) != 0:
            raise OSError("busy")
        sent.append(data)

    flaky._send = every_nth_succeeds
    graph.feed(pkts)
    assert flaky in graph.producer.consumers
    assert not flaky.closed
    assert len(sent) == len(pkts) // (CONSUMER_MAX_ERRORS - 1)


# -- 3. waiting for a keyframe -------------------------------------------------------------------------------


async def test_a_consumer_waiting_for_a_keyframe_sends_nothing_asks_once_and_starts_at_the_keyframe(clip, graph):
    kf = CLIP_KEYFRAMES[1]
    deltas = packetize(clip[1:kf], first_seq=2000, first_frame=1)
    from_key = packetize(clip[kf:kf + 5], first_seq=deltas[-1].seq + 1, first_frame=kf)
    _, wire = graph.consumer(waiting_keyframe=True)

    graph.feed(deltas)
    assert wire == []
    assert graph.plis == [TEACHER_SSRC]  # asked, once (throttled)

    graph.feed(from_key)
    assert [parse(d).payload for d in wire] == [p.payload for p in from_key]
    assert wire and parse(wire[0]).payload == clip[kf].payloads[0]
    assert graph.plis == [TEACHER_SSRC]


# -- 4. keyframe request throttling ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [RTCP_PSFB_PLI, RTCP_PSFB_FIR], ids=["pli", "fir"])
async def test_keyframe_requests_from_many_consumers_within_half_a_second_give_one_pli(graph, fmt):
    consumers = [graph.consumer()[0] for _ in range(20)]
    t0 = graph.clock.now

    for i, c in enumerate(consumers):
        graph.clock.now = t0 + i * 0.02  # all within 0.38 s
        await c.handle_rtcp(RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=c.ssrc))
    graph.clock.now = t0 + 0.49
    await consumers[0].handle_rtcp(RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=consumers[0].ssrc))
    assert graph.plis == [TEACHER_SSRC]

    graph.clock.now = t0 + 0.5
    await consumers[5].handle_rtcp(RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=consumers[5].ssrc))
    assert graph.plis == [TEACHER_SSRC, TEACHER_SSRC]
    graph.clock.now = t0 + 0.6
    await consumers[6].handle_rtcp(RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=consumers[6].ssrc))
    assert graph.plis == [TEACHER_SSRC, TEACHER_SSRC]
    assert sum(c.keyframe_requests for c in consumers) == 23


# -- 5. NACK -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rtx", [97, None], ids=["as rtx", "without rtx"])
async def test_a_nack_for_a_forwarded_packet_retransmits_it(clip, graph, rtx):
    pkts = packetize(clip[:8])
    consumer, wire = graph.consumer(rtx=rtx)
    graph.feed(pkts)
    originals = [parse(d) for d in wire]
    before = len(wire)

    lost = [originals[3], originals[10], originals[4]]
    assert consumer.on_nack([o.sequence_number for o in lost]) == 3
    resent = [parse(d) for d in wire[before:]]

    assert len(resent) == 3
    assert consumer.retransmits == 3 and consumer.nack_unanswered == 0
    for r, o in zip(resent, lost):
        assert r.timestamp == o.timestamp
        assert r.marker == o.marker
        assert r.extensions.mid == "1"
        if rtx is None:
            assert (r.payload_type, r.ssrc, r.sequence_number) == (o.payload_type, o.ssrc, o.sequence_number)
            assert r.payload == o.payload
        else:
            assert (r.payload_type, r.ssrc) == (rtx, consumer.sender._rtx_ssrc)
            assert int.from_bytes(r.payload[:2], "big") == o.sequence_number
            assert r.payload[2:] == o.payload
    if rtx is not None:
        assert all(seq_step(a.sequence_number, b.sequence_number) == 1 for a, b in pairwise(resent))


async def test_retransmissions_to_a_classroom_stay_within_a_share_of_its_own_estimate(clip, graph):
    """Repairs must not flood the congested link they repair: with an 80 kbit/s REMB, a second's worth of
    retransmissions stays near the floor, however many packets are NACKed; a fresh window allows more."""
    from sfu.consumer.base import RETRANSMIT_MIN_BYTES_PER_S

    pkts = packetize(clip[:60])
    consumer, wire = graph.consumer(rtx=97)
    graph.feed(pkts)
    seqs = [parse(d).sequence_number for d in wire]
    consumer.remb_bps, consumer.remb_at = 80_000, graph.clock()
    before = len(wire)
    sent = consumer.on_nack(seqs)
    payload_bytes = sum(len(parse(d).payload) - 2 for d in wire[before:])
    assert 0 < sent < len(seqs)
    biggest = max(len(p.payload) for p in pkts)
    assert payload_bytes <= RETRANSMIT_MIN_BYTES_PER_S + biggest, payload_bytes
    graph.clock.advance(1.0)
    consumer.remb_at = graph.clock()
    assert consumer.on_nack(seqs[sent:]) > 0  # the next second has its own allowance


async def test_a_paused_video_consumer_answers_no_nack(clip, graph):
    pkts = packetize(clip[:8])
    consumer, wire = graph.consumer(rtx=97)
    graph.feed(pkts)
    seq = parse(wire[2]).sequence_number
    consumer.pause()
    assert consumer.on_nack([seq]) == 0
    consumer.unpause()


@pytest.mark.parametrize("where", ["just before the first", "long before the first", "just beyond the newest",
                                   "far beyond the newest"])
async def test_a_nack_for_a_sequence_number_never_forwarded_sends_nothing(clip, graph, where):
    # the consumer joins at the second keyframe: the teacher's earlier packets were never forwarded to it
    kf = CLIP_KEYFRAMES[1]
    pkts = packetize(clip[:kf + 5])
    consumer, wire = graph.consumer(waiting_keyframe=True)
    graph.feed(pkts)
    out = [parse(d) for d in wire]
    first, newest = out[0].sequence_number, out[-1].sequence_number
    seq = {"just before the first": first - 1, "long before the first": first - 30,
           "just beyond the newest": newest + 1, "far beyond the newest": newest + 1000}[where] & SEQ_MASK
    sent = len(wire)

    assert consumer.on_nack([seq]) == 0
    assert len(wire) == sent
    assert consumer.nack_unanswered == 1


async def test_a_nack_for_a_packet_evicted_from_the_cache_sends_nothing(clip, graph):
    consumer, wire = graph.consumer(rtx=97)
    graph.feed(packetize(clip[:5]))
    old = parse(wire[2]).sequence_number
    graph.clock.advance(PACKET_CACHE_S + 0.1)
    graph.feed(packetize(clip[5:10], first_seq=1000 + len(packetize(clip[:5])), first_frame=5))
    sent = len(wire)

    assert consumer.on_nack([old]) == 0
    assert len(wire) == sent
    assert consumer.nack_unanswered == 1
    # the newer ones are still answered
    assert consumer.on_nack([parse(wire[-1]).sequence_number]) == 1


async def test_a_nack_repeated_sooner_than_the_minimum_interval_is_answered_once(clip, graph):
    consumer, wire = graph.consumer(rtx=97)
    graph.feed(packetize(clip[:5]))
    seq = parse(wire[1]).sequence_number
    assert consumer.on_nack([seq]) == 1
    graph.clock.advance(NACK_REPEAT_MIN_S / 2)
    assert consumer.on_nack([seq]) == 0
    graph.clock.advance(NACK_REPEAT_MIN_S)
    assert consumer.on_nack([seq]) == 1


async def test_a_subscriber_nacking_everything_again_and_again_gets_at_most_its_retransmission_budget(clip, graph):
    """A broken or hostile classroom must not turn the server into an amplifier at the others' expense."""
    consumer, wire = graph.consumer(rtx=97)
    graph.feed(packetize(clip[:80]))
    seqs = [parse(d).sequence_number for d in wire]
    assert len(seqs) * 10 > NACK_RETRANSMIT_PER_S
    sent = 0
    step = NACK_REPEAT_MIN_S * 1.01
    for _ in range(int(0.95 / step)):  # storms within one second, each asking for everything again
        sent += consumer.on_nack(seqs)
        graph.clock.advance(step)
    assert sent == NACK_RETRANSMIT_PER_S
    graph.clock.advance(1.0)
    assert consumer.on_nack(seqs[:5]) == 5  # a new second, a new budget


# -- 6. padding ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", [
    "MMMPMMM",
    "MMPPPPMM",
    "MPMPMPM",
    "PPMMMPM",  # probes before the consumer's first packet
    "MMMMMP" + "M" * 3,
])
async def test_padding_only_packets_leave_no_hole_in_the_output_sequence(clip, graph, pattern):
    media = iter(packetize(clip[:20]))
    consumer, wire = graph.consumer()
    seq, fed = 40000, []
    for kind in pattern:
        if kind == "P":
            graph.producer.on_packet(seq, 0, 0, b"", 127)
        else:
            p = next(media)
            graph.producer.on_packet(seq, p.ts, p.marker, p.payload, 127)
            fed.append(p)
        seq += 1

    out = [parse(d) for d in wire]
    assert [o.payload for o in out] == [p.payload for p in fed]
    assert all(seq_step(a.sequence_number, b.sequence_number) == 1 for a, b in pairwise(out))
    # and the subscriber has nothing to NACK that cannot be answered
    assert consumer.on_nack([o.sequence_number for o in out]) == len(out)
    assert consumer.nack_unanswered == 0


# -- 7. teacher retransmissions ------------------------------------------------------------------------------


async def test_a_teacher_retransmission_of_a_packet_already_forwarded_is_not_sent_twice(clip, graph):
    pkts = packetize(clip[:10])
    _, wire = graph.consumer()
    graph.feed(pkts)
    sent = len(wire)

    graph.feed([pkts[3], pkts[7], pkts[3], pkts[-1]])

    assert len(wire) == sent
    assert graph.producer.duplicates == 4
    assert graph.producer.packets_in == len(pkts)


@pytest.mark.parametrize("lost", [{3}, {3, 4, 5}, {2, 9}, {1, 16}], ids=str)
async def test_a_teacher_retransmission_of_a_packet_lost_upstream_is_forwarded_in_its_place(clip, graph, lost):
    pkts = packetize(clip[:10], first_seq=65530)  # its place is found across the 16-bit wrap too
    _, wire = graph.consumer()
    order = [i for i in range(len(pkts)) if i not in lost] + sorted(lost, reverse=True)
    graph.feed([pkts[i] for i in order])

    out = [parse(d) for d in wire]
    assert len(out) == len(pkts)
    first = out[0].sequence_number  # index 0 is never lost here
    for o, i in zip(out, order):
        assert o.payload == pkts[i].payload
        assert o.sequence_number == (first + i) & SEQ_MASK
    offsets = {(o.timestamp - pkts[i].ts) & TS_MASK for o, i in zip(out, order)}
    assert len(offsets) == 1
    assert graph.producer.duplicates == 0


# -- 8. late joiners -------------------------------------------------------------------------------------------


@pytest.fixture
def lean_wire(monkeypatch) -> list[bytes]:
    """Let Consumer._start() run for real: the lean egress path becomes (identity protect, append to a list)."""
    wire: list[bytes] = []
    monkeypatch.setattr(sfu.consumer.base, "datagram_sender", lambda dtls: ((lambda b: b), wire.append))
    return wire


async def test_a_late_joiner_gets_the_cached_keyframe_replayed_then_the_new_packet(clip, graph, lean_wire):
    before = packetize(clip[:12])  # a keyframe (several packets) and deltas
    after = packetize(clip[12:14], first_seq=1000 + len(before), first_frame=12)
    _, early_wire = graph.consumer()
    graph.feed(before)
    late = Consumer(graph.producer, make_sender(), 100, None, layout(), clock=graph.clock)
    assert late._send is None and late._waiting_keyframe

    graph.feed(after[:1])
    out = [parse(d) for d in lean_wire]
    assert [o.payload for o in out] == [p.payload for p in before + after[:1]]
    assert out[0].payload == clip[0].payloads[0]  # from the keyframe's first packet
    assert all(seq_step(a.sequence_number, b.sequence_number) == 1 for a, b in pairwise(out))
    assert len({(o.timestamp - p.ts) & TS_MASK for o, p in zip(out, before + after[:1])}) == 1
    assert graph.plis == []

    graph.feed(after[1:])
    assert [parse(d).payload for d in lean_wire] == [p.payload for p in before + after]
    assert len(early_wire) == len(before + after)


async def test_a_late_joiner_far_from_the_last_keyframe_asks_for_one_and_waits_for_it(clip, graph, lean_wire):
    kf, next_kf = CLIP_KEYFRAMES[1], CLIP_KEYFRAMES[2]
    pkts = packetize(clip[kf:next_kf + 3], first_frame=kf)
    start_of_next = next(i for i, p in enumerate(pkts) if p.frame == next_kf)
    join = KEYFRAME_REPLAY_MAX_PACKETS + 5
    assert join < start_of_next
    graph.feed(pkts[:join])
    late = Consumer(graph.producer, make_sender(), 100, None, layout(), clock=graph.clock)

    graph.feed(pkts[join:start_of_next])
    assert lean_wire == []
    assert graph.plis == [TEACHER_SSRC]
    assert late._started

    graph.feed(pkts[start_of_next:])
    assert [parse(d).payload for d in lean_wire] == [p.payload for p in pkts[start_of_next:]]
    assert graph.plis == [TEACHER_SSRC]


async def test_a_late_joiner_whose_first_packet_is_a_late_retransmission_gets_each_packet_once(
        clip, graph, lean_wire):
    pkts = packetize(clip[:6])
    lost = 8  # inside the keyframe, lost upstream; the teacher's retransmission is the joiner's first packet
    assert pkts[0].first_of_keyframe and pkts[lost].frame == 0
    graph.feed([p for i, p in enumerate(pkts) if i != lost])
    Consumer(graph.producer, make_sender(), 100, None, layout(), clock=graph.clock)

    graph.feed([pkts[lost]])

    out = [parse(d) for d in lean_wire]
    seqs = [o.sequence_number for o in out]
    assert len(seqs) == len(set(seqs)), f"a packet was sent twice: {seqs}"
    assert len(out) == len(pkts), "a cached packet was never sent"
    by_seq = {o.sequence_number: o.payload for o in out}
    assert [by_seq.get((seqs[0] + i) & SEQ_MASK) for i in range(len(pkts))] == [p.payload for p in pkts]


# -- 9. REMB -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bitrate, listed, recorded", [
    (750_000, "me", True),
    (1_234_567, "me", True),  # not representable exactly: rounded by the 18-bit mantissa
    (300_000, "me and another", True),
    (900_000, "another", False),
])
async def test_remb_from_the_subscriber_is_recorded_on_its_consumer(graph, bitrate, listed, recorded):
    consumer, _ = graph.consumer()
    ssrcs = {"me": [consumer.ssrc], "me and another": [consumer.ssrc ^ 1, consumer.ssrc],
             "another": [consumer.ssrc ^ 1]}[listed]
    fci = pack_remb_fci(bitrate, ssrcs)
    graph.clock.advance(3.0)

    await consumer.handle_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=fci))

    if recorded:
        assert consumer.remb_bps == unpack_remb_fci(fci)[0]
        assert abs(consumer.remb_bps - bitrate) <= bitrate >> 17
        assert consumer.remb_at == graph.clock.now
    else:
        assert consumer.remb_bps is None and consumer.remb_at is None


# -- 10. ResumePoint -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("elapsed_s, old_start", [
    (0.2, None),
    (0.0, None),
    (3.7, None),
    (0.5, 65530),  # the old stream's output itself crosses the 16-bit wrap
])
async def test_a_consumer_for_a_new_producer_continues_the_old_consumers_stream(clip, graph, elapsed_s, old_start):
    sender = make_sender()
    resume0 = None
    if old_start is not None:
        resume0 = sfu.consumer.base.ResumePoint(old_start, 123456, graph.clock.now, 10)
    old, old_wire = graph.consumer(sender=sender, resume=resume0)
    graph.feed(packetize(clip[:20]))
    last = parse(old_wire[-1])
    resume = old.resume_point()
    old.close()
    graph.clock.advance(elapsed_s)

    producer = graph.new_producer("screen")
    _, new_wire = graph.consumer(sender=sender, producer=producer, resume=resume)
    pkts = packetize(clip[CLIP_KEYFRAMES[1]:CLIP_KEYFRAMES[1] + 6], first_seq=7, ts_base=3_000_000_000)
    graph.feed(pkts, producer)

    out = [parse(d) for d in new_wire]
    assert len(out) == len(pkts)
    assert out[0].ssrc == last.ssrc
    assert out[0].sequence_number == (last.sequence_number + 1) & SEQ_MASK
    assert all(seq_step(a.sequence_number, b.sequence_number) == 1 for a, b in pairwise(out))
    forward = (out[0].timestamp - last.timestamp) & TS_MASK
    assert forward > 0
    assert abs(forward - max(1, elapsed_s * VIDEO_CLOCK)) <= 1
    assert len({(o.timestamp - p.ts) & TS_MASK for o, p in zip(out, pkts)}) == 1


@pytest.mark.parametrize("last_write", ["late teacher retransmission", "nack answered without rtx"])
async def test_the_resume_point_follows_the_newest_packet_sent_not_the_last_write(clip, graph, last_write):
    sender = make_sender()
    old, old_wire = graph.consumer(sender=sender)
    pkts = packetize(clip[:20])
    lost = len(clip[0].payloads) + 1  # a delta frame's packet
    graph.feed([p for i, p in enumerate(pkts) if i != lost])
    newest = parse(old_wire[-1])
    if last_write == "late teacher retransmission":
        graph.feed([pkts[lost]])
    else:
        assert old.on_nack([parse(old_wire[lost]).sequence_number]) == 1
    resume = old.resume_point()
    old.close()
    graph.clock.advance(0.01)

    producer = graph.new_producer("screen")
    _, new_wire = graph.consumer(sender=sender, producer=producer, resume=resume)
    graph.feed(packetize(clip[CLIP_KEYFRAMES[1]:CLIP_KEYFRAMES[1] + 2], first_seq=7), producer)

    first = parse(new_wire[0])
    forward = (first.timestamp - newest.timestamp) & TS_MASK
    assert 0 < forward < 1 << 31, "timestamp went backwards across the producer change"
    assert forward == round(0.01 * VIDEO_CLOCK)


# -- 11. sender reports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sr_rtp_ts, elapsed_s", [
    (5_000_000, 0.0),
    (5_000_000, 1.5),
    (TS_MASK - 1000, 2.25),  # the extrapolated timestamp wraps
])
async def test_update_report_puts_a_consistent_sender_report_into_the_stock_sender(clip, graph, sr_rtp_ts, elapsed_s):
    consumer, wire = graph.consumer()
    pkts = packetize(clip[:10])
    graph.feed(pkts)
    offset = (parse(wire[0]).timestamp - pkts[0].ts) & TS_MASK
    sr_unix = time.time() - 10.0
    graph.producer.on_sender_report(ntp_from_unix(sr_unix), sr_rtp_ts)

    now_unix = sr_unix + elapsed_s
    consumer.update_report(now_unix)

    s = consumer.sender
    expected = (sr_rtp_ts + offset + round(elapsed_s * VIDEO_CLOCK)) & TS_MASK
    assert min((s._RTCRtpSender__rtp_timestamp - expected) & TS_MASK,
               (expected - s._RTCRtpSender__rtp_timestamp) & TS_MASK) <= 1  # NTP fraction rounding
    assert s._RTCRtpSender__ntp_timestamp == ntp_from_unix(now_unix)
    assert s._RTCRtpSender__packet_count == consumer.packets_out == len(pkts)
    assert s._RTCRtpSender__octet_count == consumer.octets_out == sum(len(p.payload) for p in pkts)


async def test_update_report_leaves_a_consumer_that_has_not_started_alone(clip, graph):
    consumer = Consumer(graph.producer, make_sender(), 100, None, layout(), clock=graph.clock)
    graph.producer.on_sender_report(ntp_from_unix(time.time()), 1234)
    consumer.update_report(time.time())
    s = consumer.sender
    assert (s._RTCRtpSender__rtp_timestamp, s._RTCRtpSender__ntp_timestamp, s._RTCRtpSender__packet_count,
            s._RTCRtpSender__octet_count) == (0, 0, 0, 0)


async def test_update_report_after_a_producer_change_never_publishes_a_foreign_timestamp(clip, graph):
    sender = make_sender()
    old, _ = graph.consumer(sender=sender)
    graph.feed(packetize(clip[:10]))
    now = time.time()
    graph.producer.on_sender_report(ntp_from_unix(now - 1.0), 5_000_000)
    old.update_report(now)
    before = sender._RTCRtpSender__rtp_timestamp
    resume = old.resume_point()
    old.close()
    graph.clock.advance(0.3)

    producer = graph.new_producer("screen")
    producer.on_sender_report(ntp_from_unix(now), 77_000)
    new, new_wire = graph.consumer(sender=sender, producer=producer, resume=resume)
    new.update_report(now + 0.25)  # the report refresher runs while the new consumer waits for its keyframe
    reported = sender._RTCRtpSender__rtp_timestamp
    pkts = packetize(clip[CLIP_KEYFRAMES[1]:CLIP_KEYFRAMES[1] + 2], first_seq=7, ts_base=77_000)
    graph.feed(pkts, producer)
    offset = (parse(new_wire[0]).timestamp - pkts[0].ts) & TS_MASK

    consistent = (producer.rtp_time_at(now + 0.25) + offset) & TS_MASK
    assert reported == before or min((reported - consistent) & TS_MASK, (consistent - reported) & TS_MASK) <= 1


# -- 12. ingress -------------------------------------------------------------------------------------------------

TEACHER_EXTMAP = HeaderExtensionsMap()
TEACHER_EXTMAP.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=1, uri=URI_MID)]))
RTX_SSRC = 0x0BADCAFE


def teacher_rtp(p: Pkt, mid: str | None = "0", ssrc: int = TEACHER_SSRC, pt: int = TEACHER_PT,
                rtx_seq: int | None = None) -> bytes:
    payload = p.payload if rtx_seq is None else p.seq.to_bytes(2, "big") + p.payload
    packet = RtpPacket(payload_type=pt, marker=p.marker, sequence_number=p.seq if rtx_seq is None else rtx_seq,
                       timestamp=p.ts, ssrc=ssrc, payload=payload)
    packet.extensions.mid = mid
    return packet.serialize(TEACHER_EXTMAP)


@dataclass
class Wired:
    dtls: RTCDtlsTransport
    ingress: Ingress
    producer: Producer
    consumer: Consumer
    wire: list[bytes]
    rtp_calls: list[bytes]
    rtcp_calls: list[bytes]
    rtp_hook: object
    rtcp_hook: object


@pytest.fixture
async def wired(graph) -> Wired:
    dtls = make_dtls()
    rtp_calls: list[bytes] = []
    rtcp_calls: list[bytes] = []
    original_rtp, original_rtcp = dtls._handle_rtp_data, dtls._handle_rtcp_data

    async def rtp_hook(data: bytes, arrival_time_ms: int) -> None:
        rtp_calls.append(data)
        await original_rtp(data, arrival_time_ms)

    async def rtcp_hook(data: bytes) -> None:
        rtcp_calls.append(data)
        await original_rtcp(data)

    dtls._handle_rtp_data = rtp_hook
    dtls._handle_rtcp_data = rtcp_hook
    producer = Producer("cam", "video", "vp8", VIDEO_CLOCK, send_pli=graph.plis.append, clock=graph.clock)
    ingress = Ingress(dtls)
    ingress.add_route(Route(producer, "0", TEACHER_PT, TEACHER_RTX_PT, mid_ext_id=1, audio_level_ext_id=0))
    consumer, wire = graph.consumer(producer=producer)
    return Wired(dtls, ingress, producer, consumer, wire, rtp_calls, rtcp_calls, rtp_hook, rtcp_hook)


async def test_ingress_hands_the_teachers_rtp_to_its_producer_and_learns_the_ssrc(clip, wired):
    pkts = packetize(clip[:5])
    assert wired.producer.ssrc is None
    for i, p in enumerate(pkts):
        # like a browser, the MID extension only on the first packets
        await wired.dtls._handle_rtp_data(teacher_rtp(p, mid="0" if i < 3 else None), 0)

    assert wired.producer.ssrc == TEACHER_SSRC
    assert wired.producer.packets_in == len(pkts)
    assert [parse(d).payload for d in wired.wire] == [p.payload for p in pkts]
    assert [parse(d).marker for d in wired.wire] == [p.marker for p in pkts]
    assert len(wired.rtp_calls) == len(pkts)  # aiortc's own handler still runs
    assert wired.ingress.malformed == wired.ingress.unrouted == wired.ingress.errors == 0


@pytest.mark.parametrize("rtx_mid", ["0", None], ids=["rtx with mid", "rtx learnt by payload type"])
async def test_ingress_unwraps_an_rtx_retransmission_into_the_producer(clip, wired, rtx_mid):
    pkts = packetize(clip[:5])
    lost = 4
    for i, p in enumerate(pkts):
        if i != lost:
            await wired.dtls._handle_rtp_data(teacher_rtp(p), 0)
    await wired.dtls._handle_rtp_data(
        teacher_rtp(pkts[lost], mid=rtx_mid, ssrc=RTX_SSRC, pt=TEACHER_RTX_PT, rtx_seq=777), 0)
    # an RTX copy of something already forwarded (a bandwidth probe) is a duplicate, not a second send
    await wired.dtls._handle_rtp_data(
        teacher_rtp(pkts[1], mid=rtx_mid, ssrc=RTX_SSRC, pt=TEACHER_RTX_PT, rtx_seq=778), 0)

    assert wired.producer.ssrc == TEACHER_SSRC  # the RTX ssrc is not taken for the media one
    assert wired.producer.packets_in == len(pkts)
    assert wired.producer.duplicates == 1
    out = [parse(d) for d in wired.wire]
    assert len(out) == len(pkts)
    assert out[-1].payload == pkts[lost].payload
    assert out[-1].sequence_number == (out[0].sequence_number + lost) & SEQ_MASK
    assert len(wired.rtp_calls) == len(pkts) + 1


async def test_ingress_never_guesses_a_packet_naming_another_mid_into_a_track(clip, wired):
    """A stream whose MID names no route (a transceiver not answered yet) is not spliced into the camera by
    payload type: the camera's sequence stays its own."""
    pkts = packetize(clip[:4])
    await wired.dtls._handle_rtp_data(teacher_rtp(pkts[0], mid="0"), 0)
    stranger = teacher_rtp(pkts[1], mid="2", ssrc=TEACHER_SSRC + 1)
    stranger = stranger[:2] + ((pkts[1].seq + 12000) & SEQ_MASK).to_bytes(2, "big") + stranger[4:]

    await wired.dtls._handle_rtp_data(stranger, 0)
    # without a MID it could only be guessed by payload type, and the camera already has its stream
    await wired.dtls._handle_rtp_data(teacher_rtp(pkts[1], mid=None, ssrc=TEACHER_SSRC + 1), 0)

    assert wired.producer.packets_in == 1 and len(wired.wire) == 1
    assert wired.ingress.unrouted == 2
    for p in pkts[1:]:
        await wired.dtls._handle_rtp_data(teacher_rtp(p), 0)
    out = [parse(d).sequence_number for d in wired.wire]
    assert all(seq_step(a, b) == 1 for a, b in pairwise(out)), out


async def test_a_taken_down_tracks_late_packets_are_dropped_not_learned_as_another_track(clip, wired):
    """Courseware stopped: its producer and route go, the browser sends its SSRC a moment longer (without the
    MID extension by then); those packets reach no track, though the camera has the same payload type."""
    screen = Producer("screen", "video", "vp8", VIDEO_CLOCK, send_pli=lambda ssrc: None)
    screen_ssrc = TEACHER_SSRC + 7
    wired.ingress.add_route(Route(screen, "1", TEACHER_PT, TEACHER_RTX_PT, mid_ext_id=1, audio_level_ext_id=0),
                            screen_ssrc, None)
    pkts = packetize(clip[:3])
    await wired.dtls._handle_rtp_data(teacher_rtp(pkts[0], mid="0"), 0)
    await wired.dtls._handle_rtp_data(teacher_rtp(pkts[0], mid=None, ssrc=screen_ssrc), 0)
    assert screen.packets_in == 1

    wired.ingress.remove_producer(screen)
    for p in pkts[1:]:
        await wired.dtls._handle_rtp_data(teacher_rtp(p, mid=None, ssrc=screen_ssrc), 0)

    assert wired.producer.packets_in == 1 and screen.packets_in == 1
    assert wired.ingress.unrouted == len(pkts) - 1


GARBAGE_MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x80", id="one byte"),
    pytest.param(b"\x80\x60" + b"\x00" * 9, id="eleven bytes"),
    pytest.param(b"\x40\x60" + b"\x00" * 20, id="rtp version 1"),
    pytest.param(b"\x90\x60" + b"\x00" * 10 + b"\xbe\xde\x00\x09" + b"\x00" * 8, id="extension longer than packet"),
    pytest.param(b"\x8f\x60" + b"\x00" * 30, id="more csrcs than bytes"),
    pytest.param(b"\xa0\x60" + b"\x00" * 20 + b"\x00", id="padding length zero"),
    pytest.param(b"\xa0\x60" + b"\x00" * 20 + b"\xff", id="padding longer than packet"),
]


@pytest.mark.parametrize("data", GARBAGE_MALFORMED)
async def test_ingress_counts_malformed_rtp_and_never_raises(clip, wired, data):
    await wired.dtls._handle_rtp_data(teacher_rtp(packetize(clip[:1])[0]), 0)
    before = wired.producer.packets_in, len(wired.wire)

    await wired.dtls._handle_rtp_data(data, 0)

    assert (wired.producer.packets_in, len(wired.wire)) == before
    assert wired.ingress.malformed == 1
    assert wired.rtp_calls[-1] == data


async def test_ingress_survives_random_bytes(clip, wired):
    await wired.dtls._handle_rtp_data(teacher_rtp(packetize(clip[:1])[0]), 0)
    before = wired.producer.packets_in, len(wired.wire)
    rng = random.Random(20240901)
    blobs = [rng.randbytes(rng.randrange(0, 200)) for _ in range(300)]
    # a random blob that happens to be well-formed RTP of the teacher's SSRC or payload type would be media
    blobs = [b for b in blobs if len(b) < 12 or not (b[0] >> 6 == 2 and (b[1] & 0x7F) in (TEACHER_PT, TEACHER_RTX_PT)
                                                      or b[8:12] == TEACHER_SSRC.to_bytes(4, "big"))]

    for data in blobs:
        await wired.dtls._handle_rtp_data(data, 0)

    assert (wired.producer.packets_in, len(wired.wire)) == before
    assert wired.ingress.malformed + wired.ingress.unrouted == len(blobs)
    assert wired.ingress.malformed > 200
    assert wired.ingress.errors == 0
    assert len(wired.rtp_calls) == 1 + len(blobs)


async def test_ingress_passes_the_teachers_sender_report_to_the_producer(clip, wired):
    await wired.dtls._handle_rtp_data(teacher_rtp(packetize(clip[:1])[0]), 0)
    unix = time.time() - 5.0
    sr = RtcpSrPacket(ssrc=TEACHER_SSRC, sender_info=RtcpSenderInfo(ntp_timestamp=ntp_from_unix(unix),
                                                                   rtp_timestamp=4242, packet_count=1,
                                                                   octet_count=100))
    await wired.dtls._handle_rtcp_data(bytes(sr))
    await wired.dtls._handle_rtcp_data(b"\x80\xc8garbage")

    assert wired.producer.rtp_time_at(unix + 1.0) in (4242 + VIDEO_CLOCK - 1, 4242 + VIDEO_CLOCK, 4242 + VIDEO_CLOCK + 1)
    assert len(wired.rtcp_calls) == 2


async def test_ingress_close_gives_the_transport_its_handlers_back(wired):
    wired.ingress.close()
    assert wired.dtls._handle_rtp_data is wired.rtp_hook
    assert wired.dtls._handle_rtcp_data is wired.rtcp_hook
    wired.ingress.close()  # idempotent
    assert wired.dtls._handle_rtp_data is wired.rtp_hook


async def test_ingress_close_restores_aiortcs_own_methods():
    dtls = make_dtls()
    ingress = Ingress(dtls)
    assert dtls._handle_rtp_data == ingress._on_rtp
    ingress.close()
    assert dtls._handle_rtp_data == RTCDtlsTransport._handle_rtp_data.__get__(dtls)
    assert dtls._handle_rtcp_data == RTCDtlsTransport._handle_rtcp_data.__get__(dtls)


async def test_ingress_fans_out_to_many_classrooms_in_slices_letting_the_event_loop_run_between(clip, wired, graph):
    from sfu.ingress import FANOUT_SLICE

    others = [graph.consumer(producer=wired.producer) for _ in range(2 * FANOUT_SLICE)]
    ran_between: list[int] = []

    async def bystander() -> None:  # another task of the server (a handshake, a websocket message...)
        ran_between.append(sum(len(wire) for _, wire in others))

    task = asyncio.ensure_future(bystander())
    await wired.dtls._handle_rtp_data(teacher_rtp(packetize(clip[:1])[0], mid="0"), 0)
    await task
    assert all(len(wire) == 1 for _, wire in others) and len(wired.wire) == 1
    # the bystander ran after the first slice and before the last one
    assert ran_between and 0 < ran_between[0] < len(others)


# -- audio only: a paused video consumer ---------------------------------------------------------------------------


@pytest.mark.parametrize("keyframe_cached", [True, False], ids=["keyframe replayed", "keyframe requested"])
async def test_a_paused_video_consumer_sends_nothing_and_resumes_gapless_at_a_keyframe(clip, graph, keyframe_cached):
    graph.producer.ssrc = TEACHER_SSRC
    consumer, wire = graph.consumer(waiting_keyframe=False)
    # cached: the keyframe at frame 40 is 5 frames back when video comes back; requested: the last keyframe
    # (frame 40) is far back when video comes back at frame 185, so the next one (frame 190) is asked for
    kf = CLIP_KEYFRAMES[1] if keyframe_cached else CLIP_KEYFRAMES[2]
    pkts = packetize(clip)
    per_frame = [len(f.payloads) for f in clip]
    upto = lambda n: sum(per_frame[:n])  # noqa: E731 - packets of the first n frames
    graph.feed(pkts[:upto(10)])
    sent_before = len(wire)
    last_seq = parse(wire[-1]).sequence_number

    consumer.pause()
    graph.feed(pkts[upto(10):upto(kf + 5 if keyframe_cached else kf - 5)])
    assert keyframe_cached or upto(kf - 5) - upto(CLIP_KEYFRAMES[1]) > KEYFRAME_REPLAY_MAX_PACKETS
    assert len(wire) == sent_before, "a paused consumer sent packets"
    plis_before = len(graph.plis)

    graph.clock.advance(1.0)  # past the keyframe throttle
    consumer.unpause()
    if keyframe_cached:
        # the keyframe 5 frames back is replayed at once, continuing the sequence right after the pause
        resumed = [parse(d) for d in wire[sent_before:]]
        assert resumed and resumed[0].payload == pkts[upto(kf)].payload
        assert len(graph.plis) == plis_before
    else:
        assert len(wire) == sent_before and len(graph.plis) == plis_before + 1  # asked for one, sends nothing
        graph.feed(pkts[upto(kf - 5):upto(kf + 3)])
        resumed = [parse(d) for d in wire[sent_before:]]
        assert resumed[0].payload == pkts[upto(kf)].payload  # nothing before the keyframe
    assert resumed[0].sequence_number == (last_seq + 1 + RESUME_SEQ_JUMP) & SEQ_MASK
    assert all(seq_step(a.sequence_number, b.sequence_number) == 1 for a, b in pairwise(resumed))
    assert not consumer.paused


async def test_an_audio_consumer_unpaused_continues_its_sequence_without_waiting(graph):
    producer = Producer("mic", "audio", "opus", 48000, send_pli=graph.plis.append, clock=graph.clock)
    consumer, wire = graph.consumer(producer=producer, waiting_keyframe=False)
    for i in range(5):
        producer.on_packet(100 + i, i * 960, 0, b"opus%d" % i, 127)
    consumer.pause()
    for i in range(5, 50):
        producer.on_packet(100 + i, i * 960, 0, b"opus%d" % i, 127)
    consumer.unpause()
    producer.on_packet(150, 50 * 960, 0, b"opus50", 127)
    out = [parse(d) for d in wire]
    assert [p.payload for p in out] == [b"opus0", b"opus1", b"opus2", b"opus3", b"opus4", b"opus50"]
    assert all(seq_step(a.sequence_number, b.sequence_number) == 1 for a, b in pairwise(out))
    assert graph.plis == []

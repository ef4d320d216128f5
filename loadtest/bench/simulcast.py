"""Micro-benchmark: what simulcast costs per forwarded packet (``python -m loadtest.bench.forward --simulcast``).

    python -m loadtest.bench.forward --simulcast [--subscribers 50] [--packets 2000] [--repeat 5]
                            [--layer-sizes 600,700,800] [--layer-packets 1,3,9] [--json] [--profile]

Results and caveats: docs/benchmarks.md ("Simulcast: what a forwarded packet costs").

Same harness as ``loadtest.bench.forward`` (real objects, real SRTP, loopback ``sendto`` into a sink in a child process,
``time.thread_time()`` of the forwarding thread, interleaved phases, medians), with the teacher's camera sent as
three layers:

* input: three layers (180p/360p/720p-like), each with its own SSRC, sequence numbers, RTP timestamps, VP8
  PictureID/TL0PICIDX and its own key frame at its start; ``--layer-packets`` packets per frame (default 1 : 3 : 9)
  of ``--layer-sizes`` bytes, 30 frames/s, interleaved as a pacer sends them (each layer's packets spread evenly
  over the frame period). A PLI for a layer's SSRC (what ``Producer.request_keyframe`` sends) makes that layer's
  next frame a key frame, as the teacher's browser does.
* objects: three ``sfu.producer.Producer`` s, ``Producer.layers`` = [layer 0, 1, 2] as the ingress builds them, and
  N ``sfu.consumer.simulcast.SimulcastConsumer`` s built like ``Subscriber._bind`` does (start layer
  ``sfu.peers.publisher.START_LAYER``), each on a real unconnected aiortc ``RTCRtpSender`` with the egress seam filled as
  ``loadtest.bench.forward`` does. During the warm-up every consumer starts at its start layer's key frame, then
  ``set_layer(i % layers)`` moves two thirds of them (the PLI it sends brings the key frame the switch needs).
* phases, interleaved ``repeat`` times (medians):
    "simulcast": the three producers' ``on_packet`` for the M interleaved packets; cost per OUTPUT packet;
    "plain":     the same input into three plain Producers, each with plain ``Consumer`` s for the subscribers of
                 that layer (one track per layer, no simulcast logic): same outputs, same sizes, same order;
    "floor":     only ``protect`` + ``sendto`` of prebuilt packets of the same sizes in the same order;
    "taps":      ``Producer.fan_out`` of each layer's packets over the ``_LayerTap`` s of the consumers NOT on that
                 layer (minus the same loop over no consumers): what the packets a subscriber does not forward
                 cost, per input packet per subscriber.
* correctness: every consumer's plaintext output (at the protect seam) is recorded during the warm-up (which holds
  the switches) and during a final check round: sequence numbers gapless, PictureID +1 per frame, TL0PICIDX +1 per
  base-layer frame, timestamps forward, no frame cut before its marker, first packet a key frame, the target
  layer's packet size; over the measured rounds, each consumer's output sequence span equals its packet count
  and no switch happened. The datagrams of one consumer on the largest layer are decrypted at the sink and compared.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import os
import random
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

from pylibsrtp import Policy, Session

from loadtest.bench.wire import (
    ABS_SEND_TIME_ID,
    AUDIO_LEVEL_NONE,
    CLASSROOMS_PLANNED,
    CLOCK_RATE,
    DEFAULT_SRTP,
    MID,
    MID_ID,
    SRTP_PROFILES,
    TS_PER_FRAME,
    VP8_PT,
    VP8_RTX_PT,
    Background,
    ProcessSink,
    Sink,
    aiortc_senders,
    make_send,
    open_sink,
    profile_round,
    srtp_session,
)
from sfu.consumer.simple import Consumer
from sfu.consumer.simulcast import SimulcastConsumer
from sfu.peers.publisher import START_LAYER
from sfu.producer import Packet, Producer
from sfu.rtp.clock import SYSTEM_CLOCK
from sfu.rtp.header import (
    RTP_HEADER,
    ExtensionLayout,
    abs_send_time_bytes,
    parse_header,
)
from sfu.rtp.vp8 import vp8_parse_descriptor
from sfu.seams import lean_protect

FPS = CLOCK_RATE // TS_PER_FRAME  # 30
DEFAULT_LAYER_SIZES = (600, 700, 800)  # VP8 payload bytes incl. descriptor: ~150 / 500 / 1700 kbit/s at 1 : 3 : 9
DEFAULT_LAYER_PACKETS = (1, 3, 9)  # packets per frame, 180p : 360p : 720p
LAYER_NAMES = ("q", "h", "f")  # the teacher page's RIDs, smallest first
CHECK_PACKETS_MAX = 1300  # input packets of the final check round (100 frame periods at 1 : 3 : 9)
AUDIO_PACKETS_PER_S = 50  # Opus, 20 ms: what a classroom gets besides the video layer

Input = tuple[int, int, int, int, bytes, int]  # layer, seq16, ts, marker, payload, audio level


# -- input ---------------------------------------------------------------------------------------------------------

class _Layer:
    """One simulcast layer's stream: its own SSRC, sequence numbers, timestamps, picture ids, key frames."""

    def __init__(self, index: int, size: int, per_frame: int, first_seq: int, rng: random.Random) -> None:
        if size < 16:
            raise ValueError(f"layer payload size must be at least 16 bytes, got {size}")
        self.index = index
        self.size = size
        self.per_frame = per_frame
        self.ssrc = rng.getrandbits(32)
        self.seq = first_seq & 0xFFFF
        self.ts = rng.getrandbits(32)
        self.picture_id = rng.randrange(0x8000)
        self.tl0 = rng.randrange(256)
        self.frame = -1  # frames started so far - 1
        self.pos = per_frame  # packet index within the current frame (per_frame: a new frame starts next)
        self.gop = 0  # frames since the latest key frame (temporal pattern L1T3 restarts at a key frame)
        self.key_next = True  # the layer starts with a key frame
        self.key = False  # the current frame is a key frame
        self.tid = 0  # the current frame's temporal layer
        self.keyframes = 0
        self.wrapped = False
        self._noise = rng.randbytes(size * 32)

    def next(self) -> tuple[int, int, int, bytes]:
        if self.pos == self.per_frame:
            self.pos = 0
            self.frame += 1
            if self.frame:
                self.ts = (self.ts + TS_PER_FRAME) & 0xFFFFFFFF
                self.picture_id = (self.picture_id + 1) & 0x7FFF
            self.key = self.key_next
            self.key_next = False
            self.gop = 0 if self.key else self.gop + 1
            self.tid = (0, 2, 1, 2)[self.gop % 4]
            if self.frame and self.tid == 0:
                self.tl0 = (self.tl0 + 1) & 0xFF
            if self.key:
                self.keyframes += 1
        first = self.pos == 0
        tid = self.tid
        desc = bytes((0x90 if first else 0x80, 0xE0, 0x80 | (self.picture_id >> 8), self.picture_id & 0xFF,
                      self.tl0, (tid << 6) | (0x20 if tid else 0)))
        if first and self.key:
            head = desc + b"\x10\x02\x00\x9d\x01\x2a\x80\x02\x68\x01"  # frame tag P=0 (key frame), start code
        elif first:
            head = desc + b"\x11\x02\x00"  # inter frame: P=1
        else:
            head = desc
        at = ((self.frame * self.per_frame + self.pos) * 89) % (len(self._noise) - self.size)
        payload = head + self._noise[at:at + self.size - len(head)]
        self.pos += 1
        marker = 1 if self.pos == self.per_frame else 0
        seq = self.seq
        self.seq = (seq + 1) & 0xFFFF
        if self.seq == 0:
            self.wrapped = True
        return seq, self.ts, marker, payload


def arrival_order(per_frame: tuple[int, ...]) -> list[int]:
    """The layers of one frame period's packets in arrival order: each layer's packets spread evenly over the
    period (as the sender's pacer interleaves them), ties to the smaller layer."""
    slots = [((k + 0.5) / n, layer) for layer, n in enumerate(per_frame) for k in range(n)]
    return [layer for _, layer in sorted(slots)]


class SimulcastStream:
    """The teacher's three layers as the ingress hands them to each layer's Producer.on_packet, in arrival order.

    Every layer continues across calls to ``take``; ``request_keyframe(ssrc)`` is the teacher's answer to a PLI.
    """

    def __init__(self, sizes: tuple[int, ...], per_frame: tuple[int, ...], seed: int = 1,
                 first_seqs: tuple[int, ...] | None = None) -> None:
        if len(sizes) != len(per_frame) or not 2 <= len(sizes) <= len(LAYER_NAMES):
            raise ValueError("layer sizes and packets per frame must both list 2 or 3 layers")
        if min(per_frame) < 1:
            raise ValueError("each layer needs at least one packet per frame")
        rng = random.Random(seed)
        if first_seqs is None:
            first_seqs = tuple(rng.randrange(65536) for _ in sizes)
        self.layers = [_Layer(i, s, n, q, rng) for i, (s, n, q) in enumerate(zip(sizes, per_frame, first_seqs))]
        self.order = arrival_order(per_frame)
        self.index = 0  # packets taken so far
        self.pli = 0

    def take(self, count: int) -> list[Input]:
        out = []
        order, layers = self.order, self.layers
        for _ in range(count):
            layer = order[self.index % len(order)]
            seq, ts, marker, payload = layers[layer].next()
            out.append((layer, seq, ts, marker, payload, AUDIO_LEVEL_NONE))
            self.index += 1
        return out

    def request_keyframe(self, ssrc: int) -> None:
        self.pli += 1
        for layer in self.layers:
            if layer.ssrc == ssrc:
                layer.key_next = True

    @property
    def wrapped(self) -> list[bool]:
        return [layer.wrapped for layer in self.layers]


def first_seqs_wrapping(per_frame: tuple[int, ...], before: int, within: int, rng: random.Random) -> tuple[int, ...]:
    """First sequence numbers such that the largest layer crosses 65535 -> 0 halfway through the ``within``
    packets that follow the first ``before`` (the others start at random)."""
    order = arrival_order(per_frame)
    top = len(per_frame) - 1
    count = sum(1 for i in range(before + within // 2) if order[i % len(order)] == top)
    seqs = [rng.randrange(65536) for _ in per_frame]
    seqs[top] = (65536 - count) & 0xFFFF
    return tuple(seqs)


# -- the check ----------------------------------------------------------------------------------------------------

class OutputCheck:
    """One consumer's stream as the subscriber would see it, checked packet by packet (plaintext at the seam)."""

    __slots__ = (
        "bad_packets",
        "cut_frames",
        "frames",
        "marker",
        "not_keyframe_first",
        "packets",
        "picture_id_breaks",
        "pid",
        "seq",
        "seq_gaps",
        "sizes",
        "tl0",
        "tl0_breaks",
        "ts",
        "ts_backwards",
    )

    def __init__(self) -> None:
        self.seq: int | None = None
        self.ts = self.marker = self.pid = self.tl0 = 0
        self.packets = 0
        self.frames = 0
        self.sizes: list[int] = []  # payload sizes in order, each change recorded once
        self.seq_gaps = self.picture_id_breaks = self.tl0_breaks = self.ts_backwards = 0
        self.cut_frames = self.not_keyframe_first = self.bad_packets = 0

    def resume(self, next_seq: int, picture_id: int, tl0: int, ts: int) -> None:
        """Continue after a stretch not recorded packet by packet, as if its last packet (the end of a frame)
        had carried these numbers: the next packet is checked against them."""
        if self.seq is None:
            self.not_keyframe_first += 1  # nothing was recorded before: cannot continue
            return
        self.seq = (next_seq - 1) & 0xFFFF
        self.pid, self.tl0, self.ts, self.marker = picture_id & 0x7FFF, tl0 & 0xFF, ts & 0xFFFFFFFF, 1

    def add(self, plain: bytes) -> None:
        hdr = parse_header(plain)
        d = vp8_parse_descriptor(plain[hdr.payload_start:hdr.payload_end]) if hdr is not None else None
        if hdr is None or d is None or d.picture_id is None or d.tl0picidx is None or d.tid is None:
            self.bad_packets += 1
            return
        size = hdr.payload_end - hdr.payload_start
        if not self.sizes or self.sizes[-1] != size:
            self.sizes.append(size)
        self.packets += 1
        if self.seq is None:
            self.not_keyframe_first += not d.keyframe
            self.frames = 1
        else:
            if hdr.seq != (self.seq + 1) & 0xFFFF:
                self.seq_gaps += 1
            if hdr.ts == self.ts:  # same frame: same numbers
                self.picture_id_breaks += d.picture_id != self.pid
                self.tl0_breaks += d.tl0picidx != self.tl0
            else:  # a new frame: only after the previous one's marker, numbers one on
                self.frames += 1
                self.ts_backwards += not 0 < (hdr.ts - self.ts) & 0xFFFFFFFF < 0x80000000
                self.cut_frames += not self.marker
                self.picture_id_breaks += d.picture_id != (self.pid + 1) & 0x7FFF
                self.tl0_breaks += d.tl0picidx != (self.tl0 + (d.tid == 0)) & 0xFF
        self.seq, self.ts, self.marker = hdr.seq, hdr.ts, hdr.marker
        self.pid, self.tl0 = d.picture_id, d.tl0picidx

    def errors(self) -> int:
        return (self.seq_gaps + self.picture_id_breaks + self.tl0_breaks + self.ts_backwards + self.cut_frames
                + self.not_keyframe_first + self.bad_packets)


def _recording(protect: Callable[[bytes], bytes], check: OutputCheck) -> Callable[[bytes], bytes]:
    def record(pkt: bytes) -> bytes:  # the plaintext the consumer hands to SRTP
        check.add(pkt)
        return protect(pkt)
    return record


# -- the benchmark ------------------------------------------------------------------------------------------------

class SimulcastBench:
    """Three layer producers, N SimulcastConsumers (and the plain reference), the sink, the measured phases."""

    def __init__(self, subscribers: int = 50, packets: int = 2000,
                 sizes: tuple[int, ...] = DEFAULT_LAYER_SIZES, per_frame: tuple[int, ...] = DEFAULT_LAYER_PACKETS,
                 warmup: int | None = None, seed: int | None = None, sink: str = "process",
                 srtp: str = DEFAULT_SRTP) -> None:
        if subscribers < len(sizes) or packets < 1:
            raise ValueError("need at least one subscriber per layer and one packet")
        self.subscribers = subscribers
        self.sizes = tuple(sizes)
        self.per_frame = tuple(per_frame)
        self.period = sum(self.per_frame)  # input packets per frame period (1/FPS s)
        # whole frame periods, so that every round (and phase) has the same mix of layers
        self.packets = -(-packets // self.period) * self.period
        # the warm-up: the start layer's key frames, the switches, then enough to settle
        warmup = max(20 * self.period, min(self.packets, 400)) if warmup is None else max(warmup, 3 * self.period)
        self.warmup = -(-warmup // self.period) * self.period
        self.sink: Sink | ProcessSink = open_sink(srtp, sink)
        self.srtp = srtp
        self.sink_kind = sink
        self._closed = False
        try:
            self._build(random.Random(seed))
        except BaseException:
            self.close()
            raise

    def _build(self, rng: random.Random) -> None:
        n, nl = self.subscribers, len(self.sizes)
        loop = asyncio.new_event_loop()
        try:
            senders = loop.run_until_complete(aiortc_senders(2 * n))
        finally:
            loop.close()
        self.layout = ExtensionLayout(MID, MID_ID, ABS_SEND_TIME_ID, 0)
        profile, key_len, self.srtp_tag = SRTP_PROFILES[self.srtp]
        self.keys = [rng.randbytes(key_len) for _ in range(n)]
        self.sessions = [srtp_session(k, profile) for k in self.keys]
        self.socks: list[socket.socket] = []
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            self.socks.append(sock)
        self.sends = [make_send(sock, self.sink.addr) for sock in self.socks]
        # the teacher: the largest layer's sequence numbers wrap in the middle of the first measured round
        self.stream = SimulcastStream(self.sizes, self.per_frame, seed=rng.getrandbits(32),
                                      first_seqs=first_seqs_wrapping(self.per_frame, self.warmup, self.packets, rng))
        # the layers' producers as the ingress builds them (sfu/ingress.py): layer 0 is the track
        self.producers = [Producer("bench-cam" if i == 0 else f"bench-cam~{LAYER_NAMES[i]}", "video", "vp8",
                                   CLOCK_RATE, send_pli=self.stream.request_keyframe) for i in range(nl)]
        for producer, layer in zip(self.producers, self.stream.layers):
            producer.ssrc = layer.ssrc
        self.producers[0].layers = list(self.producers)
        self.start_layer = min(START_LAYER, nl - 1)
        self.targets = [i % nl for i in range(n)]  # a third of the classrooms on each layer
        self.consumers: list[SimulcastConsumer] = []
        self.checks = [OutputCheck() for _ in range(n)]
        for i in range(n):
            # Subscriber._bind: SimulcastConsumer(producer, t.sender, pt, rtx, layout, resume=..., start_layer=...)
            c = SimulcastConsumer(self.producers[0], senders[i], VP8_PT, VP8_RTX_PT, self.layout,
                                  start_layer=self.start_layer)
            # what Consumer._start() takes from sfu.seams.datagram_sender on a connected transport
            c._protect = _recording(lean_protect(self.sessions[i]), self.checks[i])
            c._send = self.sends[i]
            c._started = True
            self.consumers.append(c)
        # the plain reference: one plain Producer per layer, plain Consumers for that layer's subscribers
        self.plain_stream = SimulcastStream(self.sizes, self.per_frame, seed=rng.getrandbits(32))
        self.plain_producers = [Producer(f"bench-plain-{i}", "video", "vp8", CLOCK_RATE, send_pli=lambda ssrc: None)
                                for i in range(nl)]
        self.plain_consumers: list[Consumer] = []
        for i in range(n):
            c = Consumer(self.plain_producers[self.targets[i]], senders[n + i], VP8_PT, VP8_RTX_PT, self.layout)
            c._protect = lean_protect(self.sessions[i])  # same subscriber: same SRTP session and socket
            c._send = self.sends[i]
            c._started = True
            c._waiting_keyframe = False
            self.plain_consumers.append(c)
        # the floor's and the taps' own inputs (same sizes and order; the measured streams stay gapless)
        self._floor_stream = SimulcastStream(self.sizes, self.per_frame, seed=rng.getrandbits(32))
        self._floor_ssrc = rng.getrandbits(32)
        self._floor_seq = rng.randrange(1, 32768)
        self._taps_stream = SimulcastStream(self.sizes, self.per_frame, seed=rng.getrandbits(32))
        self._taps_seq = 0
        self._expected = 0
        self.wire_checked = self.wire_mismatches = self.wire_missing = 0

    # -- phases (each returns (thread cpu seconds, datagrams sent, datagrams received)) --------------------------

    def _settle(self, sent: int) -> int:
        before = self._expected
        self._expected += sent
        got = self.sink.wait_for(self._expected)
        self._expected = got
        return got - before

    def simulcast(self, count: int | None = None, profile: cProfile.Profile | None = None) -> tuple[float, int, int]:
        packets = self.stream.take(self.packets if count is None else count)
        ons = [p.on_packet for p in self.producers]
        out_before = sum(c.packets_out for c in self.consumers)
        gc.collect()
        if profile is not None:
            profile.enable()
        t0 = time.thread_time()
        for layer, seq, ts, marker, payload, level in packets:
            ons[layer](seq, ts, marker, payload, level)
        cpu = time.thread_time() - t0
        if profile is not None:
            profile.disable()
        sent = sum(c.packets_out for c in self.consumers) - out_before
        return cpu, sent, self._settle(sent)

    def plain(self, count: int | None = None) -> tuple[float, int, int]:
        packets = self.plain_stream.take(self.packets if count is None else count)
        ons = [p.on_packet for p in self.plain_producers]
        out_before = sum(c.packets_out for c in self.plain_consumers)
        gc.collect()
        t0 = time.thread_time()
        for layer, seq, ts, marker, payload, level in packets:
            ons[layer](seq, ts, marker, payload, level)
        cpu = time.thread_time() - t0
        sent = sum(c.packets_out for c in self.plain_consumers) - out_before
        return cpu, sent, self._settle(sent)

    def floor(self, count: int | None = None) -> tuple[float, int, int]:
        """protect + sendto of packets of exactly the consumers' output shape, per input to that layer's
        subscribers (own SSRC and continuing sequence numbers in each subscriber's session)."""
        block = bytearray(self.layout.block)
        at = self.layout.abs_send_time_at - 12
        block[at:at + 3] = abs_send_time_bytes(SYSTEM_CLOCK.wall())
        block = bytes(block)
        pkts = []
        for layer, _, ts, marker, payload, _ in self._floor_stream.take(self.packets if count is None else count):
            pkts.append((layer, RTP_HEADER.pack(0x90, (marker << 7) | VP8_PT, self._floor_seq & 0xFFFF, ts,
                                                self._floor_ssrc) + block + payload))
            self._floor_seq += 1
        addr = self.sink.addr
        pairs: list[list[tuple[Any, Any]]] = [[] for _ in self.sizes]
        for i, (session, sock) in enumerate(zip(self.sessions, self.socks)):
            pairs[self.targets[i]].append((lean_protect(session), sock.sendto))
        gc.collect()
        t0 = time.thread_time()
        for layer, pkt in pkts:
            for protect, sendto in pairs[layer]:
                sendto(protect(pkt), addr)
        cpu = time.thread_time() - t0
        sent = sum(len(pairs[layer]) for layer, _ in pkts)
        return cpu, sent, self._settle(sent)

    def taps(self, count: int | None = None) -> tuple[float, float, int]:
        """(cpu of Producer.fan_out over the taps that do not forward each packet's layer, cpu of the same loop
        over no consumers, tap calls): what a packet of a layer a subscriber is not on costs it."""
        inputs = self._taps_stream.take(self.packets if count is None else count)
        now = time.monotonic()
        packets = []
        for layer, seq, ts, marker, payload, level in inputs:
            packets.append((layer, Packet(self._taps_seq, ts, marker, payload, now, False, level)))
            self._taps_seq += 1
        others: list[tuple[Any, ...]] = []
        for layer in range(len(self.sizes)):
            # the taps of this layer's producer whose consumer forwards another layer (attached order kept)
            others.append(tuple(t for t in self.producers[layer].consumers
                                if getattr(t, "owner", None) is not None and t.owner.current != layer))
        none: list[tuple[Any, ...]] = [() for _ in self.sizes]
        fan = [p.fan_out for p in self.producers]
        calls = sum(len(others[layer]) for layer, _ in packets)
        gc.collect()
        t0 = time.thread_time()
        for layer, packet in packets:
            fan[layer](packet, others[layer])
        cpu = time.thread_time() - t0
        t0 = time.thread_time()
        for layer, packet in packets:
            fan[layer](packet, none[layer])
        empty = time.thread_time() - t0
        return cpu, empty, calls

    # -- set-up and checks ---------------------------------------------------------------------------------------

    def _state(self) -> list[tuple[int, int, int, int]]:
        """Per consumer: (next output seq, packets out, switches, picture-id rebases)."""
        out = []
        for c in self.consumers:
            rp = c.resume_point()
            out.append((rp.next_seq if rp is not None else -1, c.packets_out, c.switcher.switches,
                        c.switcher.rewriter.rebases))
        return out

    def warm_up(self) -> None:
        """Start every consumer at its start layer's key frame, switch two thirds of them, settle, warm the rest."""
        head = 2 * self.period
        self.simulcast(head)
        not_started = sum(1 for c in self.consumers if c.current != self.start_layer)
        if not_started:
            raise RuntimeError(f"{not_started} consumers did not start on layer {self.start_layer}")
        for c, target in zip(self.consumers, self.targets):
            c.set_layer(target)  # the classroom's selector chose it: a PLI to that layer, the switch at its key frame
        self.simulcast(self.warmup - head)
        stuck = [i for i, c in enumerate(self.consumers)
                 if c.current != self.targets[i] or c.switcher.waiting is not None]
        if stuck:
            raise RuntimeError(f"consumers {stuck[:5]} did not reach their layer during the warm-up")
        for c, session in zip(self.consumers, self.sessions):
            c._protect = lean_protect(session)  # measured rounds: no recording
        # where each consumer's stream and its layer's input stood (both at a frame end: whole frame periods)
        self._warm_end = [(ch.pid, ch.tl0, ch.ts, self._layer_numbers(t)) for ch, t in zip(self.checks, self.targets)]
        for c, ch in zip(self.consumers, self.checks):
            rp = c.resume_point()
            if rp is None or ch.seq is None or (ch.seq + 1) & 0xFFFF != rp.next_seq & 0xFFFF:
                ch.seq_gaps += 1
        warm = min(self.warmup, self.packets)
        self.plain(warm)
        self.floor(warm)
        self.taps(warm)

    def _layer_numbers(self, layer: int) -> tuple[int, int, int]:
        src = self.stream.layers[layer]
        return src.picture_id, src.tl0, src.ts

    def check_round(self, count: int) -> None:
        """Record every consumer's output again for ``count`` inputs, continuing from where the warm-up's
        recording ended moved on by what the consumer's layer sent meanwhile (the measured rounds forward every
        packet of it with fixed offsets); the datagrams of one consumer on the largest layer are decrypted at the
        sink and compared with what it handed to SRTP."""
        for i, (c, session, check) in enumerate(zip(self.consumers, self.sessions, self.checks)):
            pid, tl0, ts, (pid0, tl00, ts0) = self._warm_end[i]
            pid1, tl01, ts1 = self._layer_numbers(self.targets[i])
            rp = c.resume_point()
            check.resume(rp.next_seq if rp is not None else 0, pid + pid1 - pid0, tl0 + tl01 - tl00, ts + ts1 - ts0)
            c._protect = _recording(lean_protect(session), check)
        top = len(self.sizes) - 1
        wired = self.targets.index(top)
        first = self.consumers[wired]
        before = first.packets_out
        self.sink.capture_limit = count
        self.sink.capture_from = self.socks[wired].getsockname()
        plain: list[bytes] = []
        protect0 = first._protect
        first._protect = lambda pkt: (plain.append(pkt), protect0(pkt))[1]
        try:
            self.simulcast(count)
        finally:
            self.sink.capture_from = None
            for c, session in zip(self.consumers, self.sessions):
                c._protect = lean_protect(session)
        datagrams = self.sink.captured[-(first.packets_out - before):] if first.packets_out > before else []
        rx = Session(Policy(key=self.keys[wired], ssrc_type=Policy.SSRC_ANY_INBOUND,
                            srtp_profile=SRTP_PROFILES[self.srtp][0]))
        expected = {pkt[2:4]: pkt for pkt in plain}  # by sequence number (the sink may have lost some)
        self.wire_checked = self.wire_mismatches = 0
        for datagram in datagrams:
            try:
                got = rx.unprotect(datagram)
            except Exception:  # noqa: BLE001 - a datagram that does not decrypt is a mismatch
                got = b""
            self.wire_checked += 1
            self.wire_mismatches += expected.pop(got[2:4], None) != got
        self.wire_missing = len(expected)

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self, repeat: int = 5) -> dict[str, Any]:
        if repeat < 1:
            raise ValueError("repeat must be at least 1")
        self.warm_up()
        after_warmup = self._state()
        sim, pla, flo, tap = [], [], [], []  # per round: (cpu, outputs) / (cpu, tap calls)
        sim_sent = sim_recv = pla_sent = pla_recv = flo_sent = flo_recv = 0
        background = Background(getattr(self.sink, "pid", None))
        plis_before = self.stream.pli
        for _ in range(repeat):
            cpu, sent, recv = self.simulcast()
            sim.append((cpu, sent))
            sim_sent += sent
            sim_recv += recv
            cpu, sent, recv = self.floor()
            flo.append((cpu, sent))
            flo_sent += sent
            flo_recv += recv
            cpu, sent, recv = self.plain()
            pla.append((cpu, sent))
            pla_sent += sent
            pla_recv += recv
            cpu, empty, calls = self.taps()
            tap.append((max(cpu - empty, 0.0), calls))
        bg = background.result()
        plis_measured = self.stream.pli - plis_before
        measured = self._state()
        check_count = min(self.packets, CHECK_PACKETS_MAX)
        self.check_round(check_count)

        m, n = self.packets, self.subscribers
        per_layer_subs = [self.targets.count(layer) for layer in range(len(self.sizes))]
        # every round has the same outputs (whole frame periods, no switch): µs per own output, medians
        out_per_round = sim[0][1]
        tap_calls = tap[0][1]
        sim_r = [c / k * 1e6 for c, k in sim]
        pla_r = [c / k * 1e6 for c, k in pla]
        flo_r = [c / k * 1e6 for c, k in flo]
        tap_r = [c / k * 1e6 for c, k in tap] if tap_calls else [0.0]
        sim_us, pla_us, flo_us, tap_us = (statistics.median(x) for x in (sim_r, pla_r, flo_r, tap_r))
        # per classroom and second of media: each consumer gets its layer's packets, and is handed (by a tap) those
        # of the other layers
        media_s = m / (self.period * FPS)
        sim_cls_us = sim_us * out_per_round / n / media_s
        pla_cls_us = pla_us * out_per_round / n / media_s
        flo_cls_us = flo_us * out_per_round / n / media_s
        taps_per_out = tap_calls / out_per_round
        same_outputs = all(k == out_per_round for _, k in sim + pla + flo)

        # correctness over the whole run: warm-up and check round packet by packet, measured rounds by spans
        span_mismatch = sum(1 for a, b in zip(after_warmup, measured) if (b[0] - a[0]) != (b[1] - a[1]))
        switched_measured = sum(1 for a, b in zip(after_warmup, measured) if a[2:] != b[2:])
        size_mismatch = sum(1 for i, ch in enumerate(self.checks) if not ch.sizes or ch.sizes[-1] != self.sizes[
            self.targets[i]] or len(ch.sizes) > (1 if self.targets[i] == self.start_layer else 2))
        totals = {k: sum(getattr(ch, k) for ch in self.checks)
                  for k in ("packets", "frames", "seq_gaps", "picture_id_breaks", "tl0_breaks", "ts_backwards",
                            "cut_frames", "not_keyframe_first", "bad_packets")}
        check_ok = (sum(ch.errors() for ch in self.checks) == 0 and span_mismatch == 0 and switched_measured == 0
                    and size_mismatch == 0 and self.wire_mismatches == 0 and self.wire_checked > 0)
        return {
            "mode": "simulcast",
            "subscribers": n, "packets": m, "repeat": repeat, "srtp": self.srtp,
            "layer_sizes": list(self.sizes), "layer_packets_per_frame": list(self.per_frame), "fps": FPS,
            "layer_kbps": [s * k * FPS * 8 / 1000 for s, k in zip(self.sizes, self.per_frame)],
            "subscribers_per_layer": per_layer_subs, "start_layer": self.start_layer,
            "switched_consumers": sum(1 for c in self.consumers if c.switcher.switches),
            "outputs_per_round": out_per_round,
            "tap_calls_per_round": tap_calls,
            "simulcast_us": sim_us, "plain_us": pla_us, "floor_us": flo_us,
            "simulcast_ratio": sim_us / flo_us, "plain_ratio": pla_us / flo_us, "simulcast_vs_plain": sim_us / pla_us,
            "simulcast_us_per_round": sim_r, "plain_us_per_round": pla_r, "floor_us_per_round": flo_r,
            "simulcast_vs_plain_per_round": [a / b for a, b in zip(sim_r, pla_r)],
            "simulcast_vs_floor_per_round": [a / b for a, b in zip(sim_r, flo_r)],
            "same_outputs_every_phase": same_outputs,
            "other_layer_us_per_input_per_subscriber": tap_us,
            "other_layer_us_per_input_per_subscriber_per_round": tap_r,
            "other_layer_calls_per_output": taps_per_out,
            "other_layer_us_per_output": tap_us * taps_per_out,
            "other_layer_share_of_simulcast": tap_us * taps_per_out / sim_us if sim_us else 0.0,
            "simulcast_us_per_classroom_second": sim_cls_us, "plain_us_per_classroom_second": pla_cls_us,
            "floor_us_per_classroom_second": flo_cls_us,
            "video_classrooms_per_core": 1e6 / sim_cls_us, "plain_video_classrooms_per_core": 1e6 / pla_cls_us,
            "cores_for_400_classrooms_video": CLASSROOMS_PLANNED * sim_cls_us / 1e6,
            "plain_cores_for_400_classrooms_video": CLASSROOMS_PLANNED * pla_cls_us / 1e6,
            "simulcast_datagrams_sent": sim_sent, "simulcast_datagrams_received": sim_recv,
            "plain_datagrams_sent": pla_sent, "plain_datagrams_received": pla_recv,
            "floor_datagrams_sent": flo_sent, "floor_datagrams_received": flo_recv,
            "consumer_errors": sum(c.errors for c in self.consumers) + sum(c.errors for c in self.plain_consumers),
            "consumers_closed": sum(1 for c in self.consumers + self.plain_consumers if c.closed),
            "input_seq_wrapped": self.stream.wrapped,
            "keyframes_per_layer": [layer.keyframes for layer in self.stream.layers],
            "pli_during_measured_rounds": plis_measured,
            "check": {**totals, "consumers": n, "check_round_inputs": check_count,
                      "measured_span_mismatches": span_mismatch, "switched_during_measured_rounds": switched_measured,
                      "size_mismatches": size_mismatch,
                      "switches": sum(c.switcher.switches for c in self.consumers),
                      "cut_switches": sum(c.switcher.cut_frames for c in self.consumers),
                      "wire_datagrams_checked": self.wire_checked, "wire_mismatches": self.wire_mismatches,
                      "wire_missing_at_sink": self.wire_missing,
                      "ok": check_ok},
            "sink": self.sink_kind, "sink_rcvbuf": self.sink.rcvbuf, "cpus": os.cpu_count(),
            **bg,
        }

    def python_only(self, rounds: int = 5) -> dict[str, float]:
        """µs per output packet of the simulcast and plain paths with protect and send replaced by C calls that do
        nothing (``bytes`` of bytes returns it, ``len``): the Python code alone. Run after ``run`` (it sends nothing)."""
        saved = [(c, c._protect, c._send) for c in self.consumers + self.plain_consumers]
        for c, _, _ in saved:
            c._protect, c._send = bytes, len
        sim, pla = [], []
        try:
            for _ in range(rounds):
                for stream, producers, consumers, acc in ((self.stream, self.producers, self.consumers, sim),
                                                          (self.plain_stream, self.plain_producers,
                                                           self.plain_consumers, pla)):
                    packets = stream.take(self.packets)
                    ons = [p.on_packet for p in producers]
                    before = sum(c.packets_out for c in consumers)
                    gc.collect()
                    t0 = time.thread_time()
                    for layer, seq, ts, marker, payload, level in packets:
                        ons[layer](seq, ts, marker, payload, level)
                    cpu = time.thread_time() - t0
                    acc.append(cpu / max(1, sum(c.packets_out for c in consumers) - before) * 1e6)
        finally:
            for c, protect, send in saved:
                c._protect, c._send = protect, send
        return {"simulcast_python_us": statistics.median(sim), "plain_python_us": statistics.median(pla)}

    def profile_simulcast(self, top: int = 25) -> str:
        return profile_round(self.simulcast, top)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for c in getattr(self, "consumers", []) + getattr(self, "plain_consumers", []):
            c.close()
        for sock in getattr(self, "socks", []):
            sock.close()
        self.sink.close()


def run(subscribers: int = 50, packets: int = 2000, repeat: int = 5, sizes: tuple[int, ...] = DEFAULT_LAYER_SIZES,
        per_frame: tuple[int, ...] = DEFAULT_LAYER_PACKETS, seed: int | None = None, sink: str = "process",
        srtp: str = DEFAULT_SRTP) -> dict[str, Any]:
    bench = SimulcastBench(subscribers, packets, sizes, per_frame, seed=seed, sink=sink, srtp=srtp)
    try:
        return bench.run(repeat)
    finally:
        bench.close()


def format_table(r: dict[str, Any]) -> str:
    sizes = "/".join(str(s) for s in r["layer_sizes"])
    per = ":".join(str(k) for k in r["layer_packets_per_frame"])
    kbps = "/".join(f"{k:.0f}" for k in r["layer_kbps"])
    subs = "/".join(str(k) for k in r["subscribers_per_layer"])
    lines = [(f"simulcast: {r['subscribers']} subscribers ({subs} on layers 0/1/2, {r['switched_consumers']} switched "
              f"from layer {r['start_layer']}), {r['packets']} input packets x {r['repeat']} rounds, "
              f"layers {sizes} B, {per} packets/frame at {r['fps']} fps ({kbps} kbit/s), {r['srtp']}, "
              f"thread CPU time, medians"),
             f"{'path':46} {'us/out pkt':>10} {'x floor':>8} {'us/classroom-s':>15} {'rooms/core':>11}"]
    for name, us, cls in (("simulcast (3 Producers -> SimulcastConsumer)", r["simulcast_us"],
                           r["simulcast_us_per_classroom_second"]),
                          ("plain (a Producer per layer -> Consumer)", r["plain_us"], r["plain_us_per_classroom_second"]),
                          ("floor (protect + sendto)", r["floor_us"], r["floor_us_per_classroom_second"])):
        lines.append(f"{name:46} {us:10.2f} {us / r['floor_us']:8.2f} {cls:15,.0f} {1e6 / cls:11,.0f}")
    rounds = r["simulcast_vs_plain_per_round"]
    lines.append(f"simulcast / plain {r['simulcast_vs_plain']:.2f} (rounds {min(rounds):.2f}-{max(rounds):.2f}); "
                 f"rooms/core: video egress only, all layers' packets included")
    lines.append(f"other layers' packets: {r['other_layer_us_per_input_per_subscriber'] * 1000:.0f} ns per input packet "
                 f"per subscriber not on its layer; {r['other_layer_calls_per_output']:.2f} such calls per output "
                 f"packet = {r['other_layer_us_per_output']:.2f} us per output "
                 f"({r['other_layer_share_of_simulcast'] * 100:.1f} % of the simulcast path)")
    lines.append(f"{CLASSROOMS_PLANNED} classrooms, video egress: simulcast {r['cores_for_400_classrooms_video']:.2f} "
                 f"cores, plain {r['plain_cores_for_400_classrooms_video']:.2f} cores")
    lines.append(f"datagrams: simulcast sent {r['simulcast_datagrams_sent']:,}, received "
                 f"{r['simulcast_datagrams_received']:,}; plain {r['plain_datagrams_sent']:,}/"
                 f"{r['plain_datagrams_received']:,}; floor {r['floor_datagrams_sent']:,}/"
                 f"{r['floor_datagrams_received']:,}; consumer errors {r['consumer_errors']}")
    c = r["check"]
    lines.append(f"check {'OK' if c['ok'] else 'FAILED'}: {c['consumers']} consumers, {c['packets']:,} packets and "
                 f"{c['frames']:,} frames checked one by one (warm-up with {c['switches']} switches, "
                 f"{c['cut_switches']} cut; check round of {c['check_round_inputs']} inputs): seq gaps "
                 f"{c['seq_gaps']}, PictureID breaks {c['picture_id_breaks']}, TL0PICIDX breaks {c['tl0_breaks']}, "
                 f"ts backwards {c['ts_backwards']}, frames cut {c['cut_frames']}, first not key frame "
                 f"{c['not_keyframe_first']}, wrong layer size {c['size_mismatches']}; measured rounds: seq span != "
                 f"count {c['measured_span_mismatches']}, switched {c['switched_during_measured_rounds']}; wire: "
                 f"{c['wire_datagrams_checked']} datagrams decrypted, {c['wire_mismatches']} mismatches, "
                 f"{c['wire_missing_at_sink']} lost at the sink")
    lines.append(f"input: layer seq wrapped {r['input_seq_wrapped']}, key frames per layer {r['keyframes_per_layer']}, "
                 f"PLIs in measured rounds {r['pli_during_measured_rounds']}")
    if r.get("other_cpu_cores") is not None:
        noisy = r["other_cpu_cores"] > 0.2 or r["steal_cores"] > 0.05
        lines.append(f"background: other processes used {r['other_cpu_cores']:.2f} cores, steal "
                     f"{r['steal_cores']:.2f} cores during the run" + ("  (NOISY: rerun when idle)" if noisy else ""))
    return "\n".join(lines)


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))

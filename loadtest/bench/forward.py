"""Micro-benchmark: the real forwarding path (Producer.on_packet -> Consumer.forward/_write) against its floor.

    python -m loadtest.bench.forward [--subscribers 50] [--packets 2000] [--repeat 5] [--size 1100] [--json] [--profile]
                            [--srtp aes128-cm-sha1-80] [--sink process|thread] [--no-objects]
    python -m loadtest.bench.forward --simulcast [--layer-sizes 600,700,800] [--layer-packets 1,3,9] ...  (loadtest/bench/simulcast.py)

Results and caveats: docs/benchmarks.md.

What runs (one forwarding thread; the loopback sink in a child process by default):

* the REAL objects: one ``sfu.producer.Producer`` (video, VP8, 90 kHz) and N ``sfu.consumer.base.Consumer`` s, each on a
  real aiortc ``RTCRtpSender`` built on a real but unconnected ``RTCDtlsTransport``. Because nothing is connected,
  each consumer's egress seam is filled by hand the way ``sfu.seams.datagram_sender`` would fill it: ``_protect`` is
  ``sfu.seams.lean_protect`` of a real ``pylibsrtp.Session`` (one session and key per consumer; the same protect
  the floor uses) and ``_send`` a closure doing
  ``sock.sendto(data, addr)`` on a real UDP socket (one per consumer) towards a loopback sink socket drained by a
  child process (``--sink thread``: by a thread of this process, which costs the forwarding thread GIL hand-offs);
* realistic input: VP8 payloads with a Chrome-like payload descriptor (PictureID, TL0PICIDX, TID), 8 packets per
  frame, marker on each frame's last packet, timestamps +3000 per frame, only frame 0 a keyframe, 16-bit sequence
  numbers crossing the wrap during the first measured round;
* phases interleaved A/B(/C) ``repeat`` times, the median of each taken:
    A "forward": ``producer.on_packet(...)`` for all M packets -> cost per OUTPUT packet = cpu / (M * N);
    B "floor":   for the same sessions, sockets and output sizes, only ``protect(pkt)`` + ``sendto`` of prebuilt
                 packets (12-byte header + the same extension block + payload), same loop order;
    C "aiortc objects path" (reference): ``RtpPacket.parse`` once per incoming packet, then per subscriber set
                 SSRC/seq/ts/abs-send-time/mid, ``serialize`` + protect + sendto.
  CPU is ``time.thread_time()`` of the forwarding thread only (the sink is never counted).

Nothing in ``sfu`` is modified: the benchmark only drives it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import json
import os
import random
import socket
import statistics
import sys
import time
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from loadtest.bench.wire import (
    ABS_SEND_TIME_ID,
    CLASSROOMS_PLANNED,
    CLOCK_RATE,
    DEFAULT_SRTP,
    MID,
    MID_ID,
    PACKETS_PER_S_PER_CLASSROOM,
    SRTP_PROFILES,
    TARGET_RATIO,
    VP8_PT,
    VP8_RTX_PT,
    Background,
    IncomingStream,
    ProcessSink,
    Sink,
    aiortc_senders,
    make_send,
    open_sink,
    profile_round,
    srtp_session,
)
from sfu.consumer.simple import Consumer
from sfu.producer import Producer
from sfu.rtp.clock import SYSTEM_CLOCK
from sfu.rtp.header import (
    RTP_HEADER,
    URI_ABS_SEND_TIME,
    URI_MID,
    ExtensionLayout,
    abs_send_time_bytes,
)
from sfu.pacer import Pacer
from sfu.rtp.twcc import TransportSeq
from sfu.seams import lean_protect

TWCC_ID = 4  # the transport-cc extension id (what a classroom offer gets: the first one free)


class ForwardBench:
    """The objects under test, the sink, and the three measured phases."""

    def __init__(self, subscribers: int = 50, packets: int = 2000, size: int = 1100, warmup: int | None = None,
                 capture: int = 0, seed: int | None = None, sink: str = "process", srtp: str = DEFAULT_SRTP,
                 twcc: bool = False, pacer: bool = False) -> None:
        if subscribers < 1 or packets < 1:
            raise ValueError("subscribers and packets must be at least 1")
        self.subscribers = subscribers
        self.packets = packets
        self.size = size
        self.warmup = min(packets, 200) if warmup is None else warmup
        rng = random.Random(seed)
        self.sink: Sink | ProcessSink = open_sink(srtp, sink)
        self.srtp = srtp
        self.sink_kind = sink
        self.twcc = twcc or pacer
        self.pacer = pacer
        self._closed = False
        try:
            self._build(rng, capture)
        except BaseException:
            self.close()
            raise

    def _build(self, rng: random.Random, capture: int) -> None:
        n = self.subscribers
        loop = asyncio.new_event_loop()
        try:
            self.senders = loop.run_until_complete(aiortc_senders(n))
        finally:
            loop.close()
        self.producer = Producer("bench-video", "video", "vp8", CLOCK_RATE, send_pli=lambda ssrc: None)
        self.layout = ExtensionLayout(MID, MID_ID, ABS_SEND_TIME_ID, 0)
        profile, key_len, self.srtp_tag = SRTP_PROFILES[self.srtp]
        self.keys = [rng.randbytes(key_len) for _ in range(n)]
        self.sessions = [srtp_session(k, profile) for k in self.keys]
        self.socks: list[socket.socket] = []
        self.consumers: list[Consumer] = []
        for sender, session in zip(self.senders, self.sessions):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.socks.append(sock)
            sock.bind(("127.0.0.1", 0))
            consumer = Consumer(self.producer, sender, VP8_PT, VP8_RTX_PT, self.layout)
            # what Consumer._start() would take from sfu.seams.datagram_sender on a connected transport
            consumer._protect = lean_protect(session)
            consumer._send = make_send(sock, self.sink.addr)
            consumer._started = True
            consumer._waiting_keyframe = False  # it already got its keyframe
            self.consumers.append(consumer)
        self.twcc_consumers: list[Consumer] = []
        if self.twcc:
            # the same subscribers with transport-cc: a second producer, its consumers on their own senders (a
            # transport-wide counter each, as each classroom has its own transport), the same sessions and sockets
            loop = asyncio.new_event_loop()
            try:
                twcc_senders = loop.run_until_complete(aiortc_senders(n))
            finally:
                loop.close()
            self.twcc_producer = Producer("bench-video-twcc", "video", "vp8", CLOCK_RATE, send_pli=lambda ssrc: None)
            twcc_layout = ExtensionLayout(MID, MID_ID, ABS_SEND_TIME_ID, 0, twcc_id=TWCC_ID)
            for sender, session, sock in zip(twcc_senders, self.sessions, self.socks):
                consumer = Consumer(self.twcc_producer, sender, VP8_PT, VP8_RTX_PT, twcc_layout,
                                    twcc=TransportSeq(TWCC_ID, time.monotonic))
                consumer._protect = lean_protect(session)
                consumer._send = make_send(sock, self.sink.addr)
                consumer._started = True
                consumer._waiting_keyframe = False
                self.twcc_consumers.append(consumer)
            self._twcc_stream = IncomingStream(self.size, 65536 - self.warmup - self.packets // 2,
                                               seed=rng.getrandbits(32))
        self.paced_consumers: list[Consumer] = []
        self.pacers: list[Pacer] = []
        if self.pacer:
            # the transport-cc subscribers once more, each behind its classroom's pacer (sfu/pacer.py): "paced" its
            # immediate path (budget left, nothing waiting: what a classroom within its rate takes), "queued" every
            # packet through the queue, drained after each frame (a keyframe burst spread by the ticks)
            loop = asyncio.new_event_loop()
            try:
                paced_senders = loop.run_until_complete(aiortc_senders(n))
            finally:
                loop.close()
            self.paced_producer = Producer("bench-video-paced", "video", "vp8", CLOCK_RATE, send_pli=lambda ssrc: None)
            paced_layout = ExtensionLayout(MID, MID_ID, ABS_SEND_TIME_ID, 0, twcc_id=TWCC_ID)
            self._pacer_now = 0.0
            for sender, session, sock in zip(paced_senders, self.sessions, self.socks):
                twcc = TransportSeq(TWCC_ID, time.monotonic)
                consumer = Consumer(self.paced_producer, sender, VP8_PT, VP8_RTX_PT, paced_layout, twcc=twcc)
                pacer = Pacer(self._pacer_clock, None, twcc, rate_bps=1e12)
                consumer._protect = bytes  # what BaseConsumer._start sets for paced video: the pacer protects
                consumer._send = functools.partial(pacer.send_video, make_send(sock, self.sink.addr),
                                                   lean_protect(session))
                consumer._started = True
                consumer._waiting_keyframe = False
                self.paced_consumers.append(consumer)
                self.pacers.append(pacer)
            self._paced_stream = IncomingStream(self.size, 65536 - self.warmup - self.packets // 2,
                                                seed=rng.getrandbits(32))
        # capture: keep up to this many of consumer 0's datagrams from the measured forward rounds (for tests)
        self.capture = capture
        self._capture_addr = self.socks[0].getsockname() if capture else None
        self.sink.capture_limit = capture
        self.captured_inputs: list[tuple[int, int, int, bytes, int]] = []  # forward-phase inputs, when capturing
        # the wrap of the 16-bit input sequence falls in the middle of the first measured forward round
        self.stream = IncomingStream(self.size, 65536 - self.warmup - self.packets // 2, seed=rng.getrandbits(32))
        # the floor and objects phases draw from their own streams: the forward stream stays gapless
        self._floor_stream = IncomingStream(self.size, 0, seed=rng.getrandbits(32))
        self._objects_stream = IncomingStream(self.size, 0, seed=rng.getrandbits(32))
        # the floor and objects phases use their own SSRCs in the same sessions, their own continuing sequence
        self._floor_ssrc = rng.getrandbits(32)
        self._floor_seq = rng.randrange(1, 32768)
        self._objects_ssrc = [rng.getrandbits(32) for _ in range(n)]
        self._objects_seq = [rng.randrange(1, 32768) for _ in range(n)]
        self._objects_ts = [rng.getrandbits(32) for _ in range(n)]
        self._ext_map = HeaderExtensionsMap()
        self._ext_map.configure(RTCRtpParameters(headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=MID_ID, uri=URI_MID),
            RTCRtpHeaderExtensionParameters(id=ABS_SEND_TIME_ID, uri=URI_ABS_SEND_TIME)]))
        self._expected = 0  # datagrams the sink should have received so far

    # -- phases (each returns (thread cpu seconds, datagrams sent, datagrams received)) --

    def _settle(self, sent: int) -> int:
        before = self._expected
        self._expected += sent
        got = self.sink.wait_for(self._expected)
        self._expected = got  # losses (if any) are not expected again
        return got - before

    def forward(self, count: int | None = None, profile: cProfile.Profile | None = None) -> tuple[float, int, int]:
        packets = self.stream.take(self.packets if count is None else count)
        if self.capture and count is None:
            self.captured_inputs.extend(packets)
        on_packet = self.producer.on_packet
        out_before = sum(c.packets_out for c in self.consumers)
        gc.collect()
        if profile is not None:
            profile.enable()
        t0 = time.thread_time()
        for seq, ts, marker, payload, level in packets:
            on_packet(seq, ts, marker, payload, level)
        cpu = time.thread_time() - t0
        if profile is not None:
            profile.disable()
        sent = sum(c.packets_out for c in self.consumers) - out_before
        return cpu, sent, self._settle(sent)

    def forward_twcc(self, count: int | None = None) -> tuple[float, int, int]:
        """The forward phase with transport-cc stamping (a transport-wide number per packet, remembered)."""
        packets = self._twcc_stream.take(self.packets if count is None else count)
        on_packet = self.twcc_producer.on_packet
        out_before = sum(c.packets_out for c in self.twcc_consumers)
        gc.collect()
        t0 = time.thread_time()
        for seq, ts, marker, payload, level in packets:
            on_packet(seq, ts, marker, payload, level)
        cpu = time.thread_time() - t0
        sent = sum(c.packets_out for c in self.twcc_consumers) - out_before
        return cpu, sent, self._settle(sent)

    def _pacer_clock(self) -> float:
        return self._pacer_now

    def forward_paced(self, count: int | None = None, queued: bool = False, inactive: bool = False
                      ) -> tuple[float, int, int]:
        """The transport-cc forward phase with each subscriber's pacer: its immediate path, (`queued`) every
        packet queued and drained by a tick after each frame (8 packets), or (`inactive`) pacing off (a classroom
        whose estimate is 2x the top layer: the packet only passes through)."""
        packets = self._paced_stream.take(self.packets if count is None else count)
        on_packet = self.paced_producer.on_packet
        pacers = self.pacers
        for pacer in pacers:
            pacer.active = not inactive
        out_before = sum(c.packets_out for c in self.paced_consumers)
        gc.collect()
        t0 = time.thread_time()
        if not queued:
            self._pacer_now += 1.0
            for seq, ts, marker, payload, level in packets:
                on_packet(seq, ts, marker, payload, level)
                self._pacer_now += 0.0002  # the budget refills (a clock read per packet, as live)
        else:
            for i, (seq, ts, marker, payload, level) in enumerate(packets):
                if i % 8 == 0:
                    for pacer in pacers:
                        pacer._budget = -1.0  # noqa: SLF001 - nothing may leave at once: the burst waits
                on_packet(seq, ts, marker, payload, level)
                if i % 8 == 7 or i == len(packets) - 1:
                    self._pacer_now += 0.005
                    for pacer in pacers:
                        pacer.tick()
        cpu = time.thread_time() - t0
        sent = sum(c.packets_out for c in self.paced_consumers) - out_before
        return cpu, sent, self._settle(sent)

    def _floor_packets(self, count: int) -> list[bytes]:
        """Exactly what a consumer writes: 12-byte header + this layout's extension block + payload."""
        block = bytearray(self.layout.block)
        at = self.layout.abs_send_time_at - 12
        block[at:at + 3] = abs_send_time_bytes(SYSTEM_CLOCK.wall())
        block = bytes(block)
        out = []
        for _, ts, marker, payload, _ in self._floor_stream.take(count):
            out.append(RTP_HEADER.pack(0x90, (marker << 7) | VP8_PT, self._floor_seq & 0xFFFF, ts,
                                       self._floor_ssrc) + block + payload)
            self._floor_seq += 1
        return out

    def floor(self, count: int | None = None) -> tuple[float, int, int]:
        pkts = self._floor_packets(self.packets if count is None else count)
        addr = self.sink.addr
        pairs = [(lean_protect(s), sock.sendto) for s, sock in zip(self.sessions, self.socks)]
        gc.collect()
        t0 = time.thread_time()
        for pkt in pkts:
            for protect, sendto in pairs:
                sendto(protect(pkt), addr)
        cpu = time.thread_time() - t0
        sent = len(pkts) * len(pairs)
        return cpu, sent, self._settle(sent)

    def objects(self, count: int | None = None) -> tuple[float, int, int]:
        """Reference: aiortc's RtpPacket objects (parse once per input, mutate + serialize per subscriber)."""
        inputs = self._objects_stream.take(self.packets if count is None else count)
        raws = self._objects_stream.raw(inputs, self.layout.block)
        ext_map = self._ext_map
        addr = self.sink.addr
        n = self.subscribers
        targets = [(s.protect, sock.sendto, self._objects_ssrc[i], self._objects_ts[i])
                   for i, (s, sock) in enumerate(zip(self.sessions, self.socks))]
        seqs = self._objects_seq
        parse = RtpPacket.parse
        gc.collect()
        t0 = time.thread_time()
        for raw in raws:
            packet = parse(raw, ext_map)
            ext = packet.extensions
            ext.abs_send_time = int.from_bytes(abs_send_time_bytes(SYSTEM_CLOCK.wall()), "big")
            ts_in = packet.timestamp
            for i in range(n):
                protect, sendto, ssrc, ts_off = targets[i]
                packet.ssrc = ssrc
                packet.sequence_number = seqs[i] & 0xFFFF
                seqs[i] += 1
                packet.timestamp = (ts_in + ts_off) & 0xFFFFFFFF
                packet.payload_type = VP8_PT
                ext.mid = MID
                sendto(protect(packet.serialize(ext_map)), addr)
        cpu = time.thread_time() - t0
        sent = len(raws) * n
        return cpu, sent, self._settle(sent)

    def producer_only(self, count: int) -> float:
        """CPU per incoming packet of Producer.on_packet with no consumers (unwrap, cache, VP8 check, clock)."""
        solo = Producer("bench-solo", "video", "vp8", CLOCK_RATE, send_pli=lambda ssrc: None)
        stream = IncomingStream(self.size, 65000, seed=7)
        packets = stream.take(count)
        on_packet = solo.on_packet
        gc.collect()
        t0 = time.thread_time()
        for seq, ts, marker, payload, level in packets:
            on_packet(seq, ts, marker, payload, level)
        return (time.thread_time() - t0) / count

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self, repeat: int = 5, objects: bool = True) -> dict[str, Any]:
        if repeat < 1:
            raise ValueError("repeat must be at least 1")
        m, n = self.packets, self.subscribers
        outputs = m * n
        if self.warmup:
            self.forward(self.warmup)
            if self.twcc:
                self.forward_twcc(self.warmup)
            if self.pacer:
                self.forward_paced(self.warmup)
                self.forward_paced(self.warmup, queued=True)
                self.forward_paced(self.warmup, inactive=True)
            self.floor(self.warmup)
            if objects:
                self.objects(self.warmup)
        captured_before = len(self.sink.captured)
        background = Background(getattr(self.sink, "pid", None))
        fwd, flo, obj, tcc, paced, queued, inactive = [], [], [], [], [], [], []
        fwd_sent = fwd_recv = flo_recv = obj_recv = 0
        for _ in range(repeat):
            self.sink.capture_from = self._capture_addr  # only the measured forward rounds are captured
            cpu, sent, recv = self.forward()
            self.sink.capture_from = None
            fwd.append(cpu)
            fwd_sent += sent
            fwd_recv += recv
            if self.twcc:
                tcc.append(self.forward_twcc()[0])
            if self.pacer:
                paced.append(self.forward_paced()[0])
                queued.append(self.forward_paced(queued=True)[0])
                inactive.append(self.forward_paced(inactive=True)[0])
            cpu, _, recv = self.floor()
            flo.append(cpu)
            flo_recv += recv
            if objects:
                cpu, _, recv = self.objects()
                obj.append(cpu)
                obj_recv += recv
        solo_us = self.producer_only(max(m, 500)) * 1e6
        fwd_us = statistics.median(fwd) / outputs * 1e6
        flo_us = statistics.median(flo) / outputs * 1e6
        per_round = [a / b for a, b in zip(fwd, flo)]
        result: dict[str, Any] = {
            "subscribers": n, "packets": m, "repeat": repeat, "size": self.size,
            "srtp": self.srtp,
            "packet_bytes_out": 12 + len(self.layout.block) + self.size + self.srtp_tag,
            "forward_us": fwd_us,
            "floor_us": flo_us,
            "ratio": fwd_us / flo_us if flo_us > 0 else float("inf"),
            "ratio_per_round": per_round,
            "forward_us_per_round": [t / outputs * 1e6 for t in fwd],
            "floor_us_per_round": [t / outputs * 1e6 for t in flo],
            "forward_pps_per_core": 1e6 / fwd_us if fwd_us > 0 else float("inf"),
            "floor_pps_per_core": 1e6 / flo_us if flo_us > 0 else float("inf"),
            "classrooms_per_core": 1e6 / fwd_us / PACKETS_PER_S_PER_CLASSROOM if fwd_us > 0 else float("inf"),
            "cores_for_400_classrooms": CLASSROOMS_PLANNED * PACKETS_PER_S_PER_CLASSROOM * fwd_us / 1e6,
            "producer_only_us_per_incoming": solo_us,
            "target_ratio": TARGET_RATIO,
            "forward_datagrams_expected": outputs * repeat,
            "forward_datagrams_sent": fwd_sent,
            "forward_datagrams_received": fwd_recv,
            "floor_datagrams_received": flo_recv,
            "consumer_errors": sum(c.errors for c in self.consumers),
            "consumers_closed": sum(1 for c in self.consumers if c.closed),
            "input_seq_wrapped": self.stream.wrapped,
            "sink": self.sink_kind,
            "sink_rcvbuf": self.sink.rcvbuf,
            "captured": len(self.sink.captured) - captured_before,
            "cpus": os.cpu_count(),
            **background.result(),
        }
        if self.twcc:
            tcc_us = statistics.median(tcc) / outputs * 1e6
            result.update({"twcc_us": tcc_us, "twcc_ratio": tcc_us / flo_us if flo_us > 0 else float("inf"),
                           "twcc_over_forward": tcc_us / fwd_us if fwd_us > 0 else float("inf"),
                           "twcc_us_per_round": [t / outputs * 1e6 for t in tcc]})
        if self.pacer:
            paced_us = statistics.median(paced) / outputs * 1e6
            queued_us = statistics.median(queued) / outputs * 1e6
            inactive_us = statistics.median(inactive) / outputs * 1e6
            result.update({"paced_us": paced_us, "paced_queued_us": queued_us, "paced_inactive_us": inactive_us,
                           "paced_inactive_over_twcc": inactive_us / result["twcc_us"],
                           "paced_over_twcc": paced_us / result["twcc_us"],
                           "paced_queued_over_twcc": queued_us / result["twcc_us"],
                           "paced_us_per_round": [t / outputs * 1e6 for t in paced],
                           "paced_queued_us_per_round": [t / outputs * 1e6 for t in queued],
                           "pacer_dropped": sum(p.dropped for p in self.pacers)})
        if objects:
            obj_us = statistics.median(obj) / outputs * 1e6
            result.update({"objects_us": obj_us, "objects_ratio": obj_us / flo_us if flo_us > 0 else float("inf"),
                           "objects_us_per_round": [t / outputs * 1e6 for t in obj],
                           "objects_datagrams_received": obj_recv})
        return result

    def profile_forward(self, top: int = 25) -> str:
        """cProfile of one forward round (profiling overhead inflates the figures; read them as shares)."""
        return profile_round(self.forward, top)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for consumer in (getattr(self, "consumers", []) + getattr(self, "twcc_consumers", [])
                         + getattr(self, "paced_consumers", [])):
            consumer.close()
        for sock in getattr(self, "socks", []):
            sock.close()
        self.sink.close()


def run(subscribers: int = 50, packets: int = 2000, repeat: int = 5, size: int = 1100, objects: bool = True,
        seed: int | None = None, sink: str = "process", srtp: str = DEFAULT_SRTP, twcc: bool = False,
        pacer: bool = False) -> dict[str, Any]:
    bench = ForwardBench(subscribers, packets, size, seed=seed, sink=sink, srtp=srtp, twcc=twcc, pacer=pacer)
    try:
        return bench.run(repeat, objects)
    finally:
        bench.close()


def format_table(r: dict[str, Any]) -> str:
    per_s = PACKETS_PER_S_PER_CLASSROOM
    rows = [("forward (Producer.on_packet -> Consumer)", r["forward_us"]), ("floor (protect + sendto)", r["floor_us"])]
    if "twcc_us" in r:
        rows.append(("forward with transport-cc stamping", r["twcc_us"]))
    if "paced_us" in r:
        rows.append(("transport-cc + pacer, immediate", r["paced_us"]))
        rows.append(("transport-cc + pacer, all queued", r["paced_queued_us"]))
        rows.append(("transport-cc + pacer off (pass-through)", r["paced_inactive_us"]))
    if "objects_us" in r:
        rows.append(("aiortc objects (parse/serialize)", r["objects_us"]))
    head = (f"{r['subscribers']} subscribers x {r['packets']} packets x {r['repeat']} rounds, payload {r['size']} B "
            f"({r['packet_bytes_out']} B SRTP {r['srtp']}), thread CPU time, medians")
    lines = [head, f"{'path':42} {'us/out pkt':>10} {'x floor':>8} {'pkts/s/core':>12} {'rooms/core':>11}"]
    for name, us in rows:
        lines.append(f"{name:42} {us:10.2f} {us / r['floor_us']:8.2f} {1e6 / us:12,.0f} {1e6 / us / per_s:11,.0f}")
    ratios = r["ratio_per_round"]
    verdict = "meets" if r["ratio"] <= r["target_ratio"] else "MISSES"
    lines.append(f"ratio forward/floor {r['ratio']:.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f}); "
                 f"{verdict} the target <= {r['target_ratio']}")
    if "twcc_us" in r:
        lines.append(f"transport-cc / forward {r['twcc_over_forward']:.3f} (rounds "
                     f"{', '.join(f'{a / b:.3f}' for a, b in zip(r['twcc_us_per_round'], r['forward_us_per_round']))})")
    if "paced_us" in r:
        lines.append(f"pacer / transport-cc: immediate {r['paced_over_twcc']:.3f}, all queued "
                     f"{r['paced_queued_over_twcc']:.3f}, off {r['paced_inactive_over_twcc']:.3f}; pacer drops "
                     f"{r['pacer_dropped']}")
    lines.append(f"producer fixed cost {r['producer_only_us_per_incoming']:.2f} us per incoming packet (no consumers)")
    lines.append(f"{CLASSROOMS_PLANNED} classrooms x {per_s} pkt/s = {CLASSROOMS_PLANNED * per_s:,} pkt/s -> "
                 f"{r['cores_for_400_classrooms']:.2f} cores of forwarding CPU (egress only)")
    lines.append(f"datagrams: forward sent {r['forward_datagrams_sent']:,}, sink received "
                 f"{r['forward_datagrams_received']:,} of {r['forward_datagrams_expected']:,}; "
                 f"consumer errors {r['consumer_errors']}")
    if r.get("other_cpu_cores") is not None:
        noisy = r["other_cpu_cores"] > 0.2 or r["steal_cores"] > 0.05
        lines.append(f"background: other processes used {r['other_cpu_cores']:.2f} cores, steal "
                     f"{r['steal_cores']:.2f} cores during the run" + ("  (NOISY: rerun when idle)" if noisy else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.bench.forward", description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=50, help="consumers fed by the producer (default 50)")
    ap.add_argument("--packets", type=int, default=2000, help="incoming packets per round (default 2000)")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds; medians are reported (default 5)")
    ap.add_argument("--size", type=int, default=1100, help="VP8 payload bytes incl. descriptor (default 1100)")
    ap.add_argument("--no-objects", action="store_true", help="skip the aiortc objects reference path")
    ap.add_argument("--sink", choices=("process", "thread"), default="process",
                    help="drain the loopback sink in a child process (default) or in a thread of this process")
    ap.add_argument("--srtp", choices=sorted(SRTP_PROFILES), default=DEFAULT_SRTP,
                    help=f"SRTP protection profile of every session (default {DEFAULT_SRTP})")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--twcc", action="store_true",
                    help="also a forward phase with transport-cc stamping (same subscribers, interleaved)")
    ap.add_argument("--pacer", action="store_true",
                    help="also the transport-cc phase behind per-subscriber pacers (sfu/pacer.py), immediate and queued")
    ap.add_argument("--profile", action="store_true", help="also cProfile one forward round (to stderr)")
    sc = ap.add_argument_group("simulcast (loadtest/bench/simulcast.py; --size and --no-objects do not apply)")
    sc.add_argument("--simulcast", action="store_true",
                    help="three layer producers -> SimulcastConsumers vs plain Consumers per layer vs the floor")
    sc.add_argument("--layer-sizes", default="600,700,800", metavar="B,B,B",
                    help="VP8 payload bytes of each layer, smallest layer first (default 600,700,800)")
    sc.add_argument("--layer-packets", default="1,3,9", metavar="N,N,N",
                    help="packets per frame of each layer at 30 fps (default 1,3,9)")
    args = ap.parse_args(argv)
    if args.simulcast:
        return _main_simulcast(args)
    bench = ForwardBench(args.subscribers, args.packets, args.size, sink=args.sink, srtp=args.srtp, twcc=args.twcc,
                         pacer=args.pacer)
    try:
        result = bench.run(args.repeat, not args.no_objects)
        if args.profile:
            print(bench.profile_forward(), file=sys.stderr)
    finally:
        bench.close()
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


def _main_simulcast(args: argparse.Namespace) -> int:
    from loadtest.bench import (
        simulcast,  # imports this module: loaded only when asked for
    )

    bench = simulcast.SimulcastBench(args.subscribers, args.packets, simulcast.parse_ints(args.layer_sizes),
                                     simulcast.parse_ints(args.layer_packets), sink=args.sink, srtp=args.srtp)
    try:
        result = bench.run(args.repeat)
        if args.profile:
            py = bench.python_only(args.repeat)
            print(f"python only (protect/send as no-op C calls): simulcast {py['simulcast_python_us']:.2f} us, "
                  f"plain {py['plain_python_us']:.2f} us per output packet", file=sys.stderr)
            print(bench.profile_simulcast(), file=sys.stderr)
    finally:
        bench.close()
    print(json.dumps(result) if args.json else simulcast.format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

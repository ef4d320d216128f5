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
import gc
import io
import json
import os
import pstats
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCRtpSender,
)
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from sfu.consumer.base import Consumer
from sfu.producer import Producer
from sfu.rtp.header import (
    RTP_HEADER,
    URI_ABS_SEND_TIME,
    URI_MID,
    ExtensionLayout,
    abs_send_time_bytes,
)
from sfu.seams import lean_protect

VP8_PT = 96
VP8_RTX_PT = 97
CLOCK_RATE = 90000
PACKETS_PER_FRAME = 8
TS_PER_FRAME = 3000  # 30 fps at 90 kHz
MID = "1"
MID_ID = 1
ABS_SEND_TIME_ID = 3
AUDIO_LEVEL_NONE = 0x7F
PACKETS_PER_S_PER_CLASSROOM = 200  # ~1.5 Mbit/s VP8 + Opus (DESIGN.md, "Measured costs")
CLASSROOMS_PLANNED = 400
TARGET_RATIO = 1.3
SINK_RCVBUF = 64 * 1024 * 1024  # capped by net.core.rmem_max (the kernel doubles what it grants)
DRAIN_STALL_S = 1.0  # after a phase, give the sink this long without progress before counting the rest as lost
# SRTP profiles: (pylibsrtp profile, master key + salt bytes, auth tag bytes). The brief's default is the
# mandatory-to-implement AES128_CM_SHA1_80; aiortc 1.16 prefers AEAD_AES_256_GCM when the peer offers it.
SRTP_PROFILES = {
    "aes128-cm-sha1-80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16 + 14, 10),
    "aead-aes-128-gcm": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16 + 12, 16),
    "aead-aes-256-gcm": (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32 + 12, 16),
}
DEFAULT_SRTP = "aes128-cm-sha1-80"


# -- input ---------------------------------------------------------------------------------------------------------

class IncomingStream:
    """The teacher's VP8 track as the ingress hook hands it to Producer.on_packet, generated on demand.

    Sequence numbers and timestamps continue across calls to ``take`` so every phase of every round sees new
    packets (a repeated sequence number would be a duplicate to the producer's cache).
    """

    def __init__(self, size: int, first_seq: int, seed: int = 1) -> None:
        if size < 16:
            raise ValueError(f"payload size must be at least 16 bytes, got {size}")
        self.size = size
        self._rng = random.Random(seed)
        self._noise = self._rng.randbytes(size * 64)
        self.seq = first_seq & 0xFFFF
        self.ts = self._rng.getrandbits(32)
        self.index = 0  # packets generated so far
        self.picture_id = self._rng.randrange(0x8000)
        self.tl0 = self._rng.randrange(256)
        self.teacher_ssrc = self._rng.getrandbits(32)
        self.wrapped = False

    def _payload(self, frame: int, first: bool, noise_at: int) -> bytes:
        tid = (0, 2, 1, 2)[frame % 4]
        desc = bytes((0x90 if first else 0x80,  # X, S on the frame's first packet, PID 0
                      0xE0,  # I, L, T present
                      0x80 | (self.picture_id >> 8), self.picture_id & 0xFF,  # 15-bit PictureID
                      self.tl0,
                      (tid << 6) | (0x20 if tid else 0)))  # TID, Y
        if first and frame == 0:
            # VP8 key frame: frame tag with P=0 (key), show_frame, then the start code and 640x360
            head = desc + b"\x10\x02\x00\x9d\x01\x2a\x80\x02\x68\x01"
        elif first:
            head = desc + b"\x11\x02\x00"  # inter frame: P=1
        else:
            head = desc
        return head + self._noise[noise_at:noise_at + self.size - len(head)]

    def take(self, count: int) -> list[tuple[int, int, int, bytes, int]]:
        """The next ``count`` packets as ``(seq16, ts, marker, payload, audio_level)``."""
        out = []
        noise_span = len(self._noise) - self.size
        for _ in range(count):
            frame, pos = divmod(self.index, PACKETS_PER_FRAME)
            if pos == 0 and frame:
                self.ts = (self.ts + TS_PER_FRAME) & 0xFFFFFFFF
                self.picture_id = (self.picture_id + 1) & 0x7FFF
                if frame % 4 == 0:
                    self.tl0 = (self.tl0 + 1) & 0xFF
            marker = 1 if pos == PACKETS_PER_FRAME - 1 else 0
            payload = self._payload(frame, pos == 0, (self.index * 97) % noise_span)
            out.append((self.seq, self.ts, marker, payload, AUDIO_LEVEL_NONE))
            self.index += 1
            self.seq = (self.seq + 1) & 0xFFFF
            if self.seq == 0:
                self.wrapped = True
        return out

    def raw(self, packets: list[tuple[int, int, int, bytes, int]], block: bytes) -> list[bytes]:
        """The same packets as the teacher's RTP datagrams (for the aiortc objects path)."""
        first = 0x90 if block else 0x80
        return [RTP_HEADER.pack(first, (marker << 7) | VP8_PT, seq, ts, self.teacher_ssrc) + block + payload
                for seq, ts, marker, payload, _ in packets]


# -- the sink ------------------------------------------------------------------------------------------------------

class Sink:
    """A loopback UDP socket drained by a background thread so the senders' packets never pile up.

    Counts datagrams; optionally keeps the ones from one source address (to check them in tests).
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SINK_RCVBUF)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = self.sock.getsockname()
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.count = 0
        self.bytes = 0
        self.capture_from: tuple[str, int] | None = None
        self.capture_limit = 0
        self.captured: list[bytes] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._drain, name="bench-sink", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        buf = bytearray(65536)
        view = memoryview(buf)
        recv = self.sock.recvfrom_into
        while True:
            try:
                n, addr = recv(buf)
            except OSError:
                return
            if self._stopping:
                return
            self.count += 1
            self.bytes += n
            if addr == self.capture_from and len(self.captured) < self.capture_limit:
                self.captured.append(bytes(view[:n]))

    def wait_for(self, expected: int) -> int:
        """Wait until ``expected`` datagrams arrived in all, or until DRAIN_STALL_S passes without progress."""
        last, since = self.count, time.monotonic()
        while last < expected:
            time.sleep(0.002)
            now_count = self.count
            if now_count != last:
                last, since = now_count, time.monotonic()
            elif time.monotonic() - since > DRAIN_STALL_S:
                break
        return last

    def close(self) -> None:
        self._stopping = True
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"stop", self.addr)
            self._thread.join(2.0)
        finally:
            self.sock.close()


_SINK_CHILD = r"""
import socket, sys, threading
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(sys.argv[1]))
sock.bind(("127.0.0.1", 0))
state = {"count": 0, "from": None, "limit": 0}
captured = []
def drain():
    buf = bytearray(65536)
    view = memoryview(buf)
    recv = sock.recvfrom_into
    while True:
        n, addr = recv(buf)
        state["count"] += 1
        if addr == state["from"] and len(captured) < state["limit"]:
            captured.append(bytes(view[:n]))
threading.Thread(target=drain, daemon=True).start()
out = sys.stdout
out.write("%s %d %d\n" % (sock.getsockname() + (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),)))
out.flush()
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "count":
        out.write("%d\n" % state["count"])
    elif cmd[0] == "capture":
        state["limit"] = int(cmd[3])
        state["from"] = (cmd[1], int(cmd[2])) if cmd[1] != "-" else None
        out.write("ok\n")
    elif cmd[0] == "captured":
        out.write(" ".join(d.hex() for d in captured) + "\n")
    else:
        break
    out.flush()
"""


class ProcessSink:
    """The same sink in a child process: its recv loop never contends for the forwarding thread's GIL.

    (With the thread sink, every GIL release around protect/sendto hands the GIL to the drain thread, and the
    forwarding thread pays the futex round trips in its own CPU time: an artefact no server has.)
    """

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _SINK_CHILD, str(SINK_RCVBUF)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        host, port, rcvbuf = self._proc.stdout.readline().split()  # type: ignore[union-attr]
        self.addr = (host, int(port))
        self.rcvbuf = int(rcvbuf)
        self.pid = self._proc.pid
        self._capture_from: tuple[str, int] | None = None
        self.capture_limit = 0

    def _ask(self, line: str) -> str:
        self._proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self._proc.stdin.flush()  # type: ignore[union-attr]
        return self._proc.stdout.readline().strip()  # type: ignore[union-attr]

    @property
    def count(self) -> int:
        return int(self._ask("count"))

    @property
    def capture_from(self) -> tuple[str, int] | None:
        return self._capture_from

    @capture_from.setter
    def capture_from(self, addr: tuple[str, int] | None) -> None:
        if addr != self._capture_from:
            self._ask(f"capture {addr[0]} {addr[1]} {self.capture_limit}" if addr else
                      f"capture - 0 {self.capture_limit}")
            self._capture_from = addr

    @property
    def captured(self) -> list[bytes]:
        return [bytes.fromhex(h) for h in self._ask("captured").split()]

    wait_for = Sink.wait_for

    def close(self) -> None:
        try:
            self._proc.stdin.close()  # type: ignore[union-attr]  # EOF: the child leaves its command loop
            self._proc.wait(2.0)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            self._proc.stdout.close()  # type: ignore[union-attr]


def _proc_stat_busy() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / tick, steal / tick


def _pid_cpu(pid: int) -> float:
    """CPU seconds used by another process (Linux), 0.0 when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Background:
    """How busy the rest of the machine was while the benchmark ran (other processes compete for caches and
    cores; a VM's steal time is time the hypervisor gave our vCPUs to someone else)."""

    def __init__(self, sink_pid: int | None) -> None:
        self._sink_pid = sink_pid
        self._start = self._sample()

    def _sample(self) -> tuple[float, tuple[float, float] | None, float, float]:
        sink = _pid_cpu(self._sink_pid) if self._sink_pid else 0.0
        return time.monotonic(), _proc_stat_busy(), time.process_time(), sink

    def result(self) -> dict[str, float | None]:
        t0, m0, own0, sink0 = self._start
        t1, m1, own1, sink1 = self._sample()
        wall = t1 - t0
        if m0 is None or m1 is None or wall <= 0:
            return {"other_cpu_cores": None, "steal_cores": None}
        other = (m1[0] - m0[0]) - (own1 - own0) - (sink1 - sink0)
        return {"other_cpu_cores": max(other, 0.0) / wall, "steal_cores": (m1[1] - m0[1]) / wall}


# -- the benchmark -------------------------------------------------------------------------------------------------

def _srtp_session(key: bytes, profile: int) -> Session:
    policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
    policy.allow_repeat_tx = True
    return Session(policy)


def _make_send(sock: socket.socket, addr: tuple[str, int]) -> Callable[[bytes], None]:
    sendto = sock.sendto

    def send(data: bytes) -> None:  # the shape of sfu.seams.datagram_sender's send
        sendto(data, addr)

    return send


async def _aiortc_senders(count: int) -> list[RTCRtpSender]:
    """Real RTCRtpSenders, each on its own real (never connected) ICE + DTLS transport, like one per classroom."""
    certificate = RTCCertificate.generateCertificate()
    senders = []
    for _ in range(count):
        dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer(iceServers=[])), [certificate])
        senders.append(RTCRtpSender("video", dtls))
    return senders


def open_sink(srtp: str, sink: str) -> Sink | ProcessSink:
    """Check the SRTP profile and sink kind a benchmark was given, and open its sink."""
    if srtp not in SRTP_PROFILES:
        raise ValueError(f"srtp must be one of {sorted(SRTP_PROFILES)}, got {srtp!r}")
    if sink not in ("process", "thread"):
        raise ValueError(f"sink must be 'process' or 'thread', got {sink!r}")
    return ProcessSink() if sink == "process" else Sink()


class ForwardBench:
    """The objects under test, the sink, and the three measured phases."""

    def __init__(self, subscribers: int = 50, packets: int = 2000, size: int = 1100, warmup: int | None = None,
                 capture: int = 0, seed: int | None = None, sink: str = "process", srtp: str = DEFAULT_SRTP) -> None:
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
            self.senders = loop.run_until_complete(_aiortc_senders(n))
        finally:
            loop.close()
        self.producer = Producer("bench-video", "video", "vp8", CLOCK_RATE, send_pli=lambda ssrc: None)
        self.layout = ExtensionLayout(MID, MID_ID, ABS_SEND_TIME_ID, 0)
        profile, key_len, self.srtp_tag = SRTP_PROFILES[self.srtp]
        self.keys = [rng.randbytes(key_len) for _ in range(n)]
        self.sessions = [_srtp_session(k, profile) for k in self.keys]
        self.socks: list[socket.socket] = []
        self.consumers: list[Consumer] = []
        for sender, session in zip(self.senders, self.sessions):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.socks.append(sock)
            sock.bind(("127.0.0.1", 0))
            consumer = Consumer(self.producer, sender, VP8_PT, VP8_RTX_PT, self.layout)
            # what Consumer._start() would take from sfu.seams.datagram_sender on a connected transport
            consumer._protect = lean_protect(session)
            consumer._send = _make_send(sock, self.sink.addr)
            consumer._started = True
            consumer._waiting_keyframe = False  # it already got its keyframe
            self.consumers.append(consumer)
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

    def _floor_packets(self, count: int) -> list[bytes]:
        """Exactly what a consumer writes: 12-byte header + this layout's extension block + payload."""
        block = bytearray(self.layout.block)
        at = self.layout.abs_send_time_at - 12
        block[at:at + 3] = abs_send_time_bytes()
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
            ext.abs_send_time = int.from_bytes(abs_send_time_bytes(), "big")
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
            self.floor(self.warmup)
            if objects:
                self.objects(self.warmup)
        captured_before = len(self.sink.captured)
        background = Background(getattr(self.sink, "pid", None))
        fwd, flo, obj = [], [], []
        fwd_sent = fwd_recv = flo_recv = obj_recv = 0
        for _ in range(repeat):
            self.sink.capture_from = self._capture_addr  # only the measured forward rounds are captured
            cpu, sent, recv = self.forward()
            self.sink.capture_from = None
            fwd.append(cpu)
            fwd_sent += sent
            fwd_recv += recv
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
        for consumer in getattr(self, "consumers", []):
            consumer.close()
        for sock in getattr(self, "socks", []):
            sock.close()
        self.sink.close()


def profile_round(round_fn: Callable[..., Any], top: int = 25) -> str:
    """cProfile of one round of `round_fn(profile=...)`, the `top` functions by own time, as text."""
    prof = cProfile.Profile()
    round_fn(profile=prof)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def run(subscribers: int = 50, packets: int = 2000, repeat: int = 5, size: int = 1100, objects: bool = True,
        seed: int | None = None, sink: str = "process", srtp: str = DEFAULT_SRTP) -> dict[str, Any]:
    bench = ForwardBench(subscribers, packets, size, seed=seed, sink=sink, srtp=srtp)
    try:
        return bench.run(repeat, objects)
    finally:
        bench.close()


def format_table(r: dict[str, Any]) -> str:
    per_s = PACKETS_PER_S_PER_CLASSROOM
    rows = [("forward (Producer.on_packet -> Consumer)", r["forward_us"]), ("floor (protect + sendto)", r["floor_us"])]
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
    bench = ForwardBench(args.subscribers, args.packets, args.size, sink=args.sink, srtp=args.srtp)
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

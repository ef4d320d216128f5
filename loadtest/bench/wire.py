"""What the forwarding benchmarks stand on: the synthetic stream's constants, the sinks that receive (and
count) the forwarded datagrams, SRTP sessions, real unconnected aiortc senders, the background CPU meter and a
one-round profile. Shared by forward.py and simulcast.py."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import random
import socket
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
from pylibsrtp import Policy, Session

from sfu.rtp.header import (
    RTP_HEADER,
)

VP8_PT = 96
VP8_RTX_PT = 97
CLOCK_RATE = 90000
PACKETS_PER_FRAME = 8
TS_PER_FRAME = 3000  # 30 fps at 90 kHz
MID = "1"
MID_ID = 1
ABS_SEND_TIME_ID = 3
AUDIO_LEVEL_NONE = 0x7F
PACKETS_PER_S_PER_CLASSROOM = 200  # ~1.5 Mbit/s VP8 + Opus (docs/architecture.md, "Measured facts")
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

def srtp_session(key: bytes, profile: int) -> Session:
    policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
    policy.allow_repeat_tx = True
    return Session(policy)


def make_send(sock: socket.socket, addr: tuple[str, int]) -> Callable[[bytes], None]:
    sendto = sock.sendto

    def send(data: bytes) -> None:  # the shape of sfu.seams.datagram_sender's send
        sendto(data, addr)

    return send


async def aiortc_senders(count: int) -> list[RTCRtpSender]:
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


def profile_round(round_fn: Callable[..., Any], top: int = 25) -> str:
    """cProfile of one round of `round_fn(profile=...)`, the `top` functions by own time, as text."""
    prof = cProfile.Profile()
    round_fn(profile=prof)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()

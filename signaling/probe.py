"""The pre-class network check (课前检测): a short WebRTC probe of the path the lesson's media will take.

A page that holds a lesson token opens a websocket and sends `probe {token}` (it need not join). The server makes
a peer connection of its own with one unordered, unreliable data channel (no retransmission: a lost message stays
lost, as a lost RTP packet of the lesson would), offers it (`probe_offer`, with the ICE servers a join would get:
a firewalled school's probe takes the TURN relay its lesson would), and after the page's `probe_answer` sends
fixed-size messages at increasing rates (STEPS) over the same ICE/DTLS path as the lesson's media, and a small
ping every PING_EVERY_S that the page echoes. Then `probe_done`; the page says what arrived per step
(`probe_report`), and the server answers `probe_result`: round trip, loss, the estimated downlink, and the quality
the classroom can expect (`classify`: the thresholds, from the teacher's simulcast layers, all here).

Bounds (every byte from the network is hostile, and the probe is the one message that makes the server send a
lot): what is sent is fixed by STEPS (~0.5 MB at most, at most PROBE_MAX_BPS), never what the client asks; the
data channel's own congestion control (SCTP) decides how fast it leaves, and no more than BUFFER_MAX_BYTES wait
in the server's buffer; a probe ends after PROBE_MAX_S whatever the page does, and when its websocket closes; one
probe per connection at a time, PROBES_AT_ONCE per node, and per token a bucket of PROBE_BURST probes refilled at
one per PROBE_EVERY_S. Data goes only to a browser that completed ICE (its consent) and DTLS with this server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import struct
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription, sdp

from sfu.adapt.link import LOSS_DOWN
from sfu.peers.sdp import SDP_MAX_CHARS, announce, make_peer_connection
from signaling.ratelimit import TokenBucket

log = logging.getLogger("ketang.signaling")

# -- what each quality needs (the one place for these thresholds) -----------------------------------------------

# the teacher's camera layers, smallest first: the maxBitrate of the simulcast encodings the teacher page sends
# (client_web/protocol.js, TeacherSession._sendInit; tests/unit/signaling/test_probe.py checks they agree)
LAYER_BPS: Final[tuple[int, int, int]] = (150_000, 500_000, 1_500_000)
AUDIO_BPS: Final[int] = 40_000  # the lesson's Opus with its in-band FEC, and RTCP
# best first; "audio": what is left when even the smallest layer does not fit (仅声音)
QUALITIES: Final[tuple[str, ...]] = ("hd", "sd", "ld", "audio")
# the downlink each quality needs: its camera layer and the sound (the courseware, when shared, comes on top and
# the SFU pauses the camera first: docs/weak-networks.md)
NEED_BPS: Final[dict[str, int]] = {"hd": LAYER_BPS[2] + AUDIO_BPS, "sd": LAYER_BPS[1] + AUDIO_BPS,
                                   "ld": LAYER_BPS[0] + AUDIO_BPS, "audio": 0}
# loss above the SFU's congestion threshold (sfu/adapt/link.py) costs one quality: video on such a link stalls
LOSS_MAX: Final[float] = LOSS_DOWN
# a round trip above this is worth a word to the page (a satellite or a congested mobile link)
RTT_HIGH_MS: Final[float] = 400.0


def classify(downlink_bps: float, loss: float) -> str:
    """The quality a classroom can expect from its measured downlink (payload bits per second) and loss (0..1)."""
    quality = next(q for q in QUALITIES if downlink_bps >= NEED_BPS[q])
    if loss > LOSS_MAX and quality != "audio":
        quality = QUALITIES[QUALITIES.index(quality) + 1]
    return quality


# -- what the probe sends ---------------------------------------------------------------------------------------

# (rate in bits/s of payload, seconds): the lowest first (the loss and round trip are read there, where the link
# is not yet full), the highest just above what 高清 needs, so that a link that carries it shows it
STEPS: Final[tuple[tuple[int, float], ...]] = ((150_000, 1.0), (500_000, 0.7), (1_200_000, 0.7), (2_500_000, 1.0))
PROBE_MAX_BPS: Final[int] = max(rate for rate, _ in STEPS)
MESSAGE_BYTES: Final[int] = 1000  # one message: one SCTP chunk, one datagram
TICK_S: Final[float] = 0.01
PING_EVERY_S: Final[float] = 0.1
BUFFER_MAX_BYTES: Final[int] = 16_000  # waiting in the server's data channel buffer, at most
DRAIN_S: Final[float] = 0.4  # after the last step, for what is still on its way
CLOSED_POLL_S: Final[float] = 0.2  # how soon a probe whose websocket closed ends
PROBE_MAX_S: Final[float] = 9.0  # from `probe` to `probe_result`: within the websocket's join timeout (10 s)
REPORT_SPAN_MIN: Final[float] = 0.5  # a step's arrivals are counted over at least this share of its length
PROBES_AT_ONCE: Final[int] = 4  # on one node (4 x 2.5 Mbit/s at most)
PROBE_BURST: Final[int] = 3  # per token...
PROBE_EVERY_S: Final[float] = 20.0  # ...then one per this long
RATE_KEYS_MAX: Final[int] = 10_000  # tokens whose buckets are remembered
DATA: Final[int] = 0  # first byte of a message: its step (0..len(STEPS)-1), or PING
PING: Final[int] = 0xFF
_PING = struct.Struct("!BI")  # PING, sequence number (the page echoes it unchanged)
# a step's report from the page: [messages received, bytes received, ms from its first to its last arrival]
REPORT_MAX = (100_000, 10_000_000, 60_000)


class ProbeRefused(Exception):
    """A probe message refused: .code is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_report(value: list) -> str | None:
    """The websocket schema's check of `probe_report.steps` (None: fine, else what is wrong)."""
    if len(value) > len(STEPS):
        return f"has more than {len(STEPS)} entries"
    for step in value:
        if not (isinstance(step, list) and len(step) == 3 and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top for v, top in zip(step, REPORT_MAX))):
            return ("must hold [messages, bytes, milliseconds] per step: integers from 0 to "
                    f"{', '.join(str(t) for t in REPORT_MAX)}")
    return None


def check_answer(text: str) -> None:
    """The page's answer must hold the probe's one data channel section and nothing else (before aiortc parses it)."""
    if not text.startswith("v=0") or len(text) > SDP_MAX_CHARS:
        raise ProbeRefused("bad_sdp", f"not an SDP description (v=0 first, {SDP_MAX_CHARS} characters at most)")
    try:
        parsed = sdp.SessionDescription.parse(text)
    except Exception as exc:  # noqa: BLE001 - aiortc's parser raises ValueError, KeyError, IndexError...
        raise ProbeRefused("bad_sdp", f"the SDP answer cannot be parsed ({type(exc).__name__})") from exc
    if len(parsed.media) != 1 or parsed.media[0].kind != "application":
        raise ProbeRefused("bad_sdp", "the probe's answer must hold one m=application section (its data channel)")
    media = parsed.media[0]
    if media.dtls is None or not media.dtls.fingerprints or media.ice is None or not media.ice.usernameFragment:
        raise ProbeRefused("bad_sdp", "the probe's answer has no a=fingerprint or no a=ice-ufrag / a=ice-pwd")


@dataclass
class StepCount:
    rate_bps: int
    seconds: float
    sent: int = 0
    sent_bytes: int = 0
    received: int = 0
    received_bytes: int = 0
    span_s: float = 0.0

    @property
    def arrived_bps(self) -> float:
        """What arrived, per second of its arrivals (counted over at least REPORT_SPAN_MIN of the step)."""
        return self.received_bytes * 8 / max(self.span_s, REPORT_SPAN_MIN * self.seconds)


@dataclass
class Measurement:
    steps: list[StepCount]
    rtts_s: list[float] = field(default_factory=list)  # the pings echoed during the first step

    @property
    def downlink_bps(self) -> float:
        return max((s.arrived_bps for s in self.steps), default=0.0)

    @property
    def loss(self) -> float:
        first = self.steps[0]
        return 1.0 - first.received / first.sent if first.sent else 1.0

    @property
    def rtt_ms(self) -> float | None:
        return round(statistics.median(self.rtts_s) * 1000, 1) if self.rtts_s else None

    def apply_report(self, report: list[list[int]]) -> None:
        """The page's counts (schema-checked): never more than was sent (a page that says so only fools itself)."""
        for step, (n, size, span_ms) in zip(self.steps, report):
            step.received = min(n, step.sent)
            step.received_bytes = min(size, step.sent_bytes)
            step.span_s = min(span_ms / 1000, step.seconds + PROBE_MAX_S)

    def result(self) -> dict[str, Any]:
        return {"type": "probe_result", "quality": classify(self.downlink_bps, self.loss),
                "downlink_bps": round(self.downlink_bps), "loss": round(self.loss, 4), "rtt_ms": self.rtt_ms,
                "rtt_high": self.rtt_ms is not None and self.rtt_ms > RTT_HIGH_MS,
                "steps": [{"rate_bps": s.rate_bps, "sent": s.sent, "received": s.received,
                           "arrived_bps": round(s.arrived_bps)} for s in self.steps]}


class Probe:
    """One page's probe: its peer connection, what was sent, and the task that runs it to the end."""

    def __init__(self, send: Callable[[dict[str, Any]], None], closed: Callable[[], bool],
                 ice_servers: list[str] | None = None) -> None:
        self._send = send
        self._closed = closed
        self.pc: RTCPeerConnection = make_peer_connection(ice_servers)
        self.channel: RTCDataChannel = self.pc.createDataChannel("probe", ordered=False, maxRetransmits=0)
        self.measurement = Measurement([StepCount(rate, seconds) for rate, seconds in STEPS])
        self._answered = asyncio.Event()
        self._opened = asyncio.Event()
        self._reported = asyncio.Event()
        self._pings: dict[int, tuple[float, bool]] = {}  # seq -> (sent at, in the first step)
        self._step = 0
        self.done = False
        self.channel.on("open", self._opened.set)
        self.channel.on("message", self._message)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return announce(self.pc.localDescription.sdp)

    async def accept_answer(self, text: str) -> None:
        if self._answered.is_set():
            raise ProbeRefused("unexpected_answer", "the probe has its answer already")
        check_answer(text)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
        except Exception as exc:  # noqa: BLE001 - aiortc raises ValueError, InvalidStateError, ...
            raise ProbeRefused("bad_sdp", "the probe's answer does not fit its offer") from exc
        self._answered.set()

    def report(self, steps: list[list[int]]) -> None:
        if not self._answered.is_set() or self._reported.is_set() or not self.done:
            raise ProbeRefused("unexpected_report", "no probe is waiting for a report (wait for probe_done)")
        self.measurement.apply_report(steps)
        self._reported.set()

    def _message(self, data: object) -> None:
        if not isinstance(data, bytes) or len(data) != _PING.size or data[0] != PING:
            return  # the page sends nothing else; anything else is ignored
        _, seq = _PING.unpack(data)
        sent = self._pings.pop(seq, None)
        if sent is not None and sent[1]:
            self.measurement.rtts_s.append(time.monotonic() - sent[0])

    async def run(self) -> None:
        """The whole probe, bounded by PROBE_MAX_S and ended as soon as its websocket closes; the peer connection
        is closed at the end, whatever happens."""
        steps = asyncio.ensure_future(self._run())
        try:
            while not steps.done() and not self._closed():
                await asyncio.wait({steps}, timeout=CLOSED_POLL_S)
        finally:
            steps.cancel()
            await asyncio.gather(steps, return_exceptions=True)
            self.done = True
            await self.pc.close()

    async def _run(self) -> None:
        try:
            async with asyncio.timeout(PROBE_MAX_S):
                await self._answered.wait()
                await self._opened.wait()
                pinger = asyncio.ensure_future(self._ping())
                try:
                    await self._blast()
                finally:
                    pinger.cancel()
                await asyncio.sleep(DRAIN_S)
                self.done = True
                self._send({"type": "probe_done"})
                await self._reported.wait()
            self._send(self.measurement.result())
        except TimeoutError:
            self._send({"type": "error", "code": "probe_timeout",
                        "message": f"the network check did not finish within {PROBE_MAX_S:g} s"})

    async def _ping(self) -> None:
        seq = 0
        while not self._closed():
            seq += 1
            self._pings[seq] = (time.monotonic(), self._step == 0)
            with contextlib.suppress(Exception):  # (a channel closing under us: the probe ends anyway)
                self.channel.send(_PING.pack(PING, seq))
            await asyncio.sleep(PING_EVERY_S)

    async def _blast(self) -> None:
        payload = bytearray(MESSAGE_BYTES)
        for index, step in enumerate(self.measurement.steps):
            self._step = index
            payload[0] = DATA + index
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < step.seconds:
                if self._closed() or self.channel.readyState != "open":
                    return
                due = min(elapsed + TICK_S, step.seconds) * step.rate_bps / 8
                while step.sent_bytes + MESSAGE_BYTES <= due and self.channel.bufferedAmount < BUFFER_MAX_BYTES:
                    payload[1:5] = step.sent.to_bytes(4, "big")
                    self.channel.send(bytes(payload))
                    step.sent += 1
                    step.sent_bytes += MESSAGE_BYTES
                await asyncio.sleep(TICK_S)


class Probes:
    """The probes of one node: at most one per connection, PROBES_AT_ONCE in all, a bucket per token."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.running: weakref.WeakKeyDictionary[object, Probe] = weakref.WeakKeyDictionary()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def allow(self, who: str) -> bool:
        """Whether `who` (a token's subject) may start a probe now (consumes one from its bucket)."""
        now = self._clock()
        bucket = self._buckets.pop(who, None) or TokenBucket(1 / PROBE_EVERY_S, PROBE_BURST, now)
        self._buckets[who] = bucket  # most recently used last
        while len(self._buckets) > RATE_KEYS_MAX:
            self._buckets.popitem(last=False)
        return bucket.allow(now)

    async def start(self, owner: object, who: str, send: Callable[[dict[str, Any]], None],
                    closed: Callable[[], bool], ice_servers: list[str] | None = None) -> str:
        """A new probe for `owner` (a connection); its offer. Refused when one runs for it, too many run, or `who`
        has probed too often."""
        current = self.running.get(owner)
        if current is not None and not current.done:
            raise ProbeRefused("probe_running", "a network check is already running on this connection")
        if sum(1 for p in self.running.values() if not p.done) >= PROBES_AT_ONCE:
            raise ProbeRefused("probe_busy", "the server is checking other classrooms' networks: try again shortly")
        if not self.allow(who):
            raise ProbeRefused("rate_limited", f"too many network checks: one per {PROBE_EVERY_S:g} s")
        probe = Probe(send, closed, ice_servers)
        self.running[owner] = probe
        try:
            offer = await probe.offer()
        except BaseException:
            probe.done = True
            await probe.pc.close()
            raise
        task = asyncio.ensure_future(probe.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return offer

    def of(self, owner: object) -> Probe:
        probe = self.running.get(owner)
        if probe is None:
            raise ProbeRefused("no_probe", "send probe first")
        return probe

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for running in list(self.running.values()):  # (a task cancelled before it ran never reached its finally)
            running.done = True
            await running.pc.close()


_PROBES: weakref.WeakKeyDictionary[object, Probes] = weakref.WeakKeyDictionary()


def probes_of(hub: object) -> Probes:
    """The probes of the node whose hub this is."""
    probes = _PROBES.get(hub)
    if probes is None:
        probes = _PROBES[hub] = Probes()
    return probes

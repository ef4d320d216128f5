"""The private aiortc seams ketang forwards packets through, and a start-up self-test of them.

aiortc has no public forwarding API (maintainer: out of scope, aiortc issues #449 and #627), so the SFU
hooks a few private methods and attributes. They were read from aiortc 1.16 / aioice 0.13; `check_seams()`
runs when the server starts so an aiortc upgrade that moves them fails loudly with a clear message instead of
silently forwarding nothing.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import queue
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aioice
import aiortc
import pylibsrtp
from aioice import ice as aioice_ice
from aioice import stun as aioice_stun
from aiortc import rtcrtpreceiver
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcpeerconnection import RTCPeerConnection
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import AnyRtcpPacket
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

log = logging.getLogger("ketang.sfu.seams")

TESTED_AIORTC = "1.16"
TESTED_AIOICE = "0.13"
_SRTP_MAX_TRAILER_LEN = 16 + 128  # pylibsrtp's SRTP_MAX_TRAILER_LEN: room for the tag and MKI


class SeamError(RuntimeError):
    """aiortc lacks a private method or attribute the SFU depends on."""


# (owner, attribute, parameters the callable must accept, or None for a plain attribute set in __init__)
_METHOD_SEAMS: list[tuple[type, str, tuple[str, ...]]] = [
    (RTCDtlsTransport, "_handle_rtp_data", ("data", "arrival_time_ms")),
    (RTCDtlsTransport, "_handle_rtcp_data", ("data",)),
    (RTCDtlsTransport, "_send_rtp", ("data",)),
    (RTCRtpSender, "_handle_rtcp_packet", ("packet",)),
    (RTCRtpReceiver, "_send_rtcp_pli", ("media_ssrc",)),
    (RTCRtpReceiver, "_send_rtcp", ("packet",)),
    (RTCRtpReceiver, "_send_rtcp_nack", ("media_ssrc", "lost")),
    (aioice_ice.StunProtocol, "datagram_received", ("data", "addr")),
    (aioice.Connection, "check_incoming", ("message", "addr", "protocol")),
    (aioice.Connection, "data_received", ("data", "component")),
    (Vp8Encoder, "_packetize", ("buffer", "picture_id")),  # the load tester's synthetic teacher
]
_INIT_ATTRIBUTE_SEAMS: list[tuple[type, tuple[str, ...]]] = [
    (RTCRtpSender, ("self._ssrc", "self._rtx_ssrc", "self.__ntp_timestamp", "self.__rtp_timestamp",
                    "self.__packet_count", "self.__octet_count", "self.__rtt")),
    (RTCRtpTransceiver, ("self._codecs", "self._headerExtensions", "self._offerDirection")),
    (RTCRtpReceiver, ("self.__remote_bitrate_estimator", "self.__rtcp_ssrc", "self.__remote_streams")),
    (RTCDtlsTransport, ("self._rtp_header_extensions_map", "self._tx_srtp", "self._rx_srtp", "self._rtp_router")),
    (RTCPeerConnection, ("self.__cname",)),
    (RTCIceTransport, ("self._connection",)),
]

# set in aioice's ICE module (the Connection, its check list and candidate pairs) and in pylibsrtp.Session
_ICE_ATTRIBUTES = ("self._nominated", "self._check_list", "self.receiver", "self.local_candidate", "self.id",
                   "self._queue")
_SRTP_ATTRIBUTES = ("self._srtp", "self._cdata", "self._buffer")
# how aioice binds a host candidate's socket, which set_media_ports() relies on
_ICE_SOURCE_SNIPPETS = ("loop = asyncio.get_running_loop()", "local_addr=(address, 0)")


def checked_private_names() -> set[str]:
    """Every private name of aiortc, aioice and pylibsrtp that check_seams() looks for (name-mangled ones as they
    are reached from outside: `_RTCRtpSender__ntp_timestamp`); a test holds every private this module uses to it."""
    names = {name for _, name, _ in _METHOD_SEAMS}
    for owner, attrs in [*_INIT_ATTRIBUTE_SEAMS, (aioice.Connection, _ICE_ATTRIBUTES),
                         (pylibsrtp.Session, _SRTP_ATTRIBUTES)]:
        for attr in attrs:
            name = attr.removeprefix("self.")
            names.add(f"_{owner.__name__}{name}" if name.startswith("__") else name)
    return {name for name in names if name.startswith("_")}


def _module_source(owner: type) -> str:
    """Text of the module defining `owner` (inspect.getsource(class) re-parses it and proved fragile)."""
    return Path(inspect.getfile(owner)).read_text(encoding="utf-8")


def check_seams() -> None:
    """Raise SeamError naming every missing seam; log a warning for an untested version."""
    problems: list[str] = []
    for owner, name, params in _METHOD_SEAMS:
        fn = getattr(owner, name, None)
        if fn is None or not callable(fn):
            problems.append(f"{owner.__name__}.{name} is missing")
            continue
        have = inspect.signature(fn).parameters
        missing = [p for p in params if p not in have]
        if missing:
            problems.append(f"{owner.__name__}.{name} no longer takes {missing}")
    for owner, attrs in _INIT_ATTRIBUTE_SEAMS:
        src = _module_source(owner)
        for attr in attrs:
            if attr not in src:
                problems.append(f"{owner.__name__} no longer sets {attr}")
    worker = getattr(rtcrtpreceiver, "decoder_worker", None)
    if worker is None:
        problems.append("aiortc.rtcrtpreceiver.decoder_worker is missing")
    elif list(inspect.signature(worker).parameters)[:3] != ["loop", "input_q", "output_q"] \
            and worker is not _forward_only_decoder_worker:
        problems.append("aiortc.rtcrtpreceiver.decoder_worker changed its arguments")
    ice_source = _module_source(aioice.Connection)
    for attr in _ICE_ATTRIBUTES:
        if attr not in ice_source:
            problems.append(f"aioice's ICE module no longer sets {attr}")
    for snippet in _ICE_SOURCE_SNIPPETS:
        if snippet not in ice_source:
            problems.append(f"aioice's ICE module no longer has {snippet!r} (the media port range)")
    session_source = _module_source(pylibsrtp.Session)
    for attr in _SRTP_ATTRIBUTES:
        if attr not in session_source:
            problems.append(f"pylibsrtp.Session no longer sets {attr}")
    if not hasattr(_lib, "srtp_protect"):
        problems.append("pylibsrtp's binding lacks srtp_protect")
    if not callable(getattr(aioice_ice, "get_host_addresses", None)):
        problems.append("aioice.ice.get_host_addresses is missing")
    if problems:
        raise SeamError(
            f"aiortc {aiortc.__version__} / aioice {aioice.__version__} lacks what ketang's packet forwarding "
            f"needs (tested with aiortc {TESTED_AIORTC}.x, aioice {TESTED_AIOICE}.x): " + "; ".join(problems)
            + ". Install the pinned versions: pip install 'aiortc==1.16.*' 'aioice==0.13.*'")
    if not aiortc.__version__.startswith(TESTED_AIORTC) or not aioice.__version__.startswith(TESTED_AIOICE):
        log.warning("aiortc %s / aioice %s are untested; seams are present", aiortc.__version__,
                    aioice.__version__)


def _forward_only_decoder_worker(loop: asyncio.AbstractEventLoop, input_q: queue.Queue, output_q: asyncio.Queue,
                                 *args: Any) -> None:
    """Replaces aiortc's decoder thread: drain the encoded frames without decoding them.

    aiortc 1.16 passes a 4th argument (decode_error); accept any. On shutdown it must still put None on the
    track's queue so whoever awaits the remote track sees it end.
    """
    while True:
        task = input_q.get()
        if task is None:
            asyncio.run_coroutine_threadsafe(output_q.put(None), loop)
            return


def disable_decoding() -> None:
    """Stop aiortc's receivers from decoding: the SFU only forwards packets (decoding costs ~1 ms a frame)."""
    check_seams()
    rtcrtpreceiver.decoder_worker = _forward_only_decoder_worker


def install() -> None:
    """What the server needs of aiortc before its first peer connection: the seams checked, decoding off and
    the datagram guard on."""
    disable_decoding()
    guard_datagrams()


def sender_set_report_counters(sender: RTCRtpSender, ntp: int, rtp_ts: int, packets: int, octets: int) -> None:
    """Feed the stock sender's RTCP loop the figures for its next sender report (name-mangled attributes)."""
    sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
    sender._RTCRtpSender__rtp_timestamp = rtp_ts  # type: ignore[attr-defined]
    sender._RTCRtpSender__packet_count = packets  # type: ignore[attr-defined]
    sender._RTCRtpSender__octet_count = octets  # type: ignore[attr-defined]


def lean_protect(session: pylibsrtp.Session) -> Callable[[bytes], bytes]:
    """SRTP-protect with the session's own buffer but without pylibsrtp's per-call wrapper work (a method
    dispatch, a type check and an `ffi.new` for the length): measured in the live load test, that wrapper cost
    more than `srtp_protect` itself. Single-threaded use only, like the session it shares the buffer with."""
    srtp, cdata, buffer = session._srtp, session._cdata, session._buffer
    length = _ffi.new("int *")
    limit = len(cdata) - _SRTP_MAX_TRAILER_LEN
    protect = _lib.srtp_protect

    def protect_packet(data: bytes) -> bytes:
        n = len(data)
        if n > limit:
            raise ValueError("packet is too long")
        length[0] = n
        buffer[0:n] = data
        status = protect(srtp[0], cdata, length)
        if status:
            raise pylibsrtp.Error(f"srtp_protect failed ({status})")
        return buffer[0:length[0]]

    return protect_packet


def datagram_sender(dtls: RTCDtlsTransport) -> tuple[Any, Any] | None:
    """(protect, send) for the lean egress path: SRTP-protect, then sendto on the nominated ICE pair's socket.

    Saves ~2 us a packet over `RTCDtlsTransport._send_rtp` (no coroutine, no stats). None until ICE has
    nominated a pair and DTLS has produced the SRTP keys.
    """
    srtp = getattr(dtls, "_tx_srtp", None)
    connection = getattr(dtls.transport, "_connection", None)
    pair = connection._nominated.get(1) if connection is not None else None
    if srtp is None or pair is None or pair.protocol is None or pair.protocol.transport is None:
        return None
    # a partial, not a closure: one Python frame less per packet
    return lean_protect(srtp), functools.partial(pair.protocol.transport.sendto, addr=pair.remote_addr)


# -- what reaches DTLS/SRTP from the network -------------------------------------------------------------------
# aioice hands every datagram that does not parse as STUN, from any source address, up to aiortc's DTLS
# transport, whose receive loop dies on an empty one (`data[0]`: IndexError ends the peer connection) and
# whose STUN parser lets `struct.error` escape on truncated attributes. One datagram from anywhere could end a
# lesson's media. The guard below sits on aioice's socket protocol (seam: `StunProtocol.datagram_received`,
# `Connection.check_incoming`, `Connection._check_list` / `_nominated`) and lets through, by the first byte
# (RFC 7983's demultiplexing), only:
#   - STUN that parses (0-3), to aioice as before;
#   - DTLS (20-63) and RTP/RTCP (128-191) from a remote address that has proven it holds the ICE credentials:
#     it sent us an authenticated binding request, or answered ours (a succeeded pair), or is the nominated pair.
# Everything else is counted and dropped.
_STUN_MAX_FIRST_BYTE = 3
_DTLS_FIRST_BYTES = range(20, 64)
_RTP_FIRST_BYTES = range(128, 192)


class DatagramGuard:
    """Counts of what the guard dropped, process-wide (for /stats, logs and the fuzz test)."""

    def __init__(self) -> None:
        self.dropped_unproven = 0  # DTLS/RTP from an address that never proved the ICE credentials
        self.dropped_malformed = 0  # empty, STUN that does not parse, or a first byte no peer sends
        self.installed = False
        self.stock_received: Any = None  # aioice's own datagram_received, kept (loadtest/bench/guard.py times both)

    def counts(self) -> dict[str, int]:
        return {"dropped_unproven": self.dropped_unproven, "dropped_malformed": self.dropped_malformed}


GUARD = DatagramGuard()


def _proven(connection: Any, protocol: Any, addr: tuple[Any, ...]) -> bool:
    """Whether `addr`, seen on `protocol`, may feed this connection's DTLS/SRTP."""
    pair = connection._nominated.get(protocol.local_candidate.component)
    if pair is not None and pair.protocol is protocol and pair.remote_addr == addr:
        return True  # the steady state: every media packet, one comparison
    if (protocol.id, addr) in getattr(connection, "_ketang_proven", ()):
        return True
    succeeded = aioice_ice.CandidatePair.State.SUCCEEDED
    return any(p.protocol is protocol and p.state is succeeded and p.remote_addr == addr
               for p in connection._check_list)


def guard_datagrams() -> None:
    """Install the datagram guard on aioice (idempotent)."""
    if GUARD.installed:
        return
    protocol_class = aioice_ice.StunProtocol
    connection_class = aioice.Connection
    stock_received = protocol_class.datagram_received
    stock_check_incoming = connection_class.check_incoming

    def datagram_received(self: Any, data: bytes, addr: tuple[Any, ...]) -> None:
        if not data:
            GUARD.dropped_malformed += 1
            return
        first = data[0]
        if first <= _STUN_MAX_FIRST_BYTE:
            try:
                aioice_stun.parse_message(data)
            except Exception:  # noqa: BLE001 - ValueError, struct.error, UnicodeDecodeError... from a stranger
                GUARD.dropped_malformed += 1
                return
            stock_received(self, data, addr)
            return
        if first not in _RTP_FIRST_BYTES and first not in _DTLS_FIRST_BYTES:
            GUARD.dropped_malformed += 1
            return
        addr = (addr[0], addr[1])
        if not _proven(self.receiver, self, addr):
            GUARD.dropped_unproven += 1
            return
        self.receiver.data_received(data, self.local_candidate.component)

    def check_incoming(self: Any, message: Any, addr: tuple[Any, ...], protocol: Any) -> None:
        # called only for a binding request whose MESSAGE-INTEGRITY matched our ICE password
        proven = getattr(self, "_ketang_proven", None)
        if proven is None:
            proven = self._ketang_proven = set()
        if len(proven) < 64:  # candidates of one peer: a handful
            proven.add((protocol.id, (addr[0], addr[1])))
        stock_check_incoming(self, message, addr, protocol)

    GUARD.stock_received = stock_received
    protocol_class.datagram_received = datagram_received  # type: ignore[method-assign]
    connection_class.check_incoming = check_incoming  # type: ignore[method-assign]
    GUARD.installed = True


def set_media_addresses(addresses: list[str]) -> None:
    """Gather ICE host candidates on these addresses only (seam: `aioice.ice.get_host_addresses`, looked up at
    each gathering). aioice's own choice is every interface address except 127.0.0.1; a server with several
    interfaces, or a test that must stay on loopback, names them."""
    chosen = [a.strip() for a in addresses if a.strip()]
    if not chosen:
        return

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]

    aioice_ice.get_host_addresses = host_addresses


class MediaPorts:
    """The UDP ports media sockets bind to: a fixed range a firewall rule can name (`--media-ports 40000-49999`),
    handed out round the range, a port in use skipped. None: the system's ephemeral ports."""

    def __init__(self, first: int, last: int) -> None:
        if not 1024 <= first <= last <= 65535:
            raise ValueError(f"media ports {first}-{last}: give a range within 1024-65535, first <= last")
        self.first, self.last = first, last
        self._next = first

    @classmethod
    def parse(cls, text: str) -> MediaPorts:
        first, sep, last = text.strip().partition("-")
        try:
            return cls(int(first), int(last if sep else first))
        except ValueError as exc:
            raise ValueError(f"media ports {text!r}: give a range such as 40000-49999 ({exc})") from None

    def candidates(self) -> Iterator[int]:
        """Every port of the range once, starting after the last one handed out."""
        size = self.last - self.first + 1
        start = self._next
        for i in range(size):
            port = self.first + (start - self.first + i) % size
            self._next = self.first + (port - self.first + 1) % size
            yield port


MEDIA_PORTS: MediaPorts | None = None


class _RangedLoop:
    """The running loop as aioice's host-candidate gathering sees it: a datagram endpoint asked for port 0 gets a
    port of MEDIA_PORTS instead (the seam: aioice.ice calls `asyncio.get_running_loop().create_datagram_endpoint(
    ..., local_addr=(address, 0))`); everything else is the loop itself."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory: Any, local_addr: tuple[str, int] | None = None,
                                       **kwargs: Any) -> Any:
        ports = MEDIA_PORTS
        if ports is None or local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(factory, local_addr=local_addr, **kwargs)
        error: OSError | None = None
        for port in ports.candidates():
            try:
                return await self._loop.create_datagram_endpoint(factory, local_addr=(local_addr[0], port), **kwargs)
            except OSError as exc:  # in use (another peer connection, another process): the next one
                error = exc
        raise OSError(f"no free UDP port in the media range {ports.first}-{ports.last} on {local_addr[0]}") from error


class _RangedAsyncio:
    """`asyncio` as aioice.ice sees it, with get_running_loop() giving the ranged loop."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    def get_running_loop() -> Any:
        return _RangedLoop(asyncio.get_running_loop())


def set_media_ports(ports: MediaPorts | None) -> None:
    """Bind every ICE host socket within `ports` (None: any port, aioice's own behaviour)."""
    global MEDIA_PORTS
    MEDIA_PORTS = ports
    aioice_ice.asyncio = _RangedAsyncio() if ports is not None else asyncio  # type: ignore[attr-defined]


# -- the accessors: the rest of the project reaches aiortc's private state only through these -------------------
# (tests/unit/sfu/test_seams.py walks every module's AST and fails on a private aiortc/aioice name used anywhere else)

def transceiver_codecs(transceiver: RTCRtpTransceiver) -> list[Any]:
    """The codecs negotiated on a transceiver."""
    return transceiver._codecs


def set_transceiver_codecs(transceiver: RTCRtpTransceiver, codecs: list[Any]) -> None:
    """What the next answer offers (the lesson codec only)."""
    transceiver._codecs = codecs


def transceiver_header_extensions(transceiver: RTCRtpTransceiver) -> list[Any]:
    """The header extensions negotiated on a transceiver (the list itself: appending adds one)."""
    return transceiver._headerExtensions


def offer_direction(transceiver: RTCRtpTransceiver) -> str | None:
    """The direction the remote offer gave this transceiver (ours reversed)."""
    return transceiver._offerDirection


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """(media SSRC, RTX SSRC) a sender writes."""
    return sender._ssrc, sender._rtx_ssrc


def hook_sender_rtcp(sender: RTCRtpSender, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Route the RTCP a subscriber sends about this sender (NACK, PLI, REMB, RR) to `handler`; returns the stock
    handler, for `handler` to pass packets on and for `unhook_sender_rtcp`."""
    original = sender._handle_rtcp_packet
    sender._handle_rtcp_packet = handler  # type: ignore[method-assign]
    return original


def unhook_sender_rtcp(sender: RTCRtpSender, original: Callable[[Any], Any]) -> None:
    sender._handle_rtcp_packet = original  # type: ignore[method-assign]


DtlsHandlers = tuple[Callable[..., Any], Callable[..., Any]]


def dtls_handlers(dtls: RTCDtlsTransport) -> DtlsHandlers:
    """The transport's current (decrypted RTP, RTCP) handlers."""
    return dtls._handle_rtp_data, dtls._handle_rtcp_data


def hook_dtls(dtls: RTCDtlsTransport, on_rtp: Callable[..., Any], on_rtcp: Callable[..., Any] | None = None
              ) -> DtlsHandlers:
    """Take the decrypted RTP (and RTCP) of a DTLS transport; returns the stock handlers, to pass packets on
    and for `unhook_dtls`."""
    original = dtls_handlers(dtls)
    dtls._handle_rtp_data = on_rtp  # type: ignore[method-assign]
    if on_rtcp is not None:
        dtls._handle_rtcp_data = on_rtcp  # type: ignore[method-assign]
    return original


def unhook_dtls(dtls: RTCDtlsTransport, original: DtlsHandlers) -> None:
    dtls._handle_rtp_data, dtls._handle_rtcp_data = original  # type: ignore[method-assign]


def dtls_send_rtp(dtls: RTCDtlsTransport, data: bytes) -> Any:
    """SRTP-protect and send one RTP packet (a coroutine)."""
    return dtls._send_rtp(data)


def receiver_send_rtcp(receiver: RTCRtpReceiver, packet: AnyRtcpPacket) -> Coroutine[Any, Any, None]:
    """Send an RTCP packet from a receiver to its remote sender (a coroutine)."""
    return receiver._send_rtcp(packet)


def wrap_receiver_rtcp(receiver: RTCRtpReceiver, wrapper: Callable[[Any, Callable[[Any], Any]], Any]) -> None:
    """Every RTCP packet the receiver sends goes through `wrapper(packet, send)` (a coroutine function)."""
    original = receiver._send_rtcp

    async def send_rtcp(packet: Any) -> None:
        await wrapper(packet, original)

    receiver._send_rtcp = send_rtcp  # type: ignore[method-assign]


def receiver_rtcp_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC a receiver's RTCP goes out with (None until it has one)."""
    return receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]


def disable_receiver_remb(receiver: RTCRtpReceiver) -> None:
    """Stop the stock receiver's own REMB (the SFU sends its own budget)."""
    receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]


def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> Any:
    """A PLI from a receiver to the stream's sender (a coroutine)."""
    return receiver._send_rtcp_pli(media_ssrc)


def receiver_send_nack(receiver: RTCRtpReceiver, media_ssrc: int, lost: list[int]) -> Any:
    """A generic NACK from a receiver for `lost` sequence numbers (a coroutine)."""
    return receiver._send_rtcp_nack(media_ssrc, lost)


def receiver_remote_streams(receiver: RTCRtpReceiver) -> dict[int, Any]:
    """The receiver's per-SSRC receive statistics."""
    return receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]


def peer_cname(pc: Any) -> str:
    """The CNAME a peer connection's RTCP carries."""
    return pc._RTCPeerConnection__cname


def nominate(connection: Any, pair: Any, component: int = 1) -> None:
    """Set the nominated pair as ICE leaves it (benchmarks only: a connection without a peer)."""
    connection._nominated[component] = pair


def hook_dtls_send(dtls: RTCDtlsTransport, send_rtp: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """Send this transport's RTP and RTCP through `send_rtp` (a coroutine function); returns the stock sender."""
    original = dtls._send_rtp
    dtls._send_rtp = send_rtp  # type: ignore[method-assign]
    return original


def receive_path(dtls: RTCDtlsTransport) -> tuple[Any, Callable[[bytes], bytes]] | None:
    """(the nominated ICE pair's socket protocol, the SRTP unprotect of this transport), for a receiver that reads
    SRTP straight off its socket (the load tester); None until ICE and DTLS are up."""
    connection = getattr(dtls.transport, "_connection", None)
    pair = connection._nominated.get(1) if connection is not None else None
    srtp = getattr(dtls, "_rx_srtp", None)
    if pair is None or pair.protocol is None or srtp is None:
        return None
    return pair.protocol, srtp.unprotect


def receive_queue(dtls: RTCDtlsTransport) -> asyncio.Queue | None:  # type: ignore[type-arg]
    """The queue where every datagram read for this transport waits for its DTLS/SRTP receive task (aioice
    `Connection._queue`); the overload work stamps arrivals in it (sfu/adapt/overload.py). None without one."""
    connection = getattr(dtls.transport, "_connection", None)
    return getattr(connection, "_queue", None) if connection is not None else None


def register_rtp_sender(dtls: RTCDtlsTransport, sender: Any, ssrc: int) -> None:
    """Have the transport hand RTCP about `ssrc` (NACK, PLI, receiver reports) to `sender._handle_rtcp_packet`."""
    dtls._rtp_router.register_sender(sender, ssrc)


def rtp_senders(dtls: RTCDtlsTransport) -> Any:
    """The senders the transport knows, by SSRC."""
    return dtls._rtp_router.senders


def vp8_packetize(data: bytes, picture_id: int) -> list[bytes]:
    """aiortc's VP8 payloader: one encoded frame into RTP payloads."""
    return Vp8Encoder._packetize(data, picture_id)


def set_receiver_stream_statistics(receiver: RTCRtpReceiver, ssrc: int, statistics: Any) -> None:
    """Where the receiver's RTCP loop reads a stream's RFC 3550 figures from."""
    receiver._RTCRtpReceiver__remote_streams[ssrc] = statistics  # type: ignore[attr-defined]


def sender_rtt(sender: RTCRtpSender) -> float | None:
    """Round-trip time (s) the stock sender estimates from the remote's receiver reports (None before one)."""
    return getattr(sender, "_RTCRtpSender__rtt", None)


def sender_counts(sender: RTCRtpSender) -> tuple[int, int]:
    """(packets, octets) the stock sender has sent."""
    return (getattr(sender, "_RTCRtpSender__packet_count", 0), getattr(sender, "_RTCRtpSender__octet_count", 0))

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aioice
import aiortc
import pylibsrtp
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib
from aiortc import rtcrtpreceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

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
]
_INIT_ATTRIBUTE_SEAMS: list[tuple[type, tuple[str, ...]]] = [
    (RTCRtpSender, ("self._ssrc", "self._rtx_ssrc", "self.__ntp_timestamp", "self.__rtp_timestamp",
                    "self.__packet_count", "self.__octet_count", "self.__rtt")),
    (RTCRtpTransceiver, ("self._codecs", "self._headerExtensions")),
    (RTCRtpReceiver, ("self.__remote_bitrate_estimator", "self.__rtcp_ssrc")),
    (RTCDtlsTransport, ("self._rtp_header_extensions_map", "self._tx_srtp", "self._rx_srtp")),
    (RTCIceTransport, ("self._connection",)),
]


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
    if "self._nominated" not in _module_source(aioice.Connection):
        problems.append("aioice.Connection._nominated is missing")
    session_source = _module_source(pylibsrtp.Session)
    for attr in ("self._srtp", "self._cdata", "self._buffer"):
        if attr not in session_source:
            problems.append(f"pylibsrtp.Session no longer sets {attr}")
    if not hasattr(_lib, "srtp_protect"):
        problems.append("pylibsrtp's binding lacks srtp_protect")
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

"""The private aiortc seams the SFU forwards through: the start-up self-test and the forward-only decoder worker."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

import aioice
import aiortc
import pylibsrtp
import pytest
from aiortc import rtcrtpreceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

from sfu import seams
from sfu.seams import (
    SeamError,
    _forward_only_decoder_worker,
    check_seams,
    disable_decoding,
)

PIN_ADVICE = "pip install 'aiortc==1.16.*' 'aioice==0.13.*'"


def test_check_seams_passes_on_the_installed_aiortc():
    assert aiortc.__version__.startswith("1.16.") and aioice.__version__.startswith("0.13.")
    check_seams()


@pytest.mark.parametrize("owner, name", [
    (RTCDtlsTransport, "_handle_rtp_data"),
    (RTCDtlsTransport, "_handle_rtcp_data"),
    (RTCDtlsTransport, "_send_rtp"),
    (RTCRtpSender, "_handle_rtcp_packet"),
    (RTCRtpReceiver, "_send_rtcp_pli"),
])
def test_a_removed_seam_is_named_with_how_to_install_the_pinned_versions(monkeypatch, owner, name):
    monkeypatch.delattr(owner, name)
    with pytest.raises(SeamError) as raised:
        check_seams()
    message = str(raised.value)
    assert f"{owner.__name__}.{name}" in message
    assert "missing" in message
    assert PIN_ADVICE in message
    assert aiortc.__version__ in message


async def _pli_without_media_ssrc(self, ssrc):
    pass


async def _rtp_without_arrival_time(self, data):
    pass


@pytest.mark.parametrize("owner, name, replacement, lost", [
    (RTCRtpReceiver, "_send_rtcp_pli", _pli_without_media_ssrc, "media_ssrc"),
    (RTCDtlsTransport, "_handle_rtp_data", _rtp_without_arrival_time, "arrival_time_ms"),
])
def test_a_seam_with_a_changed_signature_is_named_with_the_parameter_it_lost(monkeypatch, owner, name, replacement,
                                                                             lost):
    monkeypatch.setattr(owner, name, replacement)
    with pytest.raises(SeamError) as raised:
        check_seams()
    message = str(raised.value)
    assert f"{owner.__name__}.{name} no longer takes" in message
    assert lost in message
    assert PIN_ADVICE in message


def test_every_broken_seam_is_named_at_once(monkeypatch):
    monkeypatch.delattr(RTCDtlsTransport, "_handle_rtp_data")
    monkeypatch.setattr(RTCRtpReceiver, "_send_rtcp_pli", _pli_without_media_ssrc)
    monkeypatch.delattr(rtcrtpreceiver, "decoder_worker")
    with pytest.raises(SeamError) as raised:
        check_seams()
    message = str(raised.value)
    for part in ("RTCDtlsTransport._handle_rtp_data is missing", "RTCRtpReceiver._send_rtcp_pli no longer takes",
                 "aiortc.rtcrtpreceiver.decoder_worker is missing"):
        assert part in message


def test_a_decoder_worker_with_other_arguments_is_reported(monkeypatch):
    def decoder_worker(input_q, output_q, loop):
        pass

    monkeypatch.setattr(rtcrtpreceiver, "decoder_worker", decoder_worker)
    with pytest.raises(SeamError, match="decoder_worker changed its arguments"):
        check_seams()


def test_an_attribute_no_longer_set_by_aiortc_is_named(monkeypatch):
    real_source = seams._module_source

    def source(owner):
        src = real_source(owner)
        if owner is RTCRtpSender:
            src = src.replace("self._rtx_ssrc", "self._repair_ssrc")
        return src

    monkeypatch.setattr(seams, "_module_source", source)
    with pytest.raises(SeamError, match=r"RTCRtpSender no longer sets self\._rtx_ssrc"):
        check_seams()


def test_an_untested_version_with_the_seams_present_only_warns(monkeypatch, caplog):
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    with caplog.at_level(logging.WARNING, logger="ketang.sfu.seams"):
        check_seams()
    assert any("1.17.0" in r.getMessage() and "untested" in r.getMessage() for r in caplog.records)


# -- the forward-only decoder worker --------------------------------------------------------------------------


class SpyCodec:
    """Records any use: the real worker reads codec.name to pick a decoder; the forward-only one must not."""

    def __init__(self, used: list[str]) -> None:
        object.__setattr__(self, "_used", used)

    def __getattr__(self, name: str):
        self._used.append(name)
        raise AttributeError(name)


class SpyFrame(SpyCodec):
    pass


@pytest.mark.parametrize("extra_args", [(), ("decode_error",)], ids=["three arguments", "aiortc 1.16's four"])
async def test_the_forward_only_worker_drains_frames_without_decoding_and_ends_the_track(monkeypatch, extra_args):
    used: list[str] = []
    decoders: list[object] = []
    monkeypatch.setattr(rtcrtpreceiver, "get_decoder", lambda codec: decoders.append(codec))
    loop = asyncio.get_running_loop()
    input_q: queue.Queue = queue.Queue()
    output_q: asyncio.Queue = asyncio.Queue()
    args = tuple(threading.Event() for _ in extra_args)
    worker = threading.Thread(target=_forward_only_decoder_worker, args=(loop, input_q, output_q, *args), daemon=True)
    worker.start()
    try:
        for i in range(5):
            input_q.put((SpyCodec(used), SpyFrame(used)))
            input_q.put((object(), b"\x00garbage" * i))
        deadline = time.monotonic() + 5
        while not input_q.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert input_q.empty(), "the worker did not drain the encoded frames"
        await asyncio.sleep(0.05)
        assert worker.is_alive()
        assert output_q.empty(), "nothing may come out for encoded frames: no decoded frames"

        input_q.put(None)
        assert await asyncio.wait_for(output_q.get(), 5) is None
        worker.join(5)
        assert not worker.is_alive()
    finally:
        if worker.is_alive():
            input_q.put(None)
            worker.join(5)
    assert used == [] and decoders == []
    assert output_q.empty()


def test_disable_decoding_makes_aiortcs_receivers_use_the_forward_only_worker(monkeypatch):
    original = rtcrtpreceiver.decoder_worker
    with monkeypatch.context() as m:
        m.setattr(rtcrtpreceiver, "decoder_worker", original)
        disable_decoding()
        assert rtcrtpreceiver.decoder_worker is _forward_only_decoder_worker
        disable_decoding()  # idempotent: the check accepts the worker it installed itself
        assert rtcrtpreceiver.decoder_worker is _forward_only_decoder_worker
    assert rtcrtpreceiver.decoder_worker is original  # other tests in this process still decode


def test_disable_decoding_refuses_when_a_seam_is_broken(monkeypatch):
    original = rtcrtpreceiver.decoder_worker
    monkeypatch.setattr(rtcrtpreceiver, "decoder_worker", original)
    monkeypatch.delattr(RTCRtpSender, "_handle_rtcp_packet")
    with pytest.raises(SeamError):
        disable_decoding()
    assert rtcrtpreceiver.decoder_worker is original


# -- the lean egress path -----------------------------------------------------------------------------------------


async def test_the_lean_egress_path_is_unavailable_until_ice_and_dtls_are_up():
    from aiortc import RTCCertificate, RTCIceGatherer, RTCIceTransport

    from sfu.seams import datagram_sender

    dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    assert datagram_sender(dtls) is None


async def test_the_lean_egress_path_protects_then_sends_to_the_nominated_pair():
    from aiortc import RTCCertificate, RTCIceGatherer, RTCIceTransport

    from sfu.seams import datagram_sender

    dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    sent: list[tuple[bytes, tuple[str, int]]] = []

    class Transport:
        def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
            sent.append((data, addr))

    class Protocol:
        transport = Transport()

    remote = aioice.Candidate(foundation="1", component=1, transport="udp", priority=1, host="192.0.2.7", port=40000,
                              type="host")
    key = bytes(range(30))
    dtls._tx_srtp = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    receiver = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    dtls.transport._connection._nominated[1] = aioice.ice.CandidatePair(Protocol(), remote)

    lean = datagram_sender(dtls)
    assert lean is not None
    protect, send = lean
    rtp = [bytes([0x80, 96, 0, n]) + bytes(8) + b"payload %d" % n for n in (1, 2)]
    for packet in rtp:
        send(protect(packet))
    assert [addr for _, addr in sent] == [("192.0.2.7", 40000)] * 2
    assert [receiver.unprotect(data) for data, _ in sent] == rtp  # real SRTP, decryptable by the peer
    with pytest.raises(ValueError):
        protect(bytes(1500))


# -- aiortc's private names are reached only through sfu/seams.py ------------------------------------------------
PROJECT_PACKAGES = ("sfu", "signaling", "recorder", "ketang", "loadtest")
# private names the project defines itself and reaches on its own objects (a Consumer's `_send`), though some
# aiortc class has a private of the same name
OWN_PRIVATE_NAMES = {"_send"}


def _private_names_of_aiortc() -> set[str]:
    """Every `_name` aiortc, aioice and pylibsrtp define or read as an attribute (not dunders)."""
    import ast
    from pathlib import Path

    names: set[str] = set()
    for package in (aiortc, aioice, pylibsrtp):
        for path in Path(package.__file__).parent.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                name = node.attr if isinstance(node, ast.Attribute) else \
                    node.name if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
                if name and name.startswith("_") and not name.startswith("__"):
                    names.add(name)
    return names


def _private_accesses(source: str, theirs: set[str]) -> list[tuple[int, str]]:
    """(line, name) of each access to an aiortc private outside `self`/`cls`: `x._name`, a name-mangled
    `x._Class__name`, or `getattr(x, "_name")`."""
    import ast
    import re

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name, base = node.attr, node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            name = node.args[1].value
        else:
            continue
        if name in OWN_PRIVATE_NAMES:
            continue
        if name in theirs or re.match(r"_[A-Z][A-Za-z]*__\w+", name):
            found.append((node.lineno, name))
    return sorted(found)


def test_aiortc_private_names_are_used_only_in_seams():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    theirs = _private_names_of_aiortc()
    assert {"_codecs", "_send_rtcp", "_nominated", "_handle_rtp_data"} <= theirs  # the scan found them
    offenders = [f"{path.relative_to(root)}:{line}: {name}"
                 for package in PROJECT_PACKAGES for path in sorted((root / package).rglob("*.py"))
                 if path.name != "seams.py" or path.parent.name != "sfu"
                 for line, name in _private_accesses(path.read_text(encoding="utf-8"), theirs)]
    assert not offenders, "aiortc/aioice privates outside sfu/seams.py:\n" + "\n".join(offenders)


def test_the_start_up_self_test_checks_every_private_seams_uses():
    from pathlib import Path

    from sfu.seams import checked_private_names

    source = Path(seams.__file__).read_text(encoding="utf-8")
    used = {name for _, name in _private_accesses(source, _private_names_of_aiortc())}
    assert {"_handle_rtp_data", "_RTCRtpSender__ntp_timestamp", "_nominated"} <= used  # the scan found them
    unchecked = used - checked_private_names()
    assert not unchecked, f"sfu/seams.py uses these without check_seams() looking for them: {sorted(unchecked)}"


def test_the_private_access_scan_can_fail():
    theirs = {"_codecs", "_nominated"}
    source = ("t._codecs\nself._codecs\nc._nominated.get(1)\nr._RTCRtpReceiver__rtcp_ssrc\n"
              "getattr(d, '_nominated', None)\nx._mine\n")
    assert _private_accesses(source, theirs) == [(1, "_codecs"), (3, "_nominated"), (4, "_RTCRtpReceiver__rtcp_ssrc"),
                                                 (5, "_nominated")]

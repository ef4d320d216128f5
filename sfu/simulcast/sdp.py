"""Simulcast in SDP: read the teacher's RIDs from the offer and make aiortc's answer accept them.

A browser that sends simulcast offers, in its video m-section (RFC 8851, RFC 8853)::

    a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
    a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
    a=rid:f send
    a=rid:h send
    a=rid:q send
    a=simulcast:send f;h;q

and no ``a=ssrc`` lines for that section: each layer is named only by the RID header extension on its packets.

aiortc 1.16 has no simulcast. Its SDP parser skips ``a=rid``/``a=simulcast``; ``setRemoteDescription`` keeps
only the header extensions it knows (MID and abs-send-time for video, ``find_common_header_extensions``
against ``aiortc.codecs.HEADER_EXTENSIONS``), so its answer has neither the RID extensions nor the RIDs, and a
browser that reads such an answer falls back to one encoding. ``munge_answer`` adds them back to the answer
text, with the ids the offer chose; ``add_rid_extensions`` optionally also puts them into aiortc's negotiated
list (seam ``RTCRtpTransceiver._headerExtensions``), which only makes aiortc's own parser read them.

Pure text in, text out; nothing here raises on a malformed offer (it just finds no simulcast in it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_RRID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"

# at most this many layers are accepted from one m-section; more are dropped from the answer (RFC 8853
# lets the answerer remove streams). Three is what the teacher page sends, libwebrtc's VP8 maximum is 4 and
# a fourth layer between 180p and 720p buys little on a 2-core server
MAX_LAYERS = 4
# a RID travels in a one-byte header extension, whose value is 1-16 bytes (RFC 8285 4.2); RFC 8851's rid-id
# grammar is alpha-numeric, "-" and "_"
_RID_RE = re.compile(r"[A-Za-z0-9_-]{1,16}\Z")
# a=extmap ids: 1-14 in the one-byte form, up to 255 with the two-byte form (a=extmap-allow-mixed)
_EXT_ID_MAX = 255


@dataclass(frozen=True)
class SimulcastOffer:
    """What one video m-section of a teacher's offer says about simulcast."""

    mid: str
    rids: tuple[str, ...]  # the layers, in the offer's a=simulcast order (the browser's sendEncodings order)
    rid_ext_id: int  # header-extension id of the RID (rtp-stream-id) in this m-section
    rrid_ext_id: int  # id of the repaired RID (on RTX packets); 0 when not offered
    paused: tuple[str, ...] = ()  # rids the offer marks "~" (paused at start); answered as active all the same


def split_sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """(session lines, one list of lines per m-section); line endings removed."""
    session: list[str] = []
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _attr(line: str) -> tuple[str, str]:
    """("rid", "f send") for "a=rid:f send"; ("", "") for a line that is no attribute."""
    if not line.startswith("a="):
        return "", ""
    name, _, value = line[2:].partition(":")
    return name.strip(), value.strip()


def _extmaps(lines: list[str]) -> dict[str, int]:
    """uri -> id of the section's a=extmap lines (the first one wins for a URI listed twice)."""
    found: dict[str, int] = {}
    for line in lines:
        name, value = _attr(line)
        if name != "extmap":
            continue
        parts = value.split()
        if len(parts) < 2:
            continue
        ident = parts[0].split("/", 1)[0]
        if ident.isdigit() and 0 < int(ident) <= _EXT_ID_MAX:
            found.setdefault(parts[1], int(ident))
    return found


def _simulcast_send_list(value: str) -> list[tuple[str, bool]]:
    """The send streams of an a=simulcast value, each as its alternatives joined: [("f", paused), ...].

    ``send 1,2;3 recv 4`` -> [("1,2", False), ("3", False)]; a "~" before an alternative marks it paused.
    """
    tokens = value.split()
    streams: list[tuple[str, bool]] = []
    for i in range(0, len(tokens) - 1, 2):
        if tokens[i] != "send":
            continue
        for stream in tokens[i + 1].split(";"):
            if stream:
                streams.append((stream, stream.startswith("~")))
    return streams


def _section_offer(lines: list[str]) -> SimulcastOffer | None:
    if not lines[0].startswith("m=video ") or lines[0].split()[1:2] == ["0"]:
        return None
    mid = None
    send_rids: list[str] = []
    simulcast: str | None = None
    direction = "sendrecv"
    for line in lines[1:]:
        name, value = _attr(line)
        if name == "mid":
            mid = value
        elif name == "rid":
            parts = value.split()
            if len(parts) >= 2 and parts[1] == "send" and _RID_RE.match(parts[0]):
                send_rids.append(parts[0])
        elif name == "simulcast" and simulcast is None:
            simulcast = value
        elif name in ("sendrecv", "sendonly", "recvonly", "inactive"):
            direction = name
    if mid is None or simulcast is None or direction not in ("sendrecv", "sendonly"):
        return None
    ext = _extmaps(lines)
    rid_ext = ext.get(URI_RID, 0)
    if not rid_ext:
        return None  # layers that name themselves nowhere cannot be told apart
    rids: list[str] = []
    paused: list[str] = []
    for stream, is_paused in _simulcast_send_list(simulcast):
        # a stream may list alternatives ("a,b"): the first one declared with a=rid ... send is taken
        for alternative in stream.split(","):
            rid = alternative.lstrip("~")
            if rid in send_rids and rid not in rids:
                rids.append(rid)
                if is_paused:
                    paused.append(rid)
                break
        if len(rids) == MAX_LAYERS:
            break
    if len(rids) < 2:
        return None  # one layer is no simulcast: the ordinary single-stream path handles it
    rrid_ext = ext.get(URI_RRID, 0)
    if rrid_ext == rid_ext:
        rrid_ext = 0
    return SimulcastOffer(mid, tuple(rids), rid_ext, rrid_ext, tuple(paused))


def parse_simulcast_offer(sdp: Any) -> dict[str, SimulcastOffer]:
    """mid -> SimulcastOffer for each video m-section that offers usable simulcast (two or more sent RIDs and
    the RID header extension). Anything else, including garbage, gives no entry; never raises."""
    if not isinstance(sdp, str):
        return {}
    found: dict[str, SimulcastOffer] = {}
    _, sections = split_sections(sdp)
    for lines in sections:
        offer = _section_offer(lines)
        if offer is not None and offer.mid not in found:
            found[offer.mid] = offer
    return found


def layers_low_to_high(offer: SimulcastOffer) -> tuple[str, ...]:
    """The offer's RIDs ordered from the smallest layer to the largest.

    SDP does not say which RID is which size. Our teacher page uses q (÷4), h (÷2), f (full) — any RIDs that
    are exactly those names are ordered so; otherwise the encodings are taken to be listed largest first,
    which is the order the teacher page must use anyway (Chromium held back the top layer when the list
    started with the smallest one, DESIGN.md).
    """
    conventional = {"q": 0, "h": 1, "f": 2}
    if set(offer.rids) <= conventional.keys():
        return tuple(sorted(offer.rids, key=conventional.__getitem__))
    return tuple(reversed(offer.rids))


def _munge_section(lines: list[str], offer: SimulcastOffer) -> list[str]:
    if lines[0].split()[1:2] == ["0"]:
        return lines  # the answer rejected this m-section
    direction = next((n for n in (_attr(x)[0] for x in lines)
                      if n in ("sendrecv", "sendonly", "recvonly", "inactive")), "sendrecv")
    if direction not in ("recvonly", "sendrecv"):
        return lines
    kept = [x for x in lines if _attr(x)[0] not in ("rid", "simulcast")]
    have = _extmaps(kept)
    used = set(have.values())
    wanted = [(offer.rid_ext_id, URI_RID)]
    if offer.rrid_ext_id:
        wanted.append((offer.rrid_ext_id, URI_RRID))
    new_ext: list[str] = []
    for ext_id, uri in wanted:
        if uri in have:
            if have[uri] != ext_id:
                return lines  # the answer already names it with another id: leave it single-layer
            continue
        if ext_id in used:
            return lines  # the id is taken by another extension in this answer: no valid way to add it
        used.add(ext_id)
        new_ext.append(f"a=extmap:{ext_id} {uri}")
    if new_ext:
        # after the answer's own extmaps (or the media line when it has none)
        at = max((i for i, x in enumerate(kept) if _attr(x)[0] == "extmap"), default=0) + 1
        kept[at:at] = new_ext
    # RIDs and a=simulcast close the section; the answer's recv list follows the offer's order (RFC 8853 5.3)
    kept += [f"a=rid:{rid} recv" for rid in offer.rids]
    kept.append("a=simulcast:recv " + ";".join(offer.rids))
    return kept


def munge_answer(answer_sdp: str, offers: dict[str, SimulcastOffer]) -> str:
    """aiortc's answer text with simulcast accepted in each m-section named in ``offers``.

    Adds ``a=extmap`` lines for the RID and repaired-RID extensions (with the offer's ids, unless aiortc
    already lists them), ``a=rid:<id> recv`` per layer and ``a=simulcast:recv`` in the offer's order. An
    m-section the answer rejected (port 0) or does not receive on is left alone, as is one where adding
    the extensions would clash with an id already used in the answer (the browser then sends one layer).
    Idempotent; keeps the answer's line endings.
    """
    if not offers:
        return answer_sdp
    eol = "\r\n" if "\r\n" in answer_sdp else "\n"
    session, sections = split_sections(answer_sdp)
    out = list(session)
    for lines in sections:
        mid = next((v for n, v in map(_attr, lines) if n == "mid"), None)
        offer = offers.get(mid) if mid is not None else None
        out += _munge_section(lines, offer) if offer is not None else lines
    return eol.join(out) + eol


def add_rid_extensions(transceiver: Any, offer: SimulcastOffer) -> None:
    """Optional: put the RID extensions into aiortc's negotiated list for this transceiver (seam
    ``RTCRtpTransceiver._headerExtensions``), between ``setRemoteDescription`` and ``createAnswer``.

    aiortc then writes their a=extmap lines itself and its own ``RtpPacket.parse`` fills in
    ``extensions.rtp_stream_id``; the SFU does not need either (ingress reads the ids from the offer), so
    ``munge_answer`` alone is enough.
    """
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters

    from sfu.seams import transceiver_header_extensions

    extensions = transceiver_header_extensions(transceiver)
    have = {ext.uri for ext in extensions}
    for ext_id, uri in ((offer.rid_ext_id, URI_RID), (offer.rrid_ext_id, URI_RRID)):
        if ext_id and uri not in have:
            extensions.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))

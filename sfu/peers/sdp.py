"""The SDP side of the peer connections: the lesson's codecs, what an offer may hold, and the checks made on
every description before aiortc parses it."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    sdp,
)
from aiortc.codecs import is_rtx
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from sfu import seams
from sfu.rtp.twcc import URI_TWCC
from sfu.simulcast.sdp import _attr, _extmaps, split_sections

if TYPE_CHECKING:
    pass

log = logging.getLogger("ketang.sfu")

# the lesson's codecs: forwarding never transcodes, so teacher and classrooms must share one per kind
LESSON_CODECS = {"audio": "opus", "video": "vp8"}
SDP_MAX_CHARS = 60000  # a description's length; the websocket schema (signaling/messages.py) uses this one


class SdpError(ValueError):
    """An SDP we cannot use; .code is the protocol error code."""

    def __init__(self, message: str, code: str = "bad_sdp") -> None:
        super().__init__(message)
        self.code = code


def make_peer_connection(ice_servers: list[str] | None = None) -> RTCPeerConnection:
    # an explicit empty list: otherwise aiortc queries a public STUN server for every connection
    servers = [RTCIceServer(urls=u) for u in (ice_servers or [])]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


def ext_id(transceiver: RTCRtpTransceiver, uri: str) -> int:
    for ext in seams.transceiver_header_extensions(transceiver):
        if ext.uri == uri:
            return ext.id
    return 0


def lesson_codecs(transceiver: RTCRtpTransceiver) -> tuple[int, int | None, str, int]:
    """(payload type, RTX payload type, codec name, clock rate) of the lesson codec negotiated here."""
    wanted = LESSON_CODECS[transceiver.kind]
    codecs = seams.transceiver_codecs(transceiver)
    primary = next((c for c in codecs if c.name.lower() == wanted), None)
    if primary is None:
        raise SdpError(f"{transceiver.kind} must use {wanted.upper()} (offered: "
                       f"{', '.join(c.name for c in codecs) or 'none'})", "unsupported_codec")
    rtx = next((c.payloadType for c in codecs
                if is_rtx(c) and c.parameters.get("apt") == primary.payloadType), None)
    return primary.payloadType, rtx, primary.name, primary.clockRate


# Opus in-band FEC: asked of the teacher's encoder in our answer, so a classroom that loses a packet can rebuild
# most of it from the next one without waiting for a retransmission (audio has no NACK)
OPUS_ANSWER_PARAMETERS = {"useinbandfec": 1, "minptime": 10}


def restrict_codecs(transceiver: RTCRtpTransceiver, dtx: bool = False) -> None:
    """Keep only the lesson codec (and its RTX) in what we answer (seam: RTCRtpTransceiver._codecs); `dtx`
    asks the browser's Opus encoder to send (almost) nothing during silence."""
    pt, rtx, _, _ = lesson_codecs(transceiver)
    kept = [c for c in seams.transceiver_codecs(transceiver) if c.payloadType in (pt, rtx)]
    opus = {**OPUS_ANSWER_PARAMETERS, **({"usedtx": 1} if dtx else {})}
    seams.set_transceiver_codecs(transceiver, [
        dataclasses.replace(c, parameters={**c.parameters, **opus})
        if c.name.lower() == "opus" else c for c in kept])


def prefer_lesson_codecs(transceiver: RTCRtpTransceiver) -> None:
    caps = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    wanted = LESSON_CODECS[transceiver.kind]
    transceiver.setCodecPreferences([c for c in caps if c.name.lower() in (wanted, "rtx")])


# what an offer may hold: a teacher's camera, microphone, courseware and its sound fit in 2 tracks of each kind;
# m-sections of stopped tracks stay in a browser's offers (and are reused), so the sections themselves may be more
PUBLISH_MAX_SECTIONS = 16
TEACHER_MAX_TRACKS_PER_KIND = 2
MID_MAX_CHARS = 32  # also the cap on `sources` keys in the websocket schema (signaling/messages.py)
_MID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_FINGERPRINT_ALGORITHMS = frozenset({"sha-256", "sha-384", "sha-512"})


def check_description(text: Any, kind: str, max_sections: int = PUBLISH_MAX_SECTIONS,
                      max_per_kind: int | None = None) -> sdp.SessionDescription:
    """Refuse, before aiortc sees it, an SDP that would fail inside aiortc or cost the lesson: every refusal an
    SdpError with a message a client author can act on (docs/protocol.md, `bad_sdp`, `too_many_tracks`).
    `max_per_kind`: how many audio (and video) tracks an offer may send."""
    if not isinstance(text, str) or not text.startswith("v=0") or len(text) > SDP_MAX_CHARS:
        raise SdpError(f"not an SDP description (v=0 first, {SDP_MAX_CHARS} characters at most)")
    try:
        parsed = sdp.SessionDescription.parse(text)
    except Exception as exc:  # noqa: BLE001 - aiortc's parser raises ValueError, KeyError, IndexError...
        raise SdpError(f"the SDP {kind} cannot be parsed ({type(exc).__name__})") from exc
    if not parsed.media:
        if kind == "offer":
            raise SdpError("the offer publishes no audio or video track", "nothing_to_publish")
        raise SdpError(f"the SDP {kind} has no media section")
    if len(parsed.media) > max_sections:
        raise SdpError(f"the SDP {kind} has {len(parsed.media)} media sections; {max_sections} at most",
                       "too_many_tracks")
    mids: set[str] = set()
    sending = {"audio": 0, "video": 0}
    for media in parsed.media:
        if media.kind not in ("audio", "video"):
            raise SdpError(f"m={media.kind}: only audio and video are carried")
        mid = media.rtp.muxId
        if not mid or len(mid) > MID_MAX_CHARS or not set(mid) <= _MID_CHARS:
            raise SdpError(f"every media section needs an a=mid of 1-{MID_MAX_CHARS} letters, digits, '-', '_' or '.'")
        if mid in mids:
            raise SdpError(f"a=mid:{mid} is used by two media sections")
        mids.add(mid)
        if media.port == 0:
            continue  # a rejected or stopped section: nothing more to check
        if media.dtls is None or not any(f.algorithm.lower() in _FINGERPRINT_ALGORITHMS
                                         for f in media.dtls.fingerprints):
            raise SdpError("a media section has no a=fingerprint (sha-256, sha-384 or sha-512): DTLS needs one")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise SdpError("a media section has no a=ice-ufrag / a=ice-pwd")
        if media.direction in (None, "sendrecv", "sendonly"):
            sending[media.kind] += 1
    if max_per_kind is not None:
        for media_kind, n in sending.items():
            if n > max_per_kind:
                raise SdpError(f"the offer sends {n} {media_kind} tracks; {max_per_kind} at most", "too_many_tracks")
    return parsed


async def set_description(pc: RTCPeerConnection, sdp: str, kind: str, max_sections: int = PUBLISH_MAX_SECTIONS,
                           max_per_kind: int | None = None) -> None:
    check_description(sdp, kind, max_sections, max_per_kind)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    except SdpError:
        raise
    except Exception as exc:  # aiortc raises ValueError, InvalidStateError, OperationError, KeyError...
        raise SdpError(f"SDP {kind} rejected: {exc}") from exc


def declared_ssrcs(sdp_text: str) -> dict[str, tuple[int | None, int | None]]:
    """mid -> (media SSRC, RTX SSRC) as declared by a=ssrc / a=ssrc-group:FID lines (none with simulcast)."""
    found: dict[str, tuple[int | None, int | None]] = {}
    for media in sdp.SessionDescription.parse(sdp_text).media:
        mid = media.rtp.muxId
        fid = next((g.items for g in media.ssrc_group if g.semantic == "FID" and len(g.items) == 2), None)
        if fid is not None:
            found[mid] = (int(fid[0]), int(fid[1]))
        elif len({s.ssrc for s in media.ssrc}) == 1:
            found[mid] = (media.ssrc[0].ssrc, None)
    return found



# -- transport-cc towards the classrooms (sfu/rtp/twcc.py) ---------------------------------------------------------
# aiortc offers neither the transport-wide sequence number extension nor the transport-cc feedback, and adding it
# to aiortc's own list (codecs.HEADER_EXTENSIONS) would also put it into the teacher's answer, whose browser would
# then wait for feedback aiortc never sends. So the classroom's offer text gets both, per m-section: an a=extmap with
# an id no other extension of the offer uses (one-byte form: 1-14; the same in every m-section of the bundle), and
# a=rtcp-fb:<pt> transport-cc for each codec that is not RTX. A browser that accepts echoes the a=extmap in its
# answer (`answered_transport_cc`); aiortc ignores it there.
_EXT_ONE_BYTE_MAX = 14


def offer_transport_cc(offer_sdp: str, prefer_id: int = 0) -> tuple[str, int]:
    """(the offer with transport-cc added, its extension id); (the offer unchanged, 0) when no one-byte id is free
    or there is no m-section to add it to. `prefer_id`: keep the id an earlier offer used, when still free."""
    session, sections = split_sections(offer_sdp)
    used: set[int] = set()
    for lines in sections:
        for uri, ident in _extmaps(lines).items():
            if uri != URI_TWCC:
                used.add(ident)
    free = [i for i in range(1, _EXT_ONE_BYTE_MAX + 1) if i not in used]
    if not free or not sections:
        return offer_sdp, 0
    ext_id = prefer_id if prefer_id in free else free[0]
    eol = "\r\n" if "\r\n" in offer_sdp else "\n"
    out = list(session)
    for lines in sections:
        media = lines[0].split()
        if len(media) < 4 or media[0] not in ("m=audio", "m=video") or media[1] == "0" \
                or URI_TWCC in _extmaps(lines):
            out += lines
            continue
        rtx = {v.split()[0] for n, v in map(_attr, lines)
               if n == "rtpmap" and len(v.split()) > 1 and v.split()[1].lower().startswith("rtx/")}
        kept = list(lines)
        at = max((i for i, x in enumerate(kept) if _attr(x)[0] == "extmap"),
                 default=max((i for i, x in enumerate(kept) if _attr(x)[0] == "mid"), default=0)) + 1
        kept.insert(at, f"a=extmap:{ext_id} {URI_TWCC}")
        for pt in media[3:]:
            if pt.isdigit() and pt not in rtx:
                last = max((i for i, x in enumerate(kept) if _attr(x)[0] in ("rtpmap", "rtcp-fb", "fmtp")
                            and _attr(x)[1].split(" ", 1)[0] == pt), default=len(kept) - 1)
                kept.insert(last + 1, f"a=rtcp-fb:{pt} transport-cc")
        out += kept
    return eol.join(out) + eol, ext_id


def answered_transport_cc(answer_sdp: str) -> int:
    """The transport-cc extension id an answer accepted (in any m-section that is not rejected), or 0."""
    _, sections = split_sections(answer_sdp)
    for lines in sections:
        if lines[0].split()[1:2] == ["0"]:
            continue
        ident = _extmaps(lines).get(URI_TWCC, 0)
        if 0 < ident <= _EXT_ONE_BYTE_MAX:
            return ident
    return 0


# -- addresses announced in place of the bound ones (a server behind a 1:1 NAT) -------------------------------------

# bound address -> the address browsers are told instead ("*": every IPv4 address); empty: the bound ones as they are
_ANNOUNCED: dict[str, str] = {}


def set_announced_addresses(entries: list[str]) -> None:
    """`--announce-address`: `PUBLIC` (in place of every IPv4 host candidate) or `BOUND=PUBLIC` (in place of that one
    bound address), as mediasoup's `announcedAddress` or Janus's `nat_1_1_mapping`. ValueError for anything that is not
    an IP address (a name would make every browser resolve it, and a wrong one fail ICE in silence)."""
    mapping: dict[str, str] = {}
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        bound, sep, public = entry.partition("=")
        if not sep:
            bound, public = "*", bound
        for address in (public,) if bound == "*" else (bound, public):
            try:
                ipaddress.ip_address(address.strip())
            except ValueError:
                raise ValueError(f"announce address {entry!r}: give an IP address (PUBLIC or BOUND=PUBLIC), "
                                 f"not {address.strip()!r}") from None
        if bound == "*" and ":" in public:
            raise ValueError(f"announce address {entry!r}: an IPv6 address needs the bound address it replaces "
                             "(BOUND=PUBLIC)")
        mapping[bound.strip()] = public.strip()
    _ANNOUNCED.clear()
    _ANNOUNCED.update(mapping)


def _announced(address: str) -> str:
    if address in _ANNOUNCED:
        return _ANNOUNCED[address]
    return _ANNOUNCED.get("*", address) if ":" not in address else address


def announce(description: str) -> str:
    """The server's own description as browsers must see it: host candidates (and the `c=` lines that repeat the
    default one) on the announced address; ports and everything else unchanged."""
    if not _ANNOUNCED:
        return description
    lines = description.split("\r\n")
    for i, line in enumerate(lines):
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) > 7 and fields[6] == "typ" and fields[7] == "host":
                fields[4] = _announced(fields[4])
                lines[i] = " ".join(fields)
        elif line.startswith("c=IN IP4 ") or line.startswith("c=IN IP6 "):
            address = _announced(line[9:])
            lines[i] = f"c=IN {'IP6' if ':' in address else 'IP4'} {address}"
    return "\r\n".join(lines)


# -- RED (RFC 2198) audio redundancy towards the classrooms (sfu/rtp/red.py) ---------------------------------------
# aiortc has no RED codec; the classroom's offer text gets `red/48000/2` after Opus in each audio m-section (Opus stays
# the first, preferred codec), with `a=fmtp:<red> <opus>/<opus>` (one redundant Opus block). A browser that can decode
# it (Chromium) keeps it in its answer (`answered_red`); the server then sends RED to classrooms with loss.
RED_PREFERRED_PT = 63


def offer_red(offer_sdp: str) -> str:
    """The offer with RED added to every audio m-section that has Opus (unchanged when none has, or no payload
    type is free)."""
    session, sections = split_sections(offer_sdp)
    used = {v.split()[0] for lines in sections for n, v in map(_attr, lines) if n == "rtpmap" and v.split()}
    used |= {pt for lines in sections for pt in lines[0].split()[3:]}
    free = [str(p) for p in [RED_PREFERRED_PT, *range(96, 128)] if str(p) not in used]
    if not free:
        return offer_sdp
    red = free[0]
    eol = "\r\n" if "\r\n" in offer_sdp else "\n"
    out = list(session)
    for lines in sections:
        media = lines[0].split()
        opus = next((v.split()[0] for n, v in map(_attr, lines)
                     if n == "rtpmap" and len(v.split()) > 1 and v.split()[1].lower().startswith("opus/")), None)
        if len(media) < 4 or media[0] != "m=audio" or media[1] == "0" or opus is None \
                or any(n == "rtpmap" and "red/" in v.lower() for n, v in map(_attr, lines)):
            out += lines
            continue
        kept = [" ".join([*media, red]), *lines[1:]]
        last = max(i for i, x in enumerate(kept) if _attr(x)[0] in ("rtpmap", "rtcp-fb", "fmtp")
                   and _attr(x)[1].split(" ", 1)[0] == opus)
        kept[last + 1:last + 1] = [f"a=rtpmap:{red} red/48000/2", f"a=fmtp:{red} {opus}/{opus}"]
        out += kept
    return eol.join(out) + eol


def answered_red(answer_sdp: str) -> dict[str, tuple[int, int]]:
    """mid -> (RED payload type, the Opus payload type it carries) for each audio m-section whose answer kept RED
    (an `a=fmtp:<red> <opus>/<opus>` whose Opus the answer has)."""
    _, sections = split_sections(answer_sdp)
    found: dict[str, tuple[int, int]] = {}
    for lines in sections:
        media = lines[0].split()
        if len(media) < 4 or media[0] != "m=audio" or media[1] == "0":
            continue
        attrs = list(map(_attr, lines))
        mid = next((v for n, v in attrs if n == "mid"), None)
        rtpmap = {v.split()[0]: v.split()[1].lower() for n, v in attrs if n == "rtpmap" and len(v.split()) > 1}
        red = next((pt for pt, name in rtpmap.items() if name.startswith("red/48000") and pt in media[3:]), None)
        fmtp = next((v.split(" ", 1)[1] for n, v in attrs if n == "fmtp" and v.split(" ", 1)[0] == red
                     and " " in v), "") if red else ""
        blocks = fmtp.strip().split("/")
        if mid is None or red is None or not red.isdigit() or len(blocks) < 2 or len(set(blocks)) != 1 \
                or not blocks[0].isdigit() or not rtpmap.get(blocks[0], "").startswith("opus/"):
            continue
        found[mid] = (int(red), int(blocks[0]))
    return found

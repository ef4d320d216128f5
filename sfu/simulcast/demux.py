"""Simulcast on the forwarding path, pure: which layer a teacher packet belongs to.

- ``LayerDemux`` (one per simulcast video track of the teacher) maps each incoming SSRC to its layer by the RID
  header extension, and RTX SSRCs by the repaired-RID extension, and keeps per-layer receive figures. Chromium
  puts those extensions only on the first packets of each SSRC, so the binding is learned then and kept.

The other parts: ``sfu.simulcast.sdp`` (RIDs in the offer, munging aiortc's answer), ``sfu.simulcast.switch``
(``LayerSwitcher``: one subscriber's switch between layers, at key frames, with continuous numbering) and
``sfu.adapt.select`` (``LayerSelector``: which layer a classroom's link can take). docs/simulcast.md
describes the whole and what remains to wire in. Nothing here reads a clock (``now`` is an argument), logs or
does I/O; malformed input never raises.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from sfu.rtp.header import RtpHeader, find_extension, parse_header
from sfu.rtp.receive_log import DUPLICATE, OLD, ReceiveLog
from sfu.rtp.seqmap import SEQ_HALF, SEQ_MASK, SeqUnwrapper
from sfu.rtp.vp8 import vp8_is_keyframe_start

# the receive bitrate of a layer is measured over this long: long enough to span a key frame (several times the
# size of a delta frame) at 10-30 fps, short enough to see the teacher's browser drop a layer within a second
BITRATE_WINDOW_S = 1.0
# a layer with no media packet for this long is not being sent (the teacher's browser stops its top layers when
# its uplink estimate is short: DESIGN.md saw the top layer start 4-15 s late); 20 fps is one packet per 50 ms
LAYER_IDLE_S = 0.5
# sequence gaps wider than this are a restart, not loss: they are neither counted nor remembered as missing
# (libwebrtc clears its NACK list above 1000 missing packets)
MAX_GAP_PACKETS = 1000
# how many missing sequence numbers a layer remembers so that an RTX packet can be told to repair one;
# at ~200 packets/s of the top layer this is a few seconds of 5 % loss
MISSING_REMEMBERED = 512


class Arrival(NamedTuple):
    """What the demux made of one teacher packet."""

    layer: int  # index into the layers, 0 = smallest
    rtx: bool  # an RTX packet (named by the repaired RID); its payload starts with the original seq
    repair: bool  # media: always True; RTX: True iff it carries a packet known to be missing (else a probe)
    keyframe: bool  # a VP8 key frame starts in this packet (media only)
    header: RtpHeader


class LayerStats:
    """Receive figures of one layer (its media SSRC; RTX counted apart)."""

    __slots__ = (
        "_log",
        "_unwrap",
        "_window",
        "_window_bytes",
        "bytes",
        "index",
        "keyframes",
        "last_keyframe_at",
        "last_packet_at",
        "packets",
        "padding",
        "rid",
        "rtx_bytes",
        "rtx_packets",
        "rtx_probes",
        "rtx_repairs",
        "rtx_ssrc",
        "ssrc",
    )

    def __init__(self, rid: str, index: int) -> None:
        self.rid = rid
        self.index = index
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.packets = 0  # media packets with a payload
        self.bytes = 0  # their payload bytes
        self.padding = 0  # padding-only packets on the media SSRC (bandwidth probes)
        self.rtx_packets = 0
        self.rtx_bytes = 0
        self.rtx_repairs = 0  # RTX packets that brought a missing packet
        self.rtx_probes = 0  # RTX packets that re-sent something never missing (or too old to tell)
        self.keyframes = 0
        self.last_keyframe_at: float | None = None
        self.last_packet_at: float | None = None
        self._unwrap = SeqUnwrapper()
        # media packets (payload or padding) of the current SSRC, and the loss counted on earlier SSRCs
        self._log = ReceiveLog(window=MISSING_REMEMBERED, restart_gap=MAX_GAP_PACKETS)
        self._window: deque[tuple[float, int]] = deque()
        self._window_bytes = 0

    @property
    def expected(self) -> int:
        """Packets the teacher sent on the current SSRC, as the sequence numbers say (RFC 3550 A.3)."""
        return self._log.expected

    @property
    def lost(self) -> int:
        """Packets lost on the way from the teacher (not counting retransmissions that repaired them)."""
        return self._log.lost

    def loss_fraction(self) -> float:
        return self._log.loss_fraction()

    def bitrate_bps(self, now: float) -> float:
        """Media payload bit rate over the last BITRATE_WINDOW_S (RTX and padding excluded)."""
        self._expire(now)
        return self._window_bytes * 8 / BITRATE_WINDOW_S

    def active(self, now: float) -> bool:
        return self.last_packet_at is not None and now - self.last_packet_at <= LAYER_IDLE_S

    def _expire(self, now: float) -> None:
        window = self._window
        horizon = now - BITRATE_WINDOW_S
        while window and window[0][0] <= horizon:
            self._window_bytes -= window.popleft()[1]

    def _new_ssrc(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self._unwrap = SeqUnwrapper()
        self._log.reset()

    def _media(self, seq16: int, size: int, keyframe: bool, now: float) -> None:
        if self._log.add(self._unwrap.unwrap(seq16)) in (DUPLICATE, OLD):
            return  # seen before, or from before the first one seen: not part of what is counted
        self.last_packet_at = now
        if size:
            self.packets += 1
            self.bytes += size
            self._window.append((now, size))
            self._window_bytes += size
            self._expire(now)
        else:
            self.padding += 1
        if keyframe:
            self.keyframes += 1
            self.last_keyframe_at = now

    def _rtx(self, osn16: int | None, size: int) -> bool:
        """Count an RTX packet; True iff it brings a packet known to be missing (which is then no longer)."""
        self.rtx_packets += 1
        self.rtx_bytes += size
        log = self._log
        if osn16 is not None and log.base is not None:
            back = (log.highest - osn16) & SEQ_MASK  # how far behind the newest media packet
            if back < SEQ_HALF and log.fill(log.highest - back):
                self.rtx_repairs += 1
                return True
        self.rtx_probes += 1
        return False


class LayerDemux:
    """Routes one simulcast track's packets to layers by SSRC, learning SSRCs from the RID extensions."""

    def __init__(self, rids_low_to_high: Sequence[str], rid_ext_id: int, rrid_ext_id: int = 0,
                 vp8: bool = True) -> None:
        self.layers = [LayerStats(rid, i) for i, rid in enumerate(rids_low_to_high)]
        self._by_rid = {rid.encode(): i for i, rid in enumerate(rids_low_to_high)}
        self._rid_ext = rid_ext_id
        self._rrid_ext = rrid_ext_id
        self._vp8 = vp8
        self._by_ssrc: dict[int, tuple[int, bool]] = {}  # ssrc -> (layer, is rtx)
        self.malformed = 0
        self.unknown_rid = 0  # named a RID that was not negotiated
        self.unrouted = 0  # an SSRC never named by a RID (or given up when its RID moved to another SSRC)
        self.rebinds = 0  # a RID that moved to a new SSRC

    def layer_of_ssrc(self, ssrc: int) -> tuple[int, bool] | None:
        return self._by_ssrc.get(ssrc)

    def receive(self, data: bytes, now: float, hdr: RtpHeader | None = None) -> Arrival | None:
        """Classify one decrypted teacher packet and count it; None when it belongs to no layer. Never raises."""
        if hdr is None:
            hdr = parse_header(data)
            if hdr is None:
                self.malformed += 1
                return None
        entry = self._by_ssrc.get(hdr.ssrc)
        if entry is None:
            entry = self._learn(data, hdr)
            if entry is None:
                return None
        index, rtx = entry
        stats = self.layers[index]
        start, end = hdr.payload_start, hdr.payload_end
        if rtx:
            osn = (data[start] << 8) | data[start + 1] if end - start >= 2 else None
            repair = stats._rtx(osn, end - start)
            return Arrival(index, True, repair, False, hdr)
        # the descriptor (at most 6 bytes) and the payload header's first byte say whether a key frame starts
        keyframe = self._vp8 and end > start and vp8_is_keyframe_start(data[start:min(end, start + 7)])
        stats._media(hdr.seq, end - start, keyframe, now)
        return Arrival(index, False, True, keyframe, hdr)

    def _learn(self, data: bytes, hdr: RtpHeader) -> tuple[int, bool] | None:
        rtx = False
        value = find_extension(data, hdr, self._rid_ext) if self._rid_ext else None
        if value is None and self._rrid_ext:
            value = find_extension(data, hdr, self._rrid_ext)
            rtx = value is not None
        if value is None:
            self.unrouted += 1
            return None
        index = self._by_rid.get(bytes(value))
        if index is None:
            self.unknown_rid += 1
            return None
        stats = self.layers[index]
        old = stats.rtx_ssrc if rtx else stats.ssrc
        if old is not None:
            # the RID moved to another SSRC (the browser re-created its encoder): the old one is forgotten
            self._by_ssrc.pop(old, None)
            self.rebinds += 1
        if rtx:
            stats.rtx_ssrc = hdr.ssrc
        else:
            stats._new_ssrc(hdr.ssrc)
        entry = (index, rtx)
        self._by_ssrc[hdr.ssrc] = entry
        return entry

    def rates(self, now: float) -> tuple[float, ...]:
        """Each layer's media bit rate now, smallest layer first; 0.0 for a layer that is not arriving."""
        return tuple(s.bitrate_bps(now) if s.active(now) else 0.0 for s in self.layers)

    def stats(self, now: float) -> list[dict]:
        return [{"rid": s.rid, "ssrc": s.ssrc, "rtx_ssrc": s.rtx_ssrc, "packets": s.packets, "bytes": s.bytes,
                 "lost": s.lost, "loss": round(s.loss_fraction(), 4), "bitrate_bps": round(s.bitrate_bps(now)),
                 "active": s.active(now), "keyframes": s.keyframes, "last_keyframe_at": s.last_keyframe_at,
                 "rtx_packets": s.rtx_packets, "rtx_repairs": s.rtx_repairs, "rtx_probes": s.rtx_probes,
                 "padding": s.padding} for s in self.layers]

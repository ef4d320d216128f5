"""One subscriber's copy of a simulcast track: every layer's packets arrive, one layer is forwarded.

A `SimulcastConsumer` is the plain `Consumer`'s sibling (the SSRC rewrite, SRTP send, RTCP handling and pause
they share are in base.py) whose packets go through a `LayerSwitcher` (sfu/simulcast/switch.py): it forwards
the current layer, switches at a keyframe start of the target layer, and keeps sequence numbers, timestamps
and VP8 picture ids continuous. The target comes from the classroom's `LayerSelector` (Subscriber.adapt).
NACKs map back through the switcher to the right layer's cache.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from aiortc.rtcrtpsender import RTCRtpSender

from sfu.consumer.base import (
    OUTPUT_SEQ_START_MAX,
    RESUME_SEQ_JUMP,
    BaseConsumer,
    ResumePoint,
)
from sfu.producer import Packet, Producer
from sfu.rtp.clock import Clock
from sfu.rtp.header import (
    RTP_HEADER,
    ExtensionLayout,
    abs_send_time_bytes,
    ntp_from_unix,
)
from sfu.rtp.seqmap import TS_MASK
from sfu.rtp.twcc import TransportSeq
from sfu.rtp.vp8 import vp8_numbering
from sfu.seams import sender_set_report_counters
from sfu.simulcast.switch import LayerSwitcher, Out


class _LayerTap:
    """What one layer's producer sees as its consumer: hands the packet on with the layer's index."""

    __slots__ = ("owner", "layer")

    def __init__(self, owner: SimulcastConsumer, layer: int) -> None:
        self.owner = owner
        self.layer = layer

    def forward(self, packet: Packet, ast: bytes) -> None:
        owner = self.owner
        # the hot path for the layers not forwarded: one comparison, nothing else
        if self.layer == owner.current or self.layer == owner.switcher.waiting:
            owner.forward_layer(self.layer, packet, ast)

    def skip(self, ext_seq: int) -> None:
        if self.layer == self.owner.current:
            self.owner.switcher.skip(self.layer, ext_seq)

    def on_error(self) -> None:
        self.owner.on_error()

    def close(self) -> None:
        self.owner.close()


class SimulcastConsumer(BaseConsumer):
    """A classroom's stream of a simulcast track (`producer.layers`, smallest first). The layers' producers feed
    one tap each (`_LayerTap`, a Sink); the consumer itself is attached to none of them."""

    def __init__(self, producer: Producer, sender: RTCRtpSender, payload_type: int, rtx_payload_type: int | None,
                 extensions: ExtensionLayout, resume: ResumePoint | None = None, start_layer: int = 0,
                 clock: Clock | Callable[[], float] | None = None, twcc: TransportSeq | None = None) -> None:
        super().__init__(producer, sender, payload_type, rtx_payload_type, extensions, resume, clock, twcc)
        self.layers: list[Producer] = list(producer.layers or [producer])
        self.current: int | None = None
        self._last_out: tuple[int, int, float] | None = None  # (extended seq, ts, when) of the newest sent
        self.superseded = 0  # NACKs not answered: a switch down had made their packets useless
        if resume is not None:
            elapsed = max(1, round((self._clock() - resume.at) * producer.clock_rate))
            self.switcher = LayerSwitcher(resume.next_seq, resume.last_ts + elapsed, producer.clock_rate, start_layer)
        else:
            self.switcher = LayerSwitcher(random.randrange(1, OUTPUT_SEQ_START_MAX), random.getrandbits(32),
                                          producer.clock_rate, start_layer)
        self._taps = [_LayerTap(self, i) for i in range(len(self.layers))]
        for layer, tap in zip(self.layers, self._taps):
            layer.attach(tap)

    # -- media ---------------------------------------------------------------------------------------------

    def forward_layer(self, layer: int, packet: Packet, ast: bytes) -> None:
        if self.paused:
            return
        if self._send is None and not self._start(packet):
            return
        switcher = self.switcher
        seg = switcher.steady
        ext_seq = packet.ext_seq
        if seg is not None and layer == seg.layer and ext_seq > seg.last_in and packet.payload:
            # steady state: a new packet of the layer being forwarded, nothing awaited or held. What push ->
            # _forward -> Vp8Rewriter.rewrite -> _send_out do for it, without the Out, the list, the segment
            # scan, the overdue check and a clock read (the packet's arrival is the time: same fan-out)
            numbering = None
            if switcher.vp8:
                numbering = packet.vp8
                if numbering is None:
                    numbering = packet.vp8 = vp8_numbering(packet.payload) or ()  # once per input packet
                if numbering and switcher.rewriter.current_source is not seg:
                    numbering = None
                    seg = None  # the segment's numbering starts here (a rebase): the full path
            if seg is not None:
                out_ts = (packet.ts + seg.ts_offset) & TS_MASK
                marker = packet.marker
                seq = switcher.advance(seg, ext_seq, out_ts, marker, packet.arrival)
                if seq is None:
                    return
                nums = switcher.rewriter.renumber(numbering) if numbering else None
                layout = self._ext
                if nums is None:
                    if packet.tail_layout is layout and packet.tail_ast is ast:
                        tail = packet.tail  # built by an earlier subscriber in this fan-out
                    else:
                        tail = packet.tail = layout.tail(ast, packet.audio_level, packet.payload)
                        packet.tail_layout, packet.tail_ast = layout, ast
                    if self._twcc is None:
                        header = RTP_HEADER.pack(self._first_byte, (marker << 7) | self.payload_type, seq & 0xFFFF,
                                                 out_ts, self.ssrc)
                    else:
                        header = self._twcc_header((marker << 7) | self.payload_type, seq & 0xFFFF, out_ts,
                                                   self.ssrc, len(tail))
                    self._send(self._protect(header + tail))
                    self.octets_out += len(packet.payload)
                else:
                    # this subscriber's picture ids: one copy, header + extension block (stamped once per layout
                    # in this fan-out) + the descriptor's first bytes + the new numbers + the rest of the payload
                    _, _, _, _, head, rest, grow = numbering  # type: ignore[misc]
                    block = layout.stamped(ast, packet.audio_level)
                    if self._twcc is None:
                        header = RTP_HEADER.pack(self._first_byte, (marker << 7) | self.payload_type, seq & 0xFFFF,
                                                 out_ts, self.ssrc)
                    else:
                        header = self._twcc_header((marker << 7) | self.payload_type, seq & 0xFFFF, out_ts,
                                                   self.ssrc, len(block) + len(packet.payload) + grow)
                    self._send(self._protect(b"".join((header, block, head, nums, rest))))
                    self.octets_out += len(packet.payload) + grow
                self.packets_out += 1
                self.errors = 0
                # newer than everything sent before (newer than the open segment's newest; older segments map lower)
                self._last_out = (seq, out_ts, packet.arrival)
                return
        now = self._clock()
        switching = switcher.waiting is not None
        for out in switcher.push(layer, packet.ext_seq, packet.ts, packet.marker, packet.keyframe,
                                 packet.payload, now):
            self._send_out(out, packet, ast, now)
        if switching:  # the current layer may have changed, and the awaited keyframe may be late
            self.current = switcher.current
            overdue = switcher.keyframe_overdue(now)
            if overdue is not None:
                self.layers[overdue].request_keyframe()

    def _send_out(self, out: Out, packet: Packet, ast: bytes, now: float) -> None:
        layout = self._ext
        if out.payload is packet.payload:
            if packet.tail_layout is layout and packet.tail_ast is ast:
                tail = packet.tail  # built by an earlier subscriber in this fan-out
            else:
                tail = packet.tail = layout.tail(ast, packet.audio_level, packet.payload)
                packet.tail_layout, packet.tail_ast = layout, ast
        else:  # this subscriber's picture ids: one copy
            tail = layout.stamped(ast, packet.audio_level) + out.payload
        b1 = (out.marker << 7) | self.payload_type
        if self._twcc is None:
            header = RTP_HEADER.pack(self._first_byte, b1, out.seq & 0xFFFF, out.ts, self.ssrc)
        else:
            header = self._twcc_header(b1, out.seq & 0xFFFF, out.ts, self.ssrc, len(tail))
        self._send(self._protect(header + tail))
        self.packets_out += 1
        self.octets_out += len(out.payload)
        self.errors = 0
        last = self._last_out
        if last is None or out.seq > last[0]:
            self._last_out = (out.seq, out.ts, now)

    def _begin_at_keyframe(self, current: Packet | None) -> None:
        """A late joiner (or video back after a pause): the target layer's cached keyframe is replayed through
        the switcher, else one is asked for."""
        self._waiting_keyframe = False
        target = self.switcher.target
        layer = self.layers[target] if target < len(self.layers) else self.layers[0]
        replay = layer.replayable_keyframe()
        if not replay:
            layer.request_keyframe()
            return
        ast = abs_send_time_bytes(self.clock.wall())
        now = self._clock()
        for packet in replay:
            if packet is current:
                continue
            for out in self.switcher.push(target, packet.ext_seq, packet.ts, packet.marker, packet.keyframe,
                                          packet.payload, now):
                self._send_out(out, packet, ast, now)
        self.current = self.switcher.current

    # -- the layer ---------------------------------------------------------------------------------------------

    def set_layer(self, layer: int, hold: bool = False) -> None:
        """Forward `layer` from its next keyframe on (the classroom's selector chose it). `hold`: going down on a
        collapsed link, the current layer stops at the end of its frame in progress (LayerSwitcher.holding)."""
        layer = max(0, min(layer, len(self.layers) - 1))
        if self.switcher.set_target(layer, self._clock(), hold):
            self.layers[layer].request_keyframe()

    def layer_rates(self) -> list[float]:
        return [p.rate_bps for p in self.layers]

    def ask_keyframe(self) -> None:
        waiting = self.switcher.waiting
        layer = waiting if waiting is not None else self.current
        self.layers[layer if layer is not None else 0].request_keyframe()

    # -- pause, resume, retransmissions, reports ------------------------------------------------------------

    def close_gap(self) -> None:
        """Video back after a pause: a new switcher continues after a jump, at the next keyframe."""
        last = self._last_out
        if last is None:
            return
        seq, ts, at = last
        elapsed = max(1, round((self._clock() - at) * self.producer.clock_rate))
        self.switcher = LayerSwitcher(seq + 1 + RESUME_SEQ_JUMP, ts + elapsed, self.producer.clock_rate,
                                      self.switcher.target)
        self.current = None

    def resume_point(self) -> ResumePoint | None:
        last = self._last_out
        if last is None:
            return self._resume
        seq, ts, at = last
        return ResumePoint(seq + 1, ts, at, self._rtx_seq, self.packets_out, self.octets_out)

    def _resend_of(self, seq16: int) -> tuple[int, int, bytes, int] | None:
        found = self.switcher.lookup(seq16)
        if found is None:
            return None
        if self.switcher.superseded(found[0]):
            self.superseded += 1
            return None
        packet: Packet | None = self.layers[found[0]].cache.get(found[1])  # type: ignore[assignment]
        again = self.switcher.resend(found[0], found[1], packet.ts, packet.payload) if packet is not None else None
        if again is None or packet is None:
            return None
        return again[0], packet.marker, again[1], packet.audio_level

    def update_report(self, now_unix: float) -> None:
        current = self.current
        if current is None or not self._started:
            return
        in_ts = self.layers[current].rtp_time_at(now_unix)
        out_ts = self.switcher.map_ts(in_ts) if in_ts is not None else None
        if out_ts is None:
            return
        sender_set_report_counters(self.sender, ntp_from_unix(now_unix), out_ts,
                                   self.packets_out & 0xFFFFFFFF, self.octets_out & 0xFFFFFFFF)

    def _detach(self) -> None:
        for layer, tap in zip(self.layers, self._taps):
            layer.detach(tap)

    def stats(self) -> dict:
        return {**super().stats(), "layer": self.current, "target": self.switcher.target,
                "switches": self.switcher.switches, "held": self.switcher.held, "superseded": self.superseded}

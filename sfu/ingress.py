"""Ingress: the hook on the teacher's DTLS transport that hands decrypted RTP to Producers.

aiortc decrypts SRTP and calls `RTCDtlsTransport._handle_rtp_data(data, arrival_time_ms)` on the instance;
we replace that attribute on the publisher's transport only, demultiplex by SSRC (learned from the MID
header extension, or the payload type) and then call the original so aiortc's stock receiver still sends
receiver reports, NACKs and REMB to the teacher for this single-layer stream.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import RtcpPacket, RtcpSrPacket

from sfu import seams
from sfu.adapt.overload import LATE_AUDIO_S, LATE_VIDEO_S, NODE, ArrivalStamps
from sfu.producer import Packet, Producer
from sfu.rtp.clock import SYSTEM_CLOCK
from sfu.rtp.header import AUDIO_LEVEL_SILENT, find_extension, parse_header
from sfu.simulcast.demux import LayerDemux

log = logging.getLogger("ketang.sfu.rtp")

LOG_EVERY_N_ERRORS = 1000  # repetitive drop logs are rate-limited
FANOUT_SLICE = 64  # classrooms served per turn of the event loop


@dataclass
class Route:
    """How packets of one teacher transceiver are recognised."""

    producer: Producer
    mid: str | None
    payload_type: int
    rtx_payload_type: int | None
    mid_ext_id: int
    audio_level_ext_id: int
    # simulcast: the layers' SSRCs are learned from the RID header extensions (`demux`), each layer routed to
    # its own route (`layers`, smallest first) and producer
    demux: LayerDemux | None = None
    layers: list[Route] | None = None
    # whether aiortc's stock receiver sees these packets too (its receiver reports and NACKs to the teacher):
    # for one simulcast layer only — it keeps one jitter buffer and NACK list for whatever SSRCs it is given,
    # and interleaved layers make it ask for keyframes dozens of times a second
    stock: bool = True


class Ingress:
    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        self.routes: list[Route] = []
        self._by_ssrc: dict[int, tuple[Route, bool]] = {}
        # SSRCs of tracks taken down (the courseware stopped): the browser goes on sending them for a moment,
        # and such a packet must be dropped, never learned as another track's
        self._retired: set[int] = set()
        self._stock = seams.hook_dtls(dtls, self._on_rtp, self._on_rtcp)
        self._original_rtp, self._original_rtcp = self._stock
        self.malformed = 0
        self.unrouted = 0
        self.errors = 0
        self._to_stock = True  # whether the packet just demultiplexed goes on to aiortc's receiver
        # when each datagram was read off the socket (it then waits for the DTLS/SRTP task): a packet taken too
        # late is dropped before the fan-out, and the node's overload controller hears how late work runs
        queue = seams.receive_queue(dtls)
        self._arrivals = ArrivalStamps.adopt(queue) if queue is not None else None
        self._late = NODE.late
        self._now = SYSTEM_CLOCK.monotonic  # (the stamps' clock)
        self.late_dropped = 0

    def add_route(self, route: Route, ssrc: int | None = None, rtx_ssrc: int | None = None) -> None:
        """Known SSRCs (from the offer's a=ssrc lines) are routed at once; others are learned from packets."""
        self.routes.append(route)
        if ssrc is not None:
            self._by_ssrc[ssrc] = (route, False)
            route.producer.ssrc = ssrc
        if rtx_ssrc is not None:
            self._by_ssrc[rtx_ssrc] = (route, True)

    def remove_producer(self, producer: Producer) -> None:
        gone = {id(p) for p in (producer.layers or [producer])}
        self.routes = [r for r in self.routes if id(r.producer) not in gone]
        self._retired.update(s for s, e in self._by_ssrc.items() if id(e[0].producer) in gone)
        self._by_ssrc = {s: e for s, e in self._by_ssrc.items() if id(e[0].producer) not in gone}

    async def _on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        to_stock = True
        try:
            arrivals = self._arrivals
            age = 0.0
            if arrivals is not None:
                age = self._now() - arrivals.read_at
                if age > self._late.worst:
                    self._late.worst = age
            received = self._demux(data, age)
            to_stock = self._to_stock  # this packet's (the fan-out below lets other tasks run)
            if received is not None and not received[0].muted:
                producer, packet = received
                consumers = producer.consumers
                # a fan-out to hundreds of classrooms takes milliseconds: in slices, with the event loop free
                # in between for handshakes, RTCP and signalling (the teacher's next packet waits its turn)
                for start in range(0, len(consumers), FANOUT_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    producer.fan_out(packet, consumers[start:start + FANOUT_SLICE])
        except Exception:  # noqa: BLE001 - never let forwarding break the teacher's DTLS loop
            self.errors += 1
            if self.errors % LOG_EVERY_N_ERRORS == 1:
                log.exception("forwarding failed (%d so far)", self.errors)
        if to_stock:
            await self._original_rtp(data, arrival_time_ms)

    def _demux(self, data: bytes, age: float = 0.0) -> tuple[Producer, Packet] | None:
        """Route one teacher packet to its producer; (producer, packet) when there is something to forward.
        A packet taken `age` seconds after it was read is dropped when that is too late for its kind."""
        self._to_stock = True
        hdr = parse_header(data)
        if hdr is None:
            self.malformed += 1
            return None
        entry = self._by_ssrc.get(hdr.ssrc)
        if entry is None:
            entry = None if hdr.ssrc in self._retired else self._learn(data, hdr)
            if entry is None:
                self.unrouted += 1
                return None
        route, is_rtx = entry
        self._to_stock = route.stock
        level = AUDIO_LEVEL_SILENT
        if route.audio_level_ext_id:
            value = find_extension(data, hdr, route.audio_level_ext_id)
            if value:
                level = value[0] & 0x7F
        producer = route.producer
        if age > LATE_VIDEO_S and (producer.kind == "video" or age > LATE_AUDIO_S):
            # late: dropped, never queued behind (aiortc's receiver still sees it, for the teacher's reports)
            self._late.dropped[producer.kind] = self._late.dropped.get(producer.kind, 0) + 1
            self.late_dropped += 1
            return None
        if is_rtx:
            if hdr.payload_type != route.rtx_payload_type:
                return None
            if hdr.payload_end - hdr.payload_start < 2:
                return None  # RTX padding probe: nothing to forward
            start = hdr.payload_start
            seq = (data[start] << 8) | data[start + 1]
            packet = producer.receive(seq, hdr.ts, hdr.marker, data[start + 2:hdr.payload_end], level)
        elif hdr.payload_type == route.payload_type:
            packet = producer.receive(hdr.seq, hdr.ts, hdr.marker, data[hdr.payload_start:hdr.payload_end], level)
        else:
            return None
        return (producer, packet) if packet is not None else None

    def _learn(self, data: bytes, hdr) -> tuple[Route, bool] | None:  # type: ignore[no-untyped-def]
        """First packet of an unknown SSRC: find its transceiver by MID extension, else by payload type.

        A packet that names a MID no route has (a track being taken down, a transceiver not answered yet) is
        not routed: guessing by payload type would splice another stream into a track's sequence.
        """
        found: Route | None = None
        named = False
        for route in self.routes:
            if route.demux is not None and route.layers:
                arrival = route.demux.receive(data, 0.0, hdr)
                if arrival is not None and arrival.layer < len(route.layers):
                    entry = (route.layers[arrival.layer], arrival.rtx)
                    self._by_ssrc[hdr.ssrc] = entry
                    if not arrival.rtx:
                        entry[0].producer.ssrc = hdr.ssrc
                        log.debug("ssrc %d is layer %d of %s", hdr.ssrc, arrival.layer, route.producer.id)
                    return entry
                if route.mid_ext_id and find_extension(data, hdr, route.mid_ext_id) == (route.mid or "").encode():
                    return None  # a simulcast track's packet without its RID: which layer is unknown
                continue
            if route.mid_ext_id and route.mid is not None:
                value = find_extension(data, hdr, route.mid_ext_id)
                if value is not None:
                    named = True
                    if value.decode(errors="replace") == route.mid:
                        found = route
                        break
        if found is None and named:
            return None
        if found is None:
            candidates = [r for r in self.routes if hdr.payload_type in (r.payload_type, r.rtx_payload_type)
                          and r.demux is None]
            if len(candidates) != 1:
                return None
            found = candidates[0]
        is_rtx = hdr.payload_type == found.rtx_payload_type
        if hdr.payload_type != found.payload_type and not is_rtx:
            return None
        if not named and any(r is found and rtx == is_rtx for r, rtx in self._by_ssrc.values()):
            return None  # guessed by payload type, but that track already has its stream: not this one
        entry = (found, is_rtx)
        self._by_ssrc[hdr.ssrc] = entry
        if not is_rtx:
            found.producer.ssrc = hdr.ssrc
            log.debug("ssrc %d is track %s", hdr.ssrc, found.producer.id)
        return entry

    async def _on_rtcp(self, data: bytes) -> None:
        try:
            for packet in RtcpPacket.parse(data):
                if isinstance(packet, RtcpSrPacket):
                    entry = self._by_ssrc.get(packet.ssrc)
                    if entry is not None and not entry[1]:
                        info = packet.sender_info
                        entry[0].producer.on_sender_report(info.ntp_timestamp, info.rtp_timestamp)
        except Exception:  # noqa: BLE001 - malformed RTCP is aiortc's to reject below
            self.malformed += 1
        await self._original_rtcp(data)

    def close(self) -> None:
        """Give the transport its own handlers back (idempotent)."""
        seams.unhook_dtls(self.dtls, self._stock)

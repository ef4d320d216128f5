"""What a Producer feeds: the contract between a published track and whatever is attached to it.

A `Sink` is anything `Producer.attach` accepts: a classroom's Consumer, a simulcast consumer's per-layer tap, the
recorder's depacketizer and layer taps. The Producer calls exactly these four methods and nothing else.
A `SubscriberStream` is a Sink that is one subscriber's copy of the track: it also carries that subscriber's
receiver-report figures and can close a deliberate gap (a hard-muted stretch). Code that needs those asks
`isinstance(sink, SubscriberStream)` instead of probing attributes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from sfu.rtp.packet import Packet


class Sink(Protocol):
    """Fed by one Producer, on its hot path."""

    def forward(self, packet: Packet, ast: bytes) -> None:
        """A new packet (`ast`: the abs-send-time bytes of this fan-out, shared by every sink in it)."""

    def skip(self, ext_seq: int) -> None:
        """A packet that is not forwarded (padding): a sequence number to leave out, not a loss."""

    def on_error(self) -> None:
        """`forward` raised (the producer caught it, so one sink never breaks the others)."""

    def close(self) -> None:
        """The producer is closing (idempotent)."""


@runtime_checkable
class SubscriberStream(Sink, Protocol):
    """A Sink that is one subscriber's stream of the track (a Consumer; not the recorder's taps)."""

    fraction_lost: int  # from the subscriber's latest receiver report, in 1/256
    report_at: float | None  # when that report came (None: none yet)

    def close_gap(self) -> None:
        """Packets were held back on purpose (muted): continue the sequence without a hole to NACK."""

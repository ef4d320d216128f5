"""The Sink contract (sfu/sink.py): what a Producer feeds, satisfied structurally by the Consumers and the recorder's
taps; and the SFU's modules import one another without a cycle."""

from __future__ import annotations

from recorder.record.depacketize import TrackDepacketizer
from sfu.producer import Producer
from sfu.sink import Sink, SubscriberStream


class _Tap:
    def __init__(self) -> None:
        self.got: list[int] = []

    def forward(self, packet, ast) -> None:  # noqa: ANN001
        self.got.append(packet.ext_seq)

    def skip(self, ext_seq: int) -> None:
        self.got.append(-ext_seq)

    def on_error(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_producer_feeds_any_sink_and_only_a_subscriber_stream_is_one():
    producer = Producer("cam", "audio", "opus", 48000, send_pli=lambda ssrc: None)
    tap: Sink = _Tap()
    producer.attach(tap)
    producer.on_packet(10, 960, 1, b"\x01\x02", 127)
    producer.on_packet(11, 1920, 1, b"", 127)  # padding: skipped
    assert tap.got == [10 + 65536, -(11 + 65536)]
    assert not isinstance(tap, SubscriberStream)
    depacketizer = TrackDepacketizer(producer, lambda frame: None)
    assert not isinstance(depacketizer, SubscriberStream)  # the recorder's: no receiver reports, no gap to close

"""The recorder's small pieces on their own: the layer decisions, the incomplete marker, write failures in
words, RTP timestamps on the wall clock, and a catalog finish that waits for room."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from recorder.record import handoff
from recorder.record.depacketize import TrackDepacketizer
from recorder.record.follower import (
    RECORD_LAYER_STOPPED_S,
    RECORD_LAYER_UP_AFTER_S,
    SIMULCAST_SETTLE_S,
    FlowTap,
    StartingLayers,
    wanted_layer,
)
from recorder.record.marker import (
    INCOMPLETE_UNKNOWN,
    clear_incomplete,
    incomplete_marker,
    mark_incomplete,
    read_incomplete,
)
from recorder.record.webm import opus_head, wall_of_rtp, write_failure
from sfu.producer import Producer
from sfu.rtp.header import ntp_from_unix
from sfu.sink import Sink
from tests.clock import FakeClock

NOW = 100.0
GONE = -1e9  # never arrived
FRESH = NOW - RECORD_LAYER_STOPPED_S / 2  # arrived just now
STALE = NOW - RECORD_LAYER_STOPPED_S * 2  # stopped arriving
LONG = NOW - RECORD_LAYER_UP_AFTER_S * 2  # has kept arriving long enough to switch up to
SHORT = NOW - RECORD_LAYER_UP_AFTER_S / 2  # arriving again, not for long enough yet
NEVER = 1e18  # not arriving


@pytest.mark.parametrize("current, last, since, want", [
    # the current layer flows, nothing larger is steady: stay
    (2, [FRESH, FRESH, FRESH], [LONG, LONG, LONG], 2),
    (1, [FRESH, FRESH, FRESH], [LONG, LONG, SHORT], 1),  # the top layer is back, not for long enough
    (0, [FRESH, FRESH, GONE], [LONG, LONG, NEVER], 1),  # up to the largest steady layer
    (0, [FRESH, FRESH, FRESH], [LONG, LONG, LONG], 2),
    (2, [FRESH, FRESH, FRESH], [LONG, SHORT, LONG], 2),  # never down while the current one flows
    # the current layer stopped while others flow: down to the largest steady one
    (2, [FRESH, FRESH, STALE], [LONG, LONG, LONG], 1),
    (2, [FRESH, GONE, STALE], [LONG, NEVER, LONG], 0),
    # ... or, when none flowing is steady yet, the largest flowing
    (2, [FRESH, FRESH, STALE], [SHORT, SHORT, LONG], 1),
    # nothing arrives at all (the teacher's network stalls every layer): stay
    (1, [STALE, STALE, STALE], [LONG, LONG, LONG], 1),
    (0, [GONE, GONE, GONE], [NEVER, NEVER, NEVER], 0),
])
def test_the_layer_recorded_is_the_largest_that_arrives_with_hysteresis_up(current, last, since, want) -> None:
    assert wanted_layer(NOW, current, last, since) == want


def test_the_marker_says_why_a_recording_is_incomplete_until_it_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "lesson.webm"
    assert incomplete_marker(path) == tmp_path / "lesson.webm.incomplete"
    assert read_incomplete(path) is None
    mark_incomplete(path, "the disk is full (No space left on device) at 4.0 s into the recording")
    assert read_incomplete(path) == "the disk is full (No space left on device) at 4.0 s into the recording"
    mark_incomplete(path, "")  # no room for the text: the empty file still marks it
    assert read_incomplete(path) == INCOMPLETE_UNKNOWN
    clear_incomplete(path)
    assert read_incomplete(path) is None and not incomplete_marker(path).exists()
    clear_incomplete(path)  # twice: nothing to do


def test_marking_never_raises_when_even_the_marker_cannot_be_written(tmp_path: Path) -> None:
    mark_incomplete(tmp_path / "no such folder" / "lesson.webm", "why")
    assert read_incomplete(tmp_path / "no such folder" / "lesson.webm") is None


@pytest.mark.parametrize("exc, words", [
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full (No space left on device)"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk is full (Disk quota exceeded)"),
    (OSError(errno.EFBIG, "File too large"), "the file is too large for the file system (File too large)"),
    (OSError(errno.EIO, "Input/output error"), "writing failed (Input/output error)"),
    (OSError("odd"), "writing failed (odd)"),
    (RuntimeError(), "writing failed (RuntimeError)"),
])
def test_a_write_failure_in_words(exc: BaseException, words: str) -> None:
    assert write_failure(exc) == words


def test_opus_head_is_the_19_byte_block_of_rfc_7845() -> None:
    head = opus_head()
    assert len(head) == 19 and head[:9] == b"OpusHead\x01" and head[9] == 2
    assert int.from_bytes(head[12:16], "little") == 48000


@pytest.mark.parametrize("ts_offset, want_s", [
    (0, 0.0),  # the timestamp of the sender report: its wall time
    (90000, 1.0),  # a second later on the 90 kHz clock
    (-45000, -0.5),
    (0x1_0000_0000 - 9000, -0.1),  # across the 32-bit wrap, backwards
])
def test_an_rtp_timestamp_is_placed_on_the_wall_clock_by_the_sender_report(ts_offset: int, want_s: float) -> None:
    producer = Producer("cam", "video", "vp8", 90000, lambda ssrc: None, clock=FakeClock())
    report_unix, report_ts = 1_700_000_000.0, 0xFFFF_F000
    producer.on_sender_report(ntp_from_unix(report_unix), report_ts)
    for now in (report_unix, report_unix + 7.25):  # whenever it is asked, the answer is the same
        wall = wall_of_rtp(producer, (report_ts + ts_offset) & 0xFFFFFFFF, now)
        assert wall == pytest.approx(report_unix + want_s, abs=1e-4)


class FlakyCatalog:
    """A catalog whose writes fail while `full` (SQLite on a full disk)."""

    def __init__(self, tmp: Path) -> None:
        self.recordings_dir = tmp
        self.full = True
        self.finished: list[tuple] = []

    async def finish_recording(self, rec_id: str, duration_s: float, size_bytes: int,
                               incomplete: str | None = None) -> None:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        self.finished.append((rec_id, duration_s, size_bytes, incomplete))


async def test_a_finish_the_catalog_cannot_take_waits_and_is_done_once_there_is_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handoff, "PENDING_FINISHES", {})
    catalog, other = FlakyCatalog(tmp_path), FlakyCatalog(tmp_path)
    path = tmp_path / "lesson.webm"
    mark_incomplete(path, "the disk is full")
    pending = handoff.PendingFinish(catalog, "r1", "lesson", path, 12.5, 1000, "the disk is full")  # type: ignore[arg-type]
    with pytest.raises(sqlite3.OperationalError):
        await handoff.finish_or_keep(pending)
    assert await handoff.retry_pending_finishes(catalog) == 1 and await handoff.retry_pending_finishes(other) == 0  # type: ignore[arg-type]
    assert read_incomplete(path) == "the disk is full"  # still the only record of why, for a restart
    catalog.full = False
    assert await handoff.retry_pending_finishes(catalog) == 0  # type: ignore[arg-type]
    assert catalog.finished == [("r1", 12.5, 1000, "the disk is full")]
    assert read_incomplete(path) is None
    done = handoff.PendingFinish(catalog, "r2", "lesson", tmp_path / "b.webm", 3.0, 10, None)  # type: ignore[arg-type]
    await handoff.finish_or_keep(done)
    assert catalog.finished[-1] == ("r2", 3.0, 10, None) and not handoff.PENDING_FINISHES


def _camera(clock: FakeClock, n: int = 3) -> Producer:
    layers = [Producer(f"cam{i}", "video", "vp8", 90000, lambda ssrc: None, clock=clock) for i in range(n)]
    layers[0].layers = layers
    return layers[0]


@pytest.mark.parametrize("flowing, after_s, want", [
    ([], SIMULCAST_SETTLE_S * 2, None),  # no layer flows yet
    ([0, 1, 2], 0.0, None),  # the layers had no time to start: which is the largest is not known
    ([0, 1, 2], SIMULCAST_SETTLE_S / 2, None),
    ([0, 1, 2], SIMULCAST_SETTLE_S, 2),
    ([0, 1], SIMULCAST_SETTLE_S, 1),  # a small camera: the browser sends two layers of the three
    ([0], SIMULCAST_SETTLE_S * 3, 0),
])
def test_a_simulcast_recording_starts_from_the_largest_layer_flowing_once_they_had_time_to_start(
        flowing: list[int], after_s: float, want: int | None) -> None:
    clock = FakeClock()
    camera = _camera(clock)
    starting = StartingLayers(clock)
    for i in flowing:
        camera.layers[i].packets_in = 10  # type: ignore[index]
    assert starting.choose(camera) is None  # the first look starts the wait
    clock.advance(after_s)
    chosen = starting.choose(camera)
    assert chosen is (camera.layers[want] if want is not None else None)  # type: ignore[index]


def test_the_starting_layer_is_kept_for_its_camera_and_a_plain_track_is_itself() -> None:
    clock = FakeClock()
    camera, other = _camera(clock), _camera(clock, 2)
    starting = StartingLayers(clock)
    camera.layers[1].packets_in = 10  # type: ignore[index]
    starting.choose(camera)
    clock.advance(SIMULCAST_SETTLE_S)
    assert starting.choose(camera) is camera.layers[1]  # type: ignore[index]
    camera.layers[2].packets_in = 10  # type: ignore[index]
    assert starting.choose(camera) is camera.layers[1]  # chosen once: the follower moves on from there
    assert starting.choose(other) is None  # each camera its own
    mic = Producer("mic", "audio", "opus", 48000, lambda ssrc: None, clock=clock)
    assert starting.choose(mic) is mic


@pytest.mark.parametrize("tap", [TrackDepacketizer, FlowTap])
def test_the_recorders_taps_have_every_method_a_producer_calls_on_what_it_feeds(tap: type) -> None:
    called = {name for name, value in vars(Sink).items() if callable(value) and not name.startswith("_")}
    assert called == {"forward", "skip", "on_error", "close"}
    assert called <= {name for name in dir(tap) if callable(getattr(tap, name))}

"""The WebM writer: one recording file fed by one or two producers, written with PyAV straight from the
teacher's packets (no decoding, no encoding).

A RecordingFile rides its producers like a classroom (TrackDepacketizer), places every frame on the lesson's
wall clock from the teacher's RTCP sender reports (so audio and video keep their relative timing), and writes
small Matroska clusters, flushed as it goes: a killed server loses at most about the last second. A simulcast
camera is followed across its layers (follower.py); the frame size then changes mid-file (VP8 key frames
carry it; the track header keeps the first one). The first write error (a full disk) stops the file for good:
it keeps what was written, leaves the incomplete marker (marker.py) and tells its owner once.
"""

from __future__ import annotations

import errno
import fractions
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from recorder.record.depacketize import Frame, TrackDepacketizer, vp8_dimensions
from recorder.record.follower import LayerFollower
from recorder.record.marker import mark_incomplete
from sfu.producer import Producer

log = logging.getLogger("ketang.recorder")

MS = fractions.Fraction(1, 1000)  # the file's time base: Matroska's native millisecond
# clusters of at most this long, flushed when written: what a crash can lose
CLUSTER_MS = 1000
# frames are held until the teacher's first sender report maps its RTP clock to wall time (sent ~1 s in)
SYNC_WAIT_S = 3.0
OPUS_PRE_SKIP = 312  # samples; what libopus encoders announce and browsers use
FALLBACK_VIDEO_SIZE = (1280, 720)


class WriteTotals:
    """Process-wide: media bytes written to recordings and files stopped by a write error (read by /metrics)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.errors = 0


WRITTEN = WriteTotals()


def write_failure(exc: BaseException) -> str:
    """An OSError in words: "the disk is full (No space left on device)"."""
    no = getattr(exc, "errno", None)
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__
    if no in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({text})"
    if no == errno.EFBIG:
        return f"the file is too large for the file system ({text})"
    return f"writing failed ({text})"


def opus_head(channels: int = 2, rate: int = 48000) -> bytes:
    """The OpusHead block Matroska keeps as the Opus track's CodecPrivate (RFC 7845 5.1)."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, OPUS_PRE_SKIP, rate, 0, 0)


def wall_time(producer: Producer, ts_ext: int, first_ts_ext: int, first_wall: float) -> float:
    """Wall-clock time of an (extended) RTP timestamp, from where the stream's first frame sits."""
    return first_wall + (ts_ext - first_ts_ext) / producer.clock_rate


def wall_of_rtp(producer: Producer, ts: int, now: float) -> float:
    """Wall-clock (unix) time of an RTP timestamp of this stream, from the teacher's latest sender report
    (before the first one: from a packet's arrival), `now` being the wall-clock time. Every stream, each
    simulcast layer too, has its own."""
    rel = producer.rtp_time_at(now)
    ts32 = ts & 0xFFFFFFFF
    delta = ((ts32 - (rel if rel is not None else ts32) + (1 << 31)) % (1 << 32)) - (1 << 31)
    return now + delta / producer.clock_rate


@dataclass
class Track:
    """One track of a file: the producer it is written from now, and where its frames sit on the file's time."""

    producer: Producer  # the stream written now (a simulcast camera: its current layer)
    depacketizer: TrackDepacketizer | None = None
    stream: Any = None
    pending: list[Frame] = field(default_factory=list)
    # the current stream's RTP clock on the wall clock: first_ts is at first_wall (set again at a layer switch)
    first_ts: int | None = None
    first_wall: float | None = None
    last_ms: int = -1
    frames: int = 0
    bytes: int = 0
    follower: LayerFollower | None = None  # a simulcast camera's layers

    @property
    def sources(self) -> list[Producer]:
        """Every producer this track records from (all the layers of a simulcast camera)."""
        return list(self.follower.layers) if self.follower is not None else [self.producer]


class RecordingFile:
    """One WebM file fed by one or two producers (a video track and optionally an audio track).

    `layers`: the simulcast layers (smallest first) of the video producer, which is one of them and the layer
    the file starts with; the file then follows the best layer that arrives (follower.LayerFollower).
    `clock` times the wait for the sender reports; `wall_clock` (unix time) places the first frames."""

    def __init__(self, path: Path, producers: list[Producer], clock: Callable[[], float] = time.monotonic,
                 layers: list[Producer] | None = None,
                 on_failure: Callable[[RecordingFile, BaseException], None] | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.closed = False
        # why the file stopped being written before its end (None: it did not); it keeps what came before
        self.failed: str | None = None
        self._on_failure = on_failure
        self._wall_clock = wall_clock
        self.started_at = wall_clock()
        self._clock = clock
        self._created = clock()
        self._container: Any = None
        self._t0: float | None = None  # wall time of the file's 0 ms
        self.tracks = [Track(p) for p in producers]
        for track in self.tracks:
            track.depacketizer = self._depacketizer(track, track.producer)
            if layers and len(layers) > 1 and track.producer in layers:
                track.follower = self._follower(track, layers)

    def _follower(self, track: Track, layers: list[Producer]) -> LayerFollower:
        return LayerFollower(track, layers, self.path.name, listen=lambda layer: self._depacketizer(track, layer),
                             writing=lambda: not self.closed and track.stream is not None)

    def _depacketizer(self, track: Track, producer: Producer) -> TrackDepacketizer:
        dep: TrackDepacketizer | None = None

        def on_frame(frame: Frame) -> None:
            if dep is track.depacketizer:
                self._on_frame(track, frame)
            elif track.follower is not None and dep is track.follower.candidate:
                self._switch_layer(track, dep, frame)

        dep = TrackDepacketizer(producer, on_frame)
        return dep

    # -- frames in -----------------------------------------------------------------------------------------

    def _on_frame(self, track: Track, frame: Frame) -> None:
        if self.closed or self.failed is not None:
            return
        if track.first_ts is None:
            track.first_ts = frame.ts
        try:
            if self._container is None:
                track.pending.append(frame)
                if self._ready():
                    self._open()
                return
            self._write(track, frame)
        except OSError as exc:  # a full disk (av.error.OSError is one): stop here, once
            self._fail(exc)

    def _ready(self) -> bool:
        """Open the file once every track has a frame and a wall-clock mapping (or waiting took too long)."""
        waited = self._clock() - self._created > SYNC_WAIT_S
        for track in self.tracks:
            if not track.pending:
                if not waited:
                    return False
                continue
            if track.producer.last_sr is None and not waited:  # (no sender report yet)
                return False
        return any(t.pending for t in self.tracks)

    def _open(self) -> None:
        for track in self.tracks:
            if track.pending:
                # wall time of the track's first frame, from the teacher's RTP/NTP mapping
                track.first_wall = wall_of_rtp(track.producer, track.pending[0].ts, self._wall_clock())
        self._t0 = min(t.first_wall for t in self.tracks if t.first_wall is not None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # small clusters, flushed as written: a crash loses at most about one cluster
        self._container = av.open(str(self.path), "w", format="webm",
                                  options={"cluster_time_limit": str(CLUSTER_MS), "flush_packets": "1"})
        for track in self.tracks:
            if track.producer.kind == "video":
                key = next((f for f in track.pending if f.keyframe), None)
                width, height = (vp8_dimensions(key.data) if key else None) or FALLBACK_VIDEO_SIZE
                stream = self._container.add_stream("vp8", rate=30)
                stream.width, stream.height = width, height
            else:
                stream = self._container.add_stream("opus", rate=48000)
                stream.codec_context.extradata = opus_head()
            stream.time_base = MS
            track.stream = stream
        for track in self.tracks:
            for frame in track.pending:
                self._write(track, frame)
            track.pending = []

    def _switch_layer(self, track: Track, dep: TrackDepacketizer, frame: Frame) -> None:
        """The awaited key frame of another layer: from here on the track is that layer. Its RTP clock is
        unrelated to the old layer's: it is placed on the wall clock by its own sender reports."""
        follower = track.follower
        if self.closed or self.failed is not None or follower is None or track.stream is None or not frame.keyframe:
            return  # (the depacketizer emits nothing before a key frame: never a delta frame of a new layer)
        old = track.depacketizer
        track.depacketizer, follower.candidate = dep, None
        if old is not None:
            old.close()
        track.producer = dep.producer
        track.first_ts, track.first_wall = frame.ts, wall_of_rtp(dep.producer, frame.ts, self._wall_clock())
        try:
            self._write(track, frame)
        except OSError as exc:
            self._fail(exc)
            return
        follower.switched(frame)

    def _write(self, track: Track, frame: Frame) -> None:
        if track.stream is None or track.first_wall is None or track.first_ts is None or self._t0 is None:
            return  # a track that had no frame when the file was opened stays out of this file
        wall = wall_time(track.producer, frame.ts, track.first_ts, track.first_wall)
        ms = round((wall - self._t0) * 1000)
        if ms <= track.last_ms:
            ms = track.last_ms + 1  # strictly increasing per stream (Matroska needs ordered blocks)
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = ms
        packet.time_base = MS
        packet.stream = track.stream
        packet.is_keyframe = frame.keyframe
        self._container.mux(packet)
        track.last_ms = ms  # (only once written: a failed write ends the file's duration before it)
        track.frames += 1
        track.bytes += len(frame.data)
        WRITTEN.bytes += len(frame.data)

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        return max((t.last_ms for t in self.tracks), default=0) / 1000

    @property
    def t0(self) -> float | None:
        """Wall-clock (unix) time of the file's 0 ms (None until the file is opened): the files of a lesson are
        placed side by side on this clock (recorder.compose.timeline)."""
        return self._t0

    def close(self) -> None:
        """Finish the file (never raises a write error: a failure here marks the file as failed)."""
        if self.closed:
            return
        self._detach()
        try:
            if self.failed is None and self._container is None and any(t.pending for t in self.tracks):
                self._open()  # a very short lesson: write what there is
        except OSError as exc:
            self._fail(exc)
        self.closed = True
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()  # the cues and the duration: the end of the file
            except OSError as exc:
                self._fail(exc)

    def stop(self, reason: str) -> None:
        """Stop writing for good (another file of the lesson found the disk full): the file keeps what it has."""
        if self.failed is None and not self.closed:
            self.failed = reason
            self._stop_writing()

    def _fail(self, exc: BaseException) -> None:
        """The first write error: stop writing (the clusters already flushed stay readable), mark the file as
        incomplete and tell the owner (LessonRecorder), which logs it once for the lesson. Later frames are
        dropped without a word: a full disk must not cost a log line per frame."""
        if self.failed is not None:
            return
        self.failed = f"{write_failure(exc)} at {self.duration_s:.1f} s into the recording"
        WRITTEN.errors += 1
        self._stop_writing()
        if self._on_failure is not None:
            self._on_failure(self, exc)
        else:
            log.error("recording %s stopped: %s: %s. The file keeps what was written before; free space in %s",
                      self.path.name, self.failed, exc, self.path.parent)

    def _stop_writing(self) -> None:
        self._detach()  # the producers stop feeding this file (forwarding to classrooms is untouched)
        for track in self.tracks:
            track.pending = []
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()  # the trailer cannot be written either, most likely; the descriptor is freed
            except Exception:  # noqa: BLE001 - already failed: nothing more to say about this file
                pass
        mark_incomplete(self.path, self.failed or "")

    def _detach(self) -> None:
        for track in self.tracks:
            if track.depacketizer is not None:
                track.depacketizer.close()
            if track.follower is not None:
                track.follower.close()

    @property
    def layer_switches(self) -> int:
        return sum(t.follower.switches for t in self.tracks if t.follower is not None)

    def stats(self) -> dict:
        tracks = []
        for t in self.tracks:
            info: dict[str, Any] = {"kind": t.producer.kind, "frames": t.frames, "bytes": t.bytes,
                                    "lost_packets": t.depacketizer.lost_packets if t.depacketizer else 0}
            if t.follower is not None:
                info.update(t.follower.stats())
            tracks.append(info)
        return {"file": str(self.path), "duration_s": self.duration_s, "layer_switches": self.layer_switches,
                "tracks": tracks}

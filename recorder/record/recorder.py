"""The live recorder: one WebM per lesson (camera + microphone; each screen share in a file of its own),
written with PyAV straight from the teacher's packets — no decoding, no encoding.

It rides the producers like a classroom (TrackDepacketizer), places every frame on the lesson's wall clock
from the teacher's RTCP sender reports (so audio and video keep their relative timing), and writes small
Matroska clusters and flushes them as it goes: a killed server loses at most about the last second, and
`repair_unfinished()` turns what a crash left behind into a complete file at the next start.

A simulcast camera is followed across its layers (`_LayerFollower`): the file holds the largest layer that
arrives, switching down when the recorded one stops and up again when a larger one is back for good, always
at a key frame of the new layer. The frame size then changes mid-file (VP8 key frames carry it; the WebM
track header keeps the first one).

A write that fails (a full disk: ENOSPC, or any OSError from PyAV's muxer) stops the lesson's recording for
good with one log line: the lesson itself goes on, the files keep what was written before, and the library
items are finished as incomplete (`Recording.incomplete`, the reason). When even the catalog cannot be written
(SQLite's "database or disk is full"), the finish is kept in memory and tried again, and a marker file next to
the recording (`<file>.incomplete`) lets start-up repair finish it as incomplete after a restart. Start-up
repair never raises: what it cannot do now is logged in one line and tried again at the next start.
"""

from __future__ import annotations

import asyncio
import errno
import fractions
import logging
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import av

from recorder.record.depacketize import Frame, TrackDepacketizer, vp8_dimensions
from sfu.producer import Producer
from sfu.router import Router

log = logging.getLogger("ketang.recorder")

MS = fractions.Fraction(1, 1000)  # the file's time base: Matroska's native millisecond
# clusters of at most this long, flushed when written: what a crash can lose
CLUSTER_MS = 1000
# frames are held until the teacher's first sender report maps its RTP clock to wall time (sent ~1 s in)
SYNC_WAIT_S = 3.0
OPUS_PRE_SKIP = 312  # samples; what libopus encoders announce and browsers use
FALLBACK_VIDEO_SIZE = (1280, 720)


class Catalog(Protocol):
    """What the recorder needs of the library (recorder.library.catalog.Library)."""

    recordings_dir: Path

    def start_recording(self, lesson_id: str, title: str, teacher: str, teacher_sub: str, file: Path) -> str: ...

    def finish_recording(self, rec_id: str, duration_s: float, size_bytes: int) -> None: ...
    # (called with incomplete="why" as well when the file stops before the lesson: see LessonRecorder._finish)

    def unfinished(self) -> list[Any]: ...

    def save_lesson_record(self, lesson_id: str, record: dict[str, Any], attendance_csv: str, chat_csv: str) -> None: ...


# what a failed write of the catalog (SQLite) or of a file raises
CATALOG_ERRORS = (sqlite3.Error, OSError)
INCOMPLETE_SUFFIX = ".incomplete"
# why, when the marker file is empty (the disk was too full for its few bytes of text)
INCOMPLETE_UNKNOWN = "the recording stopped before the lesson ended: writing it failed (the disk was full)"


def incomplete_marker(path: Path) -> Path:
    """The file next to a recording that says it stopped early (its text: why; it may be empty)."""
    return path.with_name(path.name + INCOMPLETE_SUFFIX)


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
    return first_wall + (ts_ext - first_ts_ext) / producer.clock_rate


def wall_of_rtp(producer: Producer, ts: int) -> float:
    """Wall-clock (unix) time of an RTP timestamp of this stream, from the teacher's latest sender report
    (before the first one: from a packet's arrival). Every stream, each simulcast layer too, has its own."""
    now = time.time()
    rel = producer.rtp_time_at(now)
    ts32 = ts & 0xFFFFFFFF
    delta = ((ts32 - (rel if rel is not None else ts32) + (1 << 31)) % (1 << 32)) - (1 << 31)
    return now + delta / producer.clock_rate


@dataclass
class _Track:
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
    follower: _LayerFollower | None = None  # a simulcast camera's layers

    @property
    def sources(self) -> list[Producer]:
        """Every producer this track records from (all the layers of a simulcast camera)."""
        return list(self.follower.layers) if self.follower is not None else [self.producer]


class RecordingFile:
    """One WebM file fed by one or two producers (a video track and optionally an audio track).

    `layers`: the simulcast layers (smallest first) of the video producer, which is one of them and the layer
    the file starts with; the file then follows the best layer that arrives (see _LayerFollower)."""

    def __init__(self, path: Path, producers: list[Producer], clock: Callable[[], float] = time.monotonic,
                 layers: list[Producer] | None = None,
                 on_failure: Callable[[RecordingFile, BaseException], None] | None = None) -> None:
        self.path = path
        self.closed = False
        # why the file stopped being written before its end (None: it did not); it keeps what came before
        self.failed: str | None = None
        self._on_failure = on_failure
        self.started_at = time.time()
        self._clock = clock
        self._created = clock()
        self._container: Any = None
        self._t0: float | None = None  # wall time of the file's 0 ms
        self.tracks = [_Track(p) for p in producers]
        for track in self.tracks:
            track.depacketizer = self._depacketizer(track, track.producer)
            if layers and len(layers) > 1 and track.producer in layers:
                track.follower = _LayerFollower(self, track, layers)

    def _depacketizer(self, track: _Track, producer: Producer) -> TrackDepacketizer:
        dep: TrackDepacketizer | None = None

        def on_frame(frame: Frame) -> None:
            if dep is track.depacketizer:
                self._on_frame(track, frame)
            elif track.follower is not None and dep is track.follower.candidate:
                self._switch_layer(track, dep, frame)

        dep = TrackDepacketizer(producer, on_frame)
        return dep

    # -- frames in -----------------------------------------------------------------------------------------

    def _on_frame(self, track: _Track, frame: Frame) -> None:
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
            if not track.producer._ref_from_sr and not waited:
                return False
        return any(t.pending for t in self.tracks)

    def _open(self) -> None:
        for track in self.tracks:
            if track.pending:
                # wall time of the track's first frame, from the teacher's RTP/NTP mapping
                track.first_wall = wall_of_rtp(track.producer, track.pending[0].ts)
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

    def _switch_layer(self, track: _Track, dep: TrackDepacketizer, frame: Frame) -> None:
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
        track.first_ts, track.first_wall = frame.ts, wall_of_rtp(dep.producer, frame.ts)
        try:
            self._write(track, frame)
        except OSError as exc:
            self._fail(exc)
            return
        follower.switched(frame)

    def _write(self, track: _Track, frame: Frame) -> None:
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

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        return max((t.last_ms for t in self.tracks), default=0) / 1000

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
        marker = incomplete_marker(self.path)
        try:
            marker.write_text(self.failed or "", encoding="utf-8")
        except OSError:
            pass  # a full disk may still take the empty file (an inode, no data block): its name is the mark

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


# -- following a simulcast camera's layers ------------------------------------------------------------------

# The recorded layer counts as stopped when it has sent nothing for this long while a smaller layer kept
# arriving. All layers share one transport and one pacer, so a stall of the network stalls them all (and
# nothing switches); one layer silent while another flows is the teacher's browser having dropped it. Shorter
# than the SFU's LAYER_STOPPED_S (1 s, a rate measure): every moment of it is a hole in the recording.
RECORD_LAYER_STOPPED_S = 0.3
# a larger layer must have kept arriving this long before the file switches up to it (Chromium turns its top
# layer off and on again as its bandwidth estimate wobbles: hysteresis)
RECORD_LAYER_UP_AFTER_S = 2.0
# the layers are looked at on packet arrival, at most this often
RECORD_LAYER_CHECK_S = 0.05
# the awaited layer's key frame is asked for again this often (a PLI is lost, or throttled by others' requests)
RECORD_KEYFRAME_RETRY_S = 0.5
RECORD_LAYER_TIMELINE_MAX = 200  # switches kept in the stats (the count goes on)


class _FlowTap:
    """What one layer's producer sees as a consumer: tells the follower a packet arrived, nothing more."""

    __slots__ = ("follower", "index")

    def __init__(self, follower: _LayerFollower, index: int) -> None:
        self.follower, self.index = follower, index

    def forward(self, packet: Any, ast: bytes) -> None:
        self.follower.arrived(self.index)

    def skip(self, ext_seq: int) -> None:
        pass  # padding is a bandwidth probe, not the layer flowing

    def on_error(self) -> None:
        log.exception("following the layers of a recorded camera failed")

    def close(self) -> None:
        pass  # the layer's producer is closing: the recorder's own depacketizer sees it too


class _LayerFollower:
    """Which simulcast layer a video track records: the largest that arrives.

    Down: the current layer stopped (RECORD_LAYER_STOPPED_S) while others flow -> the largest one flowing.
    Up: a larger layer has kept flowing for RECORD_LAYER_UP_AFTER_S -> that one. Either way the new layer
    gets a depacketizer (which asks for a key frame, and emits nothing before one) and the track changes
    over at that key frame (RecordingFile._switch_layer); until then the old layer goes on being written."""

    def __init__(self, recording: RecordingFile, track: _Track, layers: list[Producer]) -> None:
        self.recording, self.track, self.layers = recording, track, list(layers)
        self._clock = track.producer._clock
        now = self._clock()
        n = len(self.layers)
        self.last = [layer.arrived_at if layer.packets_in else -1e9 for layer in self.layers]
        self.since = [now if now - last <= RECORD_LAYER_STOPPED_S else 1e18 for last in self.last]
        self.candidate: TrackDepacketizer | None = None
        self._asked_at = 0.0
        self._next_check = now
        self.switches = 0
        self.timeline: list[dict[str, Any]] = []  # {at_s, layer, size} of each switch
        self._taps = [_FlowTap(self, i) for i in range(n)]
        for layer, tap in zip(self.layers, self._taps):
            layer.attach(tap)  # type: ignore[arg-type]

    def arrived(self, index: int) -> None:
        now = self._clock()
        if now - self.last[index] > RECORD_LAYER_STOPPED_S:
            self.since[index] = now  # (again) arriving from now on
        self.last[index] = now
        if now >= self._next_check:
            self._next_check = now + RECORD_LAYER_CHECK_S
            self.check(now)

    def wanted(self, now: float) -> int:
        """The layer the track should be recording now."""
        current = self.layers.index(self.track.producer)
        flowing = [i for i in range(len(self.layers)) if now - self.last[i] <= RECORD_LAYER_STOPPED_S]
        if not flowing:
            return current  # nothing arrives at all (the teacher's network): nothing to switch to
        steady = [i for i in flowing if now - self.since[i] >= RECORD_LAYER_UP_AFTER_S]
        if current in flowing:
            return max(steady) if steady and max(steady) > current else current
        return max(steady or flowing)

    def check(self, now: float) -> None:
        recording = self.recording
        if recording.closed or self.track.stream is None:
            return  # switches only once the file is open (the first frames wait there for a sender report)
        want = self.wanted(now)
        current = self.layers.index(self.track.producer)
        if want == current:
            self._drop_candidate()
            return
        layer = self.layers[want]
        if self.candidate is None or self.candidate.producer is not layer:
            self._drop_candidate()
            log.info("recording %s: layer %d -> %d, waiting for its key frame", recording.path.name, current, want)
            self.candidate = recording._depacketizer(self.track, layer)  # asks for a key frame
            self._asked_at = now
        elif now - self._asked_at >= RECORD_KEYFRAME_RETRY_S:
            self._asked_at = now
            layer.request_keyframe()

    def switched(self, keyframe: Frame) -> None:
        self.switches += 1
        layer = self.layers.index(self.track.producer)
        size = vp8_dimensions(keyframe.data)
        at_s = round(max(0.0, self.track.last_ms) / 1000, 3)
        log.info("recording %s: now layer %d (%s) at %.1f s", self.recording.path.name, layer, size, at_s)
        if len(self.timeline) < RECORD_LAYER_TIMELINE_MAX:
            self.timeline.append({"at_s": at_s, "layer": layer, "size": list(size) if size else None})

    def _drop_candidate(self) -> None:
        if self.candidate is not None:
            self.candidate.close()
            self.candidate = None

    def close(self) -> None:
        self._drop_candidate()
        for layer, tap in zip(self.layers, self._taps):
            layer.detach(tap)  # type: ignore[arg-type]

    def stats(self) -> dict[str, Any]:
        return {"layer": self.layers.index(self.track.producer), "layer_switches": self.switches,
                "layer_timeline": list(self.timeline)}


# a simulcast camera's layers start within a second of each other: the recording waits this long after the
# first one to see which is the largest the teacher's browser really sends
SIMULCAST_SETTLE_S = 1.5


class LessonRecorder:
    """Records a lesson: camera + microphone into the main file, each screen share into its own file."""

    def __init__(self, router: Router, catalog: Catalog, title: str, teacher: str, teacher_sub: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.router = router
        self._clock = clock
        self.catalog = catalog
        self.title, self.teacher, self.teacher_sub = title, teacher, teacher_sub
        self.main: RecordingFile | None = None
        self.main_id: str | None = None
        self.extra: list[tuple[RecordingFile, str]] = []  # screen shares: (file, library id)
        # classrooms on stage (上台): each turn's camera and microphone in a file of its own, next to the lesson
        self.stage: dict[str, tuple[RecordingFile, str]] = {}  # classroom participant id -> (file, library id)
        self.stage_turns = 0
        self.stage_names: dict[str, str] = {}  # participant id -> class name (set by the signalling layer)
        self._recorded_layers: list[Producer] = []  # the simulcast layers chosen for the main file
        self._first_layer_at: dict[int, float] = {}
        self.closed = False
        # why the lesson's recording stopped before its end (a full disk): no file of it is written any more
        self.failed: str | None = None
        self._reported = False  # the lesson's one error line is out: anything after it is a warning
        self._stamp = time.strftime("%Y%m%d-%H%M%S")
        retry_pending_finishes(catalog)
        router.on_track(self._on_track)
        router.on_stage(lambda _: None if self.closed or self.failed else self._sync())
        self._sync()

    # -- write failures: one line per lesson, the lesson goes on ----------------------------------------------

    def _file(self, path: Path, producers: list[Producer], layers: list[Producer] | None = None) -> RecordingFile:
        return RecordingFile(path, producers, clock=self._clock, layers=layers, on_failure=self._file_failed)

    def _files(self) -> list[RecordingFile]:
        return ([self.main] if self.main else []) + [f for f, _ in self.extra] + [f for f, _ in self.stage.values()]

    def _file_failed(self, recording: RecordingFile, exc: BaseException) -> None:
        if self.failed is not None:
            return  # the lesson's recording has already stopped (and said so)
        self._stop(recording.failed or write_failure(exc),
                   f"writing {recording.path} failed: {exc}")

    def _stop(self, reason: str, detail: str) -> None:
        """Stop writing every file of the lesson and say so in one line. The lesson is not touched: the
        producers go on forwarding to the classrooms; the files are finished (as incomplete) when it ends."""
        self.failed = reason
        for recording in self._files():
            recording.stop(reason)
        self._report(f"lesson {self.router.lesson_id}: recording stopped, {reason} ({detail}). The lesson goes on "
                     f"unrecorded; what was written is kept and its library item will be marked incomplete. Free "
                     f"space in {self.catalog.recordings_dir.parent}: lessons that start after that are recorded")

    def _report(self, message: str) -> None:
        if self._reported:
            log.warning("%s", message)
        else:
            self._reported = True
            log.error("%s", message)

    def _catalogue(self, title: str, path: Path) -> str | None:
        """A new library item for `path`, or None when the catalog cannot be written (the lesson's recording
        then stops, with its one line)."""
        try:
            return self.catalog.start_recording(self.router.lesson_id, title, self.teacher, self.teacher_sub, path)
        except CATALOG_ERRORS as exc:
            self._stop(f"the library could not catalogue a new recording ({exc})", f"for {path.name}")
            return None

    def _sync_stage(self, recorded: set[int]) -> None:
        """A file per on-stage turn: started when a classroom is on stage with its tracks, finished when it
        leaves the stage (or its tracks go)."""
        on = set(self.router.stage)
        for pid, (recording, rec_id) in list(self.stage.items()):
            live = {id(p) for p in self.router.producers.values() if p.owner == pid}
            if pid not in on or any(id(t.producer) not in live for t in recording.tracks):
                del self.stage[pid]
                self._finish(recording, rec_id)
        for pid in self.router.stage:
            if pid in self.stage:
                continue
            theirs = [p for p in self.router.producers.values() if p.owner == pid and id(p) not in recorded]
            video = [p for p in theirs if p.kind == "video"][:1]
            audio = [p for p in theirs if p.kind == "audio"][:1]
            if not video and not audio:
                continue
            self.stage_turns += 1
            path = self.catalog.recordings_dir / f"{self.router.lesson_id}-{self._stamp}-stage{self.stage_turns}.webm"
            name = self.stage_names.get(pid, pid)
            rec_id = self._catalogue(f"{self.title}（上台 {name}）", path)
            if rec_id is None:
                return
            self.stage[pid] = (self._file(path, video + audio), rec_id)

    async def _on_track(self, change: str, producer: Producer) -> None:
        if not self.closed and self.failed is None:
            self._sync()

    def _layer_to_record(self, producer: Producer) -> Producer | None:
        """The layer a simulcast camera's recording starts from: its largest that flows (a browser sends fewer
        layers than asked for from a small camera); None until its layers have had SIMULCAST_SETTLE_S to start.
        The file then follows the layers as they stop and come back (_LayerFollower)."""
        if not producer.layers:
            return producer
        chosen = next((layer for layer in self._recorded_layers if layer in producer.layers), None)
        if chosen is not None:
            return chosen
        flowing = [layer for layer in producer.layers if layer.packets_in > 0]
        if not flowing:
            return None
        first = self._first_layer_at.setdefault(id(producer), self._clock())
        if self._clock() - first < SIMULCAST_SETTLE_S:
            return None
        self._recorded_layers.append(flowing[-1])
        return flowing[-1]

    def _sync(self) -> None:
        """(Re)start files for the producers now live: the main file when camera or microphone start."""
        if self.closed or self.failed is not None:
            return  # (a lesson whose recording stopped on a write error is not recorded again)
        teachers = [p for p in self.router.producers.values() if p.owner_role == "teacher"]
        live = [self._layer_to_record(p) for p in teachers]
        pending = any(p is None for p in live)
        if pending:
            # a simulcast camera whose layers are not all known yet: the main file starts once they are
            asyncio.get_event_loop().call_later(SIMULCAST_SETTLE_S / 2, lambda: None if self.closed else self._sync())
        live = [p for p in live if p is not None]
        main = [] if pending else [p for p in live if p.source in ("camera", "microphone")]
        screens = [p for p in live if p.source == "screen"]
        recorded = {id(p) for f in self._files() for t in f.tracks for p in t.sources}
        self._sync_stage(recorded)
        if self.failed is not None:
            return
        if main and (self.main is None or self.main.closed):
            self._start_main(main)
        elif main and any(id(p) not in recorded for p in main):
            # the teacher reconnected: a new part of the main recording
            self._finish_main()
            self._start_main(main)
        for producer in screens:
            if id(producer) not in recorded and self.failed is None:
                n = len(self.extra) + 1
                path = self.catalog.recordings_dir / f"{self.router.lesson_id}-{self._stamp}-screen{n}.webm"
                # each courseware share is a library item of its own, next to the lesson's main recording
                rec_id = self._catalogue(f"{self.title}（课件 {n}）", path)
                if rec_id is None:
                    return
                self.extra.append((self._file(path, [producer], self._layers_of(producer)), rec_id))

    def _start_main(self, producers: list[Producer]) -> None:
        part = "" if self.main is None else f"-{time.strftime('%H%M%S')}"
        path = self.catalog.recordings_dir / f"{self.router.lesson_id}-{self._stamp}{part}.webm"
        video = [p for p in producers if p.kind == "video"][:1]
        audio = [p for p in producers if p.kind == "audio"][:1]
        rec_id = self._catalogue(self.title, path)
        if rec_id is None:
            return
        self.main = self._file(path, video + audio, self._layers_of(video[0]) if video else None)
        self.main_id = rec_id
        log.info("recording lesson %s to %s", self.router.lesson_id, path)

    def _layers_of(self, layer: Producer) -> list[Producer] | None:
        """The simulcast layers (smallest first) that `layer` is one of, or None."""
        for producer in self.router.producers.values():
            if producer.layers and layer in producer.layers:
                return list(producer.layers)
        return None

    def _finish_main(self) -> None:
        if self.main is not None and self.main_id is not None:
            self._finish(self.main, self.main_id)

    def _finish(self, recording: RecordingFile, rec_id: str) -> None:
        """Close the file and finish its library item (incomplete when the file stopped early). When the catalog
        cannot be written, the finish waits in memory (tried again at the next start or finish of a recording in
        this process) and, after a restart, for start-up repair: never an exception into the lesson."""
        recording.close()  # (a trailer that cannot be written stops the lesson's recording: _file_failed)
        if recording.layer_switches:
            log.info("recording %s changed simulcast layer %d times", recording.path.name, recording.layer_switches)
        try:
            size = recording.path.stat().st_size
        except OSError:
            size = 0
        retry_pending_finishes(self.catalog)
        pending = _PendingFinish(self.catalog, rec_id, self.router.lesson_id, recording.path, recording.duration_s,
                                 size, recording.failed)
        try:
            pending.finish()
        except CATALOG_ERRORS as exc:
            _PENDING_FINISHES[rec_id] = pending
            self._report(f"lesson {self.router.lesson_id}: the library could not be updated ({exc}): recording "
                         f"{rec_id} ({recording.path.name}) stays unfinished and is finished"
                         f"{' as incomplete' if recording.failed else ''} once there is room (later in this "
                         f"process, or by start-up repair at the next start)")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._finish_main()
        for recording, rec_id in self.extra + list(self.stage.values()):
            self._finish(recording, rec_id)
        self.stage.clear()

    def stats(self) -> dict:
        return {"main": self.main.stats() if self.main else None, "screens": [f.stats() for f, _ in self.extra],
                "stage": [f.stats() for f, _ in self.stage.values()]}


@dataclass
class _PendingFinish:
    """A library item the catalog could not finish (a full disk), kept until it can."""

    catalog: Catalog
    rec_id: str
    lesson_id: str
    path: Path
    duration_s: float
    size_bytes: int
    incomplete: str | None

    def finish(self) -> None:
        finish_in_catalog(self.catalog, self.rec_id, self.duration_s, self.size_bytes, self.incomplete)
        incomplete_marker(self.path).unlink(missing_ok=True)  # the catalog knows now


# library items whose finish the catalog could not take, by id: tried again whenever this process starts or
# finishes a recording; after a restart, start-up repair finishes them (the marker file says why incomplete)
_PENDING_FINISHES: dict[str, _PendingFinish] = {}


def finish_in_catalog(catalog: Catalog, rec_id: str, duration_s: float, size_bytes: int,
                      incomplete: str | None) -> None:
    if incomplete:
        catalog.finish_recording(rec_id, duration_s, size_bytes, incomplete=incomplete)  # type: ignore[call-arg]
    else:
        catalog.finish_recording(rec_id, duration_s, size_bytes)


def retry_pending_finishes(catalog: Catalog) -> int:
    """Finish the items of `catalog` a full disk kept waiting; returns how many still wait."""
    for rec_id, pending in list(_PENDING_FINISHES.items()):
        if pending.catalog is not catalog:
            continue
        try:
            pending.finish()
        except CATALOG_ERRORS:
            break  # still no room
        except Exception as exc:  # noqa: BLE001 - e.g. finished meanwhile by start-up repair of another process
            log.warning("recording %s of lesson %s: not finished after all: %s", rec_id, pending.lesson_id, exc)
        else:
            log.info("recording %s of lesson %s finished in the library after all", rec_id, pending.lesson_id)
        _PENDING_FINISHES.pop(rec_id, None)
    return sum(1 for p in _PENDING_FINISHES.values() if p.catalog is catalog)


def repair_file(path: Path) -> tuple[float, int]:
    """Rewrite a WebM a crash left without its index into a complete one (stream copy); (duration s, size).

    What cannot be read (the torn end of the file) ends the copy; what cannot be written (a full disk) raises
    OSError and leaves the original as it was (the partial copy is removed)."""
    if not path.exists() or path.stat().st_size == 0:
        return 0.0, 0
    fixed = path.with_suffix(".repaired.webm")
    last_ms = 0
    try:
        with av.open(str(path)) as src, av.open(str(fixed), "w", format="webm") as dst:
            mapping = {}
            for stream in src.streams:
                if stream.type not in ("video", "audio"):
                    continue
                out = dst.add_stream(stream.codec_context.name, rate=stream.average_rate if stream.type == "video"
                                     else stream.codec_context.sample_rate)
                if stream.type == "video":
                    out.width, out.height = stream.codec_context.width, stream.codec_context.height
                if stream.codec_context.extradata:
                    out.codec_context.extradata = stream.codec_context.extradata
                out.time_base = MS
                mapping[stream.index] = out
            packets = src.demux(*[s for s in src.streams if s.index in mapping])
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError:
                    break  # the torn end of the file: keep what came before
                if packet.size == 0 or packet.pts is None:
                    continue
                ms = int(packet.pts * packet.time_base * 1000)
                last_ms = max(last_ms, ms)
                packet.stream = mapping[packet.stream.index]
                packet.pts = packet.dts = ms
                packet.time_base = MS
                dst.mux(packet)  # (an OSError here, a full disk, is raised)
    except BaseException:
        fixed.unlink(missing_ok=True)
        raise
    fixed.replace(path)
    return last_ms / 1000, path.stat().st_size


def repair_unfinished(catalog: Catalog) -> int:
    """At start-up: close the recordings a crash (or a full disk) left open and hand them to the library.
    Returns how many were finished. Never raises: the server must start whatever the disk and the catalog
    say. Each failure is one log line; an item that cannot be repaired or finished now (no room to rewrite
    its file, a catalog that cannot be written) stays as it is and is tried again at the next start."""
    try:
        unfinished = catalog.unfinished()
    except Exception as exc:  # noqa: BLE001 - e.g. a catalog on a full disk that cannot even be read
        log.error("start-up repair skipped: the library's catalog cannot be read (%s); unfinished recordings "
                  "are repaired at the next start", _one_line(exc))
        return 0
    n = 0
    for rec in unfinished:
        try:
            if _repair_one(catalog, rec):
                n += 1
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop the server from starting
            log.error("recording %s (%s) not repaired: %s; tried again at the next start", rec.id, rec.file,
                      _one_line(exc))
    return n


def _repair_one(catalog: Catalog, rec: Any) -> bool:
    path = Path(rec.file)
    if not path.is_absolute():
        path = catalog.recordings_dir.parent / path
    marker = incomplete_marker(path)
    incomplete: str | None = None
    if marker.exists():
        try:
            incomplete = marker.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            incomplete = ""
        incomplete = incomplete or INCOMPLETE_UNKNOWN
    if getattr(rec, "state", "recording") == "processing":
        duration, size = rec.duration_s or 0.0, rec.size_bytes or 0  # the file was finished already
    else:
        try:
            duration, size = repair_file(path)
        except OSError as exc:
            # no room for the repaired copy (a full disk) or the file cannot be read: as it is, next time
            log.error("recording %s (%s) not repaired now: %s; tried again at the next start (free space in %s)",
                      rec.id, path.name, _one_line(exc), path.parent)
            return False
        except Exception as exc:  # noqa: BLE001 - a damaged file: the library gets what there is
            log.warning("recording %s (%s) could not be rewritten (%s): finished as it is", rec.id, path.name,
                        _one_line(exc))
            duration, size = 0.0, path.stat().st_size if path.exists() else 0
    try:
        finish_in_catalog(catalog, rec.id, duration, size, incomplete)
    except CATALOG_ERRORS as exc:
        log.error("recording %s (%s) repaired but not finished in the library: %s; tried again at the next start",
                  rec.id, path.name, _one_line(exc))
        return False
    marker.unlink(missing_ok=True)
    log.info("repaired recording %s (%.1f s%s) after an unclean stop", path, duration,
             ", incomplete" if incomplete else "")
    return True


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())

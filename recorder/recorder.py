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
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import av

from sfu.producer import Producer
from sfu.router import Router

from .depacketize import Frame, TrackDepacketizer, vp8_dimensions

log = logging.getLogger("ketang.recorder")

MS = fractions.Fraction(1, 1000)  # the file's time base: Matroska's native millisecond
# clusters of at most this long, flushed when written: what a crash can lose
CLUSTER_MS = 1000
# frames are held until the teacher's first sender report maps its RTP clock to wall time (sent ~1 s in)
SYNC_WAIT_S = 3.0
OPUS_PRE_SKIP = 312  # samples; what libopus encoders announce and browsers use
FALLBACK_VIDEO_SIZE = (1280, 720)


class Catalog(Protocol):
    """What the recorder needs of the library (recorder.library.Library)."""

    recordings_dir: Path

    def start_recording(self, lesson_id: str, title: str, teacher: str, teacher_sub: str, file: Path) -> str: ...

    def finish_recording(self, rec_id: str, duration_s: float, size_bytes: int) -> None: ...

    def unfinished(self) -> list[Any]: ...

    def save_lesson_record(self, lesson_id: str, record: dict[str, Any], attendance_csv: str, chat_csv: str) -> None: ...


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
                 layers: list[Producer] | None = None) -> None:
        self.path = path
        self.closed = False
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
        if self.closed:
            return
        if track.first_ts is None:
            track.first_ts = frame.ts
        if self._container is None:
            track.pending.append(frame)
            if self._ready():
                self._open()
            return
        self._write(track, frame)

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
        if self.closed or follower is None or track.stream is None or not frame.keyframe:
            return  # (the depacketizer emits nothing before a key frame: never a delta frame of a new layer)
        old = track.depacketizer
        track.depacketizer, follower.candidate = dep, None
        if old is not None:
            old.close()
        track.producer = dep.producer
        track.first_ts, track.first_wall = frame.ts, wall_of_rtp(dep.producer, frame.ts)
        self._write(track, frame)
        follower.switched(frame)

    def _write(self, track: _Track, frame: Frame) -> None:
        if track.stream is None or track.first_wall is None or track.first_ts is None or self._t0 is None:
            return  # a track that had no frame when the file was opened stays out of this file
        wall = wall_time(track.producer, frame.ts, track.first_ts, track.first_wall)
        ms = round((wall - self._t0) * 1000)
        if ms <= track.last_ms:
            ms = track.last_ms + 1  # strictly increasing per stream (Matroska needs ordered blocks)
        track.last_ms = ms
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = ms
        packet.time_base = MS
        packet.stream = track.stream
        packet.is_keyframe = frame.keyframe
        self._container.mux(packet)
        track.frames += 1
        track.bytes += len(frame.data)

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        return max((t.last_ms for t in self.tracks), default=0) / 1000

    def close(self) -> None:
        if self.closed:
            return
        for track in self.tracks:
            if track.depacketizer is not None:
                track.depacketizer.close()
            if track.follower is not None:
                track.follower.close()
        if self._container is None and any(t.pending for t in self.tracks):
            self._open()  # a very short lesson: write what there is
        self.closed = True
        if self._container is not None:
            self._container.close()

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
        self._stamp = time.strftime("%Y%m%d-%H%M%S")
        router.on_track(self._on_track)
        router.on_stage(lambda _: None if self.closed else self._sync())
        self._sync()

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
            rec_id = self.catalog.start_recording(self.router.lesson_id, f"{self.title}（上台 {name}）",
                                                  self.teacher, self.teacher_sub, path)
            self.stage[pid] = (RecordingFile(path, video + audio, clock=self._clock), rec_id)

    async def _on_track(self, change: str, producer: Producer) -> None:
        if not self.closed:
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
        teachers = [p for p in self.router.producers.values() if p.owner_role == "teacher"]
        live = [self._layer_to_record(p) for p in teachers]
        pending = any(p is None for p in live)
        if pending:
            # a simulcast camera whose layers are not all known yet: the main file starts once they are
            asyncio.get_event_loop().call_later(SIMULCAST_SETTLE_S / 2, lambda: None if self.closed else self._sync())
        live = [p for p in live if p is not None]
        main = [] if pending else [p for p in live if p.source in ("camera", "microphone")]
        screens = [p for p in live if p.source == "screen"]
        files = ([self.main] if self.main else []) + [f for f, _ in self.extra] + [f for f, _ in self.stage.values()]
        recorded = {id(p) for f in files for t in f.tracks for p in t.sources}
        self._sync_stage(recorded)
        if main and (self.main is None or self.main.closed):
            self._start_main(main)
        elif main and any(id(p) not in recorded for p in main):
            # the teacher reconnected: a new part of the main recording
            self._finish_main()
            self._start_main(main)
        for producer in screens:
            if id(producer) not in recorded:
                n = len(self.extra) + 1
                path = self.catalog.recordings_dir / f"{self.router.lesson_id}-{self._stamp}-screen{n}.webm"
                # each courseware share is a library item of its own, next to the lesson's main recording
                rec_id = self.catalog.start_recording(self.router.lesson_id, f"{self.title}（课件 {n}）",
                                                      self.teacher, self.teacher_sub, path)
                recording = RecordingFile(path, [producer], clock=self._clock, layers=self._layers_of(producer))
                self.extra.append((recording, rec_id))

    def _start_main(self, producers: list[Producer]) -> None:
        part = "" if self.main is None else f"-{time.strftime('%H%M%S')}"
        path = self.catalog.recordings_dir / f"{self.router.lesson_id}-{self._stamp}{part}.webm"
        video = [p for p in producers if p.kind == "video"][:1]
        audio = [p for p in producers if p.kind == "audio"][:1]
        self.main = RecordingFile(path, video + audio, clock=self._clock,
                                  layers=self._layers_of(video[0]) if video else None)
        self.main_id = self.catalog.start_recording(self.router.lesson_id, self.title, self.teacher,
                                                    self.teacher_sub, path)
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
        recording.close()
        if recording.layer_switches:
            log.info("recording %s changed simulcast layer %d times", recording.path.name, recording.layer_switches)
        size = recording.path.stat().st_size if recording.path.exists() else 0
        self.catalog.finish_recording(rec_id, recording.duration_s, size)

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


def repair_file(path: Path) -> tuple[float, int]:
    """Rewrite a WebM a crash left without its index into a complete one (stream copy); (duration s, size)."""
    if not path.exists() or path.stat().st_size == 0:
        return 0.0, 0
    fixed = path.with_suffix(".repaired.webm")
    last_ms = 0
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
        try:
            for packet in src.demux(*[s for s in src.streams if s.index in mapping]):
                if packet.size == 0 or packet.pts is None:
                    continue
                ms = int(packet.pts * packet.time_base * 1000)
                last_ms = max(last_ms, ms)
                packet.stream = mapping[packet.stream.index]
                packet.pts = packet.dts = ms
                packet.time_base = MS
                dst.mux(packet)
        except av.error.FFmpegError:
            pass  # the torn end of the file: keep what came before
    fixed.replace(path)
    return last_ms / 1000, path.stat().st_size


def repair_unfinished(catalog: Catalog) -> int:
    """At start-up: close the recordings a crash left open and hand them to the library. Returns how many."""
    n = 0
    for rec in catalog.unfinished():
        path = Path(rec.file)
        if not path.is_absolute():
            path = catalog.recordings_dir.parent / path
        try:
            duration, size = repair_file(path)
        except Exception:  # noqa: BLE001 - one bad file must not stop the server from starting
            log.exception("could not repair %s", path)
            duration, size = 0.0, path.stat().st_size if path.exists() else 0
        catalog.finish_recording(rec.id, duration, size)
        log.info("repaired recording %s (%.1f s) after an unclean stop", path, duration)
        n += 1
    return n

"""The composite 课例: one H.264/AAC MP4 of a lesson as classrooms saw it, from the files the recorder wrote.

For each output frame (CANVAS at FPS) the span of the lesson's timeline (timeline.py) says which pictures are
shown and layout.py where; each source's latest decoded frame at that time is scaled into its place (a source
that froze or ended keeps its last frame). Audio: the teacher's microphone and the microphones of the classrooms
on stage, decoded from Opus, resampled to 48 kHz stereo, placed by their timestamps on the lesson's clock,
summed with a soft limiter, encoded AAC. Chapters go into the MP4 (FFmpeg writes them as a chapter track that
PyAV/FFmpeg read back) and into a WebVTT file next to it for the player. The index (moov) is moved to the front
(faststart).

Everything streams: each source is demuxed and decoded as the output advances; nothing holds a whole file.
Blocking and CPU-bound: run it off the live path (jobs.py runs it in a niced child process).

Why 1280×720 at 15 fps: courseware text needs the 720 lines to stay readable, while slides, a teacher at a desk
and a classroom on stage lose little at 15 frames a second; the encoder's work halves against 30 fps (the
figures are in docs/benchmarks.md, "The composite 课例").
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
import numpy as np

from recorder.compose.layout import CANVAS, Rect, boxes, fit
from recorder.compose.timeline import Source, Timeline, TimelineError, build, parse_sources, webvtt_chapters
from recorder.library.export import (
    AUDIO_BITRATE_BPS,
    AUDIO_ENCODER,
    AUDIO_RATE_HZ,
    X264_OPTIONS,
    MediaError,
    probe,
    video_encoder,
)

log = logging.getLogger("ketang.recorder.compose")

FPS: Final[int] = 15
AUDIO_BLOCK: Final[int] = 1024  # samples per AAC frame
# a chunk of audio that arrives within this many samples of where the one before ended joins it seamlessly
# (timestamps jitter by a few ms); a larger gap (lost packets) is silence, an overlap is cut
AUDIO_SNAP: Final[int] = 960
LIMIT_KNEE: Final[float] = 0.8  # above this the sum is bent smoothly towards 1.0 instead of clipping
BLACK_Y, BLACK_UV = 16, 128  # video-range black
PROGRESS_STEP: Final[float] = 0.01


class ComposeCancelled(MediaError):
    pass


def soft_limit(mix: np.ndarray, knee: float = LIMIT_KNEE) -> np.ndarray:
    """Samples above `knee` in magnitude bent smoothly (tanh) so that none reaches 1.0: a sum of two loud
    voices does not clip. Below the knee nothing changes."""
    out = mix.astype(np.float32, copy=True)
    over = np.abs(out) > knee
    if over.any():
        room = 1.0 - knee
        v = out[over]
        out[over] = np.sign(v) * (knee + room * np.tanh((np.abs(v) - knee) / room))
    return out


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), "r")
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open {path.name}: {exc}") from exc


class VideoFeed:
    """One file's video, decoded as the composite's time advances: the frame showing at time t."""

    def __init__(self, path: Path, offset: float, threads: int) -> None:
        self.path, self.offset, self.threads = path, offset, threads
        self._container: Any = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._next: av.VideoFrame | None = None
        self.current: av.VideoFrame | None = None
        self.done = False

    def _decode(self) -> Iterator[av.VideoFrame]:
        self._container = _open(self.path)
        if not self._container.streams.video:
            return
        stream = self._container.streams.video[0]
        stream.codec_context.thread_count = self.threads
        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue  # one damaged frame from a lossy link must not lose the lesson
            for frame in frames:
                if frame.time is not None:
                    yield frame

    def frame_at(self, t: float) -> av.VideoFrame | None:
        at = t - self.offset
        if self._frames is None:
            self._frames = self._decode()
        while not self.done:
            if self._next is None:
                try:
                    self._next = next(self._frames)
                except StopIteration:
                    self.done = True
                    self.close()
                    break
                except av.error.FFmpegError as exc:  # a torn end (crash): what came before stays
                    log.warning("%s: decoding stopped at %.1f s: %s", self.path.name, at, exc)
                    self.done = True
                    self.close()
                    break
            if self._next.time <= at:
                self.current, self._next = self._next, None
            else:
                break
        return self.current

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class AudioFeed:
    """One file's audio as 48 kHz stereo float samples placed on the composite's clock (sample 0 = its 0 s)."""

    def __init__(self, path: Path, offset: float, end: float) -> None:
        self.path, self.offset, self.end = path, offset, end
        self._container: Any = None
        self._chunks: Iterator[tuple[int, np.ndarray]] | None = None
        self._buf = np.zeros((0, 2), np.float32)
        self._buf_start = 0
        self.done = False

    def _decode(self) -> Iterator[tuple[int, np.ndarray]]:
        self._container = _open(self.path)
        if not self._container.streams.audio:
            return
        stream = self._container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="stereo", rate=AUDIO_RATE_HZ)
        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue
            for frame in frames:
                if frame.time is None:
                    continue
                pos = round((frame.time + self.offset) * AUDIO_RATE_HZ)
                frame.pts = None
                parts = [f.to_ndarray().reshape(-1, 2) for f in resampler.resample(frame)]
                if parts:
                    yield pos, np.concatenate(parts).astype(np.float32, copy=False)

    def _append(self, pos: int, samples: np.ndarray) -> None:
        if not len(self._buf):
            self._buf, self._buf_start = samples, pos
            return
        expected = self._buf_start + len(self._buf)
        if abs(pos - expected) <= AUDIO_SNAP:
            pos = expected
        if pos > expected:  # lost packets: silence in between
            samples = np.concatenate([np.zeros((pos - expected, 2), np.float32), samples])
        elif pos < expected:
            samples = samples[expected - pos:]
        self._buf = np.concatenate([self._buf, samples])

    def read(self, start: int, n: int) -> np.ndarray | None:
        """Samples start..start+n (zeros where the file has none), or None when it has none there at all."""
        if self._chunks is None:
            self._chunks = self._decode()
        while not self.done and (not len(self._buf) or self._buf_start + len(self._buf) < start + n):
            try:
                pos, samples = next(self._chunks)
            except StopIteration:
                self.done = True
                self.close()
                break
            except av.error.FFmpegError as exc:
                log.warning("%s: audio decoding stopped: %s", self.path.name, exc)
                self.done = True
                self.close()
                break
            self._append(pos, samples)
        lo, hi = max(start, self._buf_start), min(start + n, self._buf_start + len(self._buf))
        out = None
        if hi > lo:
            out = np.zeros((n, 2), np.float32)
            out[lo - start:hi - start] = self._buf[lo - self._buf_start:hi - self._buf_start]
        if start > self._buf_start:  # never read again
            cut = min(start - self._buf_start, len(self._buf))
            self._buf, self._buf_start = self._buf[cut:], self._buf_start + cut
        return out

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class Canvas:
    """The output picture as yuv420p planes in one array (the layout PyAV's from_ndarray takes)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.w, self.h = size
        self.data = np.empty((self.h * 3 // 2, self.w), np.uint8)
        self.y = self.data[:self.h]
        self.u = self.data[self.h:self.h + self.h // 4].reshape(self.h // 2, self.w // 2)
        self.v = self.data[self.h + self.h // 4:].reshape(self.h // 2, self.w // 2)
        self._scaled: dict[tuple[str, Rect], tuple[int, list[np.ndarray]]] = {}

    def clear(self) -> None:
        self.y.fill(BLACK_Y)
        self.u.fill(BLACK_UV)
        self.v.fill(BLACK_UV)

    def paste(self, key: str, frame: av.VideoFrame, box: Rect, align: str) -> Rect:
        rect = fit(frame.width, frame.height, box, align)
        cached = self._scaled.get((key, rect))
        if cached is None or cached[0] != id(frame):
            scaled = frame.reformat(width=rect.w, height=rect.h, format="yuv420p")
            cached = (id(frame), [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width]
                                  for p in scaled.planes])
            self._scaled = {k: v for k, v in self._scaled.items() if k[0] != key}
            self._scaled[(key, rect)] = cached
        y, u, v = cached[1]
        self.y[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w] = y
        cy, cx, ch, cw = rect.y // 2, rect.x // 2, rect.h // 2, rect.w // 2
        self.u[cy:cy + ch, cx:cx + cw] = u
        self.v[cy:cy + ch, cx:cx + cw] = v
        return rect

    def frame(self) -> av.VideoFrame:
        return av.VideoFrame.from_ndarray(self.data, format="yuv420p")


def load_timeline(record_path: Path) -> Timeline:
    try:
        record = json.loads(Path(record_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MediaError(f"cannot read the lesson's record {Path(record_path).name}: {exc}") from exc
    try:
        return build(parse_sources(record))
    except TimelineError as exc:
        raise MediaError(f"the lesson's record {Path(record_path).name}: {exc}") from exc


def compose_lesson(record_path: Path, recordings_dir: Path, dst: Path,
                   progress: Callable[[float], None] | None = None, cancel: threading.Event | None = None,
                   threads: int = 1, fps: int = FPS, canvas: tuple[int, int] = CANVAS) -> dict[str, Any]:
    """Compose the lesson whose record is `record_path` (its files in `recordings_dir`) into `dst` (MP4) and
    `dst` with .vtt (its chapters). ``threads``: for each decoder and the encoder (1 keeps the job on one core).
    ``progress(0..1)`` is called from this thread; setting ``cancel`` stops it (ComposeCancelled). The file
    appears under `dst` only when complete. Returns a probe of `dst` with the chapters."""
    timeline = load_timeline(record_path)
    recordings_dir, dst = Path(recordings_dir), Path(dst)
    present = {s for s in timeline.sources if (recordings_dir / s.file).is_file()}
    for source in set(timeline.sources) - present:
        log.warning("lesson composite: %s is missing; composed without it", source.file)
    if not present:
        raise MediaError("none of the lesson's recorded files is there")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp.mp4")
    try:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            _compose(timeline, present, recordings_dir, out, progress, cancel, threads, fps, canvas)
        os.replace(tmp, dst)
    except av.error.FFmpegError as exc:
        raise MediaError(f"composing failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    vtt = dst.with_suffix(".vtt")
    vtt.write_text(webvtt_chapters(timeline.chapters), encoding="utf-8")
    if progress:
        progress(1.0)
    info = probe(dst)
    info["chapters"] = [{"start": c.start, "end": c.end, "title": c.title} for c in timeline.chapters]
    info["chapters_vtt"] = vtt.name
    return info


def _compose(timeline: Timeline, present: set[Source], folder: Path, out: av.container.OutputContainer,
             progress: Callable[[float], None] | None, cancel: threading.Event | None, threads: int, fps: int,
             size: tuple[int, int]) -> None:
    name = video_encoder()
    vout = out.add_stream(name, rate=fps)
    vout.width, vout.height = size
    vout.pix_fmt = "yuv420p"
    frame_tb = Fraction(1, fps)
    vout.time_base = vout.codec_context.time_base = frame_tb
    vout.codec_context.thread_count = threads
    if name == "libx264":
        vout.options = {**X264_OPTIONS, "threads": str(threads)}
    aout = out.add_stream(AUDIO_ENCODER, rate=AUDIO_RATE_HZ)
    aout.bit_rate = AUDIO_BITRATE_BPS
    aout.layout = "stereo"
    ms = Fraction(1, 1000)
    out.set_chapters([{"id": i, "start": round(c.start * 1000), "end": round(c.end * 1000), "time_base": ms,
                       "metadata": {"title": c.title}} for i, c in enumerate(timeline.chapters)])

    videos = {s: VideoFeed(folder / s.file, timeline.offset(s), threads)
              for s in present if s.role in ("teacher", "courseware", "stage")}
    audios = [AudioFeed(folder / s.file, timeline.offset(s), timeline.offset(s) + s.end - s.start)
              for s in present if s.role in ("teacher", "stage")]
    canvas = Canvas(size)
    frames = max(1, int(timeline.duration * fps))
    audio_pos = 0
    reported = 0.0
    try:
        for k in range(frames):
            if cancel is not None and cancel.is_set():
                raise ComposeCancelled("composing cancelled")
            t = k / fps
            canvas.clear()
            span = timeline.span_at(t)
            for source, box, align in boxes(span, size) if span is not None else []:
                feed = videos.get(source)
                frame = feed.frame_at(t) if feed is not None else None
                if frame is not None:
                    canvas.paste(source.file, frame, box, align)
            image = canvas.frame()
            image.pts, image.time_base = k, frame_tb
            out.mux(vout.encode(image))
            until = round((k + 1) / fps * AUDIO_RATE_HZ)
            while audio_pos + AUDIO_BLOCK <= until:
                audio_pos = _mix_block(audios, audio_pos, aout, out)
            if progress and (k + 1) / frames - reported >= PROGRESS_STEP:
                reported = (k + 1) / frames
                progress(min(0.99, reported))
        out.mux(vout.encode(None))
        out.mux(aout.encode(None))
    finally:
        for feed in videos.values():
            feed.close()
        for audio in audios:
            audio.close()


def _mix_block(audios: list[AudioFeed], pos: int, aout: Any, out: av.container.OutputContainer) -> int:
    t0, t1 = pos / AUDIO_RATE_HZ, (pos + AUDIO_BLOCK) / AUDIO_RATE_HZ
    parts = []
    for audio in audios:
        if audio.offset - 1.0 <= t1 and t0 <= audio.end + 1.0:  # (its file can hold a little more than its span)
            block = audio.read(pos, AUDIO_BLOCK)
            if block is not None:
                parts.append(block)
        elif t0 > audio.end + 1.0:
            audio.close()
    mix = soft_limit(np.sum(parts, axis=0)) if parts else np.zeros((AUDIO_BLOCK, 2), np.float32)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mix.T), format="fltp", layout="stereo")
    frame.sample_rate = AUDIO_RATE_HZ
    frame.pts, frame.time_base = pos, Fraction(1, AUDIO_RATE_HZ)
    out.mux(aout.encode(frame))
    return pos + AUDIO_BLOCK

"""Offline media work on recorded lessons, with PyAV: probe, poster frame, MP4 export.

None of this runs on the live path. The recorder writes the WebM exactly as the teacher's browser
encoded it (no transcoding while a lesson is live); here, after the lesson, we are free to decode and
re-encode, because what people in schools most want is one plain MP4 file that any player opens.

Every function is blocking and CPU-bound: the web layer runs them in a worker thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av

from recorder.record.depacketize import vp8_dimensions

log = logging.getLogger("ketang.recorder.media")

# Preferred H.264 encoders, best first. libx264 ships in PyAV's wheels; "h264" is whatever FFmpeg maps
# that name to (often libx264 or openh264); mpeg4 (Part 2) plays almost everywhere but is not H.264.
VIDEO_ENCODERS: Final[tuple[str, ...]] = ("libx264", "libopenh264", "h264", "mpeg4")
AUDIO_ENCODER: Final[str] = "aac"
AUDIO_RATE_HZ: Final[int] = 48_000
AUDIO_BITRATE_BPS: Final[int] = 96_000
# Courseware text must stay readable: CRF 23 is x264's own default, "veryfast" keeps an hour-long lesson
# well under real time on one core of these machines.
X264_OPTIONS: Final[dict[str, str]] = {"preset": "veryfast", "crf": "23"}
MPEG4_BITRATE_BPS: Final[int] = 1_500_000
# Millisecond timestamps: Matroska/WebM's own resolution, and WebRTC video is variable frame rate.
VIDEO_TIME_BASE: Final[Fraction] = Fraction(1, 1000)
# Only a guess for encoders that want a rate; real timing comes from each frame's pts.
NOMINAL_FPS: Final[int] = 30
POSTER_MAX_WIDTH_PX: Final[int] = 640
# A lesson's first frames are often black (camera warming up); a poster from a few seconds in says more.
POSTER_AT_S: Final[float] = 3.0
PROGRESS_STEP: Final[float] = 0.01  # report at most every 1 %


class MediaError(Exception):
    """A file could not be read or written as media; the message says which and why."""


def video_encoder() -> str:
    """The best H.264 encoder this PyAV build offers (see VIDEO_ENCODERS)."""
    for name in VIDEO_ENCODERS:
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
            except Exception as exc:  # noqa: BLE001 - listed but not usable as an encoder
                log.debug("encoder %s unusable: %s", name, exc)
                continue
            return name
    raise MediaError(f"no usable video encoder (tried {', '.join(VIDEO_ENCODERS)})")


def _open(src: Path) -> av.container.InputContainer:
    try:
        return av.open(str(src), "r")
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open {src.name}: {exc}") from exc


def _scan_duration_s(container: av.container.InputContainer) -> float:
    """Last packet end over all streams: a WebM cut off by a crash has no Duration element."""
    end = 0.0
    for packet in container.demux():
        if packet.pts is None or packet.time_base is None:
            continue
        t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
        end = max(end, t)
    return end


def probe(src: Path) -> dict[str, Any]:
    """Duration, size and streams of a media file."""
    src = Path(src)
    with _open(src) as container:
        streams = []
        for s in container.streams:
            info: dict[str, Any] = {"index": s.index, "type": s.type,
                                    "codec": s.codec_context.name if s.codec_context else None}
            if s.type == "video":
                info.update(width=s.codec_context.width, height=s.codec_context.height)
            elif s.type == "audio":
                info.update(sample_rate=s.codec_context.sample_rate, channels=s.codec_context.channels)
            streams.append(info)
        if container.duration is not None and container.duration > 0:
            duration = container.duration / av.time_base
        else:
            duration = _scan_duration_s(container)
        fmt = container.format.name
    return {"duration_s": round(float(duration), 3), "size_bytes": src.stat().st_size, "format": fmt,
            "streams": streams}


def _first_keyframe(container: av.container.InputContainer, stream: av.VideoStream) -> av.VideoFrame | None:
    # Decode keyframes only: a poster costs one frame's decode, not a GOP's.
    stream.codec_context.skip_frame = "NONKEY"
    for frame in container.decode(stream):
        return frame
    return None


def make_poster(src: Path, dst: Path, at_s: float = POSTER_AT_S) -> Path:
    """Decode ONE keyframe (at or before ``at_s``, else the first) and write it to ``dst`` as JPEG
    (or PNG when ``dst`` ends in .png). Returns ``dst``. Raises MediaError for a file without video."""
    src, dst = Path(src), Path(dst)
    with _open(src) as container:
        if not container.streams.video:
            raise MediaError(f"{src.name} has no video stream")
        stream = container.streams.video[0]
        # a recording that followed a simulcast camera's layers has frames of several sizes: the poster
        # has the file's (its track header's), whichever smaller layer the key frame came from
        size = (stream.codec_context.width, stream.codec_context.height)
        frame = None
        if at_s > 0:
            try:
                container.seek(int(at_s / stream.time_base), stream=stream, backward=True, any_frame=False)
                frame = _first_keyframe(container, stream)
            except av.error.FFmpegError:
                frame = None  # no cues (a file cut off by a crash): fall back to the start
        if frame is None:
            container.seek(0, stream=stream, backward=True, any_frame=False)
            frame = _first_keyframe(container, stream)
        if frame is None:
            raise MediaError(f"{src.name} has no decodable keyframe")
    # (a key frame larger than the header's size keeps its own: a file that started on a small layer)
    _write_image(frame, dst, size if all(size) and size[0] * size[1] >= frame.width * frame.height else None)
    return dst


def _write_image(frame: av.VideoFrame, dst: Path, size: tuple[int, int] | None = None) -> None:
    """``size``: the picture's size whatever the frame's (a simulcast recording changes size mid-file)."""
    width, height = size or (frame.width, frame.height)
    if width > POSTER_MAX_WIDTH_PX:
        height = max(2, round(height * POSTER_MAX_WIDTH_PX / width / 2) * 2)
        width = POSTER_MAX_WIDTH_PX
    png = dst.suffix.lower() == ".png"
    codec = av.CodecContext.create("png" if png else "mjpeg", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "rgb24" if png else "yuvj420p"
    codec.time_base = Fraction(1, 25)
    if not png:
        codec.options = {"qmin": "2", "qmax": "6"}  # decent JPEG quality; default q is blocky
    image = frame.reformat(width=width, height=height, format=codec.pix_fmt)
    data = b"".join(bytes(p) for p in codec.encode(image)) + b"".join(bytes(p) for p in codec.encode(None))
    _atomic_write(dst, data)


def _atomic_write(dst: Path, data: bytes) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk is not left fuller by half an image
        raise


class ExportCancelled(MediaError):
    pass


def export_mp4(src: Path, dst: Path, progress: Callable[[float], None] | None = None,
               cancel: threading.Event | None = None) -> dict[str, Any]:
    """Transcode ``src`` to H.264 (see video_encoder) + AAC in an MP4 with its index (moov) at the front,
    so that a browser starts playing and seeking before the whole file has arrived.

    ``progress(fraction)`` is called from this thread with 0..1; setting ``cancel`` stops the export
    (ExportCancelled). The file appears under ``dst`` only when complete. Returns a probe of ``dst``.
    """
    src, dst = Path(src), Path(dst)
    total_s = probe(src)["duration_s"] or 0.0
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp.mp4")
    try:
        with _open(src) as inp, av.open(str(tmp), "w", format="mp4",
                                          options={"movflags": "+faststart"}) as out:
            _transcode(inp, out, total_s, progress, cancel)
        os.replace(tmp, dst)
    except av.error.FFmpegError as exc:
        raise MediaError(f"export of {src.name} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    if progress:
        progress(1.0)
    return probe(dst)


def _transcode(inp: av.container.InputContainer, out: av.container.OutputContainer, total_s: float,
               progress: Callable[[float], None] | None, cancel: threading.Event | None) -> None:
    vin = inp.streams.video[0] if inp.streams.video else None
    ain = inp.streams.audio[0] if inp.streams.audio else None
    if vin is None and ain is None:
        raise MediaError("nothing to export: no audio or video stream")
    vout = _add_video(out, vin, _largest_vp8_size(inp, vin)) if vin else None
    aout = out.add_stream(AUDIO_ENCODER, rate=AUDIO_RATE_HZ) if ain else None
    if aout is not None:
        aout.bit_rate = AUDIO_BITRATE_BPS
        aout.layout = "stereo"
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE_HZ) if ain else None
    last_vpts = -1
    reported = 0.0
    for packet in inp.demux([s for s in (vin, ain) if s is not None]):
        if cancel is not None and cancel.is_set():
            raise ExportCancelled("export cancelled")
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue  # one damaged packet from a lossy school link must not lose the lesson
        for frame in frames:
            if packet.stream is vin and vout is not None:
                pts = _video_pts(frame)
                if pts is None or pts <= last_vpts:
                    continue  # the encoder refuses non-increasing pts; a duplicate frame is worth nothing
                last_vpts = pts
                image = frame.reformat(width=vout.codec_context.width, height=vout.codec_context.height,
                                       format="yuv420p")
                image.pts, image.time_base = pts, VIDEO_TIME_BASE
                out.mux(vout.encode(image))
            elif aout is not None and resampler is not None:
                frame.pts = None  # audio is continuous in a recording; the encoder counts samples
                for chunk in resampler.resample(frame):
                    out.mux(aout.encode(chunk))
        if progress and total_s > 0 and packet.pts is not None and packet.time_base is not None:
            done = min(0.99, float(packet.pts * packet.time_base) / total_s)
            if done - reported >= PROGRESS_STEP:
                reported = done
                progress(done)
    if aout is not None and resampler is not None:
        for chunk in resampler.resample(None):
            out.mux(aout.encode(chunk))
        out.mux(aout.encode(None))
    if vout is not None:
        out.mux(vout.encode(None))


def _video_pts(frame: av.VideoFrame) -> int | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return round(frame.pts * frame.time_base / VIDEO_TIME_BASE)


def _largest_vp8_size(inp: av.container.InputContainer, vin: av.VideoStream) -> tuple[int, int] | None:
    """The largest frame size among a VP8 stream's key frames (read from their headers: demuxing, no
    decoding), then back to the start. A recording that followed a simulcast camera's layers changes size at
    key frames, and its track header only has the first size."""
    if vin.codec_context.name != "vp8":
        return None
    best: tuple[int, int] | None = None
    try:
        for packet in inp.demux(vin):
            if packet.is_keyframe and packet.size:
                size = vp8_dimensions(bytes(packet))
                if size and (best is None or size[0] * size[1] > best[0] * best[1]):
                    best = size
    except av.error.FFmpegError:
        pass  # the torn end of a file: the sizes before it
    inp.seek(0)
    return best


def _add_video(out: av.container.OutputContainer, vin: av.VideoStream,
               size: tuple[int, int] | None = None) -> av.VideoStream:
    """The output video stream: ``size`` (else the input's header size); every frame is scaled to it."""
    name = video_encoder()
    if name == "mpeg4":
        log.warning("no H.264 encoder in this PyAV build: exporting MPEG-4 Part 2 video instead")
    stream = out.add_stream(name, rate=NOMINAL_FPS)
    cc = vin.codec_context
    width, height = size or (cc.width, cc.height)
    # 4:2:0 needs even dimensions
    stream.width = max(2, (width or 2) // 2 * 2)
    stream.height = max(2, (height or 2) // 2 * 2)
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = VIDEO_TIME_BASE
    stream.time_base = VIDEO_TIME_BASE
    if name == "libx264":
        stream.options = dict(X264_OPTIONS)
    elif name == "mpeg4":
        stream.bit_rate = MPEG4_BITRATE_BPS
    return stream

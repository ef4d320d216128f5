"""HLS renditions of a lesson for weak links: 720p / 360p / 180p H.264 and a 48 kbit/s AAC audio rendition,
with a master playlist, from one recording (the composite 课例 when it exists, else the teacher's file).

The source is decoded once; each decoded picture is scaled for every video rendition and encoded by one libx264
per rendition at a capped bit rate (``maxrate``/``bufsize``: a 250 kbit/s school link must be able to carry the
180p one), a key frame exactly every ``KEYFRAME_S`` seconds (``keyint_min`` = ``g``, scene cuts off), so that
every rendition's segments start at the same instants and a player switches between them at any segment. The
audio is its own rendition (one AAC encode, mono: a teacher's voice), referenced by every video variant as its
audio group (``EXT-X-MEDIA``) and listed as an audio-only variant too, for a link too weak for any picture.
FFmpeg's ``hls`` muxer cuts fragmented-MP4 segments (less overhead than MPEG-TS: 48 kbit/s of AAC
cost 75 kbit/s in TS packets) of ``SEGMENT_S`` and writes each variant's playlist (VOD).

The master playlist's ``BANDWIDTH`` is each variant's measured peak segment rate (video + audio, as RFC 8216
asks), ``AVERAGE-BANDWIDTH`` its mean; ``CODECS`` comes from the H.264 SPS actually written
(``avc1.PPCCLL``). Everything is written in a temporary folder next to ``dst`` and moved into place when
complete: a player never sees half a set.

Blocking and CPU-bound: run in a niced child process (recorder/hls/jobs.py).
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from io import BytesIO
from pathlib import Path
from typing import Any, Final

import av
from av.video.frame import PictureType

from recorder.library.export import MediaError, _largest_vp8_size, _open, probe

log = logging.getLogger("ketang.recorder.hls")


@dataclass(frozen=True)
class Rendition:
    name: str  # the folder of its playlist and segments
    height: int
    video_bps: int
    profile: str  # libx264's profile
    level: str


# Bit rates for rural links: the 180p one with its audio (peak ≈ 220 kbit/s) fits a 250 kbit/s line; 360p a
# 600 kbit/s one; 720p keeps courseware text readable where there is 1.5 Mbit/s.
RENDITIONS: Final[tuple[Rendition, ...]] = (
    Rendition("720p", 720, 1_200_000, "main", "3.1"),
    Rendition("360p", 360, 400_000, "main", "3.0"),
    Rendition("180p", 180, 130_000, "baseline", "2.1"),
)
AUDIO_NAME: Final[str] = "audio"
AUDIO_BPS: Final[int] = 48_000
AUDIO_RATE_HZ: Final[int] = 48_000
AUDIO_CODEC: Final[str] = "mp4a.40.2"  # AAC-LC
# 15 frames a second: the composite's own rate; slides, a teacher at a desk and a class answering lose little,
# and at 150 kbit/s fewer frames are better frames
FPS: Final[int] = 15
KEYFRAME_S: Final[int] = 2
SEGMENT_S: Final[int] = 2  # a segment per key frame: a player starts after one 2 s segment
VBV_FACTOR: Final[float] = 1.2  # maxrate = 1.2 × the target, bufsize = one second of it: a segment peaks little above
MASTER_NAME: Final[str] = "master.m3u8"
# What the player page starts in the browser's own HLS player before any player library has arrived (docs/library.md,
# "The player"): `start.m3u8` lists `start/` — the lowest rendition's pictures with the audio in the same segments
# (one stream: a player starts after two segments of it) — and the audio-only variant. Its segments are short
# at first (0.27, 0.27, 0.47, 1 s, then 2 s like the others): the lowest rendition has extra key frames at
# those instants, and its encoder starts with a third of its rate buffer (x264's vbv-init) so that the first
# picture is not most of a second's bits. A page then plays after ~15 KB instead of ~60 KB.
START_NAME: Final[str] = "start.m3u8"
START_DIR: Final[str] = "start"
START_KEY_TICKS: Final[frozenset[int]] = frozenset({4, 8, 15})  # at 15 fps: 0.27, 0.53 and 1 s
START_SEGMENT_S: Final[float] = 0.25  # (the hls muxer cuts at the first key frame this long after the last cut)
START_VBV_INIT: Final[float] = 0.3
PLAYLIST_NAME: Final[str] = "index.m3u8"
INIT_NAME: Final[str] = "init.mp4"
SEGMENT_PATTERN: Final[str] = "seg%05d.m4s"
# what a request may name inside a rendition set (recorder/hls/web.py refuses anything else)
FILE_RE: Final[re.Pattern[str]] = re.compile(r"^(?:master\.m3u8|start\.m3u8|(?:720p|360p|180p|audio|start)/(?:index\.m3u8|init\.mp4|seg\d{5}\.m4s))$")
PROGRESS_STEP: Final[float] = 0.01


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def plan(source_size: tuple[int, int] | None) -> list[tuple[Rendition, int, int]]:
    """The video renditions for a source of this size, with their sizes (aspect kept, even): none taller than
    the source (the smallest is always made)."""
    if source_size is None:
        return []
    width, height = source_size
    chosen = [r for r in RENDITIONS if r.height <= height] or [RENDITIONS[-1]]
    return [(r, _even(r.height * width / height), r.height) for r in chosen]


class _Output:
    """One rendition: an hls muxer writing `<folder>/index.m3u8` and its segments."""

    def __init__(self, folder: Path, segment_s: float = SEGMENT_S) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.container = av.open(str(folder / PLAYLIST_NAME), "w", format="hls", options={
            "hls_time": str(segment_s), "hls_playlist_type": "vod", "hls_list_size": "0",
            "hls_segment_type": "fmp4", "hls_fmp4_init_filename": INIT_NAME, "hls_flags": "independent_segments",
            "hls_segment_filename": str(folder / SEGMENT_PATTERN)})


def _video_output(folder: Path, r: Rendition, width: int, height: int, threads: int,
                  lowest: bool = False) -> tuple[_Output, Any]:
    out = _Output(folder)
    stream = out.container.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = stream.codec_context.time_base = Fraction(1, FPS)
    stream.codec_context.thread_count = threads
    gop = str(int(FPS * KEYFRAME_S))
    stream.options = {"preset": "veryfast", "profile": r.profile, "level": r.level, "b": str(r.video_bps),
                      "maxrate": str(int(r.video_bps * VBV_FACTOR)),
                      "bufsize": str(int(r.video_bps * VBV_FACTOR)),
                      "g": gop, "keyint_min": gop, "sc_threshold": "0", "bf": "0"}
    if lowest:  # the start playlist's source: its extra key frames are IDR frames, its first picture smaller
        stream.options = {**stream.options, "forced-idr": "1", "x264-params": f"vbv-init={START_VBV_INIT}"}
    return out, stream


def _audio_output(folder: Path) -> tuple[_Output, Any]:
    out = _Output(folder)
    stream = out.container.add_stream("aac", rate=AUDIO_RATE_HZ)
    stream.layout = "mono"
    stream.bit_rate = AUDIO_BPS
    return out, stream


def make_hls(src: Path, dst: Path, progress: Callable[[float], None] | None = None,
             threads: int = 1) -> dict[str, Any]:
    """Write the renditions of ``src`` into the folder ``dst`` (replaced when complete). Returns
    ``{"variants": [...], "duration_s"}`` as in the master playlist. MediaError when ``src`` cannot be read."""
    src, dst = Path(src), Path(dst)
    total_s = probe(src)["duration_s"] or 0.0
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _open(src) as inp:
            vin = inp.streams.video[0] if inp.streams.video else None
            ain = inp.streams.audio[0] if inp.streams.audio else None
            if vin is None and ain is None:
                raise MediaError(f"{src.name} has neither audio nor video")
            size = None
            if vin is not None:
                size = _largest_vp8_size(inp, vin) or (vin.codec_context.width, vin.codec_context.height)
            sizes = plan(size)
            _encode(inp, vin, ain, tmp, sizes, total_s, progress, threads)
        if sizes and ain is not None:
            write_start_rendition(tmp / sizes[-1][0].name, tmp / AUDIO_NAME, tmp / START_DIR)
        variants = write_master(tmp)
        old = dst.with_name(f".{dst.name}.{os.getpid()}.old")
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    except av.error.FFmpegError as exc:
        raise MediaError(f"the HLS renditions of {src.name} failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress(1.0)
    return {"variants": variants, "duration_s": total_s}


def _encode(inp: Any, vin: Any, ain: Any, tmp: Path, sizes: list[tuple[Rendition, int, int]], total_s: float,
            progress: Callable[[float], None] | None, threads: int) -> None:
    outputs: list[_Output] = []
    videos = []
    try:
        for i, (r, width, height) in enumerate(sizes):
            out, stream = _video_output(tmp / r.name, r, width, height, threads, lowest=i == len(sizes) - 1)
            outputs.append(out)
            videos.append((out, stream))
        audio = None
        if ain is not None:
            out, stream = _audio_output(tmp / AUDIO_NAME)
            outputs.append(out)
            audio = (out, stream, av.AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE_HZ))
        start = min((float(s.start_time * s.time_base) for s in (vin, ain)
                     if s is not None and s.start_time is not None), default=0.0)
        tick = 0  # the next output frame (at tick / FPS s)
        latest = None  # the newest decoded picture
        reported = 0.0

        def emit(until_s: float) -> None:
            nonlocal tick
            while latest is not None and tick / FPS < until_s:
                for i, (out, stream) in enumerate(videos):
                    image = latest.reformat(width=stream.width, height=stream.height, format="yuv420p")
                    image.pts, image.time_base = tick, Fraction(1, FPS)
                    if i == len(videos) - 1 and (tick in START_KEY_TICKS or tick % (FPS * KEYFRAME_S) == 0):
                        image.pict_type = PictureType.I
                    out.container.mux(stream.encode(image))
                tick += 1

        for packet in inp.demux([s for s in (vin, ain) if s is not None]):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue  # a damaged packet from a lossy school link must not lose the lesson
            for frame in frames:
                if packet.stream is vin:
                    if frame.pts is None or frame.time_base is None:
                        continue
                    at = float(frame.pts * frame.time_base) - start
                    if latest is None:
                        tick = max(0, math.ceil(at * FPS - 1e-6))
                    else:
                        emit(at)
                    latest = frame
                elif audio is not None:
                    frame.pts = None  # audio is continuous in a recording; the encoder counts samples
                    for chunk in audio[2].resample(frame):
                        audio[0].container.mux(audio[1].encode(chunk))
            if progress and total_s > 0 and packet.pts is not None and packet.time_base is not None:
                done = min(0.99, (float(packet.pts * packet.time_base) - start) / total_s)
                if done - reported >= PROGRESS_STEP:
                    reported = done
                    progress(done)
        if latest is not None:
            emit(tick / FPS + 1 / FPS)  # the last picture once
        for out, stream in videos:
            out.container.mux(stream.encode(None))
        if audio is not None:
            for chunk in audio[2].resample(None):
                audio[0].container.mux(audio[1].encode(chunk))
            audio[0].container.mux(audio[1].encode(None))
    finally:
        for out in outputs:
            out.container.close()


def _fragments(folder: Path) -> bytes:
    """A rendition's init segment and media segments end to end: one fragmented MP4."""
    return (folder / INIT_NAME).read_bytes() + b"".join(
        (folder / uri).read_bytes() for _, uri in segments(folder / PLAYLIST_NAME))


def write_start_rendition(video: Path, audio: Path, dst: Path) -> None:
    """The start rendition: the packets of `video` (the lowest rendition) and of `audio`, as they are, in one
    stream of short first segments (START_SEGMENT_S: cut at each of the lowest rendition's extra key frames)."""
    with av.open(BytesIO(_fragments(video)), format="mp4") as vin, \
            av.open(BytesIO(_fragments(audio)), format="mp4") as ain:
        out = _Output(dst, START_SEGMENT_S)
        try:
            vs = out.container.add_stream_from_template(vin.streams.video[0])
            as_ = out.container.add_stream_from_template(ain.streams.audio[0])
            packets = heapq.merge(
                ((float(p.dts * p.time_base), 0, p) for p in vin.demux(vin.streams.video[0]) if p.dts is not None),
                ((float(p.dts * p.time_base), 1, p) for p in ain.demux(ain.streams.audio[0]) if p.dts is not None),
                key=lambda item: (item[0], item[1]))
            for _, kind, packet in packets:
                packet.stream = vs if kind == 0 else as_
                out.container.mux(packet)
        finally:
            out.container.close()


# --- playlists ---------------------------------------------------------------------------------------------------

def segments(playlist: Path) -> list[tuple[float, str]]:
    """(duration, URI) of each segment of a media playlist."""
    out: list[tuple[float, str]] = []
    duration = None
    for line in playlist.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:"):].split(",", 1)[0])
        elif line and not line.startswith("#") and duration is not None:
            out.append((duration, line))
            duration = None
    return out


def rates(folder: Path) -> tuple[int, int]:
    """(peak, average) bit rate of a rendition, measured over its segment files."""
    segs = segments(folder / PLAYLIST_NAME)
    if not segs:
        raise MediaError(f"the {folder.name} rendition has no segments")
    sizes = [(d, (folder / uri).stat().st_size * 8) for d, uri in segs]
    total_s = sum(d for d, _ in sizes)
    # a short last segment says little about the rate: the peak is taken over segments of at least 1 s
    peak = max((bits / d for d, bits in sizes if d >= 1.0), default=sum(b for _, b in sizes) / max(total_s, 1e-3))
    return int(math.ceil(peak)), int(math.ceil(sum(b for _, b in sizes) / max(total_s, 1e-3)))


def avc_codec(init: Path) -> str:
    """``avc1.PPCCLL`` from the H.264 configuration (avcC: profile, constraints, level) of an fMP4 init segment."""
    with _open(init) as container:
        extradata = container.streams.video[0].codec_context.extradata or b""
    if len(extradata) < 4 or extradata[0] != 1:
        raise MediaError(f"no H.264 configuration in {init.parent.name}/{init.name}")
    return f"avc1.{extradata[1]:02x}{extradata[2]:02x}{extradata[3]:02x}"


def write_start(folder: Path, lowest: dict[str, Any]) -> None:
    """start.m3u8: the start rendition (the lowest variant's pictures and the audio in one stream) and the
    audio-only variant, for a link too weak for any picture."""
    peak, avg = rates(folder / START_DIR)
    a_peak, a_avg = rates(folder / AUDIO_NAME)
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS",
             f'#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={avg},RESOLUTION={lowest["resolution"]},'
             f'CODECS="{lowest["codecs"]}",FRAME-RATE={FPS:.3f}', f"{START_DIR}/{PLAYLIST_NAME}",
             f'#EXT-X-STREAM-INF:BANDWIDTH={a_peak},AVERAGE-BANDWIDTH={a_avg},CODECS="{AUDIO_CODEC}"',
             f"{AUDIO_NAME}/{PLAYLIST_NAME}"]
    (folder / START_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_master(folder: Path) -> list[dict[str, Any]]:
    """The master playlist of the renditions in ``folder``: video variants (best first) with the audio
    rendition as their audio group, then the audio-only variant. Returns the variants as written."""
    audio = folder / AUDIO_NAME
    has_audio = (audio / PLAYLIST_NAME).is_file()
    a_peak, a_avg = rates(audio) if has_audio else (0, 0)
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if has_audio:
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="audio",LANGUAGE="zh",DEFAULT=YES,'
                     f'AUTOSELECT=YES,URI="{AUDIO_NAME}/{PLAYLIST_NAME}"')
    variants: list[dict[str, Any]] = []
    for r in RENDITIONS:
        sub = folder / r.name
        if not (sub / PLAYLIST_NAME).is_file():
            continue
        peak, avg = rates(sub)
        with _open(sub / INIT_NAME) as c:
            width, height = c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height
        codecs = avc_codec(sub / INIT_NAME) + (f",{AUDIO_CODEC}" if has_audio else "")
        variant = {"name": r.name, "bandwidth": peak + a_peak, "average_bandwidth": avg + a_avg,
                   "resolution": f"{width}x{height}", "codecs": codecs, "uri": f"{r.name}/{PLAYLIST_NAME}"}
        variants.append(variant)
        lines.append(f'#EXT-X-STREAM-INF:BANDWIDTH={variant["bandwidth"]},'
                     f'AVERAGE-BANDWIDTH={variant["average_bandwidth"]},RESOLUTION={variant["resolution"]},'
                     f'CODECS="{codecs}",FRAME-RATE={FPS:.3f}' + (',AUDIO="aac"' if has_audio else ""))
        lines.append(variant["uri"])
    if has_audio:
        variant = {"name": AUDIO_NAME, "bandwidth": a_peak, "average_bandwidth": a_avg, "resolution": None,
                   "codecs": AUDIO_CODEC, "uri": f"{AUDIO_NAME}/{PLAYLIST_NAME}"}
        variants.append(variant)
        lines.append(f'#EXT-X-STREAM-INF:BANDWIDTH={a_peak},AVERAGE-BANDWIDTH={a_avg},CODECS="{AUDIO_CODEC}",'
                     f'AUDIO="aac"')
        lines.append(variant["uri"])
    (folder / MASTER_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if (folder / START_DIR / PLAYLIST_NAME).is_file():
        write_start(folder, variants[-2 if has_audio else -1])
    return variants

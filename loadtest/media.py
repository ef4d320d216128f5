"""The synthetic teacher's media: a VP8 clip (periodic keyframes) and an Opus clip, encoded once with PyAV and
then looped as pre-encoded `av.Packet`s, so sending costs no encoding.

aiortc's `RTCRtpSender` packetizes an `av.Packet` coming out of a track with `encoder.pack(packet)` instead of
encoding it (aiortc/rtcrtpsender.py `_next_encoded_frame`, aiortc/codecs/vpx.py `Vp8Encoder.pack`).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger("ketang.loadtest.media")

VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000
VIDEO_FPS = 30
VIDEO_WIDTH = 640
VIDEO_HEIGHT = 360
CLIP_S = 4.0  # looped; long enough for two GOPs
KEYFRAME_INTERVAL_S = 2.0  # a keyframe every 2 s, like a browser answering periodic PLIs
AUDIO_FRAME_S = 0.02  # Opus 20 ms frames: 50 packets/s
AUDIO_BITRATE = 32_000
MIN_VIDEO_BITRATE = 50_000
# a classroom's own camera as its page asks for it (client_web/classroom.js: 320x180 at 15 fps)
UPLINK_WIDTH = 320
UPLINK_HEIGHT = 180
UPLINK_FPS = 15


@dataclass
class Clip:
    """Encoded frames in presentation order: (payload bytes, is_keyframe); one per `period_s`."""

    kind: str
    frames: list[tuple[bytes, bool]]
    period_s: float
    clock: int

    @property
    def bitrate_bps(self) -> float:
        return sum(len(f) for f, _ in self.frames) * 8 / (len(self.frames) * self.period_s)


def _video_frames(n: int, width: int, height: int) -> list[av.VideoFrame]:
    """A moving square over a moving gradient plus noise, so VP8 has real work (and real bitrate) each frame."""
    rng = np.random.default_rng(7)
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    frames = []
    for i in range(n):
        luma = ((x + 3 * i) % 256 * 0.5 + y * 0.5).astype(np.uint8)
        img = np.repeat(luma[:, :, None], 3, axis=2)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
        side, top = width // 8, height * 7 // 18  # 80 px at 640x360
        sx = (i * 6) % (width - side)
        img[top:top + side, sx:sx + side] = (255, 40, 40)
        frames.append(av.VideoFrame.from_ndarray(img, format="rgb24"))
    return frames


def encode_video(bitrate_bps: int, seconds: float = CLIP_S, fps: int = VIDEO_FPS, width: int = VIDEO_WIDTH,
                 height: int = VIDEO_HEIGHT) -> Clip:
    n = int(seconds * fps)
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, fps)
    ctx.framerate = fractions.Fraction(fps, 1)
    ctx.bit_rate = max(MIN_VIDEO_BITRATE, bitrate_bps)
    ctx.gop_size = int(KEYFRAME_INTERVAL_S * fps)
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1",
                   "rc_lookahead": "0"}
    out: list[tuple[bytes, bool]] = []
    for i, frame in enumerate(_video_frames(n, width, height)):
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = ctx.time_base
        if i % ctx.gop_size == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for pkt in ctx.encode(frame):
            out.append((bytes(pkt), bool(pkt.is_keyframe)))
    for pkt in ctx.encode(None):
        out.append((bytes(pkt), bool(pkt.is_keyframe)))
    if not out or not out[0][1]:
        raise RuntimeError("the VP8 clip does not start with a keyframe")
    return Clip("video", out, 1 / fps, VIDEO_CLOCK)


def encode_audio(seconds: float = CLIP_S) -> Clip:
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = AUDIO_CLOCK
    ctx.layout = "stereo"
    ctx.format = "s16"
    ctx.bit_rate = AUDIO_BITRATE
    ctx.time_base = fractions.Fraction(1, AUDIO_CLOCK)
    samples = int(AUDIO_FRAME_S * AUDIO_CLOCK)
    t = np.arange(int(seconds * AUDIO_CLOCK)) / AUDIO_CLOCK
    # a warbling tone so consecutive packets differ
    wave = (0.3 * np.sin(2 * np.pi * (440 + 60 * np.sin(2 * np.pi * 0.5 * t)) * t) * 32767).astype(np.int16)
    stereo = np.repeat(wave[:, None], 2, axis=1)
    out: list[tuple[bytes, bool]] = []
    for i in range(len(t) // samples):
        chunk = np.ascontiguousarray(stereo[i * samples:(i + 1) * samples].reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = i * samples
        frame.time_base = ctx.time_base
        out.extend((bytes(p), False) for p in ctx.encode(frame))
    out.extend((bytes(p), False) for p in ctx.encode(None))
    return Clip("audio", out, AUDIO_FRAME_S, AUDIO_CLOCK)


def make_clips(bitrate_kbps: int) -> tuple[Clip, Clip]:
    """The teacher's (video, audio): the video aims at the total bitrate minus Opus's share."""
    return _clips(bitrate_kbps * 1000 - AUDIO_BITRATE, VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FPS)


def make_uplink_clips(camera_kbps: int) -> tuple[Clip, Clip]:
    """A classroom's (video, audio): a 320x180 15 fps camera at `camera_kbps` (what the server's REMB allows it,
    KETANG_CLASSROOM_UPLINK_KBPS) plus its microphone's Opus on top."""
    return _clips(camera_kbps * 1000, UPLINK_WIDTH, UPLINK_HEIGHT, UPLINK_FPS)


def _clips(video_bps: int, width: int, height: int, fps: int) -> tuple[Clip, Clip]:
    t0 = time.perf_counter()
    audio = encode_audio()
    video = encode_video(video_bps, fps=fps, width=width, height=height)
    log.info("clips encoded in %.1f s: video %.0f kbit/s (%d frames), audio %.0f kbit/s", time.perf_counter() - t0,
             video.bitrate_bps / 1000, len(video.frames), audio.bitrate_bps / 1000)
    return video, audio


class PacketTrack(MediaStreamTrack):
    """Loops a pre-encoded clip in real time, returning `av.Packet`s (aiortc packs them without encoding)."""

    def __init__(self, clip: Clip) -> None:
        super().__init__()
        self.kind = clip.kind
        self.clip = clip
        self.sent = 0
        self._start: float | None = None
        self._time_base = fractions.Fraction(1, clip.clock)
        self._step = round(clip.period_s * clip.clock)
        # paused (`set_active(False)`, as a page's sender with encodings[].active = false): nothing is sent; on
        # resuming, the clip goes on from its next key frame, as an encoder starts again
        self.active = True
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._frame = 0  # index into the clip
        self._paused_s = 0.0  # pauses ended
        self._paused_since: float | None = None

    def set_active(self, active: bool) -> None:
        if active == self.active:
            return
        self.active = active
        now = time.monotonic()
        if active:
            if self._paused_since is not None:
                self._paused_s += now - self._paused_since
                self._paused_since = None
            self._resumed.set()
        else:
            self._paused_since = now
            self._resumed.clear()

    def stop(self) -> None:
        super().stop()
        self._resumed.set()  # a paused recv() ends too

    def paused_s(self, until: float) -> float:
        """Seconds paused so far (up to `until`, a time.monotonic())."""
        ongoing = max(0.0, until - self._paused_since) if self._paused_since is not None else 0.0
        return self._paused_s + ongoing

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        n = self.sent
        delay = self._start + n * self.clip.period_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not self.active:
            paused_at = time.monotonic()
            await self._resumed.wait()
            self._start += time.monotonic() - paused_at  # no burst of the frames not sent meanwhile
            frames = self.clip.frames
            self._frame = next((i for i in range(self._frame, self._frame + len(frames))
                                if frames[i % len(frames)][1]), self._frame)
        if self.readyState != "live":
            raise MediaStreamError  # stop() ends the sender's loop: the teacher stops sending at once
        data, _key = self.clip.frames[self._frame % len(self.clip.frames)]
        self._frame += 1
        packet = av.Packet(data)
        packet.pts = n * self._step
        packet.time_base = self._time_base
        self.sent += 1
        return packet


# ---------------------------------------------------------------- simulcast (`--simulcast`)

# the teacher page's camera encodings (client_web/protocol.js, TeacherSession sendEncodings): RID, size divisor,
# frame rate; listed smallest first as the page lists them (a=simulcast:send q;h;f)
SIMULCAST_LAYERS = (("q", 4, 15), ("h", 2, VIDEO_FPS), ("f", 1, VIDEO_FPS))
# the page's bit rates are 150 / 500 / 1500 kbit/s: by default the full layer gets what --bitrate gives the single
# stream and the lower ones this share of it, so a classroom on the full layer receives what it does without
# simulcast
SIMULCAST_SHARES = (1 / 9, 1 / 3, 1.0)
# a frame is recognised at a classroom by the first bytes of its VP8 data (the server rewrites sequence numbers,
# timestamps and picture ids on a layer switch, never the payload): (layer, frame) -> the teacher's send time
FRAME_KEY_BYTES = 48


@dataclass
class SimulcastLayer:
    """One encoding of the teacher's camera: its RID, size, frame rate and looped pre-encoded clip."""

    rid: str
    width: int
    height: int
    fps: int
    target_bps: int
    clip: Clip
    slot_offset: int = 0  # where its frames' send times start in the shared array


def simulcast_bitrates(bitrate_kbps: int, layers_kbps: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Each layer's video bit rate (bit/s), smallest first."""
    if layers_kbps:
        if len(layers_kbps) != len(SIMULCAST_LAYERS):
            raise ValueError(f"--layers takes {len(SIMULCAST_LAYERS)} bit rates (q,h,f in kbit/s)")
        return tuple(k * 1000 for k in layers_kbps)
    top = bitrate_kbps * 1000 - AUDIO_BITRATE
    return tuple(max(MIN_VIDEO_BITRATE, round(top * share)) for share in SIMULCAST_SHARES)


def make_simulcast_clips(bitrate_kbps: int, layers_kbps: tuple[int, ...] | None = None,
                         width: int = VIDEO_WIDTH, height: int = VIDEO_HEIGHT) -> tuple[list[SimulcastLayer], Clip]:
    """The simulcast teacher's (layers smallest first, audio): ÷4, ÷2 and full size of width x height."""
    t0 = time.perf_counter()
    layers: list[SimulcastLayer] = []
    offset = 0
    for (rid, down, fps), bps in zip(SIMULCAST_LAYERS, simulcast_bitrates(bitrate_kbps, layers_kbps)):
        w, h = (width // down) & ~1, (height // down) & ~1
        clip = encode_video(bps, fps=fps, width=w, height=h)
        layers.append(SimulcastLayer(rid, w, h, fps, bps, clip, offset))
        offset += len(clip.frames)
    audio = encode_audio()
    log.info("simulcast clips encoded in %.1f s: %s", time.perf_counter() - t0,
             ", ".join(f"{x.rid} {x.width}x{x.height}@{x.fps} {x.clip.bitrate_bps / 1000:.0f} kbit/s" for x in layers))
    return layers, audio


def frame_keys(layers: list[SimulcastLayer]) -> dict[bytes, tuple[int, int]]:
    """First bytes of each frame -> (layer index, send-time slot); frames whose first bytes are not unique are left
    out (not measured)."""
    seen: dict[bytes, tuple[int, int] | None] = {}
    for li, layer in enumerate(layers):
        for fi, (data, _key) in enumerate(layer.clip.frames):
            key = data[:FRAME_KEY_BYTES]
            seen[key] = None if key in seen else (li, layer.slot_offset + fi)
    return {k: v for k, v in seen.items() if v is not None}

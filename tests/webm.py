"""One real WebM lesson file (VP8 + Opus, encoded by PyAV), made once per test session for the library tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

WEBM_SECONDS = 3.0
VIDEO_FPS = 15
VIDEO_SIZE = (320, 240)
AUDIO_RATE = 48_000
AUDIO_FRAME = 960  # 20 ms, as Opus in WebRTC


def make_webm(path: Path, seconds: float = WEBM_SECONDS) -> Path:
    """A real WebM like the recorder's: VP8 video (a moving bar) + Opus audio (440 Hz sine)."""
    w, h = VIDEO_SIZE
    with av.open(str(path), "w", format="webm") as out:
        video = out.add_stream("libvpx", rate=VIDEO_FPS)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"deadline": "realtime", "cpu-used": "8"}
        audio = out.add_stream("libopus", rate=AUDIO_RATE)
        audio.layout = "stereo"
        for i in range(int(seconds * VIDEO_FPS)):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, :, 0] = (i * 8) % 256
            img[(i * 4) % h:(i * 4) % h + 20, :, 1] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, VIDEO_FPS)
            out.mux(video.encode(frame))
        mux_tone(out, audio, seconds, AUDIO_FRAME)
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path


@pytest.fixture(scope="session")
def webm_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_webm(tmp_path_factory.mktemp("media") / "lesson.webm")


def mux_tone(out: av.container.OutputContainer, audio: av.audio.stream.AudioStream, seconds: float,
             frame_samples: int, hz: float = 440.0) -> None:
    """`seconds` of a steady stereo tone encoded into `audio` (frames of `frame_samples`: Opus 960, AAC 1024)."""
    for start in range(0, int(seconds * AUDIO_RATE), frame_samples):
        t = np.arange(start, start + frame_samples) / AUDIO_RATE
        tone = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
        out.mux(audio.encode(frame))

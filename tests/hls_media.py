"""A real lesson-like source for the HLS tests: 1280×720 H.264 + AAC (as the composite 课例), with busy pictures
(coarse noise that changes every frame) so that each rendition's encoder works at its bit-rate cap, as a
camera's picture makes it."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.webm import AUDIO_RATE, mux_tone

SECONDS = 16.0
FPS = 15
SIZE = (1280, 720)


def make_busy_mp4(path: Path, seconds: float = SECONDS) -> Path:
    w, h = SIZE
    rng = np.random.default_rng(7)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "18"}
        audio = out.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "stereo"
        for i in range(int(seconds * FPS)):
            blocks = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
            img = np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))
            img[(i * 8) % h:(i * 8) % h + 40, :, 1] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(video.encode(frame))
        mux_tone(out, audio, seconds, 1024)  # AAC frames
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path


@pytest.fixture(scope="session")
def busy_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busy_mp4(tmp_path_factory.mktemp("hls-media") / "lesson.mp4")


@pytest.fixture(scope="session")
def busy_hls(tmp_path_factory: pytest.TempPathFactory, busy_mp4: Path) -> Path:
    """The renditions of busy_mp4, made once per session."""
    from recorder.hls.renditions import make_hls

    dst = tmp_path_factory.mktemp("hls-out") / "hls"
    make_hls(busy_mp4, dst)
    return dst

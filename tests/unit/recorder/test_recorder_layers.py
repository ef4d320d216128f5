"""The recording follows the teacher's simulcast camera down and up its layers.

A fake teacher publishes a camera as three simulcast layers of real VP8 (aiortc's PyAV/libvpx encoder at
160x90, 320x180 and 640x360; each layer its own RTP stream: SSRC, sequence numbers, timestamp offset,
sender reports) and a microphone of real Opus. It answers a PLI on a layer with a key frame on that layer, as
Chromium does (a couple of frames later). Mid-lesson its top layer stops for a few seconds (a congested uplink)
and comes back. The LessonRecorder records it through a stand-in for the router; the file is then read and
decoded by PyAV.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.logging
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from recorder.library import export as media
from recorder.record.depacketize import vp8_dimensions
from recorder.record.follower import RECORD_LAYER_UP_AFTER_S
from recorder.record.handoff import drain
from recorder.record.recorder import LessonRecorder
from recorder.record.repair import repair_file
from sfu.producer import Producer
from sfu.rtp.header import ntp_from_unix
from sfu.rtp.vp8 import vp8_descriptor_len
from tests.unit.recorder.test_recorder import FakeClock

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
FPS = 30
SIZES = [(160, 90), (320, 180), (640, 360)]  # the teacher's layers, smallest first (180p/360p/720p halved)
TS_OFFSETS = [0x7FFF_F000, 123_456_789, 0xFFFF_0000]  # unrelated RTP clocks per layer (one wraps mid-lesson)
AUDIO_OFFSET = 987_654_321
LESSON_S = 9.0
TOP_STOPS_S, TOP_RESUMES_S = 3.0, 5.5  # the teacher's uplink gets worse, then better
SR_EVERY_S = 1.0
# a PLI is answered this many frames later (round trip + encoder): frames of the layer come in between
PLI_DELAY_FRAMES = 2


class FakeRouter:
    """What LessonRecorder reads of a Router."""

    def __init__(self, lesson_id: str) -> None:
        self.lesson_id = lesson_id
        self.producers: dict[str, Producer] = {}
        self.stage: list[str] = []

    def on_track(self, listener) -> None:
        pass

    def on_stage(self, listener) -> None:
        pass


@dataclass
class FakeCatalog:
    recordings_dir: Path
    finished: list[tuple[str, float, int]] = field(default_factory=list)
    started: list[Path] = field(default_factory=list)

    async def start_recording(self, lesson_id, title, teacher, teacher_sub, file: Path, **_: str) -> str:
        self.started.append(file)
        return f"rec{len(self.started)}"

    async def finish_recording(self, rec_id, duration_s, size_bytes) -> None:
        self.finished.append((rec_id, duration_s, size_bytes))

    async def unfinished(self):
        return []

    def save_lesson_record(self, *args) -> None:
        pass


def picture(i: int, width: int, height: int) -> av.VideoFrame:
    """Capture instant i: a background whose brightness steps every frame (so frames rarely encode alike)
    and a moving bar."""
    img = np.full((height, width, 3), 16 + (i * 7) % 224, np.uint8)
    x = (i * width // 64) % (width - width // 8)
    img[:, x:x + width // 8] = (250, 200, 10)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
    return frame


@dataclass
class Sent:
    layer: int
    index: int  # capture instant: i / FPS seconds into the lesson
    keyframe: bool


class SimulcastTeacher:
    """Three layer producers and a microphone, fed packets as a browser sends them (clock = capture time)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.layers = [Producer("cam" if i == 0 else f"cam~{'qhf'[i]}", "video", "vp8", 90000, self._pli,
                                source="camera", owner="t1", clock=clock) for i in range(3)]
        self.layers[0].layers = self.layers
        for i, layer in enumerate(self.layers):
            layer.ssrc = 5000 + i
        self.mic = Producer("mic", "audio", "opus", 48000, lambda s: None, source="microphone", owner="t1",
                            clock=clock)
        self.mic.ssrc = 6000
        self.encoders = [get_encoder(VP8) for _ in SIZES]
        self.opus = get_encoder(OPUS)
        self.keyframe_at: list[int | None] = [None] * 3  # a PLI's key frame is due at this capture instant
        self.plis = [0] * 3
        self.index = 0  # the capture instant being sent
        self.seq = [1000, 20000, 40000, 60000]
        self.sent: dict[bytes, list[Sent]] = {}  # frame bytes (descriptors removed) -> what they were
        self.audio_sent: list[float] = []  # capture time of each audio packet
        self.unix0 = time.time()  # the teacher's wall clock at capture time 0

    def _pli(self, ssrc: int) -> None:
        layer = ssrc - 5000
        if self.keyframe_at[layer] is None:
            self.keyframe_at[layer] = self.index + PLI_DELAY_FRAMES
        self.plis[layer] += 1

    def sender_reports(self, t: float) -> None:
        ntp = ntp_from_unix(self.unix0 + t)
        for i, layer in enumerate(self.layers):
            layer.on_sender_report(ntp, (TS_OFFSETS[i] + round(t * 90000)) & 0xFFFFFFFF)
        self.mic.on_sender_report(ntp, (AUDIO_OFFSET + round(t * 48000)) & 0xFFFFFFFF)

    def video(self, i: int, layer: int, force: bool = False) -> None:
        self.index = i
        w, h = SIZES[layer]
        due = self.keyframe_at[layer] is not None and i >= self.keyframe_at[layer]  # type: ignore[operator]
        payloads, _ = self.encoders[layer].encode(picture(i, w, h), force or due)
        if force or due:
            self.keyframe_at[layer] = None
        data = b"".join(p[vp8_descriptor_len(p):] for p in payloads)
        self.sent.setdefault(data, []).append(Sent(layer, i, vp8_dimensions(data) is not None))
        ts = (TS_OFFSETS[layer] + i * 3000) & 0xFFFFFFFF
        for j, p in enumerate(payloads):
            self.layers[layer].on_packet(self.seq[layer] & 0xFFFF, ts, int(j == len(payloads) - 1), p, 0)
            self.seq[layer] += 1

    def audio(self, i: int) -> None:
        t = (np.arange(960) + i * 960) / 48000
        samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(samples, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        payloads, _ = self.opus.encode(frame)
        for p in payloads:
            self.mic.on_packet(self.seq[3] & 0xFFFF, (AUDIO_OFFSET + i * 960) & 0xFFFFFFFF, 0, p, 0)
            self.seq[3] += 1
            self.audio_sent.append(i * 0.02)


@dataclass
class Lesson:
    path: Path
    teacher: SimulcastTeacher
    stats: dict
    catalog: FakeCatalog
    audio_from: float  # capture time of the first audio packet after the recording started


def _teach(tmp: Path, top_on: Callable[[float], bool], lesson_s: float = LESSON_S) -> Lesson:
    """A lesson of `lesson_s`; the top layer is sent while `top_on(t)` (and resumes with a key frame)."""

    async def run() -> Lesson:
        clock = FakeClock()
        teacher = SimulcastTeacher(clock)
        router = FakeRouter("layers")
        router.producers = {"cam": teacher.layers[0], "mic": teacher.mic}
        catalog = FakeCatalog(tmp / "recordings")
        recorder = LessonRecorder(router, catalog, "勾股定理", "李老师", "t1", clock=clock)  # type: ignore[arg-type]
        events = sorted([(i / FPS, "v", i) for i in range(int(lesson_s * FPS))]
                        + [(i / 50, "a", i) for i in range(int(lesson_s * 50))])
        next_sr, next_sync, audio_from = 0.5, 0.0, None
        top_was_on = True
        for t, kind, i in events:
            clock.now = 1000.0 + t
            if t >= next_sr:
                teacher.sender_reports(t)
                next_sr += SR_EVERY_S
            if t >= next_sync:  # what the recorder's call_later would do
                recorder._sync()
                next_sync += 0.25
            if kind == "a":
                if audio_from is None and recorder.main is not None:
                    audio_from = t
                teacher.audio(i)
                continue
            top = top_on(t)
            for layer in (2, 1, 0):  # Chromium sends the layers of one capture instant back to back
                if layer == 2 and not top:
                    continue
                teacher.video(i, layer, force=layer == 2 and top and not top_was_on)
            top_was_on = top
        stats = recorder.stats()
        recorder.close()
        await drain()  # the library updates the recorder made in the background
        assert recorder.main is not None and audio_from is not None
        return Lesson(recorder.main.path, teacher, stats, catalog, audio_from)

    return asyncio.run(run())


@dataclass
class Written:
    pts: float
    data: bytes
    keyframe: bool
    layer: int | None  # which layer these bytes are (None: not told apart)
    index: int | None  # which capture instant (None: not told apart)


def _read(lesson: Lesson) -> tuple[list[Written], list[float], list[tuple[int, int]], list[str]]:
    """Video packets as written, audio pts, decoded frame sizes, and what FFmpeg logged at error level."""
    video, audio = [], []
    with av.open(str(lesson.path)) as c:
        for pkt in c.demux():
            if not pkt.size:
                continue
            pts = float(pkt.pts * pkt.time_base)
            if pkt.stream.type == "audio":
                audio.append(pts)
                continue
            data = bytes(pkt)
            sent = lesson.teacher.sent.get(data, [])
            layers = {s.layer for s in sent}
            video.append(Written(pts, data, pkt.is_keyframe, layers.pop() if len(layers) == 1 else None,
                                 sent[0].index if len(sent) == 1 else None))
    sizes, errors = [], []
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs, av.open(str(lesson.path)) as c:
            for pkt in c.demux(video=0):
                try:
                    sizes += [(frame.width, frame.height) for frame in pkt.decode()]
                except av.error.FFmpegError as exc:
                    errors.append(f"{float(pkt.pts * pkt.time_base):.3f} s: {exc}")
    finally:
        av.logging.set_level(None)
    errors += [msg for level, _, msg in logs if level <= av.logging.ERROR]
    return video, audio, sizes, errors


@pytest.fixture(scope="module")
def followed(tmp_path_factory) -> tuple[Lesson, list[Written], list[float], list[tuple[int, int]], list[str]]:
    lesson = _teach(tmp_path_factory.mktemp("layers"), lambda t: not TOP_STOPS_S <= t < TOP_RESUMES_S)
    return (lesson, *_read(lesson))


def _runs(values: list) -> list:
    """[a, a, b, b, a] -> [a, b, a]"""
    return [v for n, v in enumerate(values) if n == 0 or values[n - 1] != v]


def test_the_file_goes_down_a_layer_while_the_top_one_is_gone_and_back_up_after_it_returns(followed):
    lesson, video, _, sizes, _ = followed
    assert None not in [w.layer for w in video]
    assert _runs([w.layer for w in video]) == [2, 1, 2]
    assert _runs(sizes) == [SIZES[2], SIZES[1], SIZES[2]]
    main = lesson.stats["main"]
    assert main["layer_switches"] == 2
    assert [(e["layer"], e["size"]) for e in main["tracks"][0]["layer_timeline"]] == [(1, [320, 180]), (2, [640, 360])]
    # one file for the whole lesson (a layer switch is not a reconnection), finished in the library
    assert len(lesson.catalog.started) == 1 and [f[0] for f in lesson.catalog.finished] == ["rec1"]
    # it went down as soon as the top layer was missed, and back up only after it had been back for a while
    down = next(w for w in video if w.layer == 1)
    up = next(w for w in video if w.layer == 2 and w.index is not None and w.index / FPS > TOP_STOPS_S)
    assert down.index / FPS - TOP_STOPS_S <= 0.5
    assert RECORD_LAYER_UP_AFTER_S <= up.index / FPS - TOP_RESUMES_S <= RECORD_LAYER_UP_AFTER_S + 0.5


def test_video_covers_the_whole_lesson_without_a_hole(followed):
    _, video, audio, _, _ = followed
    pts = [w.pts for w in video]
    gaps = np.diff(pts)
    assert gaps.max() <= 0.5, f"a {gaps.max():.2f} s hole in the video at {pts[int(gaps.argmax())]:.2f} s"
    assert (gaps > 0).all()  # strictly increasing
    assert pts[-1] >= audio[-1] - 0.1  # up to the end of the lesson
    assert np.all(np.diff(audio) > 0)


def test_every_layer_starts_at_its_key_frame_and_the_file_decodes_without_error(followed):
    _, video, _, sizes, errors = followed
    for n, w in enumerate(video):
        if n == 0 or video[n - 1].layer != w.layer:
            assert w.keyframe and vp8_dimensions(w.data) == SIZES[w.layer], (n, w.pts, w.layer)
    assert errors == []
    assert len(sizes) == len(video)
    assert sizes == [SIZES[w.layer] for w in video]  # every frame decoded at its layer's size


def test_audio_and_video_stay_in_sync_across_the_switches(followed):
    lesson, video, audio, _, _ = followed
    # the file's 0 is the earlier of the two tracks' first frames, both placed by the teacher's clock
    first_video = video[0].index / FPS
    zero = min(first_video, lesson.audio_from)
    assert abs(audio[0] - (lesson.audio_from - zero)) <= 0.005
    assert abs(video[0].pts - audio[0] - (first_video - lesson.audio_from)) <= 0.1
    # every frame sits where the teacher captured it, whichever layer (RTP clock) it came from
    told = [w for w in video if w.index is not None]
    assert len(told) >= 0.9 * len(video)
    late = [(w.pts, w.layer, w.pts - (w.index / FPS - zero)) for w in told
            if abs(w.pts - (w.index / FPS - zero)) > 0.02]
    assert late == []


def test_the_mp4_export_and_the_poster_of_such_a_file(followed, tmp_path):
    lesson, video, _, _, _ = followed
    out = media.export_mp4(lesson.path, tmp_path / "lesson.mp4")
    v = next(s for s in out["streams"] if s["type"] == "video")
    assert (v["width"], v["height"]) == SIZES[2]  # the largest layer's size, whatever the file started with
    with av.open(str(tmp_path / "lesson.mp4")) as c:
        frames = [(f.width, f.height, f.time) for f in c.decode(video=0)]
    assert {(w, h) for w, h, _ in frames} == {SIZES[2]}
    assert len(frames) >= 0.95 * len(video)
    assert frames[-1][2] >= video[-1].pts - 0.1
    # the poster from the middle of the low stretch: still the file's size
    poster = media.make_poster(lesson.path, tmp_path / "p.jpg", at_s=(TOP_STOPS_S + TOP_RESUMES_S) / 2)
    with av.open(str(poster)) as c:
        image = next(c.decode(video=0))
    assert (image.width, image.height) == SIZES[2]


def test_a_lesson_that_starts_on_a_small_layer_exports_at_the_largest_size(tmp_path):
    """The top layer arrives only later: the file's header says 320x180, the export is 640x360."""
    lesson = _teach(tmp_path, lambda t: t >= 2.0)
    video, _, _, errors = _read(lesson)
    assert errors == [] and _runs([w.layer for w in video]) == [1, 2]
    with av.open(str(lesson.path)) as c:
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == SIZES[1]
    out = media.export_mp4(lesson.path, tmp_path / "lesson.mp4")
    v = next(s for s in out["streams"] if s["type"] == "video")
    assert (v["width"], v["height"]) == SIZES[2]


def test_a_blink_of_the_top_layer_changes_nothing_and_a_short_return_is_not_followed(tmp_path):
    """Hysteresis: 0.2 s without the top layer is no stop; back for 1 s (less than RECORD_LAYER_UP_AFTER_S)
    and gone again is not worth two key frames; back for good, it is followed up after that while."""
    def top_on(t: float) -> bool:  # (the recording starts at ~1.8 s)
        return not (2.0 <= t < 2.2 or 4.6 <= t < 5.4 or 6.4 <= t < 6.8)

    lesson = _teach(tmp_path, top_on, lesson_s=10.0)
    video, _, _, errors = _read(lesson)
    assert errors == [] and _runs([w.layer for w in video]) == [2, 1, 2]
    assert lesson.stats["main"]["layer_switches"] == 2
    down = next(w for w in video if w.layer == 1)
    assert 4.6 < down.index / FPS < 5.1
    up = next(w for w in video if w.layer == 2 and w.index is not None and w.index / FPS > 4.6)
    assert up.index / FPS >= 6.8 + RECORD_LAYER_UP_AFTER_S
    assert max(np.diff([w.pts for w in video])) <= 0.5


def test_a_crash_repaired_copy_keeps_every_layer(followed, tmp_path):
    lesson, video, _, sizes, _ = followed
    copy = tmp_path / "copy.webm"
    copy.write_bytes(lesson.path.read_bytes())
    duration, _ = repair_file(copy)
    assert duration == pytest.approx(max(w.pts for w in video), abs=0.05)
    repaired = Lesson(copy, lesson.teacher, lesson.stats, lesson.catalog, lesson.audio_from)
    again, _, sizes_again, errors = _read(repaired)
    assert errors == [] and [w.data for w in again] == [w.data for w in video] and sizes_again == sizes

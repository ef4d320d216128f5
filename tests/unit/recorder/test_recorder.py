"""The recorder writes what the teacher encoded, bit for bit, into a WebM that PyAV reads back."""

from __future__ import annotations

import fractions
import random
import time

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from recorder.record.depacketize import HOLD_S, Frame, TrackDepacketizer, vp8_dimensions
from recorder.record.repair import repair_file
from recorder.record.webm import RecordingFile
from sfu.producer import Producer
from sfu.rtp.header import ntp_from_unix
from sfu.rtp.vp8 import vp8_descriptor_len
from tests.clock import FakeClock
from tests.support import read_recording

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
FPS = 30


def encode_video(n: int, width: int = 320, height: int = 240) -> list[tuple[list[bytes], int]]:
    """n frames of real VP8 from aiortc's encoder: (RTP payloads, timestamp) each."""
    enc = get_encoder(VP8)
    out = []
    for i in range(n):
        img = np.full((height, width, 3), 30, np.uint8)
        img[:, (i * 5) % (width - 30):(i * 5) % (width - 30) + 30] = (250, 200, 10)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        out.append(enc.encode(frame, i % 45 == 0))
    return out


def encode_audio(n: int) -> list[tuple[list[bytes], int]]:
    """n 20 ms Opus packets of a tone from aiortc's encoder."""
    enc = get_encoder(OPUS)
    out = []
    for i in range(n):
        t = (np.arange(960) + i * 960) / 48000
        samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(samples, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        payloads, ts = enc.encode(frame)
        out.append((payloads, ts))
    return out


def frame_bytes(payloads: list[bytes]) -> bytes:
    return b"".join(p[vp8_descriptor_len(p):] for p in payloads)


def test_vp8_dimensions_are_read_from_a_real_keyframe():
    payloads, _ = encode_video(1, 320, 240)[0]
    assert vp8_dimensions(frame_bytes(payloads)) == (320, 240)
    assert vp8_dimensions(b"\x01" + b"\x00" * 20) is None  # an interframe


@pytest.mark.parametrize("order", ["in order", "reordered within the hold", "duplicated"])
def test_the_depacketizer_gives_back_the_encoders_frames_exactly(order):
    clock = FakeClock()
    producer = Producer("cam", "video", "vp8", 90000, lambda ssrc: None, clock=clock)
    got: list[Frame] = []
    TrackDepacketizer(producer, got.append)
    video = encode_video(20)
    packets = [(p, ts, i == len(payloads) - 1) for payloads, ts in video for i, p in enumerate(payloads)]
    seqs = list(range(100, 100 + len(packets)))
    feed = list(zip(seqs, packets))
    if order == "reordered within the hold":
        rng = random.Random(3)
        for i in range(0, len(feed) - 3, 4):
            feed[i:i + 4] = rng.sample(feed[i:i + 4], 4)
    elif order == "duplicated":
        feed = [x for pair in zip(feed, feed) for x in pair]
    for seq, (payload, ts, marker) in feed:
        producer.on_packet(seq, ts, int(marker), payload, 0)
        clock.now += 0.01
    assert [f.data for f in got] == [frame_bytes(p) for p, _ in video]
    assert got[0].keyframe and not got[1].keyframe


def test_a_hole_never_filled_costs_frames_until_the_next_keyframe_which_is_asked_for():
    clock = FakeClock()
    plis: list[int] = []
    producer = Producer("cam", "video", "vp8", 90000, plis.append, clock=clock)
    producer.ssrc = 1234
    got: list[Frame] = []
    dep = TrackDepacketizer(producer, got.append)
    video = encode_video(50)  # keyframes at 0 and 45
    seq = 100
    lost_frame = 10
    for n, (payloads, ts) in enumerate(video):
        for i, p in enumerate(payloads):
            if n != lost_frame:
                producer.on_packet(seq, ts, int(i == len(payloads) - 1), p, 0)
            seq += 1
            clock.now += HOLD_S / 4
    assert [f.data for f in got] == [frame_bytes(p) for p, _ in video[:lost_frame] + video[45:]]
    assert dep.lost_packets == len(video[lost_frame][0])
    assert plis == [1234, 1234]  # one when recording started, one after the loss


def _record(tmp_path, seconds: float, sr_delay_s: float = 1.0, kill_at: float | None = None):
    """Feed a RecordingFile with real VP8 + Opus packets as a teacher would send them, with sender reports."""
    clock = FakeClock()
    video = Producer("cam", "video", "vp8", 90000, lambda s: None, source="camera", clock=clock)
    audio = Producer("mic", "audio", "opus", 48000, lambda s: None, source="microphone", clock=clock)
    rec = RecordingFile(tmp_path / "lesson.webm", [video, audio], clock=clock)
    n_video, n_audio = int(seconds * FPS), int(seconds * 50)
    vframes, aframes = encode_video(n_video), encode_audio(n_audio)
    # the teacher's clocks: RTP timestamps are random offsets from its capture time (as browsers do)
    v_off, a_off = 123456789, 987654321
    start = time.time()
    events = [(i / FPS, "v", i) for i in range(n_video)] + [(i / 50, "a", i) for i in range(n_audio)]
    events.sort()
    vseq, aseq, sent_sr = 1000, 2000, False
    for t, kind, i in events:
        clock.now = 1000.0 + t
        if not sent_sr and t >= sr_delay_s:
            video.on_sender_report(ntp_from_unix(start + t), (v_off + round(t * 90000)) & 0xFFFFFFFF)
            audio.on_sender_report(ntp_from_unix(start + t), (a_off + round(t * 48000)) & 0xFFFFFFFF)
            sent_sr = True
        if kind == "v":
            payloads, _ = vframes[i]
            for j, p in enumerate(payloads):
                video.on_packet(vseq & 0xFFFF, (v_off + i * 3000) & 0xFFFFFFFF, int(j == len(payloads) - 1), p, 0)
                vseq += 1
        else:
            for p in aframes[i][0]:
                audio.on_packet(aseq & 0xFFFF, (a_off + i * 960) & 0xFFFFFFFF, 0, p, 0)
                aseq += 1
        if kill_at is not None and t >= kill_at:
            return rec, vframes, aframes  # never closed: like a killed process
    rec.close()
    return rec, vframes, aframes


def test_a_recorded_lesson_holds_the_teachers_bitstream_in_sync_and_decodes(tmp_path):
    rec, vframes, aframes = _record(tmp_path, seconds=4.0)
    _, packets, decoded = read_recording(rec.path)
    assert [data for _, data in packets["video"]] == [frame_bytes(p) for p, _ in vframes]
    assert [data for _, data in packets["audio"]] == [p[0] for p, _ in aframes]
    assert decoded == len(vframes)
    first_v, first_a = packets["video"][0][0], packets["audio"][0][0]
    assert abs(first_v - first_a) <= 0.1  # both tracks start together on the teacher's wall clock
    assert abs(packets["video"][-1][0] - (len(vframes) - 1) / FPS) <= 0.05
    with av.open(str(rec.path)) as c:
        assert c.streams.video[0].codec_context.width == 320
        assert c.streams.audio[0].codec_context.sample_rate == 48000


def test_a_recording_cut_off_by_a_crash_keeps_all_but_the_last_seconds_and_is_repaired(tmp_path):
    rec, vframes, _ = _record(tmp_path, seconds=6.0, kill_at=5.0)
    # the process "dies" here: nothing is closed; what is on disk must already be readable
    duration, size = repair_file(rec.path)
    assert size > 0
    assert duration >= 5.0 - 2.0, duration
    _, packets, decoded = read_recording(rec.path)
    assert decoded == len(packets["video"]) >= (5.0 - 2.0) * FPS
    assert [data for _, data in packets["video"]] == [frame_bytes(p) for p, _ in vframes[:len(packets["video"])]]

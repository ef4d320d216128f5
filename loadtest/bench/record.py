"""CPU cost of recording one teacher (camera + microphone) without transcoding, against an encode.

    python -m loadtest.bench.record [--seconds 20] [--width 1280 --height 720] [--kbps 1500]

The media is real VP8 (libvpx through PyAV, at the given size and bitrate) and Opus, encoded once before the
measurement. Measured, in the same run: the thread CPU time of the recording path (Producer.on_packet ->
TrackDepacketizer -> RecordingFile -> PyAV WebM muxer, file on disk) per second of media, as a share of one
core; and, as the comparison, the CPU time of *decoding* the same video once (what a transcoding recorder
would pay before even re-encoding).
"""

from __future__ import annotations

import argparse
import fractions
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from recorder.record.webm import RecordingFile
from sfu.producer import Producer
from sfu.rtp.header import ntp_from_unix
from sfu.rtp.vp8 import vp8_descriptor_len

FPS = 30
AUDIO_PACKETS_PER_S = 50


def _video(seconds: float, width: int, height: int, kbps: int) -> list[tuple[list[bytes], int]]:
    enc = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96))
    enc.target_bitrate = kbps * 1000
    frames = []
    base = np.linspace(0, 255, width, dtype=np.uint8)
    for i in range(int(seconds * FPS)):
        img = np.repeat(np.tile(np.roll(base, i * 7), (height, 1))[:, :, None], 3, axis=2)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        frames.append(enc.encode(frame, i % (FPS * 4) == 0))
    return frames


def _audio(seconds: float) -> list[bytes]:
    enc = get_encoder(RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111))
    out = []
    for i in range(int(seconds * AUDIO_PACKETS_PER_S)):
        t = (np.arange(960) + i * 960) / 48000
        s = (np.sin(2 * np.pi * 330 * t) * 6000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(s, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        out.extend(enc.encode(frame)[0])
    return out


def measure_record(video, audio, seconds: float, folder: Path) -> float:
    """Thread CPU seconds to record `seconds` of media."""
    clock_now = [0.0]
    cam = Producer("cam", "video", "vp8", 90000, lambda s: None, clock=lambda: clock_now[0])
    mic = Producer("mic", "audio", "opus", 48000, lambda s: None, clock=lambda: clock_now[0])
    rec = RecordingFile(folder / "bench.webm", [cam, mic], clock=lambda: clock_now[0])
    wall = time.time()
    cam.on_sender_report(ntp_from_unix(wall), 0)
    mic.on_sender_report(ntp_from_unix(wall), 0)
    events = sorted([(i / FPS, 0, i) for i in range(len(video))] +
                    [(i / AUDIO_PACKETS_PER_S, 1, i) for i in range(len(audio))])
    vseq = aseq = 0
    start = time.thread_time()
    for t, kind, i in events:
        clock_now[0] = t
        if kind == 0:
            payloads, _ = video[i]
            for j, p in enumerate(payloads):
                cam.on_packet(vseq & 0xFFFF, (i * 3000) & 0xFFFFFFFF, int(j == len(payloads) - 1), p, 0)
                vseq += 1
        else:
            mic.on_packet(aseq & 0xFFFF, (i * 960) & 0xFFFFFFFF, 0, audio[i], 0)
            aseq += 1
    rec.close()
    return time.thread_time() - start


def measure_decode(video) -> float:
    """Thread CPU seconds to decode the same VP8 frames once."""
    codec = av.CodecContext.create("vp8", "r")
    frames = [av.Packet(b"".join(p[vp8_descriptor_len(p):] for p in payloads)) for payloads, _ in video]
    start = time.thread_time()
    for packet in frames:
        codec.decode(packet)
    return time.thread_time() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--kbps", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    video = _video(args.seconds, args.width, args.height, args.kbps)
    audio = _audio(args.seconds)
    video_bytes = sum(len(p) for payloads, _ in video for p in payloads)
    records, decodes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            records.append(measure_record(video, audio, args.seconds, Path(tmp)))
            decodes.append(measure_decode(video))
        size = (Path(tmp) / "bench.webm").stat().st_size
    record_s, decode_s = float(np.median(records)), float(np.median(decodes))
    result = {
        "seconds_of_media": args.seconds, "size": f"{args.width}x{args.height}",
        "video_kbps": round(video_bytes * 8 / args.seconds / 1000),
        "record_cpu_share_of_core": record_s / args.seconds, "decode_cpu_share_of_core": decode_s / args.seconds,
        "record_vs_decode": record_s / decode_s if decode_s else None, "file_bytes": size,
        "record_cpu_s": records, "decode_cpu_s": decodes,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.seconds:.0f} s of {result['size']} VP8 at ~{result['video_kbps']} kbit/s + Opus, "
              f"median of {args.repeat}, thread CPU time")
        print(f"  record (depacketize + WebM mux, no decode): {100 * result['record_cpu_share_of_core']:.2f} % "
              f"of a core")
        print(f"  decode the same video once (comparison):    {100 * result['decode_cpu_share_of_core']:.2f} % "
              f"of a core  -> recording costs {result['record_vs_decode']:.2f}x a decode")
    return result


if __name__ == "__main__":
    main()

"""CPU time of composing a lesson's 课例 (recorder/compose/), per minute of lesson, against the plain MP4
export of the teacher's file (recorder/library/export.py) in the same run.

    python -m loadtest.bench.compose [--minutes 1] [--threads 1] [--json out.json]

The lesson is synthetic but real media, written as the recorder writes it (WebM: VP8 + Opus): the teacher's
camera 1280×720 30 fps with a tone, courseware 1280×720 at 5 fps shared for the middle half, a classroom
640×360 30 fps with another tone on stage for a quarter. Measured: process CPU time (user + system, this
process and its threads) of compose_lesson and of export_mp4, each once, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from recorder.compose.compose import compose_lesson
from recorder.compose.jobs import NICE, THREADS
from recorder.library.export import export_mp4

ORIGIN = 1_700_000_000.0  # unix time of the synthetic lesson's start


def write_source(path: Path, colour: tuple[int, int, int] | None, size: tuple[int, int], seconds: float,
                 fps: int = 30, tone_hz: float | None = None, kbps: int = 800) -> Path:
    """A WebM as the recorder writes one (VP8 video of one colour with a moving white bar; Opus with a tone),
    encoded with libvpx/libopus. `colour` None: audio only; `tone_hz` None: video only."""
    width, height = size
    with av.open(str(path), "w", format="webm") as out:
        video = audio = None
        if colour is not None:
            video = out.add_stream("libvpx", rate=fps)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.bit_rate = kbps * 1000
            video.options = {"deadline": "realtime", "cpu-used": "8"}
        if tone_hz is not None:
            audio = out.add_stream("libopus", rate=48000)
            audio.layout = "stereo"
        base = np.empty((height, width, 3), np.uint8)
        base[:] = colour or (0, 0, 0)
        frames = int(seconds * fps)
        samples = 0
        for i in range(frames):
            if video is not None:
                img = base.copy()
                x = (i * 8) % max(1, width - width // 16)
                img[height - height // 12:, x:x + width // 16] = 255  # some motion, at the bottom edge
                frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                out.mux(video.encode(frame))
            if audio is not None:
                until = round((i + 1) / fps * 48000)
                while samples + 960 <= until:
                    t = (np.arange(960) + samples) / 48000
                    tone = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
                    frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                    frame.sample_rate, frame.pts, frame.time_base = 48000, samples, Fraction(1, 48000)
                    out.mux(audio.encode(frame))
                    samples += 960
        if video is not None:
            out.mux(video.encode(None))
        if audio is not None:
            out.mux(audio.encode(None))
    return path


def synthetic_lesson(folder: Path, seconds: float, teacher_size: tuple[int, int] = (1280, 720)) -> Path:
    """The bench's lesson in `folder` (recordings and record.json); returns the record's path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_source(folder / "teacher.webm", (40, 160, 40), teacher_size, seconds, tone_hz=440, kbps=1500)
    write_source(folder / "screen1.webm", (40, 40, 200), (1280, 720), seconds / 2, fps=5, kbps=300)
    write_source(folder / "stage1.webm", (200, 60, 40), (640, 360), seconds / 4, tone_hz=1000, kbps=500)
    files = [
        {"file": "teacher.webm", "role": "teacher", "label": "李老师", "start": ORIGIN, "end": ORIGIN + seconds},
        {"file": "screen1.webm", "role": "courseware", "label": "课件 1", "start": ORIGIN + seconds / 4,
         "end": ORIGIN + seconds * 3 / 4},
        {"file": "stage1.webm", "role": "stage", "label": "初一(2)班", "start": ORIGIN + seconds / 2,
         "end": ORIGIN + seconds * 3 / 4},
    ]
    record = folder / "record.json"
    record.write_text(json.dumps({"recording": {"files": files}}, ensure_ascii=False), encoding="utf-8")
    return record


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(seconds: float, threads: int, folder: Path) -> dict:
    record = synthetic_lesson(folder, seconds)
    start_cpu, start = _cpu_s(), time.monotonic()
    composed = compose_lesson(record, folder, folder / "lesson.mp4", threads=threads)
    compose_cpu, compose_wall = _cpu_s() - start_cpu, time.monotonic() - start
    start_cpu, start = _cpu_s(), time.monotonic()
    export_mp4(folder / "teacher.webm", folder / "teacher.mp4")
    export_cpu, export_wall = _cpu_s() - start_cpu, time.monotonic() - start
    minutes = seconds / 60
    return {"lesson_s": seconds, "threads": threads,
            "compose_cpu_s_per_min": round(compose_cpu / minutes, 2),
            "compose_wall_s_per_min": round(compose_wall / minutes, 2),
            "export_cpu_s_per_min": round(export_cpu / minutes, 2),
            "export_wall_s_per_min": round(export_wall / minutes, 2),
            "compose_vs_export": round(compose_cpu / export_cpu, 2) if export_cpu else None,
            "compose_mb": round(composed["size_bytes"] / 1e6, 2), "chapters": composed["chapters"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--beside", type=float, metavar="S",
                        help="instead: write the lesson, then compose it again and again for S seconds at nice 19 "
                             "with one thread per codec, as the job queue does (run a load test meanwhile)")
    args = parser.parse_args()
    if args.beside:
        with tempfile.TemporaryDirectory() as tmp:
            record = synthetic_lesson(Path(tmp), args.minutes * 60)
            os.nice(NICE)
            print("composing", flush=True)
            end, runs = time.monotonic() + args.beside, 0
            while time.monotonic() < end:
                compose_lesson(record, Path(tmp), Path(tmp) / "lesson.mp4", threads=THREADS)
                runs += 1
            print(json.dumps({"composed": runs, "cpu_s": round(_cpu_s(), 1)}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.minutes * 60, args.threads, Path(tmp))
    text = json.dumps(result, ensure_ascii=False, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

"""The composite 课例: the timeline (pure), the layout maths, the limiter, and the composer and its job queue on
small real media (WebM files written with libvpx/libopus, the MP4 read back with PyAV)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import av
import numpy as np
import pytest

from loadtest.bench.compose import ORIGIN, write_source
from recorder.compose.compose import compose_lesson, soft_limit
from recorder.compose.jobs import COMPOSITE_NAME, DONE, FAILED, QUEUED, LocalComposeQueue
from recorder.compose.layout import CANVAS, Rect, boxes, fit
from recorder.compose.timeline import (
    Source,
    Span,
    TimelineError,
    build,
    chapters,
    parse_sources,
    webvtt_chapters,
)

T = ORIGIN


def src(file: str, role: str, start: float, end: float, label: str = "") -> Source:
    return Source(file, role, label or file, T + start, T + end)


# -- the timeline -----------------------------------------------------------------------------------------------

def test_the_timeline_has_one_span_per_layout_and_chapters_named_after_what_happened():
    teacher = src("t.webm", "teacher", 0, 60, "李老师")
    share = src("s1.webm", "courseware", 10, 40, "课件 1")
    turn = src("st1.webm", "stage", 20, 30, "初一(2)班")
    tl = build([teacher, share, turn])
    assert tl.origin == T and tl.duration == 60
    assert [(s.start, s.end, s.courseware, s.stage) for s in tl.spans] == [
        (0, 10, None, ()), (10, 20, share, ()), (20, 30, share, (turn,)), (30, 40, share, ()), (40, 60, None, ())]
    assert all(s.teacher is teacher for s in tl.spans)
    assert [(c.start, c.end, c.title) for c in tl.chapters] == [
        (0, 10, "讲授"), (10, 20, "课件"), (20, 30, "上台 初一(2)班"), (30, 40, "课件"), (40, 60, "讲授")]
    assert tl.span_at(25).stage == (turn,) and tl.span_at(60) is tl.spans[-1] and tl.offset(share) == 10


def test_a_teacher_who_reconnected_is_shown_from_each_part_and_two_classrooms_share_the_stage():
    part1, part2 = src("t.webm", "teacher", 0, 30), src("t2.webm", "teacher", 32, 60)
    a, b = src("a.webm", "stage", 5, 20, "A"), src("b.webm", "stage", 10, 15, "B")
    tl = build([part1, part2, a, b])
    assert tl.span_at(31).teacher is None and tl.span_at(40).teacher is part2
    assert tl.span_at(12).stage == (a, b) and tl.span_at(12).title == "上台 A、B"


def test_short_chapters_join_their_neighbours():
    spans = [Span(0, 10, None, None), Span(10, 11, None, src("s", "courseware", 10, 11)), Span(11, 30, None, None)]
    assert [(c.start, c.end, c.title) for c in chapters(spans)] == [(0, 30, "讲授")]
    first_short = [Span(0, 1, None, None), Span(1, 30, None, src("s", "courseware", 1, 30))]
    assert [(c.start, c.end, c.title) for c in chapters(first_short)] == [(0, 30, "课件")]


def test_the_record_is_checked_before_use():
    good = {"file": "math-1-screen1.webm", "role": "courseware", "label": "课件 1", "start": T, "end": T + 5}
    assert parse_sources({"recording": {"files": [good]}}) == [Source("math-1-screen1.webm", "courseware",
                                                                      "课件 1", T, T + 5)]
    bad = [({}, "lists no recorded files"), ({"recording": {"files": []}}, "lists no recorded files"),
           ({"recording": {"files": [{**good, "file": "../x.webm"}]}}, "not the name of a .webm file"),
           ({"recording": {"files": [{**good, "file": "/etc/passwd"}]}}, "not the name of a .webm file"),
           ({"recording": {"files": [{**good, "role": "boss"}]}}, "role must be one of"),
           ({"recording": {"files": [{**good, "start": "soon"}]}}, "start must be a number"),
           ({"recording": {"files": [{**good, "end": float("nan")}]}}, "end must be a number"),
           ({"recording": {"files": [{**good, "end": T - 1}]}}, "before it starts"),
           ({"recording": {"files": [good] * 1001}}, "more than 1000")]
    for record, message in bad:
        with pytest.raises(TimelineError, match=message):
            parse_sources(record)


def test_webvtt_chapters():
    tl = build([src("t.webm", "teacher", 0, 3725.5), src("s.webm", "courseware", 60, 120)])
    assert webvtt_chapters(tl.chapters) == ("WEBVTT\n\n1\n00:00:00.000 --> 00:01:00.000\n讲授\n\n"
                                           "2\n00:01:00.000 --> 00:02:00.000\n课件\n\n"
                                           "3\n00:02:00.000 --> 01:02:05.500\n讲授\n")


# -- the layout maths -------------------------------------------------------------------------------------------

def test_fit_letterboxes_keeping_the_aspect_ratio_on_even_pixels():
    full = Rect(0, 0, 1280, 720)
    assert fit(640, 480, full) == Rect(160, 0, 960, 720)  # 4:3 in 16:9: bars left and right
    assert fit(1920, 1080, full) == full
    assert fit(720, 1280, full) == Rect(438, 0, 404, 720)  # a phone held upright
    assert fit(640, 480, Rect(944, 524, 320, 180), "end") == Rect(1024, 524, 240, 180)
    for r in (fit(333, 177, full), fit(101, 999, Rect(3, 5, 301, 199))):
        assert all(v % 2 == 0 for v in (r.x, r.y, r.w, r.h)), r


def test_layouts_courseware_with_the_teacher_in_a_corner_stage_beside_the_teacher():
    teacher, share = src("t", "teacher", 0, 9), src("s", "courseware", 0, 9)
    a, b = src("a", "stage", 0, 9), src("b", "stage", 0, 9)
    assert boxes(Span(0, 1, teacher, None)) == [(teacher, Rect(0, 0, *CANVAS), "center")]
    pip = boxes(Span(0, 1, teacher, share))
    assert pip == [(share, Rect(0, 0, 1280, 720), "center"), (teacher, Rect(944, 524, 320, 180), "end")]
    with_stage = boxes(Span(0, 1, teacher, share, (a,)))
    assert [b_[0] for b_ in with_stage] == [share, teacher, a]
    assert with_stage[2][1] == Rect(944, 328, 320, 180)  # above the teacher
    split = boxes(Span(0, 1, teacher, None, (a, b)))
    assert split == [(teacher, Rect(0, 0, 640, 720), "center"), (a, Rect(640, 0, 640, 360), "center"),
                     (b, Rect(640, 360, 640, 360), "center")]
    many = boxes(Span(0, 1, teacher, share, tuple(src(f"c{i}", "stage", 0, 9) for i in range(5))))
    assert all(r.y >= 0 and r.y + r.h <= 720 for _, r, _ in many)  # six insets still fit the column


def test_the_limiter_leaves_quiet_audio_alone_and_never_reaches_full_scale():
    quiet = np.array([[0.5, -0.7]], np.float32)
    assert np.array_equal(soft_limit(quiet), quiet)
    loud = soft_limit(np.array([[0.6 + 0.6, -1.9]], np.float32))
    assert np.all(np.abs(loud) < 1.0) and loud[0, 0] > 0.8 and loud[0, 1] < -0.8


# -- the composer on real media ---------------------------------------------------------------------------------

GREEN, BLUE, RED = (40, 170, 40), (40, 40, 210), (210, 50, 40)


@pytest.fixture(scope="module")
def lesson(tmp_path_factory) -> Path:
    """A 12 s lesson: teacher (green, 440 Hz) throughout, courseware (blue) 3–9 s, class (red, 1 kHz) on
    stage 6–9 s."""
    folder = tmp_path_factory.mktemp("lesson")
    write_source(folder / "t.webm", GREEN, (320, 240), 12, fps=15, tone_hz=440, kbps=300)
    write_source(folder / "s.webm", BLUE, (320, 180), 6, fps=5, kbps=200)
    write_source(folder / "c.webm", RED, (160, 96), 3, fps=15, tone_hz=1000, kbps=200)
    files = [{"file": "t.webm", "role": "teacher", "label": "李老师", "start": T, "end": T + 12},
             {"file": "s.webm", "role": "courseware", "label": "课件 1", "start": T + 3, "end": T + 9},
             {"file": "c.webm", "role": "stage", "label": "A", "start": T + 6, "end": T + 9}]
    (folder / "lessons" / "x").mkdir(parents=True)
    (folder / "lessons" / "x" / "record.json").write_text(json.dumps({"recording": {"files": files}}))
    return folder


def near(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - colour) <= tol))


def test_the_composite_shows_each_source_in_its_place_and_time_with_both_voices_and_chapters(lesson, tmp_path):
    dst = tmp_path / "lesson.mp4"
    seen: list[float] = []
    info = compose_lesson(lesson / "lessons" / "x" / "record.json", lesson, dst, progress=seen.append, fps=10,
                          canvas=(640, 360))
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert info["duration_s"] == pytest.approx(12, abs=0.15)
    data = dst.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # faststart
    with av.open(str(dst)) as c:
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["讲授", "课件", "上台 A", "讲授"]
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.audio[0].codec_context.name == "aac"
        frames = {round(f.time * 10): f.to_ndarray(format="rgb24") for f in c.decode(video=0)}
    centre, corner, above = (180, 320), (320, 600), (220, 600)
    black = (0, 0, 0)
    assert near(frames[20][centre], GREEN) and near(frames[20][corner], black, 20)  # teacher full, 4:3 letterboxed
    assert near(frames[45][centre], BLUE) and near(frames[45][corner], GREEN)  # courseware + teacher inset
    assert near(frames[45][above], BLUE)
    assert near(frames[75][centre], BLUE) and near(frames[75][above], RED)  # + the class above the teacher
    assert near(frames[105][centre], GREEN) and near(frames[105][above], black, 20)  # teacher full again
    assert (dst.with_suffix(".vtt")).read_text().startswith("WEBVTT")
    with av.open(str(dst)) as c:
        audio = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])

    def level(at_s: float, hz: float) -> float:
        seg = audio[int(at_s * 48000):int(at_s * 48000) + 4800]
        spectrum = np.abs(np.fft.rfft(seg)) / len(seg)
        return float(spectrum[round(hz * len(seg) / 48000)])

    assert level(2.0, 440) > 0.05 and level(2.0, 1000) < 0.005
    assert level(7.5, 440) > 0.05 and level(7.5, 1000) > 0.05  # the class on stage is heard with the teacher
    assert level(10.5, 1000) < 0.005


def test_the_queue_composes_in_a_child_process_keeps_jobs_across_a_restart_and_reports_failures(lesson, tmp_path):
    records = {"x": lesson / "lessons" / "x" / "record.json"}
    queue = LocalComposeQueue(tmp_path, records.get, lesson)
    assert queue.status("x")["state"] == "none"
    assert queue.enqueue("x")["state"] == QUEUED
    assert queue.enqueue("missing")["state"] == QUEUED
    # a restart before the worker ran: the jobs are still there
    queue = LocalComposeQueue(tmp_path, records.get, lesson)
    assert [j["lesson_id"] for j in queue.list()] == ["x", "missing"]
    queue.start()
    try:
        progress = set()
        deadline = time.monotonic() + 120
        while queue.status("missing")["state"] not in (DONE, FAILED) and time.monotonic() < deadline:
            progress.add(queue.status("x")["progress"])
            time.sleep(0.05)
    finally:
        queue.close()
    done = queue.status("x")
    assert done["state"] == DONE and done["progress"] == 100, done
    assert Path(done["output"]) == records["x"].parent / COMPOSITE_NAME and Path(done["output"]).stat().st_size
    assert any(0 < p < 100 for p in progress), progress
    failed = queue.status("missing")
    assert failed["state"] == FAILED and "no record" in failed["error"]
    assert json.loads((tmp_path / "compose-jobs.json").read_text())["jobs"][0]["state"] == DONE

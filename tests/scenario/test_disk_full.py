"""A full disk in the middle of a recorded lesson (issue 11, item 8).

The lesson's data directory is a real 4 MiB tmpfs (we run as root; CI too), filled to the last byte a few
seconds into the lesson, so PyAV's muxer, SQLite and the lesson record meet a real ENOSPC / "database or disk
is full". Where mounting is not permitted, the same moments are injected instead (PyAV writes into a file
object whose write raises OSError(ENOSPC); the catalog's SQLite connection raises SQLite's own "database or
disk is full" on writes; Path.write_text/write_bytes raise ENOSPC) and the test says so in its output.

A teacher's real VP8 + Opus packets feed a LessonRecorder (through a stand-in for the router) next to a
classroom's consumer; then the recording is read back and decoded by PyAV and the catalog is real SQLite.
What must hold: one error line for the lesson, not one per frame; the classroom keeps receiving every packet;
the item is finished as incomplete with what came before the disk filled decodable; and start-up (opening the
catalog + repair_unfinished) with the disk still full succeeds, its failures one line each, retried later.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import pathlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from recorder.library import catalog as library_mod
from recorder.library.catalog import AWAITING_REVIEW, RECORDING, Library
from recorder.record import handoff
from recorder.record.marker import incomplete_marker
from recorder.record.handoff import drain
from recorder.record.recorder import LessonRecorder
from recorder.record.repair import repair_unfinished
from recorder.record.webm import CLUSTER_MS
from sfu.producer import Producer
from sfu.rtp.header import ntp_from_unix
from tests.unit.recorder.test_recorder import (
    FPS,
    FakeClock,
    encode_audio,
    encode_video,
    frame_bytes,
)
from tests.unit.recorder.test_recorder_layers import FakeRouter

LESSON = "full-disk"
DISK_BYTES = 4 * 1024 * 1024
LESSON_S = 8.0
FULL_AT_S = 4.0  # the disk fills up here
CLUSTER_S = CLUSTER_MS / 1000


class Disk:
    """The data directory's file system, and a way to fill it up and free it again."""

    def __init__(self, root: Path, mode: str) -> None:
        self.root, self.mode = root, mode
        self.full = False
        self._filler = root / "filler"

    def fill(self) -> None:
        """Take every byte left (a real tmpfs: until ENOSPC; injected: from now on writes fail)."""
        self.full = True
        if self.mode != "tmpfs":
            return
        with open(self._filler, "ab", buffering=0) as f:
            for chunk in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        assert os.statvfs(self.root).f_bavail == 0

    def free(self) -> None:
        self.full = False
        self._filler.unlink(missing_ok=True)


class _FullableFile:
    """A real file whose writes fail with ENOSPC once the (injected) disk is full."""

    def __init__(self, disk: Disk, path: str) -> None:
        self.disk, self.f = disk, open(path, "w+b")  # noqa: SIM115 - closed with the container

    def write(self, data: bytes) -> int:
        if self.disk.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


class _FullableDb:
    """A real SQLite connection that answers writes as SQLite does on a full disk, once the disk is 'full'."""

    WRITES = ("INSERT", "UPDATE", "DELETE", "ALTER")  # (CREATE … IF NOT EXISTS of what exists writes nothing)

    def __init__(self, disk: Disk, db: sqlite3.Connection) -> None:
        object.__setattr__(self, "_disk", disk)
        object.__setattr__(self, "_db", db)

    def _check(self, sql: str) -> None:
        if self._disk.full and sql.lstrip().upper().startswith(self.WRITES):
            raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, *args: Any) -> Any:
        self._check(sql)
        return self._db.execute(sql, *args)

    def executescript(self, sql: str) -> Any:
        for statement in sql.split(";"):
            self._check(statement)
        return self._db.executescript(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._db, name, value)


def _inject(disk: Disk, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(disk.root)
    real_open, real_connect = av.open, sqlite3.connect
    real_write_text, real_write_bytes = pathlib.Path.write_text, pathlib.Path.write_bytes

    def av_open(file: Any, mode: str = "r", **kwargs: Any) -> Any:
        if isinstance(file, str) and mode == "w" and file.startswith(root):
            return real_open(_FullableFile(disk, file), "w", **kwargs)
        return real_open(file, mode, **kwargs)

    def connect(*args: Any, **kwargs: Any) -> Any:
        return _FullableDb(disk, real_connect(*args, **kwargs))

    def guarded(real):  # type: ignore[no-untyped-def]
        def write(self: Path, data: Any, *args: Any, **kwargs: Any) -> Any:
            if disk.full and str(self).startswith(root):
                self.touch()  # a full disk still takes an empty file (an inode)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real(self, data, *args, **kwargs)
        return write

    monkeypatch.setattr(av, "open", av_open)
    monkeypatch.setattr(library_mod.sqlite3, "connect", connect)
    monkeypatch.setattr(pathlib.Path, "write_text", guarded(real_write_text))
    monkeypatch.setattr(pathlib.Path, "write_bytes", guarded(real_write_bytes))


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    root = tmp_path / "disk"
    root.mkdir()
    forced = os.environ.get("KETANG_TEST_DISK_FULL") == "inject"
    mounted = not forced and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(root)],
                                            capture_output=True).returncode == 0
    disk = Disk(root, "tmpfs" if mounted else "injected")
    if not mounted:
        _inject(disk, monkeypatch)
    print(f"disk full: {'a real 4 MiB tmpfs filled to ENOSPC' if mounted else 'ENOSPC injected (no mount)'}")
    # an isolated process-wide list of finishes the catalog could not take (as in a fresh server process)
    monkeypatch.setattr(handoff, "PENDING_FINISHES", {})
    try:
        yield disk
    finally:
        if mounted:
            gc.collect()  # the test's SQLite connections: closed, so that the file system is not busy
            if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(root)], check=False)


class Classroom:
    """A classroom's consumer of the teacher's producer: counts what it is forwarded."""

    def __init__(self) -> None:
        self.packets = 0

    def forward(self, packet: Any, ast: bytes) -> None:
        self.packets += 1

    def skip(self, ext_seq: int) -> None:
        pass

    def on_error(self) -> None:
        raise AssertionError("the classroom's consumer failed")

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _logged() -> Iterator[list[logging.LogRecord]]:
    """Every record of ketang's loggers at INFO and above, as it comes."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep(level=logging.INFO)
    logging.getLogger("ketang").addHandler(handler)
    level = logging.getLogger("ketang").level
    logging.getLogger("ketang").setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logging.getLogger("ketang").removeHandler(handler)
        logging.getLogger("ketang").setLevel(level)


async def _lesson(library: Library, disk: Disk, seen: list[logging.LogRecord]) -> dict[str, Any]:
    """An 8 s lesson whose disk fills up at 4 s; what happened (log records by phase, counts). Not ended yet."""
    clock = FakeClock()
    video = Producer("cam", "video", "vp8", 90000, lambda s: None, source="camera", owner="t1", clock=clock)
    audio = Producer("mic", "audio", "opus", 48000, lambda s: None, source="microphone", owner="t1", clock=clock)
    classroom = Classroom()
    video.attach(classroom)  # type: ignore[arg-type]
    router = FakeRouter(LESSON)
    router.producers = {"cam": video, "mic": audio}
    recorder = LessonRecorder(router, library, "勾股定理", "李老师", "t1", clock=clock)  # type: ignore[arg-type]
    assert recorder.main_id is not None
    await recorder.main_id  # catalogued (in the background) while the disk has room
    vframes, aframes = encode_video(int(LESSON_S * FPS)), encode_audio(int(LESSON_S * 50))
    v_off, a_off, start = 123456789, 987654321, time.time()
    events = sorted([(i / FPS, "v", i) for i in range(len(vframes))] + [(i / 50, "a", i) for i in range(len(aframes))])
    vseq, aseq, next_sr, sent_video = 1000, 2000, 0.5, 0
    phases: dict[str, list[logging.LogRecord]] = {}
    mark = 0
    for t, kind, i in events:
        clock.now = 1000.0 + t
        if t >= next_sr:
            video.on_sender_report(ntp_from_unix(start + t), (v_off + round(t * 90000)) & 0xFFFFFFFF)
            audio.on_sender_report(ntp_from_unix(start + t), (a_off + round(t * 48000)) & 0xFFFFFFFF)
            next_sr += 1.0
        if not disk.full and t >= FULL_AT_S:
            phases["before"], mark = seen[mark:], len(seen)
            disk.fill()
        if kind == "v":
            payloads, _ = vframes[i]
            for j, p in enumerate(payloads):  # (an exception here would fail the test: nothing is caught)
                video.on_packet(vseq & 0xFFFF, (v_off + i * 3000) & 0xFFFFFFFF, int(j == len(payloads) - 1), p, 0)
                vseq += 1
                sent_video += 1
        else:
            for p in aframes[i][0]:
                audio.on_packet(aseq & 0xFFFF, (a_off + i * 960) & 0xFFFFFFFF, 0, p, 0)
                aseq += 1
        if kind == "v" and i == int((FULL_AT_S + 1.0) * FPS):
            # a second after the failure: the error has been said, and the rest of the lesson adds nothing
            phases["failure"], mark = seen[mark:], len(seen)
    phases["after"] = seen[mark:]
    assert recorder.main is not None
    return {"phases": phases, "sent_video": sent_video, "classroom": classroom.packets, "recorder": recorder,
            "vframes": vframes, "consumers": video.consumers + audio.consumers}


def _ours(records: list[logging.LogRecord], level: int = logging.ERROR) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= level]


def _decodable(path: Path) -> tuple[list[tuple[float, bytes]], int, int]:
    """Video packets (pts s, bytes), audio packets, and video frames decoded, up to the file's torn end."""
    video: list[tuple[float, bytes]] = []
    audio = decoded = 0
    with av.open(str(path)) as c:
        with contextlib.suppress(av.error.FFmpegError):
            for pkt in c.demux():
                if not pkt.size:
                    continue
                if pkt.stream.type == "video":
                    video.append((float(pkt.pts * pkt.time_base), bytes(pkt)))
                    decoded += len(pkt.decode())
                else:
                    audio += 1
    return video, audio, decoded


def _check_file(path: Path, vframes: list) -> tuple[float, int]:
    video, audio, decoded = _decodable(path)
    # the teacher's frames, bit for bit, from the start up to (at most a cluster before) the disk filled up
    assert [data for _, data in video] == [frame_bytes(p) for p, _ in vframes[:len(video)]]
    assert decoded == len(video)
    last = video[-1][0]
    assert FULL_AT_S - 1.5 - 2 * CLUSTER_S <= last <= FULL_AT_S + 0.1, last  # (~1.5 s before the first frame)
    assert audio > (last - 1.0) * 50
    return last, path.stat().st_size


def _no_traceback(records: list[logging.LogRecord]) -> None:
    for r in records:
        assert r.exc_info is None and "\n" not in r.getMessage(), r.getMessage()


@pytest.mark.parametrize("free_before_end", [True, False], ids=["space-freed-before-the-end", "still-full"])
async def test_a_full_disk_stops_the_recording_once_the_lesson_goes_on_and_the_item_is_incomplete(
        disk: Disk, free_before_end: bool, caplog: pytest.LogCaptureFixture) -> None:
    data = disk.root / "data"
    library = Library(data)
    with _logged() as seen:
        lesson = await _lesson(library, disk, seen)
        phases = lesson["phases"]
        _no_traceback(seen)

    # before: recording quietly; then ONE error line for the lesson saying what, which lesson, what to do
    assert _ours(phases["before"], logging.WARNING) == []
    (line,) = _ours(phases["failure"])
    assert LESSON in line and "disk is full" in line and "goes on" in line and "Free space" in line, line
    assert str(data) in line
    # the rest of the lesson (4 s of packets) logs nothing more and raises nothing
    assert _ours(phases["after"], logging.INFO) == []
    # forwarding never noticed: the classroom got every packet, the recorder let go of the producers
    assert lesson["classroom"] == lesson["sent_video"]
    assert [type(c).__name__ for c in lesson["consumers"]] == ["Classroom"]

    # the lesson ends (with room again, or not): nothing raised
    recorder = lesson["recorder"]
    with _logged() as end:
        if free_before_end:
            disk.free()
        recorder.close()
        await drain()  # the library updates of the lesson's end
        library.save_lesson_record(LESSON, {"lesson": LESSON, "classrooms": 1}, "classroom,minutes\n第三小学,8\n", "")
    phases["end"] = end
    _no_traceback(end)

    rec = await library.get(recorder.main_id.result())
    assert rec is not None
    path = library.path_of(rec.file)
    marker = incomplete_marker(path)
    if free_before_end:
        # finished as incomplete at the lesson's end, with the reason; the lesson record is written
        assert rec.state == AWAITING_REVIEW
        assert rec.incomplete and "disk is full" in rec.incomplete and "s into the recording" in rec.incomplete
        assert _ours(phases["end"]) == []
        assert (await library.history(rec.id))[-2]["note"].startswith("incomplete: ")
        assert (data / "lessons" / LESSON / "record.json").exists() and not library.pending_records()
        assert not marker.exists()
        last, size = _check_file(path, lesson["vframes"])
        assert rec.size_bytes == size and last <= rec.duration_s <= last + CLUSTER_S + 0.1
        await library.close()
        return

    # still full at the end: the catalog cannot be written (the item waits, one warning), nor the record
    # (one error line from the library, kept in memory)
    if disk.mode == "tmpfs":
        assert os.statvfs(disk.root).f_bavail == 0
    assert rec.state == RECORDING
    assert len(_ours(phases["end"])) == 1 and "record" in _ours(phases["end"])[0]
    assert any("stays unfinished" in m for m in _ours(phases["end"], logging.WARNING))
    assert library.pending_records() == [LESSON]
    assert marker.exists()

    # the server restarts (the old process's catalog files left as a crash leaves them) with the disk still
    # full: the catalog opens and start-up repair raises nothing; the item waits for the next start
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ketang"):
        restarted = Library(data)
        assert await repair_unfinished(restarted) == 0
        assert (await restarted.get(rec.id)).state == RECORDING  # type: ignore[union-attr]
        # and again after every connection was closed (no SQLite shared-memory file can be made now)
        await library.close()
        await restarted.close()
        again = Library(data)
        assert await repair_unfinished(again) == 0
        await again.close()
    _no_traceback(caplog.records)
    assert 1 <= len(_ours(caplog.records)) <= 4, _ours(caplog.records)
    assert not list(path.parent.glob("*.repaired.webm"))  # no half-written copy left to fill the disk

    # room again: the lesson record kept in memory is written; the next start finishes the item as incomplete
    disk.free()
    assert library.retry_pending() == 0
    assert (data / "lessons" / LESSON / "record.json").exists()
    handoff.PENDING_FINISHES.clear()  # a new process: only the marker file knows why it is incomplete
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ketang"):
        fresh = Library(data)
        assert await repair_unfinished(fresh) == 1
    _no_traceback(caplog.records)
    assert _ours(caplog.records, logging.WARNING) == []
    rec = await fresh.get(rec.id)
    assert rec is not None
    # why: the marker file's text, or (a disk too full even for that: it is empty) "the disk was full"
    assert rec.state == AWAITING_REVIEW and rec.incomplete and "disk" in rec.incomplete and "full" in rec.incomplete
    assert not marker.exists()
    last, _ = _check_file(path, lesson["vframes"])
    assert rec.duration_s == pytest.approx(last, abs=0.05)  # (repaired: the file's own end)
    with av.open(str(path)) as c:  # the repair rewrote it whole: a duration and cues, seekable
        assert c.duration is not None
    await fresh.close()


_CRASHING_SERVER = """
import asyncio, os, signal, sys
from pathlib import Path
from recorder.library.catalog import Library
from tests.unit.recorder.test_recorder import _record
data = Path(sys.argv[1])
library = Library(data)
rec, _, _ = _record(library.recordings_dir, seconds=5.0, kill_at=4.0)  # recording, never closed
print(asyncio.run(library.start_recording("crashed", "勾股定理", "李老师", "t1", rec.path)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the server dies mid-lesson: catalog and file as a crash leaves them
"""


async def test_a_server_that_crashed_restarts_on_a_full_disk_and_repairs_its_recording_once_there_is_room(
        disk: Disk) -> None:
    data = disk.root / "data"
    child = subprocess.run([sys.executable, "-c", _CRASHING_SERVER, str(data)], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert child.returncode == -9, child.stderr
    rec_id = child.stdout.split()[-1]
    disk.fill()

    # the next start, with the disk still full: the catalog opens, repair raises nothing and says why in one
    # line per failure; the item stays "recording", to be repaired at a later start
    with _logged() as seen:
        library = Library(data)
        assert await repair_unfinished(library) == 0
    _no_traceback(seen)
    errors = _ours(seen)
    assert errors and all("next start" in line for line in errors), errors
    assert (await library.get(rec_id)).state == RECORDING  # type: ignore[union-attr]
    await library.close()  # (a process stops)
    assert not list(library.recordings_dir.glob("*.repaired.webm"))

    # room again, the start after: repaired and in review (a crash is not "incomplete": it loses ~1 s at most)
    disk.free()
    with _logged() as seen:
        assert await repair_unfinished(library) == 1
    assert _ours(seen, logging.WARNING) == []
    rec = await library.get(rec_id)
    assert rec is not None
    assert rec.state == AWAITING_REVIEW and rec.incomplete is None
    video, _, decoded = _decodable(library.path_of(rec.file))
    assert decoded == len(video) and video[-1][0] >= 4.0 - 1.5 - 2 * CLUSTER_S
    await library.close()

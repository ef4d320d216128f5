"""The lesson recorder: which files a lesson is recorded into, attached to the SFU router's producers.

The teacher's camera and microphone go into the lesson's main file (a new part when the teacher reconnects),
each screen share into a file of its own, each classroom's turn on stage into another; every file is a library
item, catalogued when it starts and finished when it closes (handoff.py: async writes in the background, the file
written from the first packet on, its finish after its start). The files themselves are written by
webm.RecordingFile (a simulcast camera followed across its layers by follower.py). A write that fails (a full
disk) stops the lesson's recording for good with one log line: the lesson goes on, the files keep what was
written and their items are finished as incomplete. What a crash leaves behind is mended by repair.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from recorder.record.follower import SIMULCAST_SETTLE_S, StartingLayers
from recorder.record.handoff import (
    CATALOG_ERRORS,
    Catalog,
    PendingFinish,
    describe,
    finish_or_keep,
    in_background,
    retry_pending_finishes,
)
from recorder.record.marker import clear_incomplete
from recorder.record.webm import RecordingFile, write_failure
from sfu.producer import Producer
from sfu.router import Router

log = logging.getLogger("ketang.recorder")

# a file's library item: its id once the catalog has it, None when the catalog could not take it
Item = asyncio.Task[str | None]


class LessonRecorder:
    """Records a lesson: the teacher's camera + microphone into the main file, each screen share and each
    classroom's turn on stage into a file of its own, each file a library item."""

    def __init__(self, router: Router, catalog: Catalog, title: str, teacher: str, teacher_sub: str,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self.router = router
        self._clock = clock
        self._wall_clock = wall_clock
        self.catalog = catalog
        self.title, self.teacher, self.teacher_sub = title, teacher, teacher_sub
        self.main: RecordingFile | None = None
        self.main_id: Item | None = None
        self.extra: list[tuple[RecordingFile, Item]] = []  # screen shares: (file, its library item)
        # classrooms on stage (上台): each turn's camera and microphone in a file of its own, next to the lesson
        self.stage: dict[str, tuple[RecordingFile, Item]] = {}  # classroom participant id -> (file, library item)
        self.stage_turns = 0
        self.stage_names: dict[str, str] = {}  # participant id -> class name (set by the signalling layer)
        self._starting_layers = StartingLayers(clock)  # which layer of a simulcast camera a file starts from
        # every file of the lesson, in start order, with its role ("teacher", "courseware", "stage") and label
        # (the teacher's name, 课件 n, the class on stage), and when its source ended (wall clock): the lesson's
        # timeline as classrooms saw it, kept in the lesson's record for the composite (recorder/compose/)
        self._timeline: list[tuple[RecordingFile, str, str]] = []
        self._ended: dict[int, float] = {}  # id(file) -> wall time its source ended (producer gone, turn over)
        self.closed = False
        # the library writes that finish this lesson's items (awaited before the lesson is announced ended)
        self.finishing: list[asyncio.Task[None]] = []
        # why the lesson's recording stopped before its end (a full disk): no file of it is written any more
        self.failed: str | None = None
        self._reported = False  # the lesson's one error line is out: anything after it is a warning
        self._stamp = time.strftime("%Y%m%d-%H%M%S")
        in_background(retry_pending_finishes(catalog))
        router.on_track(self._on_track)
        router.on_stage(lambda _: None if self.closed or self.failed else self._sync())
        self._sync()

    # -- write failures: one line per lesson, the lesson goes on ----------------------------------------------

    def _file(self, path: Path, producers: list[Producer], layers: list[Producer] | None = None) -> RecordingFile:
        return RecordingFile(path, producers, clock=self._clock, layers=layers, on_failure=self._file_failed,
                             wall_clock=self._wall_clock)

    def _files(self) -> list[RecordingFile]:
        return ([self.main] if self.main else []) + [f for f, _ in self.extra] + [f for f, _ in self.stage.values()]

    def _file_failed(self, recording: RecordingFile, exc: BaseException) -> None:
        if self.failed is not None:
            return  # the lesson's recording has already stopped (and said so)
        self._stop(recording.failed or write_failure(exc),
                   f"writing {recording.path} failed: {exc}")

    def _stop(self, reason: str, detail: str) -> None:
        """Stop writing every file of the lesson and say so in one line. The lesson is not touched: the
        producers go on forwarding to the classrooms; the files are finished (as incomplete) when it ends."""
        self.failed = reason
        for recording in self._files():
            recording.stop(reason)
        self._report(f"lesson {self.router.lesson_id}: recording stopped, {reason} ({detail}). The lesson goes on "
                     f"unrecorded; what was written is kept and its library item will be marked incomplete. Free "
                     f"space in {self.catalog.recordings_dir.parent}: lessons that start after that are recorded")

    def _report(self, message: str) -> None:
        if self._reported:
            log.warning("%s", message)
        else:
            self._reported = True
            log.error("%s", message)

    def _catalogue(self, title: str, path: Path, role: str, label: str = "") -> Item:
        """A new library item for `path`, catalogued in the background (the file is written meanwhile). When the
        catalog cannot be written, the lesson's recording stops (with its one line) and the item is None."""
        async def start() -> str | None:
            try:
                # (role: the library groups the lesson's files under its one item)
                return await self.catalog.start_recording(self.router.lesson_id, title, self.teacher,
                                                          self.teacher_sub, path, role=role, label=label)
            except CATALOG_ERRORS as exc:
                if not self.closed:
                    self._stop(f"the library could not catalogue a new recording ({describe(exc)})",
                               f"for {path.name}")
                return None
        return in_background(start())

    def _sync_stage(self, recorded: set[int]) -> None:
        """A file per on-stage turn: started when a classroom is on stage with its tracks, finished when it
        leaves the stage (or its tracks go)."""
        on = set(self.router.stage)
        for pid, (recording, rec_id) in list(self.stage.items()):
            live = {id(p) for p in self.router.producers.values() if p.owner == pid}
            if pid not in on or any(id(t.producer) not in live for t in recording.tracks):
                del self.stage[pid]
                self._finish(recording, rec_id)
        for pid in self.router.stage:
            if pid in self.stage:
                continue
            theirs = [p for p in self.router.producers.values() if p.owner == pid and id(p) not in recorded]
            video = [p for p in theirs if p.kind == "video"][:1]
            audio = [p for p in theirs if p.kind == "audio"][:1]
            if not video and not audio:
                continue
            self.stage_turns += 1
            path = self.catalog.recordings_dir / f"{self.router.lesson_id}-{self._stamp}-stage{self.stage_turns}.webm"
            name = self.stage_names.get(pid, pid)
            rec_id = self._catalogue(f"{self.title}（上台 {name}）", path, "stage", name)
            self.stage[pid] = (self._file(path, video + audio), rec_id)
            self._timeline.append((self.stage[pid][0], "stage", name))

    async def _on_track(self, change: str, producer: Producer) -> None:
        if not self.closed and self.failed is None:
            self._sync()

    def _sync(self) -> None:
        """(Re)start files for the producers now live: the main file when camera or microphone start."""
        if self.closed or self.failed is not None:
            return  # (a lesson whose recording stopped on a write error is not recorded again)
        teachers = [p for p in self.router.producers.values() if p.owner_role == "teacher"]
        live = [self._starting_layers.choose(p) for p in teachers]
        pending = any(p is None for p in live)
        if pending:
            # a simulcast camera whose layers are not all known yet: the main file starts once they are
            asyncio.get_event_loop().call_later(SIMULCAST_SETTLE_S / 2, lambda: None if self.closed else self._sync())
        live = [p for p in live if p is not None]
        main = [] if pending else [p for p in live if p.source in ("camera", "microphone")]
        screens = [p for p in live if p.source == "screen"]
        recorded = {id(p) for f in self._files() for t in f.tracks for p in t.sources}
        self._note_ended_shares()
        self._sync_stage(recorded)
        if self.failed is not None:
            return
        if main and (self.main is None or self.main.closed):
            self._start_main(main)
        elif main and any(id(p) not in recorded for p in main):
            # the teacher reconnected: a new part of the main recording
            self._finish_main()
            self._start_main(main)
        for producer in screens:
            if id(producer) not in recorded and self.failed is None:
                n = len(self.extra) + 1
                path = self.catalog.recordings_dir / f"{self.router.lesson_id}-{self._stamp}-screen{n}.webm"
                # each courseware share is a library item of its own, next to the lesson's main recording
                rec_id = self._catalogue(f"{self.title}（课件 {n}）", path, "courseware", f"课件 {n}")
                self.extra.append((self._file(path, [producer], self._layers_of(producer)), rec_id))
                self._timeline.append((self.extra[-1][0], "courseware", f"课件 {n}"))

    def _start_main(self, producers: list[Producer]) -> None:
        part = "" if self.main is None else f"-{time.strftime('%H%M%S')}"
        path = self.catalog.recordings_dir / f"{self.router.lesson_id}-{self._stamp}{part}.webm"
        video = [p for p in producers if p.kind == "video"][:1]
        audio = [p for p in producers if p.kind == "audio"][:1]
        rec_id = self._catalogue(self.title, path, "teacher", self.teacher)
        self.main = self._file(path, video + audio, self._layers_of(video[0]) if video else None)
        self.main_id = rec_id
        self._timeline.append((self.main, "teacher", self.teacher))
        log.info("recording lesson %s to %s", self.router.lesson_id, path)

    def _layers_of(self, layer: Producer) -> list[Producer] | None:
        """The simulcast layers (smallest first) that `layer` is one of, or None."""
        for producer in self.router.producers.values():
            if producer.layers and layer in producer.layers:
                return list(producer.layers)
        return None

    def _finish_main(self) -> None:
        if self.main is not None and self.main_id is not None:
            self._finish(self.main, self.main_id)

    def _finish(self, recording: RecordingFile, item: Item) -> None:
        """Close the file and finish its library item (incomplete when the file stopped early) in the background,
        once the item's start is in the catalog. When the catalog cannot be written, the finish waits in memory
        (tried again at the next start or finish of a recording in this process) and, after a restart, for
        start-up repair: never an exception into the lesson."""
        self._ended.setdefault(id(recording), self._wall_clock())
        recording.close()  # (a trailer that cannot be written stops the lesson's recording: _file_failed)
        if recording.layer_switches:
            log.info("recording %s changed simulcast layer %d times", recording.path.name, recording.layer_switches)
        try:
            size = recording.path.stat().st_size
        except OSError:
            size = 0
        self.finishing.append(in_background(self._finish_item(recording, item, size)))

    async def _finish_item(self, recording: RecordingFile, item: Item, size: int) -> None:
        rec_id = await item
        if rec_id is None:
            # never catalogued (the catalog could not be written): a file nobody can find would only take room
            recording.path.unlink(missing_ok=True)
            clear_incomplete(recording.path)
            return
        pending = PendingFinish(self.catalog, rec_id, self.router.lesson_id, recording.path, recording.duration_s,
                                size, recording.failed)
        try:
            await finish_or_keep(pending)
        except CATALOG_ERRORS as exc:
            self._report(f"lesson {self.router.lesson_id}: the library could not be updated ({describe(exc)}): "
                         f"recording {rec_id} ({recording.path.name}) stays unfinished and is finished"
                         f"{' as incomplete' if recording.failed else ''} once there is room (later in this "
                         f"process, or by start-up repair at the next start)")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._finish_main()
        for recording, rec_id in self.extra + list(self.stage.values()):
            self._finish(recording, rec_id)
        self.stage.clear()

    def _note_ended_shares(self) -> None:
        """A courseware share whose producer is gone has ended (its file stays open until the lesson ends)."""
        live = {id(p) for p in self.router.producers.values()}
        for recording, _ in self.extra:
            if id(recording) not in self._ended and not any(id(p) in live for t in recording.tracks
                                                            for p in t.sources):
                self._ended[id(recording)] = self._wall_clock()

    def timeline(self) -> list[dict]:
        """Every file of the lesson that has media, on the wall clock: `file` (its name in the recordings
        directory), `role` (teacher, courseware, stage), `label`, `start` (unix time of the file's 0 ms), `end`
        (when its source ended: the share stopped, the turn on stage was over, the lesson ended) and
        `duration_s` (its last frame)."""
        entries = []
        for recording, role, label in self._timeline:
            if recording.t0 is None:
                continue  # never opened: no frame arrived
            end = self._ended.get(id(recording), recording.t0 + recording.duration_s)
            entries.append({"file": recording.path.name, "role": role, "label": label,
                            "start": round(recording.t0, 3), "end": round(max(end, recording.t0), 3),
                            "duration_s": recording.duration_s})
        return entries

    def stats(self) -> dict:
        return {"main": self.main.stats() if self.main else None, "screens": [f.stats() for f, _ in self.extra],
                "stage": [f.stats() for f, _ in self.stage.values()]}

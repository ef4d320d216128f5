"""A scheduled lesson's recording is filed under its timetable entry (both engines of the store): the library item of
a lesson whose id is an occurrence's gets the entry's curriculum fields and the teacher's school, without
overwriting what the teacher typed; a lesson not of the timetable is left alone."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

from argon2 import PasswordHasher

from recorder.library.catalog import Library, Viewer
from signaling.accounts import Accounts, lesson_id
from signaling.accounts.filing import file_recordings
from store import Store


async def test_a_scheduled_lessons_recording_gets_its_curriculum_fields(tmp_path: Path, database_url: str,
                                                                         webm_master: Path) -> None:
    accounts = Accounts(Store(database_url), hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    library = Library(tmp_path / "data", database_url=database_url)
    try:
        li = await accounts.create_user(login="li", name="李老师", role="teacher", school="县第一中学",
                                        password="password-123")
        room = await accounts.create_user(login="r3", name="第三小学", role="classroom")
        entry = await accounts.create_entry({
            "title": "七年级数学", "teacher_id": li["id"], "classroom_ids": [room["id"]], "kind": "once",
            "date": "2025-09-10", "start_time": "08:00", "end_time": "08:45", "stage": "初中", "subject": "数学",
            "grade": "七年级", "edition": "人教版", "chapter": "3.1 一元一次方程"})
        lesson = lesson_id(entry["id"], date(2025, 9, 10))
        ids = []
        for name, lid, typed in (("a", lesson, {"chapter": "3.2 解一元一次方程"}), ("b", "ad-hoc-lesson", {})):
            file = library.recordings_dir / f"{name}.webm"
            shutil.copy(webm_master, file)
            ids.append(await library.import_file(file, lesson_id=lid, teacher="李老师", teacher_sub=li["id"],
                                                 metadata={"title": "七年级数学", **typed}, duration_s=3.0,
                                                 size_bytes=file.stat().st_size))
        assert await file_recordings(accounts, library, lesson) == 1
        assert await file_recordings(accounts, library, "ad-hoc-lesson") == 0
        filed, other = await library.get(ids[0]), await library.get(ids[1])
        assert filed is not None and other is not None
        assert (filed.stage, filed.subject, filed.grade, filed.edition, filed.school) == (
            "初中", "数学", "七年级", "人教版", "县第一中学")
        assert filed.chapter == "3.2 解一元一次方程"  # what the teacher typed stays
        assert (other.subject, other.school) == ("", "")
        found, total = await library.search("", {"subject": "数学"}, viewer=Viewer.operator())
        assert total == 1 and found[0].id == ids[0]
    finally:
        await library.close()
        await accounts.close()

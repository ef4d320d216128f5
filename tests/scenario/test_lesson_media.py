"""A whole lesson with real aiortc peers over loopback against a `ketang serve` subprocess: a teacher
publishing a synthetic moving VP8 video plus Opus, classrooms that decode what the SFU forwards."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support import (
    VIDEO_CLOCK,
    Classroom,
    Teacher,
    WsClient,
    hang_up,
    join_lesson,
    publishing_teacher,
    token,
)

pytestmark = pytest.mark.slow


async def test_three_classrooms_decode_the_teachers_video_and_one_with_3_percent_loss_keeps_95_percent(server):
    lesson = "media-three"
    rooms = [Classroom(await join_lesson(server, "classroom", lesson, f"school {i}"), loss=0.03 if i == 0 else 0.0)
             for i in range(3)]
    teacher = await publishing_teacher(server, lesson)
    try:
        for room in rooms:
            await room.wait_frames(1, timeout_s=10)
        # a window of the teacher's frames, identified by their timestamps in each classroom
        pts_from = [max(room.video_pts) for room in rooms]
        sent_from = teacher.video.frames_sent
        await asyncio.sleep(8)
        sent = teacher.video.frames_sent - sent_from
        step = VIDEO_CLOCK // teacher.video.fps
        # aiortc's jitter buffer holds frames behind a hole until the retransmission fills it and then lets out one
        # frame per packet received, so a classroom whose retransmission was itself lost (and re-asked at its next
        # loss) runs seconds behind: wait until every classroom has decoded past the window, then count the frames
        ends = [start + sent * step for start in pts_from]
        deadline = time.monotonic() + 15
        while any(max(room.video_pts) < end for room, end in zip(rooms, ends)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        decoded = [len({p for p in room.video_pts if start < p <= start + sent * step})
                   for room, start in zip(rooms, pts_from)]
        stats = await server.stats(lesson)
        retransmits = [c["retransmits"] for sub in stats["subscribers"].values() for c in sub]
        print("decoded", decoded, "of", sent, "retransmissions", retransmits)
        lossy = rooms[0].loss
        assert lossy is not None and lossy.dropped > 0.02 * (lossy.dropped + lossy.passed), "loss was not injected"
        # frames still in flight at the end of the window (a few at 30 fps) are the only allowance
        assert decoded[0] >= 0.95 * sent, (decoded, sent, lossy.dropped, lossy.passed)
        for n in decoded[1:]:
            assert n >= 0.95 * sent, (decoded, sent)
        assert max(retransmits) > 0, "the lossy classroom's losses were not repaired by retransmission"
        rtts = [c["rtt_ms"] for sub in stats["subscribers"].values() for c in sub if c["kind"] == "video"]
        assert all(rtt is not None and 0 <= rtt < 500 for rtt in rtts), rtts  # from the classrooms' reports
        for room in rooms:
            assert room.frame_sizes == {(teacher.video.width, teacher.video.height)}
            assert room.audio_frames > 0, "no Opus audio was forwarded"
    finally:
        await hang_up(*rooms, teacher)


async def test_a_classroom_joining_5_s_late_decodes_its_first_frame_within_1_s_of_connecting(server):
    lesson = "media-late"
    teacher = await publishing_teacher(server, lesson)
    early = Classroom(await join_lesson(server, "classroom", lesson, "early"))
    try:
        await early.wait_frames(1, timeout_s=10)
        await asyncio.sleep(5)
        joined_at = time.monotonic()
        late = Classroom(await join_lesson(server, "classroom", lesson, "late"))
        connected = asyncio.Event()
        connected_at: list[float] = []

        @late.pc.on("connectionstatechange")
        def _state() -> None:
            if late.pc.connectionState == "connected" and not connected_at:
                connected_at.append(time.monotonic())
                connected.set()

        await asyncio.wait_for(connected.wait(), 10)
        await late.wait_frames(1, timeout_s=5)
        first_frame = late.frames[0] - connected_at[0]
        print(f"late joiner: first frame {first_frame * 1000:.0f} ms after connecting, "
              f"{(late.frames[0] - joined_at) * 1000:.0f} ms after join")
        assert first_frame <= 1.0
        await hang_up(late)
    finally:
        await hang_up(early, teacher)


async def test_the_teacher_leaving_is_announced_and_a_new_teacher_connection_is_forwarded_again(server):
    lesson = "media-leave"
    room = Classroom(await join_lesson(server, "classroom", lesson, "school"))
    teacher = await publishing_teacher(server, lesson)
    try:
        await room.wait_frames(5)
        start = len(room.ws.messages)
        await teacher.close()
        await teacher.ws.close()
        left = await room.ws.wait_for(lambda m: m.get("event") == "participant-left", start=start)
        assert left["participant"]["role"] == "teacher"
        removed = await room.ws.wait_for(lambda m: m.get("event") == "track-removed", start=start)
        assert removed["track"]["kind"] in ("audio", "video")

        # the teacher comes back (page reload): the same classroom connection gets the new tracks
        frames_before = len(room.frames)
        teacher = await publishing_teacher(server, lesson)
        await room.wait_frames(frames_before + 10, timeout_s=10)
    finally:
        await hang_up(room, teacher)


async def test_a_teacher_reloading_the_page_with_the_same_token_takes_over_and_classrooms_keep_playing(server):
    lesson = "media-reload"
    room = Classroom(await join_lesson(server, "classroom", lesson, "school"))
    same = token("teacher", lesson, "Ms Li")
    first_ws = await WsClient().connect(server.ws_url)
    assert (await first_ws.request({"type": "join", "token": same}))["type"] == "joined"
    first = Teacher(first_ws)
    assert (await first.publish())["type"] == "answer"
    second_ws = await WsClient().connect(server.ws_url)
    second = Teacher(second_ws)
    try:
        await room.wait_frames(5)
        assert (await second_ws.request({"type": "join", "token": same}))["type"] == "joined"
        for _ in range(40):
            if first_ws.close_code is not None:
                break
            await asyncio.sleep(0.05)
        assert first_ws.close_code == 4001, "the replaced connection was not closed"
        await first.close()  # the old page is gone; its media must not be what the classroom sees
        frames = len(room.frames)
        assert (await second.publish())["type"] == "answer"
        await room.wait_frames(frames + 15, timeout_s=10)
        assert (await server.health())["status"] == "ok"
    finally:
        await hang_up(room, first, second)


async def test_a_misbehaving_classroom_does_not_disturb_the_lesson(server):
    """Garbage and oversized websocket messages, a flood, a publish attempt and a classroom that vanishes without
    leaving: the others keep decoding."""
    lesson = "media-misbehave"
    good = Classroom(await join_lesson(server, "classroom", lesson, "good"))
    bad_ws = await join_lesson(server, "classroom", lesson, "bad")
    bad = Classroom(bad_ws)
    teacher = await publishing_teacher(server, lesson)
    try:
        await good.wait_frames(5)
        await bad.wait_frames(1)
        teacher_frames = teacher.video.frames_sent
        start = len(bad_ws.messages)
        for raw in ("{not json", b"\xff\xfe\x00binary", "[1,2,3]", '{"type": "fly"}', '{"type": "join"}',
                    '{"type": "answer", "sdp": 5}', "x" * 70_000):
            await bad_ws.send(raw)
        errors = []
        deadline = time.monotonic() + 5
        while len(errors) < 7 and time.monotonic() < deadline:
            errors = [m["code"] for m in bad_ws.messages[start:] if m.get("type") == "error"]
            await asyncio.sleep(0.05)
        assert errors == ["bad_json", "bad_json", "bad_json", "unknown_type", "bad_message", "bad_message",
                          "too_large"], errors
        refused = await bad_ws.request({"type": "stage", "participant": "someone", "on": True})
        assert refused["type"] == "error" and refused["code"] == "forbidden"  # a teacher's command
        empty = await bad_ws.request({"type": "publish", "sdp": "v=0\r\n"})
        assert empty["type"] == "error" and empty["code"] == "nothing_to_publish"

        # a flood beyond the per-connection rate limit is refused, not obeyed
        for _ in range(100):
            await bad_ws.send({"type": "ping"})
        await bad_ws.wait_for(lambda m: m.get("code") == "rate_limited", start=start)

        # (hostile datagrams at the media ports: tests/scenario/test_udp_fuzz.py)

        # the bad classroom disappears without a word
        await bad.close()
        await bad_ws.close()

        before = len(good.frames)
        await asyncio.sleep(3)
        assert len(good.frames) - before >= 0.9 * 3 * teacher.video.fps, "the good classroom stopped decoding"
        assert teacher.pc.connectionState == "connected"
        assert teacher.video.frames_sent > teacher_frames
        health = await server.health()
        assert health["status"] == "ok"
    finally:
        await hang_up(good, teacher)


async def test_a_screen_share_added_mid_lesson_is_offered_to_classrooms_by_renegotiation(server):
    lesson = "media-screen"
    room = Classroom(await join_lesson(server, "classroom", lesson, "school"))
    teacher = await publishing_teacher(server, lesson)
    try:
        await room.wait_frames(5)
        start = len(room.ws.messages)
        screen = teacher.add_screen()
        reply = await teacher.publish()
        assert reply["type"] == "answer", reply
        offer = await room.ws.wait_for(lambda m: m.get("type") == "offer", start=start)
        assert [t["kind"] for t in offer["tracks"]] == ["audio", "video", "video"]
        deadline = time.monotonic() + 10
        while len(room.video_tracks) < 2 or min(room.video_tracks.values()) < 10:
            assert time.monotonic() < deadline, room.video_tracks
            await asyncio.sleep(0.1)
        assert (screen.width, screen.height) in room.frame_sizes
        camera_frames = len(room.frames)
        await asyncio.sleep(1)
        assert len(room.frames) > camera_frames, "the camera stopped after the renegotiation"
    finally:
        await hang_up(room, teacher)


async def test_a_classroom_choosing_audio_only_gets_no_video_but_keeps_audio_and_gets_video_back(server):
    """Weak links: the SFU stops sending the video (saving the bandwidth), never the audio."""
    lesson = "media-audio-only"
    weak = Classroom(await join_lesson(server, "classroom", lesson, "mountain school"))
    other = Classroom(await join_lesson(server, "classroom", lesson, "town school"))
    teacher = await publishing_teacher(server, lesson)
    try:
        await weak.wait_frames(5)
        reply = await weak.ws.request({"type": "prefer", "video": False})
        assert reply == {"type": "preferred", "ref": reply["ref"], "video": False, "layer": "auto", "camera": True}
        await asyncio.sleep(0.5)  # frames in flight
        frames, audio, others = len(weak.frames), weak.audio_frames, len(other.frames)
        stats = await server.stats(lesson)
        await asyncio.sleep(2)
        assert len(weak.frames) == frames, "video still arrives after choosing audio only"
        assert weak.audio_frames > audio + 50, "audio stopped too"
        assert len(other.frames) > others + 40, "the other classroom lost its video"
        later = await server.stats(lesson)
        weak_id = next(pid for pid, cs in later["subscribers"].items() if any(c["paused"] for c in cs))
        sent = {c["kind"]: c["packets_out"] for c in stats["subscribers"][weak_id]}
        sent_later = {c["kind"]: c["packets_out"] for c in later["subscribers"][weak_id]}
        assert sent_later["video"] == sent["video"] and sent_later["audio"] > sent["audio"]

        back = time.monotonic()
        assert (await weak.ws.request({"type": "prefer", "video": True}))["video"] is True
        await weak.wait_frames(frames + 1, timeout_s=5)
        print(f"video back {1000 * (weak.frames[frames] - back):.0f} ms after asking")
        await weak.wait_frames(frames + 30, timeout_s=5)
    finally:
        await hang_up(weak, other, teacher)


async def test_a_classroom_choosing_courseware_and_sound_gets_the_slides_and_audio_but_not_the_camera(server):
    """只看课件+声音: the SFU stops the teacher's camera for that classroom only; the courseware and the audio go on,
    and the camera comes back when asked."""
    lesson = "media-courseware-only"
    room = Classroom(await join_lesson(server, "classroom", lesson, "mountain school"))
    other = Classroom(await join_lesson(server, "classroom", lesson, "town school"))
    teacher = await publishing_teacher(server, lesson)
    try:
        screen = teacher.add_screen()
        assert (await teacher.publish())["type"] == "answer"

        async def frames_of_each(rooms: list[Classroom], n: int) -> None:
            deadline = time.monotonic() + 10
            while any(len(r.video_tracks) < 2 or min(r.video_tracks.values()) < n for r in rooms):
                assert time.monotonic() < deadline, [r.video_tracks for r in rooms]
                await asyncio.sleep(0.1)

        await frames_of_each([room, other], 10)
        reply = await room.ws.request({"type": "prefer", "video": True, "camera": False})
        assert (reply["video"], reply["camera"]) == (True, False), reply
        await asyncio.sleep(0.5)  # frames in flight
        camera = (teacher.video.width, teacher.video.height)
        sizes = dict(room.frames_by_size)
        others, audio = dict(other.frames_by_size), room.audio_frames
        await asyncio.sleep(2)
        assert room.frames_by_size[camera] == sizes[camera], "the camera still arrives"
        assert room.frames_by_size[(screen.width, screen.height)] > sizes[(screen.width, screen.height)], \
            "the courseware stopped"
        assert room.audio_frames > audio + 50, "the audio stopped"
        assert other.frames_by_size[camera] > others[camera] + 20, "the other classroom lost the camera"

        reply = await room.ws.request({"type": "prefer", "video": True, "camera": True})
        assert reply["camera"] is True
        deadline = time.monotonic() + 5
        while room.frames_by_size[camera] < sizes[camera] + 10:
            assert time.monotonic() < deadline, "the camera did not come back"
            await asyncio.sleep(0.1)
    finally:
        await hang_up(room, other, teacher)


async def test_a_classroom_whose_link_collapses_falls_to_audio_only_and_gets_video_back_when_it_recovers(server):
    """The audio-first ladder, automatic: the SFU reads the classroom's loss and REMB."""
    lesson = "media-ladder"
    weak = Classroom(await join_lesson(server, "classroom", lesson, "mountain school"), impair=True)
    teacher = await publishing_teacher(server, lesson)

    async def state() -> str:
        video = (await server.stats(lesson))["video"]
        return next(iter(video.values()))["state"]

    async def wait_state(wanted: str, timeout_s: float) -> float:
        start = time.monotonic()
        while (current := await state()) != wanted:
            assert time.monotonic() - start < timeout_s, f"still {current!r} after {timeout_s} s"
            await asyncio.sleep(0.25)
        return time.monotonic() - start

    try:
        await weak.wait_frames(10)
        assert weak.loss is not None
        weak.loss.rate_bps = 40_000  # far below the lesson's video
        took = await wait_state("audio", timeout_s=8)
        print(f"audio only {took:.1f} s after the link collapsed")
        await asyncio.sleep(1)
        frames, audio = len(weak.frames), weak.audio_frames
        await asyncio.sleep(2)
        assert weak.audio_frames > audio + 50, "audio was starved"
        stats = await server.stats(lesson)
        assert next(iter(stats["video"].values()))["reason"]

        weak.loss.rate_bps = None  # the link recovers
        took = await wait_state("video", timeout_s=25)
        print(f"video steady again {took:.1f} s after the link recovered")
        await weak.wait_frames(frames + 30, timeout_s=10)
    finally:
        await hang_up(weak, teacher)


async def test_the_teachers_microphone_is_told_of_the_classrooms_loss_so_its_encoder_adds_fec(server):
    """The server's receiver reports to the teacher carry the weak classrooms' audio loss (its own link loses
    nothing), which is what a browser's Opus encoder sizes its in-band FEC by."""
    lesson = "media-fec"
    lossy = Classroom(await join_lesson(server, "classroom", lesson, "mountain school"), loss=0.15)
    clean = Classroom(await join_lesson(server, "classroom", lesson, "town school"))
    teacher = await publishing_teacher(server, lesson)
    try:
        await lossy.wait_frames(5)
        deadline = time.monotonic() + 10
        fraction = 0.0
        while time.monotonic() < deadline:
            stats = await teacher.pc.getStats()
            audio = [s for s in stats.values() if s.type == "remote-inbound-rtp" and s.kind == "audio"]
            fraction = audio[0].fractionLost / 256 if audio else 0.0  # aiortc gives RTCP's 1/256 units
            if fraction >= 0.05:
                break
            await asyncio.sleep(0.5)
        print(f"the teacher's microphone is told of {fraction:.0%} loss")
        assert 0.05 <= fraction <= 0.2 + 1 / 256, fraction
    finally:
        await hang_up(lossy, clean, teacher)

"""The synthetic teacher: joins with a teacher token and publishes a looped pre-encoded VP8 + Opus clip
(`MediaPublisher`), stamping each video frame's send time by VP8 picture id for the classrooms' delivery delay.
With `--simulcast` the camera goes out as Chromium sends the teacher page's: three layers q/h/f on their own SSRCs,
named by the RID header extension (loadtest/simulcast.py), send times stamped per layer and frame.

With `--wall N` it also shows a wall: `wall {visible: [N classroom ids]}` makes the server offer it a receiving
connection carrying only those classrooms' cameras and microphones, which it counts the way a synthetic classroom
counts the teacher (`CountingReceiver`: per tile, loss after retransmission, no decoding)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableSequence

import aiohttp

from loadtest.media import Clip, SimulcastLayer
from loadtest.publisher import MediaPublisher
from loadtest.receiver import CountingReceiver
from loadtest.wsclient import ProtocolError, WsClient, join_lesson

WALL_INDEX = -1  # the wall's receiver seeds its (unused) loss emulation apart from the classrooms'


class SyntheticTeacher:
    def __init__(self, session: aiohttp.ClientSession, ws_url: str, token: str, lesson: str, video: Clip | None,
                 audio: Clip, send_times: MutableSequence[float] | None = None,
                 simulcast: list[SimulcastLayer] | None = None) -> None:
        self.lesson = lesson
        self.token = token
        self.ws = WsClient(session, ws_url, keep=False)
        # simulcast: the camera as three layers q/h/f, the way Chromium sends it (loadtest/simulcast.py)
        self.publisher = MediaPublisher(self.ws, video, audio, send_times, simulcast)
        self.participant_id: str | None = None
        self.wall: CountingReceiver | None = None
        self.wall_visible: list[str] = []
        self.wall_ready_ms: float | None = None

    @property
    def packets_sent(self) -> int:
        return self.publisher.packets_sent

    def simulcast_figures(self) -> list[dict] | None:
        """Per layer: what the teacher sent, and the RTCP it got for it (PLIs, NACKs, REMB)."""
        sender = self.publisher.simulcast
        return sender.figures() if sender is not None else None

    @property
    def published_at(self) -> float | None:
        return self.publisher.published_at

    async def publish(self) -> None:
        await self.ws.connect()
        # (a node short of CPU refuses new lessons for a while too: tried again, as the teacher page does)
        joined, _ = await join_lesson(self.ws, self.token, self.lesson, 60.0)
        if joined.get("type") == "error":
            raise ProtocolError(f"{joined.get('code')}: {joined.get('message')}")
        self.participant_id = joined["participant"]["id"]
        await self.publisher.publish()

    async def open_wall(self, classrooms: list[str], timeout_s: float = 30.0) -> None:
        """Put these classrooms' tiles on the wall; return once every one of them has sent audio and video."""
        started = time.monotonic()
        self.wall = CountingReceiver(self.ws, WALL_INDEX)  # registers for the server's offer before it comes
        reply = await self.ws.request({"type": "wall", "visible": classrooms}, 30.0, check=True)
        self.wall_visible = list(reply["visible"])
        await asyncio.wait_for(self.wall.connected.wait(), timeout_s)
        if self.wall.error:
            raise ConnectionError(f"the wall's receiving connection: {self.wall.error}")
        deadline = started + timeout_s
        while time.monotonic() < deadline and not self._wall_complete():
            await asyncio.sleep(0.1)
        self.wall_ready_ms = (time.monotonic() - started) * 1000

    def _wall_complete(self) -> bool:
        assert self.wall is not None
        return all(all(s and s["packets"] for s in self.wall.by_kind({pid}).values()) for pid in self.wall_visible)

    def wall_result(self) -> dict | None:
        """Per tile (classroom id): audio and video figures; plus packets of anyone not on the wall."""
        if self.wall is None:
            return None
        wall = self.wall
        seen = wall.participants()
        return {"visible": self.wall_visible, "ready_ms": self.wall_ready_ms,
                "tiles": {pid: wall.by_kind({pid}) for pid in self.wall_visible},
                "others": [pid for pid in seen if pid not in self.wall_visible],
                "others_packets": sum(s.packets for s in wall.streams.values()
                                      if s.participant not in self.wall_visible),
                **wall.counters()}

    async def stop_media(self) -> None:
        """Stop sending (the connection stays up so the lesson does not end while counters are read)."""
        self.publisher.stop_media()

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            await self.publisher.close()
            if self.wall is not None:
                await self.wall.close()

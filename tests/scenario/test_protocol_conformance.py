"""The example exchange of docs/protocol.md, played against a real server with real aiortc peers: every message
the document shows a client sending is sent, and every message it shows a client receiving must arrive, in that
order, with the fields shown (docs/protocol.md says how to read the block)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from tests.support import Teacher, WsClient, token

pytestmark = pytest.mark.slow

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
NAMES = {"teacher": "李老师", "classroom": "第三小学"}
LINE = re.compile(r"^(teacher|classroom|both)\s+(→|←)\s(.*)$")


def example_steps() -> list[tuple[str, str, str]]:
    """(who, "→" | "←", message text) for each message of the example block, continuation lines joined."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text[text.index("## Example exchange"):]
    block = section[section.index("```text") + len("```text"):]
    block = block[:block.index("```")]
    steps: list[tuple[str, str, str]] = []
    for line in block.splitlines():
        match = LINE.match(line)
        if match:
            steps.append((match.group(1), match.group(2), match.group(3).strip()))
        elif line.startswith(" ") and line.strip() and steps:
            who, arrow, message = steps[-1]
            steps[-1] = (who, arrow, message + " " + line.strip())
    return steps


class Matcher:
    """Documented values against received ones; "<name>" placeholders bind once and must agree after."""

    def __init__(self) -> None:
        self.bound: dict[str, Any] = {}

    def matches(self, shown: Any, got: Any, bind: dict[str, Any]) -> bool:
        if isinstance(shown, str) and re.fullmatch(r"<[^<>]+>", shown):
            name = shown[1:-1]
            if name == "number":
                return isinstance(got, (int, float)) and not isinstance(got, bool)
            if name == "text":
                return isinstance(got, str) and bool(got)
            if name == "sdp":
                return isinstance(got, str) and got.startswith("v=0")
            known = {**self.bound, **bind}
            if name in known:
                return known[name] == got
            bind[name] = got
            return True
        if isinstance(shown, dict):
            return isinstance(got, dict) and all(k in got and self.matches(v, got[k], bind) for k, v in shown.items())
        if isinstance(shown, list):
            return isinstance(got, list) and len(shown) == len(got) and \
                all(self.matches(s, g, bind) for s, g in zip(shown, got))
        return shown == got and type(shown) is type(got)

    def find(self, shown: dict, messages: list[dict], start: int) -> int | None:
        """Index of the first message from `start` on that matches (binding its placeholders), else None."""
        for i in range(start, len(messages)):
            bind: dict[str, Any] = {}
            if self.matches(shown, messages[i], bind):
                self.bound.update(bind)
                return i
        return None


class Client:
    def __init__(self, role: str, ws: WsClient) -> None:
        self.role, self.ws, self.read = role, ws, 0
        self.teacher = Teacher(ws) if role == "teacher" else None  # its peer connection: video, then audio
        self.pc = self.teacher.pc if self.teacher else RTCPeerConnection()

    async def sdp_for(self, message: dict) -> str:
        if message["type"] == "publish":
            await self.pc.setLocalDescription(await self.pc.createOffer())
        else:  # the answer to the latest offer received
            offer = next(m for m in reversed(self.ws.messages) if m.get("type") == "offer")
            await self.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp


async def test_the_documented_example_exchange_runs_against_a_real_server(server):
    steps = example_steps()
    assert len(steps) >= 20, steps  # the block was found and read
    clients = {role: Client(role, await WsClient().connect(server.ws_url)) for role in ("teacher", "classroom")}
    matcher = Matcher()
    try:
        for who, arrow, text in steps:
            if arrow == "→":
                client = clients[who]
                try:
                    message = json.loads(text)
                except json.JSONDecodeError:
                    await client.ws.send(text)  # a broken frame, sent as it is
                    continue
                if str(message.get("token", "")).startswith("<token:"):
                    message["token"] = token(message["token"][7:-1], message["lesson"], NAMES[who])
                if message.get("sdp") == "<sdp>":
                    message["sdp"] = await client.sdp_for(message)
                await client.ws.send(message)
                continue
            shown = json.loads(text)
            for role in (("teacher", "classroom") if who == "both" else (who,)):
                client = clients[role]
                deadline = time.monotonic() + 10
                while (found := matcher.find(shown, client.ws.messages, client.read)) is None:
                    assert time.monotonic() < deadline, \
                        f"{role} never received {text}\nafter {client.ws.messages[client.read:]}"
                    await asyncio.sleep(0.05)
                client.read = found + 1
                if shown.get("type") == "answer" and client.role == "teacher":
                    await client.pc.setRemoteDescription(RTCSessionDescription(client.ws.messages[found]["sdp"],
                                                                               "answer"))
    finally:
        for client in clients.values():
            await client.pc.close()
            await client.ws.close()


def test_the_matcher_can_fail():
    """The conformance test's own matcher refuses what differs (a value, a missing field, a placeholder that
    was bound to something else, a list of another length)."""
    m = Matcher()
    assert m.find({"id": "<x>"}, [{"id": "a"}], 0) == 0
    assert m.find({"id": "<x>"}, [{"id": "b"}], 0) is None
    assert m.find({"a": 1}, [{"a": 2}, {"b": 1}, {"a": True}], 0) is None
    assert m.find({"t": [1]}, [{"t": [1, 2]}], 0) is None
    assert m.find({"n": "<number>"}, [{"n": "5"}, {"n": 5}], 0) == 1

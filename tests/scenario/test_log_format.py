"""`ketang serve --log-format json`: every line the server logs is one JSON object, and a line logged while a joined
connection's messages are handled names its lesson and participant."""

from __future__ import annotations

import contextvars
import json
import logging
from pathlib import Path

import pytest

from ketang.log import JsonFormatter, TextFormatter, configure
from loadtest.wsclient import WsClient
from signaling.logcontext import ContextFilter, set_participant
from tests.support import Server, join_lesson, token


def _record(message: str) -> logging.LogRecord:
    record = logging.LogRecord("ketang.test", logging.WARNING, __file__, 1, message, None, None)
    ContextFilter().filter(record)
    return record


def test_a_line_names_the_lesson_and_participant_of_the_context_it_was_logged_in():
    def inside() -> tuple[str, str]:
        set_participant("math-7a", "c-1", "classroom")
        record = _record("no video for 5 s")
        return JsonFormatter().format(record), TextFormatter("%(message)s").format(record)

    as_json, as_text = contextvars.copy_context().run(inside)
    entry = json.loads(as_json)
    assert (entry["lesson"], entry["participant"], entry["role"], entry["level"]) == ("math-7a", "c-1", "classroom",
                                                                                     "warning")
    assert entry["message"] == "no video for 5 s"
    assert as_text == "no video for 5 s [lesson=math-7a participant=c-1 role=classroom]"
    outside = json.loads(JsonFormatter().format(_record("started")))
    assert "lesson" not in outside and outside["message"] == "started"  # another context: nobody's


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text or json"):
        configure("xml")


@pytest.mark.slow
async def test_the_server_logs_json_lines_that_name_who_joined(tmp_path: Path):
    server = Server(tmp_path, env={"KETANG_LOG_FORMAT": "json", "KETANG_MEDIA_ADDRESSES": "127.0.0.1"})
    server.wait_ready()
    ws = None
    try:
        ws = await join_lesson(server, "classroom", "json-logs", "第一小学",
                               participant_token=token("classroom", "json-logs", name="第一小学"))
        bad = await WsClient().connect(server.ws_url)
        assert (await bad.request({"type": "join", "token": "not-a-token"}))["type"] == "error"
        await bad.close()
    finally:
        if ws is not None:
            await ws.close()
        server.stop()
    lines = [line for line in Path(server.log.name).read_text(encoding="utf-8").splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    # every line the logging module wrote is JSON (the start-up banner on stdout is plain text by design)
    logged = [line for line in lines if not line.startswith(("ketang serving", "  "))]
    assert logged and all(line.startswith("{") for line in logged), logged
    joined = [e for e in entries if e["message"].startswith("joined as classroom")]
    assert len(joined) == 1 and joined[0]["lesson"] == "json-logs" and joined[0]["participant"]

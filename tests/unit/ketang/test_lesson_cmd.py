"""`ketang lesson create`, the pages the server serves, and the small server additions the pages rely on
(the optional `title` token claim, the optional `sources` field of `publish`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ketang.lesson_cmd import add_parser, create_lesson
from signaling.app import make_app
from signaling.config import Config
from signaling.messages import ProtocolError, parse_message
from signaling.tokens import issue_token, load_or_create_secret, verify_token
from tests.support import TEST_SECRET, token

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"


def _fragment(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).fragment)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ketang")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_lesson_create_prints_a_teacher_link_and_classroom_links_whose_tokens_verify_with_their_roles(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KETANG_SECRET", raising=False)
    secret = load_or_create_secret(tmp_path)  # the server's secret, as `ketang serve` creates it on its first start
    code = _run(["lesson", "create", "--title", "七年级数学", "--base-url", "http://school.example:8080/",
                 "--data-dir", str(tmp_path), "--classroom", "第三小学", "--classroom", "第五小学"])
    assert code == 0
    out = capsys.readouterr().out
    teacher_url = re.search(r"http://\S+/teacher#\S+", out).group(0)
    classroom_urls = re.findall(r"http://\S+/classroom#\S+", out)
    assert teacher_url.startswith("http://school.example:8080/teacher#token=")
    assert len(classroom_urls) == 2

    teacher = verify_token(secret, _fragment(teacher_url)["token"][0])
    assert teacher.role == "teacher" and teacher.title == "七年级数学"
    assert re.fullmatch(r"[a-z0-9]{8}", teacher.lesson), teacher.lesson
    rooms = [verify_token(secret, _fragment(url)["token"][0], lesson=teacher.lesson) for url in classroom_urls]
    assert [r.role for r in rooms] == ["classroom", "classroom"]
    assert [r.name for r in rooms] == ["第三小学", "第五小学"]
    assert len({r.sub for r in rooms} | {teacher.sub}) == 3, "each classroom needs its own participant id"
    # the teacher page shows the classroom links: they travel in its fragment, never to a server's log
    invites = _fragment(teacher_url)["invite"]
    assert [verify_token(secret, t).sub for t in invites] == [r.sub for r in rooms]


def test_two_lessons_get_different_ids_and_the_default_is_two_classrooms() -> None:
    a = create_lesson(TEST_SECRET, "a")
    b = create_lesson(TEST_SECRET, "b")
    assert a.lesson != b.lesson
    assert len(a.classrooms) == 2
    assert a.teacher.startswith("http://127.0.0.1:8080/teacher#token=")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No server settings from the environment running the tests."""
    for name in ("KETANG_SECRET", "KETANG_DATA_DIR", "KETANG_PUBLIC_URL", "KETANG_TLS_CERT", "KETANG_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_lesson_create_refuses_when_the_data_dir_has_no_server_secret_and_creates_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch) -> None:
    clean_env.chdir(tmp_path)  # the default data dir (./data) is empty too
    for argv in (["--data-dir", str(tmp_path / "elsewhere")], []):
        assert _run(["lesson", "create", "--title", "七年级数学", *argv]) == 2
        out = capsys.readouterr()
        assert out.out == "", "no link may be printed"
        assert "服务器的密钥不存在" in out.err and "--data-dir" in out.err and "start the server once" in out.err
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "data").exists()


def test_lesson_create_signs_with_ketang_secret_as_the_server_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KETANG_SECRET", TEST_SECRET)
    (tmp_path / "secret").write_text("the-file-loses-to-the-environment\n")
    assert _run(["lesson", "create", "--title", "t", "--data-dir", str(tmp_path)]) == 0
    teacher_url = re.search(r"http://\S+/teacher#\S+", capsys.readouterr().out).group(0)
    assert verify_token(TEST_SECRET, _fragment(teacher_url)["token"][0]).role == "teacher"


@pytest.mark.parametrize(("argv", "env", "base"), [
    pytest.param(["--tls-cert", "/etc/ketang/cert.pem", "--tls-key", "/etc/ketang/key.pem", "--host", "10.0.0.5",
                  "--port", "8443"], {}, "https://10.0.0.5:8443", id="the server's TLS flags"),
    pytest.param(["--host", "10.0.0.5", "--port", "8443"],
                 {"KETANG_TLS_CERT": "/c.pem", "KETANG_TLS_KEY": "/k.pem"}, "https://10.0.0.5:8443",
                 id="the server's TLS environment"),
    pytest.param([], {"KETANG_PUBLIC_URL": "https://ketang.county.cn/"}, "https://ketang.county.cn",
                 id="KETANG_PUBLIC_URL"),
    pytest.param(["--url", "https://ketang.county.cn:8443"], {"KETANG_PUBLIC_URL": "https://other.cn"},
                 "https://ketang.county.cn:8443", id="--url wins over the environment"),
    pytest.param([], {}, "http://127.0.0.1:8080", id="nothing: the server's default address"),
])
def test_lesson_create_links_point_where_the_server_is_configured(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch, argv: list[str],
        env: dict[str, str], base: str) -> None:
    load_or_create_secret(tmp_path)
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert _run(["lesson", "create", "--title", "t", "--data-dir", str(tmp_path), *argv]) == 0
    out = capsys.readouterr()
    assert re.search(rf"^  {re.escape(base)}/teacher#token=", out.out, re.M), out.out
    assert len(re.findall(rf"{re.escape(base)}/classroom#token=", out.out)) == 2
    assert "HTTPS" not in out.err, "no warning for https links or a localhost one"


def test_lesson_create_warns_that_an_http_link_to_another_machine_cannot_open_the_camera(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch) -> None:
    load_or_create_secret(tmp_path)
    assert _run(["lesson", "create", "--title", "t", "--data-dir", str(tmp_path), "--host", "10.0.0.5"]) == 0
    out = capsys.readouterr()
    assert "http://10.0.0.5:8080/teacher#token=" in out.out
    assert "摄像头" in out.err and "docs/deploy.md" in out.err


def test_lesson_create_refuses_half_a_tls_setting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch) -> None:
    load_or_create_secret(tmp_path)
    assert _run(["lesson", "create", "--title", "t", "--data-dir", str(tmp_path), "--tls-cert", "/c.pem"]) == 2
    assert "--tls-key" in capsys.readouterr().err


def test_lesson_create_refuses_an_overlong_title(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_or_create_secret(tmp_path)
    assert _run(["lesson", "create", "--title", "x" * 500, "--data-dir", str(tmp_path)]) == 2
    assert "title" in capsys.readouterr().err


def test_a_token_without_title_verifies_with_an_empty_title() -> None:
    assert verify_token(TEST_SECRET, issue_token(TEST_SECRET, "classroom", "l1")).title == ""


@pytest.mark.parametrize(("sources", "ok"), [
    pytest.param({"0": "microphone", "1": "camera", "2": "screen"}, True, id="the three sources by mid"),
    pytest.param({}, True, id="empty"),
    pytest.param({"1": "projector"}, False, id="an unknown source"),
    pytest.param({"": "camera"}, False, id="an empty mid"),
    pytest.param({"m" * 40: "camera"}, False, id="an overlong mid"),
    pytest.param({str(i): "camera" for i in range(17)}, False, id="too many entries"),
    pytest.param(["camera"], False, id="not an object"),
])
def test_publish_sources_are_validated(sources: object, ok: bool) -> None:
    import json

    raw = json.dumps({"type": "publish", "sdp": SDP, "sources": sources})
    if ok:
        assert parse_message(raw).fields["sources"] == sources
    else:
        with pytest.raises(ProtocolError) as err:
            parse_message(raw)
        assert err.value.code == "bad_message" and "sources" in err.value.message


@pytest.fixture
async def client(tmp_path: Path) -> TestClient:
    app = make_app(Config(secret=TEST_SECRET, data_dir=tmp_path / "data"))
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.mark.parametrize("path", ["/", "/teacher", "/classroom"])
async def test_the_pages_are_served_as_html(client: TestClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "<!doctype html>" in (await resp.text()).lower()


@pytest.mark.parametrize("path", ["/static/protocol.js", "/static/teacher.js", "/static/classroom.js",
                                  "/static/i18n.js", "/static/style.css"])
async def test_the_scripts_and_styles_are_served(client: TestClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type in ("text/javascript", "application/javascript", "text/css")


async def test_the_title_in_a_token_becomes_the_lesson_title(client: TestClient) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "join", "id": 1,
                        "token": issue_token(TEST_SECRET, "teacher", "titled", name="李老师", title="物理 · 浮力")})
    joined = await ws.receive_json(timeout=5)
    assert joined["type"] == "joined", joined
    assert joined["lesson"]["title"] == "物理 · 浮力"
    await ws.close()


async def test_a_lesson_without_title_is_titled_by_its_id(client: TestClient) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "join", "id": 1, "token": token("teacher", "untitled")})
    joined = await ws.receive_json(timeout=5)
    assert joined["lesson"]["title"] == "untitled"
    await ws.close()

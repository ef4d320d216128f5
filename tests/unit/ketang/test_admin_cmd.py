"""`ketang admin create-user`: the password from stdin (never a flag), refusals said on stderr with exit 2 — a short
password, a login taken — and a classroom account made without any password."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ketang.cli import main


def run(monkeypatch: pytest.MonkeyPatch, data: Path, stdin: str, *args: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["admin", "create-user", "--data-dir", str(data), *args])


def test_create_user_takes_the_password_from_stdin_and_refuses_a_short_one_or_a_taken_login(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    admin = ("--role", "administrator", "--login", "wang", "--name", "王主任", "--password-stdin")
    assert run(monkeypatch, tmp_path, "short\n", *admin) == 2
    assert "weak_password" in capsys.readouterr().err
    assert run(monkeypatch, tmp_path, "long-enough-pw\n", *admin) == 0
    assert "administrator wang (王主任)" in capsys.readouterr().out
    assert run(monkeypatch, tmp_path, "long-enough-pw\n", *admin) == 2
    assert "login_taken" in capsys.readouterr().err
    # a classroom signs in with its screens' credentials: nothing is read from stdin
    assert run(monkeypatch, tmp_path, "", "--role", "classroom", "--login", "r3", "--name", "第三小学") == 0
    with pytest.raises(SystemExit):  # a password is never a flag (`ps` would show it)
        main(["admin", "create-user", "--role", "teacher", "--login", "li", "--name", "李", "--password", "x"])

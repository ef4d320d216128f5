"""`ketang serve --config ketang.toml`: flag > environment > file > default; unknown keys and bad types refused
with the file and the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketang.cli import _port
from ketang.cli import main as ketang_main
from signaling.config import (
    CONFIG_KEYS,
    DEFAULT_PORT,
    DRAIN_TIMEOUT_S,
    Config,
    ConfigFileError,
    apply_config_file,
    flag_on,
    read_config_file,
    seconds_from,
)


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ketang.toml"
    path.write_text(text)
    return path


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    path = _file(tmp_path, 'redis_url = "redis://file:6379/0"\nport = 9001\ndrain_timeout_s = 30\n'
                           'ice_servers = ["stun:a:3478", "stun:b:3478"]\nno_record = true\n')
    env = {"KETANG_REDIS_URL": "redis://env:6379/0"}
    applied = apply_config_file(path, env)
    assert "KETANG_REDIS_URL" not in applied  # the environment's own value stays
    assert Config.redis_url_from("redis://flag:6379/0", env) == "redis://flag:6379/0"  # flag
    assert Config.redis_url_from(None, env) == "redis://env:6379/0"  # environment over file
    assert _port(None, env) == 9001 and _port(9002, env) == 9002  # file over default; flag over file
    assert seconds_from("KETANG_DRAIN_TIMEOUT_S", DRAIN_TIMEOUT_S, env) == 30
    assert Config.ice_servers_from(None, env) == ("stun:a:3478", "stun:b:3478")
    assert flag_on("KETANG_NO_RECORD", env)
    assert _port(None, {}) == DEFAULT_PORT  # nothing anywhere: the default
    assert seconds_from("KETANG_DRAIN_TIMEOUT_S", DRAIN_TIMEOUT_S, {}) == DRAIN_TIMEOUT_S


def test_every_key_names_an_environment_variable_and_every_option_of_serve_has_a_key():
    from ketang.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {a.dest for a in serve._actions} - {"help", "config", "func"}
    assert flags - set(CONFIG_KEYS) == set()  # the file's key is the flag's name
    assert all(env.startswith("KETANG_") for env, _ in CONFIG_KEYS.values())


@pytest.mark.parametrize("text, named", [
    ('prot = 8080\n', "unknown key 'prot'"),
    ('[server]\nport = 8080\n', "unknown key 'server'"),
    ('port = "8080"\n', "port must be an integer, not str"),
    ('port = 80.5\n', "port must be an integer"),
    ('drain_timeout_s = "10 min"\n', "drain_timeout_s must be a number of seconds"),
    ('drain_timeout_s = -1\n', "drain_timeout_s must not be negative"),
    ('no_record = "yes"\n', "no_record must be true or false"),
    ('ice_servers = [1, 2]\n', "ice_servers must be a list of strings"),
    ('stage_max = true\n', "stage_max must be an integer"),
    ('port = \n', "is not valid TOML"),
])
def test_a_bad_file_is_refused_naming_the_file_and_the_key(tmp_path, text, named):
    path = _file(tmp_path, text)
    with pytest.raises(ConfigFileError) as err:
        read_config_file(path)
    assert str(path) in str(err.value) and named in str(err.value), str(err.value)


def test_a_missing_file_is_refused_clearly(tmp_path):
    with pytest.raises(ConfigFileError, match="cannot read the configuration file"):
        read_config_file(tmp_path / "nope.toml")


def test_ketang_serve_with_a_bad_file_exits_2_before_starting(tmp_path, capsys):
    path = _file(tmp_path, 'port = "eighty"\n')
    assert ketang_main(["serve", "--config", str(path)]) == 2
    assert f"ketang: {path}: port must be an integer" in capsys.readouterr().err


def test_jobs_are_on_unless_the_flag_the_environment_or_the_file_turns_them_off(tmp_path):
    assert Config.jobs_from(None, {}) is True and Config().jobs is True
    assert Config.jobs_from("off", {"KETANG_JOBS": "1"}) is False  # the flag wins
    assert Config.jobs_from(None, {"KETANG_JOBS": "0"}) is False
    assert Config.jobs_from(None, {"KETANG_JOBS": "on"}) is True
    env: dict[str, str] = {}
    apply_config_file(_file(tmp_path, "jobs = false\njob_lease_s = 12\n"), env)
    assert Config.jobs_from(None, env) is False and Config.float_from("KETANG_JOB_LEASE_S", 30.0, env) == 12
    env = {}
    apply_config_file(_file(tmp_path, "jobs = true\n"), env)
    assert Config.jobs_from(None, env) is True
    with pytest.raises(ValueError, match="on or off"):
        Config.jobs_from(None, {"KETANG_JOBS": "sometimes"})

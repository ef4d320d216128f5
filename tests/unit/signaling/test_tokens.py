"""Signed role tokens: issue/verify round trips, every refusal path, and
the on-disk secret."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import random
import stat
import threading
from typing import Any

import jwt
import pytest

from signaling import tokens
from signaling.tokens import (
    ROLES,
    Claims,
    TokenError,
    issue_token,
    load_or_create_secret,
    verify_token,
)

# >= 64 bytes, so that PyJWT has no key-length warning even for HS512.
SECRET = "test-secret-" + "0123456789abcdef" * 4
OTHER_SECRET = "other-secret-" + "0123456789abcdef" * 4
LESSON = "lesson-42"
T0 = 1_700_000_000  # a fixed "now", in seconds since the epoch
HOUR_S = 3600


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def good_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "iss": "ketang",
        "role": "classroom",
        "lesson": LESSON,
        "name": "Room 3",
        "sub": "p-1",
        "iat": T0,
        "exp": T0 + HOUR_S,
    }
    payload.update(overrides)
    return payload


def sign(payload: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=algorithm)


def assert_refused(token: Any, code: str, *, lesson: str | None = None, now: float = T0 + 1) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(SECRET, token, lesson=lesson, now=now)
    assert info.value.code == code
    assert info.value.message


# --- round trips -------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_a_token_issued_for_each_role_verifies_to_the_same_claims(role: str) -> None:
    token = issue_token(SECRET, role, LESSON, name="Ms Li", ttl_s=HOUR_S, now=T0, sub="p-7")
    claims = verify_token(SECRET, token, lesson=LESSON, now=T0 + 1)
    assert claims == Claims(role=role, lesson=LESSON, name="Ms Li", sub="p-7", iat=T0, exp=T0 + HOUR_S)


def test_the_name_defaults_to_the_role_and_the_participant_id_is_random() -> None:
    first = verify_token(SECRET, issue_token(SECRET, "observer", LESSON, now=T0), now=T0)
    second = verify_token(SECRET, issue_token(SECRET, "observer", LESSON, now=T0), now=T0)
    assert first.name == "observer"
    assert first.sub and second.sub and first.sub != second.sub


def test_the_default_lifetime_is_six_hours_and_the_issuer_is_ketang() -> None:
    token = issue_token(SECRET, "teacher", LESSON, now=T0 + 0.9)
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    assert payload["iss"] == "ketang"
    assert payload["iat"] == T0  # whole seconds
    assert payload["exp"] == T0 + 6 * HOUR_S
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_a_token_verifies_without_a_lesson_to_compare_against() -> None:
    token = issue_token(SECRET, "classroom", "any-lesson", now=T0)
    assert verify_token(SECRET, token, now=T0).lesson == "any-lesson"


def test_verification_uses_the_real_clock_when_now_is_not_given() -> None:
    fresh = issue_token(SECRET, "classroom", LESSON)
    assert verify_token(SECRET, fresh).role == "classroom"
    stale = issue_token(SECRET, "classroom", LESSON, ttl_s=1, now=T0)
    with pytest.raises(TokenError) as info:
        verify_token(SECRET, stale)
    assert info.value.code == "token_expired"


def test_a_token_issued_in_the_future_of_the_real_clock_still_verifies_at_that_time() -> None:
    # PyJWT's own iat check would use the wall clock and refuse this.
    future = T0 + 100 * 365 * 24 * HOUR_S
    token = issue_token(SECRET, "teacher", LESSON, now=future)
    assert verify_token(SECRET, token, now=future + 1).iat == future


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"role": "admin"}, id="unknown-role"),
        pytest.param({"role": "Teacher"}, id="role-is-case-sensitive"),
        pytest.param({"lesson": ""}, id="empty-lesson"),
        pytest.param({"ttl_s": 0}, id="zero-ttl"),
        pytest.param({"ttl_s": -5}, id="negative-ttl"),
        pytest.param({"ttl_s": True}, id="bool-ttl"),
        pytest.param({"secret": ""}, id="empty-secret"),
        pytest.param({"name": ""}, id="empty-name"),
        pytest.param({"sub": ""}, id="empty-sub"),
    ],
)
def test_issuing_refuses_bad_arguments_with_value_error(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"secret": SECRET, "role": "teacher", "lesson": LESSON, "now": T0}
    args.update(kwargs)
    with pytest.raises(ValueError):
        issue_token(**args)


# --- expiry and lesson ---------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "valid"),
    [
        pytest.param(T0 + HOUR_S - 1, True, id="one-second-before-exp"),
        pytest.param(T0 + HOUR_S - 0.001, True, id="a-millisecond-before-exp"),
        pytest.param(T0 + HOUR_S, False, id="exactly-at-exp"),
        pytest.param(T0 + HOUR_S + 1, False, id="one-second-after-exp"),
        pytest.param(T0 + 365 * 24 * HOUR_S, False, id="a-year-later"),
    ],
)
def test_a_token_expires_at_exp(now: float, valid: bool) -> None:
    token = issue_token(SECRET, "classroom", LESSON, ttl_s=HOUR_S, now=T0)
    if valid:
        assert verify_token(SECRET, token, now=now).exp == T0 + HOUR_S
    else:
        assert_refused(token, "token_expired", now=now)


def test_a_token_for_another_lesson_is_refused_as_wrong_lesson() -> None:
    token = issue_token(SECRET, "classroom", "lesson-1", now=T0)
    assert_refused(token, "token_wrong_lesson", lesson="lesson-2")


def test_an_expired_token_for_another_lesson_is_reported_as_expired() -> None:
    token = issue_token(SECRET, "classroom", "lesson-1", ttl_s=10, now=T0)
    assert_refused(token, "token_expired", lesson="lesson-2", now=T0 + 11)


# --- forged, damaged and malformed tokens -----------------------------------


def flip_middle_char(token: str) -> str:
    header, payload, signature = token.split(".")
    i = len(payload) // 2
    flipped = "B" if payload[i] != "B" else "C"
    return ".".join([header, payload[:i] + flipped + payload[i + 1 :], signature])


def test_a_token_with_a_flipped_payload_character_is_invalid() -> None:
    token = issue_token(SECRET, "classroom", LESSON, now=T0)
    tampered = flip_middle_char(token)
    assert tampered != token
    assert_refused(tampered, "token_invalid", lesson=LESSON)


def test_a_classroom_token_rewritten_to_teacher_keeps_its_signature_and_is_invalid() -> None:
    token = issue_token(SECRET, "classroom", LESSON, now=T0, sub="p-1", name="Room 3")
    header, _, signature = token.split(".")
    escalated = ".".join([header, b64url_json(good_payload(role="teacher")), signature])
    assert_refused(escalated, "token_invalid", lesson=LESSON)


def test_a_token_signed_with_another_secret_is_invalid() -> None:
    token = issue_token(OTHER_SECRET, "teacher", LESSON, now=T0)
    assert_refused(token, "token_invalid", lesson=LESSON)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_an_unsigned_alg_none_token_crafted_by_hand_is_invalid(alg: str) -> None:
    header = b64url_json({"alg": alg, "typ": "JWT"})
    payload = b64url_json(good_payload(role="teacher"))
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        assert_refused(token, "token_invalid", lesson=LESSON)


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_a_token_signed_with_the_right_secret_but_another_hmac_is_invalid(alg: str) -> None:
    token = sign(good_payload(role="teacher"), algorithm=alg)
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert_refused(token, "token_invalid", lesson=LESSON)


def test_a_hs256_token_relabelled_as_hs512_in_its_header_is_invalid() -> None:
    token = sign(good_payload())
    _, payload, signature = token.split(".")
    relabelled = ".".join([b64url_json({"alg": "HS512", "typ": "JWT"}), payload, signature])
    assert_refused(relabelled, "token_invalid")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="none"),
        pytest.param(12345, id="int"),
        pytest.param(b"abc.def.ghi", id="bytes"),
        pytest.param(["a", "b"], id="list"),
        pytest.param("", id="empty"),
        pytest.param("not-a-jwt", id="no-dots"),
        pytest.param("a.b.c", id="garbage-segments"),
        pytest.param("....", id="only-dots"),
        pytest.param("é.é.é", id="non-ascii"),
        pytest.param(b64url_json([1, 2]) + "." + b64url_json({}) + ".", id="header-not-an-object"),
    ],
)
def test_garbage_and_non_strings_are_invalid(token: Any) -> None:
    assert_refused(token, "token_invalid")


def signed_token_of_length(length: int) -> str:
    """A validly signed, otherwise good token exactly ``length`` chars long.

    Unpadded base64 never has a length of 4k+1, so a single segment cannot
    hit every length; a "kid" header of 0-3 chars shifts the header segment
    until the payload segment can make up the rest."""
    for kid_chars in range(4):
        headers = {"kid": "k" * kid_chars} if kid_chars else None
        base = len(jwt.encode(good_payload(name=""), SECRET, algorithm="HS256", headers=headers))
        name = "x" * max(0, (length - base) * 3 // 4 - 4)  # 3 name chars -> 4 base64 chars; start just short
        while len(jwt.encode(good_payload(name=name + "x"), SECRET, algorithm="HS256", headers=headers)) <= length:
            name += "x"
        token = jwt.encode(good_payload(name=name), SECRET, algorithm="HS256", headers=headers)
        if len(token) == length:
            return token
    raise AssertionError(f"cannot build a token of {length} chars")


def test_a_token_of_exactly_4096_chars_is_not_refused_for_its_length() -> None:
    token = signed_token_of_length(tokens.MAX_TOKEN_CHARS)
    assert verify_token(SECRET, token, now=T0).role == "classroom"


@pytest.mark.parametrize("over_by", [1, 2, 3, tokens.MAX_TOKEN_CHARS])
def test_a_validly_signed_token_longer_than_4096_chars_is_invalid(over_by: int) -> None:
    assert_refused(signed_token_of_length(tokens.MAX_TOKEN_CHARS + over_by), "token_invalid")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(good_payload(role="admin"), id="unknown-role"),
        pytest.param(good_payload(role=""), id="empty-role"),
        pytest.param(good_payload(role=["teacher"]), id="role-is-a-list"),
        pytest.param({k: v for k, v in good_payload().items() if k != "role"}, id="missing-role"),
        pytest.param({k: v for k, v in good_payload().items() if k != "lesson"}, id="missing-lesson"),
        pytest.param({k: v for k, v in good_payload().items() if k != "name"}, id="missing-name"),
        pytest.param({k: v for k, v in good_payload().items() if k != "sub"}, id="missing-sub"),
        pytest.param({k: v for k, v in good_payload().items() if k != "iat"}, id="missing-iat"),
        pytest.param({k: v for k, v in good_payload().items() if k != "exp"}, id="missing-exp"),
        pytest.param({k: v for k, v in good_payload().items() if k != "iss"}, id="missing-iss"),
        pytest.param(good_payload(iss="someone-else"), id="wrong-issuer"),
        pytest.param(good_payload(lesson=42), id="lesson-is-an-int"),
        pytest.param(good_payload(name=None), id="name-is-null"),
        pytest.param(good_payload(sub=7), id="sub-is-an-int"),
        pytest.param(good_payload(exp="2030-01-01"), id="exp-is-a-string"),
        pytest.param(good_payload(exp=float(T0 + HOUR_S)), id="exp-is-a-float"),
        pytest.param(good_payload(exp=True), id="exp-is-a-bool"),
        pytest.param(good_payload(iat="now"), id="iat-is-a-string"),
        pytest.param(good_payload(aud="someone"), id="unexpected-audience"),
    ],
)
def test_a_validly_signed_token_with_bad_claims_is_invalid(payload: dict[str, Any]) -> None:
    assert_refused(sign(payload), "token_invalid")


def test_the_well_formed_control_payload_used_above_verifies() -> None:
    # Guards the table above: its tokens fail because of their one change.
    assert verify_token(SECRET, sign(good_payload()), lesson=LESSON, now=T0 + 1).role == "classroom"


def test_a_validly_signed_non_object_payload_is_invalid() -> None:
    token = jwt.api_jws.encode(b"[1,2,3]", SECRET, algorithm="HS256")
    assert_refused(token, "token_invalid")


def test_random_damage_to_a_token_only_ever_raises_token_error() -> None:
    rng = random.Random(1234)
    token = issue_token(SECRET, "teacher", LESSON, now=T0)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ é"
    for _ in range(2000):
        chars = list(token)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        damaged = "".join(chars)
        if damaged == token:
            continue
        with pytest.raises(TokenError) as info:
            verify_token(SECRET, damaged, now=T0)
        assert info.value.code == "token_invalid"


def test_verifying_with_an_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        verify_token("", issue_token(SECRET, "teacher", LESSON, now=T0), now=T0)


# --- the server secret -----------------------------------------------------------


def test_the_secret_is_created_once_with_mode_0600_and_reused(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "deep" / "data"  # parents are created too
    first = load_or_create_secret(data_dir, env={})
    path = data_dir / "secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 43  # token_urlsafe(32)
    assert path.read_text().strip() == first
    mtime = path.stat().st_mtime_ns
    assert load_or_create_secret(data_dir, env={}) == first
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in data_dir.iterdir()) == ["secret"]  # no temp files left behind


def test_two_data_dirs_get_different_secrets(tmp_path: pathlib.Path) -> None:
    assert load_or_create_secret(tmp_path / "a", env={}) != load_or_create_secret(tmp_path / "b", env={})


def test_the_secret_file_is_0600_even_under_a_permissive_umask(tmp_path: pathlib.Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_secret(tmp_path, env={})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


def test_an_existing_secret_file_is_read_with_whitespace_stripped(tmp_path: pathlib.Path) -> None:
    (tmp_path / "secret").write_text("  from-the-operator \n\n")
    assert load_or_create_secret(tmp_path, env={}) == "from-the-operator"


def test_an_empty_secret_file_is_refused_rather_than_overwritten(tmp_path: pathlib.Path) -> None:
    (tmp_path / "secret").write_text(" \n")
    with pytest.raises(ValueError):
        load_or_create_secret(tmp_path, env={})
    assert (tmp_path / "secret").read_text() == " \n"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"KETANG_SECRET": "from-env"}, "from-env", id="env-overrides-file"),
        pytest.param({"KETANG_SECRET": " from-env\n"}, "from-env", id="env-is-stripped"),
        pytest.param({"KETANG_SECRET": ""}, "from-file", id="empty-env-is-ignored"),
        pytest.param({"KETANG_SECRET": "  "}, "from-file", id="blank-env-is-ignored"),
        pytest.param({"OTHER": "x"}, "from-file", id="unset-env"),
    ],
)
def test_the_environment_overrides_the_file_when_non_empty(
    tmp_path: pathlib.Path, env: dict[str, str], expected: str
) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    assert load_or_create_secret(tmp_path, env=env) == expected


def test_the_environment_secret_creates_no_file(tmp_path: pathlib.Path) -> None:
    assert load_or_create_secret(tmp_path / "data", env={"KETANG_SECRET": "s"}) == "s"
    assert not (tmp_path / "data").exists()


def test_the_process_environment_is_the_default(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETANG_SECRET", "from-os-environ")
    assert load_or_create_secret(tmp_path) == "from-os-environ"


def test_a_creator_that_loses_the_race_returns_the_winners_secret(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link = os.link

    def rival_publishes_first(src: Any, dst: Any) -> None:
        # Another process creates the file between our read and our publish.
        pathlib.Path(dst).write_text("rivals-secret\n")
        real_link(src, dst)

    monkeypatch.setattr(tokens.os, "link", rival_publishes_first)
    assert load_or_create_secret(tmp_path, env={}) == "rivals-secret"
    assert (tmp_path / "secret").read_text() == "rivals-secret\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_concurrent_creators_all_get_the_same_secret(tmp_path: pathlib.Path) -> None:
    workers = 16
    barrier = threading.Barrier(workers)
    results: list[str] = []
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait()
        try:
            results.append(load_or_create_secret(tmp_path / "data", env={}))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == workers
    assert len(set(results)) == 1
    assert (tmp_path / "data" / "secret").read_text().strip() == results[0]

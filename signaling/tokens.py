"""Signed role tokens: who may join which lesson, as what, until when.

A token is a JWT signed with HS256 under a server secret. It carries the
participant's role ("teacher", "classroom" or "observer"), the lesson it is
valid for, a display name, a participant id ("sub") and its lifetime.

Only HS256 is accepted: an allow-list of exactly one algorithm rules out
the classic "alg": "none" and algorithm-confusion attacks, and stops a
token minted with some other HMAC from passing as one of ours.

Time is injectable (``now``) so that tests need neither sleeps nor a
frozen clock. PyJWT compares "exp"/"iat"/"nbf" with the real clock, so
those checks are switched off in PyJWT and done here against ``now``.
"""

from __future__ import annotations

import errno
import math
import os
import pathlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt

# who joins a lesson, and every role a token may carry (a reviewer's is for the library, not for lessons)
LESSON_ROLES: Final[tuple[str, ...]] = ("teacher", "classroom", "observer")
ROLES: Final[tuple[str, ...]] = (*LESSON_ROLES, "reviewer")

ALGORITHM: Final[str] = "HS256"
ISSUER: Final[str] = "ketang"

# Long enough for a lesson of a school day; the teacher's console mints
# fresh tokens for anything longer.
DEFAULT_TTL_S: Final[int] = 6 * 3600

# Our own tokens are a few hundred characters. The cap bounds the work an
# unauthenticated client can make us do (base64 + JSON + HMAC) per attempt,
# and matches the "token" field limit in signaling.messages.
MAX_TOKEN_CHARS: Final[int] = 4096

# A lesson title shown to classrooms ("七年级数学 · 一元一次方程"); tokens stay well under MAX_TOKEN_CHARS.
MAX_TITLE_CHARS: Final[int] = 200

# Random participant ids: 12 bytes -> 16 url-safe characters, 96 bits, so
# collisions within a lesson are not a practical concern.
PARTICIPANT_ID_BYTES: Final[int] = 12

# Generated server secret: 32 bytes = 256 bits, the HS256 output size, the
# key length RFC 7518 section 3.2 asks for.
SECRET_BYTES: Final[int] = 32
SECRET_ENV_VAR: Final[str] = "KETANG_SECRET"
SECRET_FILE_NAME: Final[str] = "secret"
# The secret mints teacher tokens: only the server's own user may read it.
SECRET_FILE_MODE: Final[int] = 0o600

TOKEN_EXPIRED: Final[str] = "token_expired"
TOKEN_INVALID: Final[str] = "token_invalid"
TOKEN_WRONG_LESSON: Final[str] = "token_wrong_lesson"


class TokenError(Exception):
    """A token was refused. ``code`` is machine-readable and safe to send to
    the client; ``message`` is for humans and logs."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"TokenError({self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class Claims:
    role: str
    lesson: str
    name: str
    sub: str
    iat: int
    exp: int
    title: str = ""  # optional lesson title, set by whoever created the lesson (`ketang lesson create`)


def _now_s(now: float | None) -> float:
    return time.time() if now is None else now


def _check_secret(secret: str) -> None:
    # An empty HMAC key "works" and makes every token forgeable: that is a
    # deployment bug, so it is a ValueError rather than a TokenError.
    if not isinstance(secret, str) or not secret:
        raise ValueError("secret must be a non-empty string")


def issue_token(
    secret: str,
    role: str,
    lesson: str,
    name: str | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
    sub: str | None = None,
    title: str | None = None,
) -> str:
    """Mint a token for ``role`` in ``lesson``, valid for ``ttl_s`` seconds
    from ``now`` (default: the current time).

    ``name`` defaults to the role; ``sub`` (participant id) defaults to a
    fresh random id. Raises ValueError for an unknown role, an empty lesson,
    a non-positive ttl or an empty secret.
    """
    _check_secret(secret)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if not isinstance(lesson, str) or not lesson:
        raise ValueError("lesson must be a non-empty string")
    # bool is an int subclass; True seconds is certainly a caller bug.
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive integer number of seconds, got {ttl_s!r}")
    if name is None:
        name = role
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    if sub is None:
        sub = secrets.token_urlsafe(PARTICIPANT_ID_BYTES)
    if not isinstance(sub, str) or not sub:
        raise ValueError("sub must be a non-empty string")
    if title is not None and (not isinstance(title, str) or len(title) > MAX_TITLE_CHARS):
        raise ValueError(f"title must be a string of at most {MAX_TITLE_CHARS} characters")

    # JWT NumericDates are whole seconds here: verify_token insists on ints.
    iat = int(_now_s(now))
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "role": role,
        "lesson": lesson,
        "name": name,
        "sub": sub,
        "iat": iat,
        "exp": iat + ttl_s,
    }
    if title:
        payload["title"] = title
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def _invalid(why: str) -> TokenError:
    return TokenError(TOKEN_INVALID, f"invalid token: {why}")


def _require_str(payload: Mapping[str, Any], claim: str) -> str:
    value = payload.get(claim)
    if not isinstance(value, str) or not value:
        raise _invalid(f"claim {claim!r} missing or not a non-empty string")
    return value


def _require_int(payload: Mapping[str, Any], claim: str) -> int:
    value = payload.get(claim)
    # Floats and bools are refused: we only ever issue whole seconds, and
    # accepting 1e308 or True would only widen what an attacker can probe.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"claim {claim!r} missing or not an integer")
    return value


def _optional_title(payload: Mapping[str, Any]) -> str:
    value = payload.get("title", "")
    if not isinstance(value, str) or len(value) > MAX_TITLE_CHARS:
        raise _invalid("claim 'title' is not a string of at most %d characters" % MAX_TITLE_CHARS)
    return value


def verify_token(
    secret: str,
    token: str,
    lesson: str | None = None,
    now: float | None = None,
) -> Claims:
    """Check ``token``'s signature and claims and return them.

    Raises TokenError with code:
      * ``token_invalid``: not a string, longer than MAX_TOKEN_CHARS, not a
        JWT, bad signature, any algorithm other than HS256 (including
        "none"), a missing or wrongly typed claim, a wrong issuer, an
        unknown role;
      * ``token_expired``: signature and claims fine but ``now >= exp``;
      * ``token_wrong_lesson``: valid and current, but ``lesson`` was given
        and the token is for another lesson.
    """
    _check_secret(secret)
    if not isinstance(token, str):
        raise _invalid("not a string")
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid(f"longer than {MAX_TOKEN_CHARS} characters")

    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={
                "verify_signature": True,
                # Time claims are checked below against the injectable `now`;
                # PyJWT would use the wall clock.
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                # Issuer is checked below with the other claims, so that
                # every claim failure reads the same way.
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError as exc:
        # Covers DecodeError (garbage), InvalidSignatureError,
        # InvalidAlgorithmError ("none", HS512...), InvalidAudienceError...
        raise _invalid(type(exc).__name__) from None

    if not isinstance(payload, dict):  # pragma: no cover - PyJWT guarantees a dict
        raise _invalid("payload is not an object")
    if payload.get("iss") != ISSUER:
        raise _invalid("wrong issuer")
    role = _require_str(payload, "role")
    if role not in ROLES:
        raise _invalid("unknown role")
    claims = Claims(
        role=role,
        lesson=_require_str(payload, "lesson"),
        name=_require_str(payload, "name"),
        sub=_require_str(payload, "sub"),
        iat=_require_int(payload, "iat"),
        exp=_require_int(payload, "exp"),
        title=_optional_title(payload),
    )

    current = _now_s(now)
    if not math.isfinite(current):
        raise ValueError(f"now must be finite, got {current!r}")
    # No leeway: exp is the issuer's own decision on the same secret, and a
    # token that has just lapsed is re-minted by the teacher's console.
    if current >= claims.exp:
        raise TokenError(TOKEN_EXPIRED, "token has expired")
    if lesson is not None and claims.lesson != lesson:
        raise TokenError(TOKEN_WRONG_LESSON, "token is for a different lesson")
    return claims


def _read_secret_file(path: pathlib.Path) -> str | None:
    """The stripped secret in ``path``, or None if there is no such file."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not value:
        # Refuse rather than overwrite: the operator put that file there,
        # and an empty HMAC key would make every token forgeable.
        raise ValueError(f"secret file {path} is empty")
    return value


def load_secret(data_dir: pathlib.Path, env: Mapping[str, str] = os.environ) -> str | None:
    """The secret a server with this data dir and environment signs with, or None if it has none yet (for
    tools that mint links: a secret they made up would sign tokens no running server accepts)."""
    from_env = env.get(SECRET_ENV_VAR, "").strip()
    if from_env:
        return from_env
    return _read_secret_file(pathlib.Path(data_dir) / SECRET_FILE_NAME)


def load_or_create_secret(
    data_dir: pathlib.Path,
    env: Mapping[str, str] = os.environ,
) -> str:
    """The server's token-signing secret.

    Order: ``KETANG_SECRET`` from ``env`` if set and non-blank (all nodes of
    a deployment must share it); else ``data_dir/secret``; else a new random
    secret written to ``data_dir/secret`` with mode 0600.

    Creation is atomic and race-safe: the secret is written to a private
    temporary file and then published under the final name with a hard link,
    which fails if another process published first; in that case the other
    process's secret is read and returned, so every concurrent caller ends
    up with the same value. (``os.replace`` would silently let the last
    writer win after an earlier caller had already started signing with its
    own secret.) On filesystems without hard links it falls back to
    ``os.replace`` and re-reads the file.
    """
    from_env = env.get(SECRET_ENV_VAR, "").strip()
    if from_env:
        return from_env

    data_dir = pathlib.Path(data_dir)
    path = data_dir / SECRET_FILE_NAME
    existing = _read_secret_file(path)
    if existing is not None:
        return existing

    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    tmp = data_dir / f".{SECRET_FILE_NAME}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
    # O_EXCL + mode at creation: the secret is never readable by others,
    # not even for the instant a chmod-after-write would leave open.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    try:
        try:
            os.write(fd, (secret + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        # The umask may have removed bits, never added any; make it exact.
        os.chmod(tmp, SECRET_FILE_MODE)
        try:
            os.link(tmp, path)
        except FileExistsError:
            # Lost the race: another process published its secret first.
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass

    published = _read_secret_file(path)
    if published is None:  # pragma: no cover - someone deleted it under us
        raise RuntimeError(f"secret file {path} vanished while being created")
    return published

"""Accounts, sessions, classroom screens' credentials, terms and the timetable, kept in the store.

Every method is one transaction; what goes wrong for a caller's reason is an ``AccountError`` with a machine code
(the REST layer turns it into a JSON error, the pages say it in the reader's language). Passwords are argon2id
hashes (argon2-cffi), checked in a thread and at most ``HASHES_AT_ONCE`` at a time (each takes ~64 MiB: a flood of
sign-ins must not take the node's memory). Session cookies and device secrets are 256-bit random strings of which
only the SHA-256 is kept: a copy of the database signs nobody in.

Sign-in lockout: ``ACCOUNT_MAX_FAILURES`` failures for one login within ``FAILURE_WINDOW_S`` lock that login for
``LOCKOUT_S``; ``ADDRESS_MAX_FAILURES`` from one address lock the address likewise. While locked, even the right
password is refused (without being checked), with when to try again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import string
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Final

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.ext.asyncio import AsyncConnection

from signaling.accounts import timetable as tt
from store import (
    Store,
    devices,
    login_throttle,
    migrate,
    sessions,
    terms,
    timetable_classrooms,
    timetable_entries,
    users,
)

ADMINISTRATOR: Final[str] = "administrator"
TEACHER: Final[str] = "teacher"
REVIEWER: Final[str] = "reviewer"
CLASSROOM: Final[str] = "classroom"
ROLES: Final[tuple[str, ...]] = (ADMINISTRATOR, TEACHER, REVIEWER, CLASSROOM)
PASSWORD_ROLES: Final[tuple[str, ...]] = (ADMINISTRATOR, TEACHER, REVIEWER)

MIN_PASSWORD_CHARS: Final[int] = 8
MAX_PASSWORD_CHARS: Final[int] = 256
MAX_LOGIN_CHARS: Final[int] = 64
ACCOUNT_MAX_FAILURES: Final[int] = 5
ADDRESS_MAX_FAILURES: Final[int] = 20
FAILURE_WINDOW_S: Final[float] = 15 * 60
LOCKOUT_S: Final[float] = 15 * 60
SESSION_TTL_S: Final[float] = 12 * 3600  # idle: a session not used for this long is gone
SESSION_MAX_S: Final[float] = 7 * 24 * 3600  # absolute: sign in again after a week
SESSION_TOUCH_S: Final[float] = 60.0  # the sliding expiry is written at most this often per session
SECRET_BYTES: Final[int] = 32
HASHES_AT_ONCE: Final[int] = 2
ID_CHARS: Final[int] = 10
_ID_ALPHABET: Final[str] = string.ascii_lowercase + string.digits
# pg_advisory_xact_lock key for timetable writes: clash checks and the insert that follows are one step on every node
TIMETABLE_LOCK_KEY: Final[int] = 0x6B657474696D65
_LOGIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@"


class AccountError(Exception):
    """A refusal: ``code`` for machines and the pages (docs/accounts.md, *Errors*), ``status`` the HTTP status,
    ``detail`` more JSON for the caller (which field, when to try again, what a lesson clashes with)."""

    def __init__(self, code: str, message: str, status: int = 400, **detail: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.detail = code, message, status, detail


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_CHARS))


_USER_COLUMNS = (users.c.id, users.c.login, users.c.name, users.c.role, users.c.school, users.c.disabled,
                 users.c.created_at)


def _user_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "login": row.login, "name": row.name, "role": row.role, "school": row.school,
            "disabled": bool(row.disabled), "created_at": row.created_at}


@dataclass(frozen=True)
class SignedIn:
    """A session found by its cookie: who, and the CSRF token state-changing requests must carry."""

    user: dict[str, Any]
    csrf: str
    expires_at: str


@dataclass(frozen=True)
class LoginOutcome:
    user: dict[str, Any] | None
    outcome: str  # "ok", "bad_password", "unknown_login", "disabled", "no_password"
    locked_now: tuple[str, ...] = ()  # the throttle keys this failure locked ("account", "address")


class Accounts:
    """The accounts and the timetable in one store. ``clock``: seconds since the epoch (tests move it);
    ``today``: the school's date now (its local time; tests fix it)."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time,
                 hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self._clock = clock
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None
        self._hashing = asyncio.Semaphore(HASHES_AT_ONCE)
        self._opened = False
        self._open_lock = asyncio.Lock()

    async def open(self) -> Accounts:
        """Migrate the store to the newest schema (idempotent; every method calls it first)."""
        if not self._opened:
            async with self._open_lock:
                if not self._opened:
                    await migrate(self.store)
                    self._opened = True
        return self

    async def close(self) -> None:
        await self.store.close()

    # -- passwords -----------------------------------------------------------------------------------------------

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def _verify(self, hashed: str | None, password: str) -> bool:
        if hashed is None:  # an unknown login costs the same time as a known one: no telling which logins exist
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash(secrets.token_hex(16))
            hashed = self._dummy_hash
        async with self._hashing:
            try:
                return await asyncio.to_thread(self._hasher.verify, hashed, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

    @staticmethod
    def check_password(password: Any) -> str:
        if not isinstance(password, str) or not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
            raise AccountError("weak_password", f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} "
                               "characters", field="password", min=MIN_PASSWORD_CHARS)
        return password

    # -- users ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_login(login: Any) -> str:
        if (not isinstance(login, str) or not 1 <= len(login) <= MAX_LOGIN_CHARS
                or any(c not in _LOGIN for c in login)):
            raise AccountError("invalid", "a login is 1 to 64 letters, digits and . _ - @", field="login")
        return login.lower()

    async def create_user(self, *, login: str, name: str, role: str, school: str = "",
                          password: str | None = None) -> dict[str, Any]:
        await self.open()
        login = self._check_login(login)
        if role not in ROLES:
            raise AccountError("invalid", f"role must be one of {', '.join(ROLES)}", field="role")
        if not name.strip():
            raise AccountError("invalid", "a name is needed", field="name")
        if role in PASSWORD_ROLES:
            hashed: str | None = await self._hash(self.check_password(password))
        elif password is not None:
            raise AccountError("invalid", "a classroom has no password: its screens use a device credential",
                               field="password")
        else:
            hashed = None
        now = _iso(self._clock())
        row = {"id": new_id(), "login": login, "name": name.strip(), "role": role, "school": school.strip(),
               "password_hash": hashed, "disabled": 0, "created_at": now, "updated_at": now}
        async with self.store.write() as db:
            inserted = await db.execute(self._insert_ignore(users, **row))
            if not inserted.rowcount:  # (the login is unique: taken, or taken at this very moment by another node)
                raise AccountError("login_taken", "this login is taken", 409, field="login")
        return _user_json(_Obj(row))

    async def list_users(self, role: str | None = None) -> list[dict[str, Any]]:
        await self.open()
        query = sa.select(users).order_by(users.c.role, users.c.name)
        if role:
            query = query.where(users.c.role == role)
        async with self.store.read() as db:
            return [_user_json(r) for r in (await db.execute(query)).all()]

    async def get_user(self, user_id: str) -> dict[str, Any]:
        await self.open()
        async with self.store.read() as db:
            row = (await db.execute(sa.select(users).where(users.c.id == user_id))).first()
        if row is None:
            raise AccountError("not_found", "no such user", 404)
        return _user_json(row)

    async def update_user(self, user_id: str, *, name: str | None = None, school: str | None = None,
                          disabled: bool | None = None, password: str | None = None) -> dict[str, Any]:
        """Change a user; disabling one (or setting a new password) ends its sessions, disabling a classroom
        stops its screens."""
        await self.open()
        values: dict[str, Any] = {}
        if name is not None:
            if not name.strip():
                raise AccountError("invalid", "a name is needed", field="name")
            values["name"] = name.strip()
        if school is not None:
            values["school"] = school.strip()
        if disabled is not None:
            values["disabled"] = int(disabled)
        current = await self.get_user(user_id)
        if password is not None:
            if current["role"] not in PASSWORD_ROLES:
                raise AccountError("invalid", "a classroom has no password", field="password")
            values["password_hash"] = await self._hash(self.check_password(password))
        now = _iso(self._clock())
        values["updated_at"] = now
        async with self.store.write() as db:
            await db.execute(users.update().where(users.c.id == user_id).values(**values))
            if disabled or password is not None:
                await db.execute(sessions.update().where(sessions.c.user_id == user_id,
                                                         sessions.c.revoked_at.is_(None)).values(revoked_at=now))
            row = (await db.execute(sa.select(users).where(users.c.id == user_id))).first()
        return _user_json(row)

    # -- signing in ------------------------------------------------------------------------------------------------

    async def _throttle_state(self, db: AsyncConnection, keys: Iterable[str]) -> dict[str, Any]:
        rows = (await db.execute(sa.select(login_throttle).where(login_throttle.c.key.in_(list(keys))))).all()
        return {r.key: r for r in rows}

    def _locked_until(self, rows: Mapping[str, Any]) -> float | None:
        now = self._clock()
        until = [_epoch(r.locked_until) for r in rows.values() if r.locked_until and _epoch(r.locked_until) > now]
        return max(until) if until else None

    async def sign_in(self, login: str, password: str, address: str) -> LoginOutcome:
        """Check a login and password against the lockout, then the hash. Raises AccountError ``login_locked`` (429,
        with ``retry_after_s`` and ``until``) while the login or the address is locked; otherwise the outcome
        says who signed in, or why not (the caller answers every failure alike: ``bad_credentials``)."""
        await self.open()
        login = login.lower()[:MAX_LOGIN_CHARS] if isinstance(login, str) else ""
        keys = {"account": f"login:{login}", "address": f"address:{address or '-'}"}
        async with self.store.read() as db:
            until = self._locked_until(await self._throttle_state(db, keys.values()))
            row = (await db.execute(sa.select(users).where(users.c.login == login))).first()
        if until is not None:
            raise self._locked_error(until)
        ok = await self._verify(row.password_hash if row is not None else None, password)
        if row is None:
            outcome = "unknown_login"
        elif row.password_hash is None:
            outcome, ok = "no_password", False
        elif not ok:
            outcome = "bad_password"
        elif row.disabled:
            outcome, ok = "disabled", False
        else:
            outcome = "ok"
        if ok:
            async with self.store.write() as db:
                await db.execute(login_throttle.delete().where(login_throttle.c.key == keys["account"]))
                if self._hasher.check_needs_rehash(row.password_hash):
                    await db.execute(users.update().where(users.c.id == row.id)
                                     .values(password_hash=await self._hash(password)))
            return LoginOutcome(_user_json(row), "ok")
        locked_now = await self._count_failure(keys)
        return LoginOutcome(None, outcome, locked_now)

    def _locked_error(self, until: float) -> AccountError:
        return AccountError("login_locked", "too many failed sign-ins: try again later", 429,
                            retry_after_s=max(1, int(until - self._clock() + 0.999)), until=_iso(until))

    async def _count_failure(self, keys: Mapping[str, str]) -> tuple[str, ...]:
        now = self._clock()
        limits = {"account": ACCOUNT_MAX_FAILURES, "address": ADDRESS_MAX_FAILURES}
        locked: list[str] = []
        async with self.store.write() as db:
            for key in keys.values():  # (two failures at once on PostgreSQL: one row, both counted)
                await db.execute(self._insert_ignore(login_throttle, key=key, failures=0, window_start=_iso(now),
                                                     locked_until=None))
            rows = await db.execute(sa.select(login_throttle).where(login_throttle.c.key.in_(list(keys.values())))
                                    .with_for_update())
            current = {r.key: r for r in rows}
            for kind, key in keys.items():
                row = current.get(key)
                if row is None or now - _epoch(row.window_start) > FAILURE_WINDOW_S:
                    failures, start = 1, _iso(now)
                else:
                    failures, start = row.failures + 1, row.window_start
                lock = None
                if failures >= limits[kind]:
                    lock, failures, start = _iso(now + LOCKOUT_S), 0, _iso(now)
                    locked.append(kind)
                await db.execute(login_throttle.update().where(login_throttle.c.key == key)
                                 .values(failures=failures, window_start=start, locked_until=lock))
        return tuple(locked)

    def _insert_ignore(self, table: sa.Table, **values: Any) -> Any:
        """INSERT … ON CONFLICT DO NOTHING, in the store's dialect."""
        if self.store.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table).values(**values).on_conflict_do_nothing()

    # -- sessions -------------------------------------------------------------------------------------------------

    async def create_session(self, user_id: str, address: str = "") -> tuple[str, SignedIn]:
        """A new session: the cookie's value (given to the browser once, kept here as its SHA-256) and who."""
        await self.open()
        cookie = secrets.token_urlsafe(SECRET_BYTES)
        csrf = secrets.token_urlsafe(SECRET_BYTES)
        now = self._clock()
        expires = _iso(now + SESSION_TTL_S)
        async with self.store.write() as db:
            await db.execute(sessions.insert().values(id_hash=_sha256(cookie), user_id=user_id, csrf=csrf,
                                                      created_at=_iso(now), seen_at=_iso(now), expires_at=expires,
                                                      revoked_at=None, address=(address or "")[:100]))
            row = (await db.execute(sa.select(users).where(users.c.id == user_id))).first()
        return cookie, SignedIn(_user_json(row), csrf, expires)

    async def session(self, cookie: str) -> SignedIn | None:
        """Who holds this session cookie, or None (unknown, expired, revoked, or its user disabled). Its idle
        expiry slides forward (written at most once a minute), never beyond SESSION_MAX_S after sign-in."""
        if not cookie or len(cookie) > 200:
            return None
        await self.open()
        key = _sha256(cookie)
        now = self._clock()
        async with self.store.read() as db:
            row = (await db.execute(
                sa.select(sessions.c.csrf, sessions.c.seen_at, sessions.c.expires_at, sessions.c.revoked_at,
                          sessions.c.created_at.label("signed_in_at"), *_USER_COLUMNS)
                .join(users, users.c.id == sessions.c.user_id).where(sessions.c.id_hash == key))).first()
        if row is None or row.revoked_at is not None or row.disabled or _epoch(row.expires_at) <= now:
            return None
        expires = row.expires_at
        if now - _epoch(row.seen_at) >= SESSION_TOUCH_S:
            expires = _iso(min(now + SESSION_TTL_S, _epoch(row.signed_in_at) + SESSION_MAX_S))
            async with self.store.write() as db:
                await db.execute(sessions.update().where(sessions.c.id_hash == key)
                                 .values(seen_at=_iso(now), expires_at=expires))
        return SignedIn(_user_json(row), row.csrf, expires)

    async def end_session(self, cookie: str) -> None:
        await self.open()
        async with self.store.write() as db:
            await db.execute(sessions.update().where(sessions.c.id_hash == _sha256(cookie),
                                                     sessions.c.revoked_at.is_(None))
                             .values(revoked_at=_iso(self._clock())))

    # -- classroom screens ------------------------------------------------------------------------------------------

    async def create_device(self, classroom_id: str, label: str = "") -> tuple[dict[str, Any], str]:
        """A screen's credential for a classroom account: the device row and the credential itself
        (``<device id>.<secret>``), shown once (only its hash is kept)."""
        user = await self.get_user(classroom_id)
        if user["role"] != CLASSROOM:
            raise AccountError("invalid", "screens belong to classroom accounts", field="classroom")
        secret = secrets.token_urlsafe(SECRET_BYTES)
        row = {"id": new_id(), "classroom_id": classroom_id, "label": label.strip(), "secret_hash": _sha256(secret),
               "created_at": _iso(self._clock()), "revoked_at": None, "last_seen_at": None}
        async with self.store.write() as db:
            await db.execute(devices.insert().values(**row))
        return _device_json(_Obj(row), user), f"{row['id']}.{secret}"

    async def list_devices(self, classroom_id: str | None = None) -> list[dict[str, Any]]:
        await self.open()
        query = (sa.select(devices, users.c.name, users.c.school).join(users, users.c.id == devices.c.classroom_id)
                 .order_by(users.c.name, devices.c.created_at))
        if classroom_id:
            query = query.where(devices.c.classroom_id == classroom_id)
        async with self.store.read() as db:
            return [_device_json(r, {"id": r.classroom_id, "name": r.name, "school": r.school})
                    for r in (await db.execute(query)).all()]

    async def revoke_device(self, device_id: str) -> dict[str, Any]:
        await self.open()
        async with self.store.write() as db:
            found = await db.execute(devices.update().where(devices.c.id == device_id, devices.c.revoked_at.is_(None))
                                     .values(revoked_at=_iso(self._clock())))
            if not found.rowcount:
                exists = (await db.execute(sa.select(devices.c.id).where(devices.c.id == device_id))).first()
                if exists is None:
                    raise AccountError("not_found", "no such device", 404)
        return next(d for d in await self.list_devices() if d["id"] == device_id)

    async def verify_device(self, credential: str) -> dict[str, Any]:
        """The classroom account a screen's credential stands for (its device id in ``device``), or AccountError:
        ``device_revoked`` (a revoked credential, or its classroom disabled) or ``unauthorized``."""
        device_id, _, secret = (credential or "").partition(".")
        if not device_id or not secret or len(credential) > 200:
            raise AccountError("unauthorized", "not a device credential", 401)
        await self.open()
        async with self.store.read() as db:
            row = (await db.execute(
                sa.select(devices.c.secret_hash, devices.c.revoked_at, devices.c.last_seen_at, devices.c.classroom_id,
                          users.c.name, users.c.school, users.c.disabled)
                .join(users, users.c.id == devices.c.classroom_id).where(devices.c.id == device_id))).first()
        if row is None or not hmac.compare_digest(row.secret_hash, _sha256(secret)):
            raise AccountError("unauthorized", "unknown device credential", 401)
        if row.revoked_at is not None or row.disabled:
            raise AccountError("device_revoked", "this screen's credential was revoked", 401)
        now = self._clock()
        if row.last_seen_at is None or now - _epoch(row.last_seen_at) >= SESSION_TOUCH_S:
            async with self.store.write() as db:
                await db.execute(devices.update().where(devices.c.id == device_id).values(last_seen_at=_iso(now)))
        return {"id": row.classroom_id, "name": row.name, "school": row.school, "role": CLASSROOM,
                "device": device_id}

    # -- terms ----------------------------------------------------------------------------------------------------

    async def create_term(self, name: str, start_date: str, weeks: int) -> dict[str, Any]:
        await self.open()
        try:
            start = tt.parse_date(start_date)
        except ValueError:
            raise AccountError("invalid", "start_date must be YYYY-MM-DD", field="start_date") from None
        if not 1 <= weeks <= tt.MAX_TERM_WEEKS:
            raise AccountError("invalid", f"a term has 1 to {tt.MAX_TERM_WEEKS} weeks", field="weeks")
        if not name.strip():
            raise AccountError("invalid", "a name is needed", field="name")
        row = {"id": new_id(), "name": name.strip(), "start_date": start.isoformat(), "weeks": weeks,
               "created_at": _iso(self._clock())}
        async with self.store.write() as db:
            await db.execute(terms.insert().values(**row))
        return _term_json(_Obj(row))

    async def list_terms(self) -> list[dict[str, Any]]:
        await self.open()
        async with self.store.read() as db:
            return [_term_json(r) for r in (await db.execute(sa.select(terms).order_by(terms.c.start_date.desc())))]

    async def get_term(self, term_id: str) -> dict[str, Any]:
        await self.open()
        async with self.store.read() as db:
            row = (await db.execute(sa.select(terms).where(terms.c.id == term_id))).first()
        if row is None:
            raise AccountError("not_found", "no such term", 404)
        return _term_json(row)

    # -- the timetable ----------------------------------------------------------------------------------------------

    async def _timetable_lock(self, db: AsyncConnection) -> None:
        if self.store.dialect == "postgresql":  # (SQLite: the write transaction holds the database's write lock)
            await db.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": TIMETABLE_LOCK_KEY})

    async def _load(self, db: AsyncConnection) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
        """Every entry (with its classroom ids), every term and every user, by id."""
        term_rows = {r.id: r for r in (await db.execute(sa.select(terms))).all()}
        user_rows = {r.id: r for r in (await db.execute(sa.select(users))).all()}
        entries: dict[str, dict[str, Any]] = {}
        for r in (await db.execute(sa.select(timetable_entries))).all():
            entries[r.id] = dict(r._mapping, classroom_ids=[])
        for link in (await db.execute(sa.select(timetable_classrooms))).all():
            if link.entry_id in entries:
                entries[link.entry_id]["classroom_ids"].append(link.classroom_id)
        return entries, term_rows, user_rows

    @staticmethod
    def _dates(entry: Mapping[str, Any], term_rows: Mapping[str, Any]) -> list[date]:
        if entry["kind"] == "once":
            return [tt.parse_date(entry["date"])]
        term = term_rows.get(entry["term_id"])
        if term is None:
            return []
        start = tt.parse_date(term.start_date)
        return tt.weekly_dates(start, term.weeks, entry["weekday"], tt.parse_weeks(entry["weeks"], term.weeks))

    def _slot(self, entry: Mapping[str, Any], term_rows: Mapping[str, Any]) -> tt.Slot:
        return tt.Slot(entry["id"], entry["title"], entry["teacher_id"], frozenset(entry["classroom_ids"]),
                       frozenset(self._dates(entry, term_rows)), entry["start_time"], entry["end_time"])

    def _check_entry(self, data: Mapping[str, Any], term_rows: Mapping[str, Any],
                     user_rows: Mapping[str, Any]) -> dict[str, Any]:
        """The row to store for an entry's fields, checked (AccountError ``invalid`` naming the field)."""
        def bad(name: str, why: str) -> AccountError:
            return AccountError("invalid", why, field=name)

        title = str(data.get("title") or "").strip()
        if not title or len(title) > tt.MAX_TITLE_CHARS:
            raise bad("title", f"a title of 1 to {tt.MAX_TITLE_CHARS} characters is needed")
        teacher = user_rows.get(data.get("teacher_id"))
        if teacher is None or teacher.role != TEACHER:
            raise bad("teacher_id", "not a teacher's account")
        classroom_ids = list(dict.fromkeys(data.get("classroom_ids") or []))
        if not classroom_ids:
            raise bad("classroom_ids", "at least one receiving classroom")
        for cid in classroom_ids:
            if cid not in user_rows or user_rows[cid].role != CLASSROOM:
                raise bad("classroom_ids", f"{cid!r:.40} is not a classroom account")
        try:
            start_time, end_time = tt.parse_time(data.get("start_time") or ""), tt.parse_time(data.get("end_time") or "")
        except ValueError:
            raise bad("start_time", "times are HH:MM") from None
        if end_time <= start_time:
            raise bad("end_time", "the end must be after the start")
        term_id = data.get("term_id") or None
        term = term_rows.get(term_id) if term_id else None
        if term_id and term is None:
            raise bad("term_id", "no such term")
        row: dict[str, Any] = {"title": title, "teacher_id": teacher.id, "start_time": start_time,
                               "end_time": end_time, "term_id": term_id, "period": data.get("period"),
                               "date": None, "weekday": None, "weeks": None, "classroom_ids": classroom_ids}
        for name in tt.CURRICULUM:
            value = str(data.get(name) or "").strip()
            if len(value) > tt.MAX_FIELD_CHARS:
                raise bad(name, f"at most {tt.MAX_FIELD_CHARS} characters")
            row[name] = value
        if data.get("kind") == "weekly":
            if term is None:
                raise bad("term_id", "a weekly lesson belongs to a term")
            weekday = data.get("weekday")
            if not isinstance(weekday, int) or not 1 <= weekday <= 7:
                raise bad("weekday", "1 (Monday) to 7 (Sunday)")
            try:
                weeks = tt.parse_weeks(str(data.get("weeks") or ""), term.weeks)
            except ValueError:
                raise bad("weeks", f"weeks like 1-16 or 1,3,5-9 within the term's {term.weeks}") from None
            row.update(kind="weekly", weekday=weekday, weeks=tt.format_weeks(weeks))
        elif data.get("kind") == "once":
            try:
                day = tt.parse_date(str(data.get("date") or ""))
            except ValueError:
                raise bad("date", "a date YYYY-MM-DD") from None
            if term is not None:
                first = tt.parse_date(term.start_date)
                if not first <= day <= tt.term_end(first, term.weeks):
                    raise bad("date", "the date is outside the term")
            row.update(kind="once", date=day.isoformat())
        else:
            raise bad("kind", "once or weekly")
        return row

    async def _insert_entry(self, db: AsyncConnection, row: dict[str, Any], actor: str) -> str:
        now = _iso(self._clock())
        entry_id = row.get("id") or new_id()
        values = {k: v for k, v in row.items() if k != "classroom_ids"}
        values.update(id=entry_id, created_by=actor, created_at=now, updated_at=now)
        await db.execute(timetable_entries.insert().values(**values))
        await db.execute(timetable_classrooms.insert(),
                         [{"entry_id": entry_id, "classroom_id": c} for c in row["classroom_ids"]])
        return entry_id

    async def create_entry(self, data: Mapping[str, Any], actor: str = "") -> dict[str, Any]:
        """A timetable entry (one-off or weekly), refused with ``clash`` (409, ``clashes``: what it clashes with)
        when its teacher or one of its classrooms already has a lesson at one of its times."""
        await self.open()
        async with self.store.write() as db:
            await self._timetable_lock(db)
            entries, term_rows, user_rows = await self._load(db)
            row = self._check_entry(data, term_rows, user_rows)
            row["id"] = new_id()
            found = tt.clashes(self._slot(row, term_rows), (self._slot(e, term_rows) for e in entries.values()))
            if found:
                raise AccountError("clash", "the teacher or a classroom already has a lesson then", 409,
                                   clashes=[c.as_json() for c in found[:20]])
            entry_id = await self._insert_entry(db, row, actor)
        return await self.get_entry(entry_id)

    async def delete_entry(self, entry_id: str) -> None:
        await self.open()
        async with self.store.write() as db:
            await db.execute(timetable_classrooms.delete().where(timetable_classrooms.c.entry_id == entry_id))
            if not (await db.execute(timetable_entries.delete().where(timetable_entries.c.id == entry_id))).rowcount:
                raise AccountError("not_found", "no such timetable entry", 404)

    async def list_entries(self, term_id: str | None = None, teacher_id: str | None = None) -> list[dict[str, Any]]:
        await self.open()
        async with self.store.read() as db:
            entries, term_rows, user_rows = await self._load(db)
        out = [self._entry_json(e, user_rows) for e in entries.values()
               if (term_id is None or e["term_id"] == term_id) and (teacher_id is None or e["teacher_id"] == teacher_id)]
        return sorted(out, key=lambda e: (e["kind"], e["weekday"] or 0, e["date"] or "", e["start_time"]))

    async def get_entry(self, entry_id: str) -> dict[str, Any]:
        await self.open()
        async with self.store.read() as db:
            entries, _, user_rows = await self._load(db)
        if entry_id not in entries:
            raise AccountError("not_found", "no such timetable entry", 404)
        return self._entry_json(entries[entry_id], user_rows)

    @staticmethod
    def _entry_json(entry: Mapping[str, Any], user_rows: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: entry[k] for k in ("id", "term_id", "title", "kind", "date", "weekday", "weeks", "period",
                                     "start_time", "end_time", *tt.CURRICULUM)}
        teacher = user_rows.get(entry["teacher_id"])
        out["teacher"] = {"id": entry["teacher_id"], "name": teacher.name if teacher else ""}
        out["classrooms"] = [{"id": c, "name": user_rows[c].name if c in user_rows else ""}
                             for c in sorted(entry["classroom_ids"], key=lambda c: user_rows[c].name
                                             if c in user_rows else c)]
        return out

    async def occurrences(self, first: date, last: date, *, teacher_id: str | None = None,
                          classroom_id: str | None = None, term_id: str | None = None) -> list[dict[str, Any]]:
        """Every lesson happening from ``first`` to ``last`` (inclusive), each with its live lesson id, in order."""
        await self.open()
        async with self.store.read() as db:
            entries, term_rows, user_rows = await self._load(db)
        out = []
        for entry in entries.values():
            if teacher_id and entry["teacher_id"] != teacher_id:
                continue
            if classroom_id and classroom_id not in entry["classroom_ids"]:
                continue
            if term_id and entry["term_id"] != term_id:
                continue
            for day in self._dates(entry, term_rows):
                if first <= day <= last:
                    out.append(dict(self._entry_json(entry, user_rows), entry=entry["id"], date=day.isoformat(),
                                    lesson=tt.lesson_id(entry["id"], day)))
        return sorted(out, key=lambda o: (o["date"], o["start_time"], o["title"]))

    async def occurrence(self, lesson: str) -> dict[str, Any]:
        """The occurrence a live lesson id stands for (AccountError ``not_found`` for any other id)."""
        parsed = tt.parse_lesson_id(lesson)
        if parsed is None:
            raise AccountError("not_found", "not a lesson of the timetable", 404)
        found = await self.occurrences(parsed[1], parsed[1])
        for o in found:
            if o["lesson"] == lesson:
                return o
        raise AccountError("not_found", "not a lesson of the timetable", 404)

    # -- import ---------------------------------------------------------------------------------------------------

    async def import_timetable(self, term_id: str, rows: list[tt.SheetRow], *, mode: str,
                               actor: str = "") -> dict[str, Any]:
        """Check a sheet's rows against the accounts, the term and the timetable (clashes with it and between the
        rows), then: ``check`` writes nothing; ``all`` writes every row or, with any error, none; ``valid`` writes the
        good rows (the administrator accepted leaving the bad ones out). The report: rows, their errors (row,
        column, code, Chinese message) and what was written."""
        await self.open()
        async with self.store.write() as db:
            await self._timetable_lock(db)
            entries, term_rows, user_rows = await self._load(db)
            if term_id not in term_rows:
                raise AccountError("not_found", "no such term", 404)
            term = term_rows[term_id]
            errors: list[tt.RowError] = []
            good: list[dict[str, Any]] = []
            by_teacher: dict[str, list[tt.Slot]] = defaultdict(list)
            by_classroom: dict[str, list[tt.Slot]] = defaultdict(list)

            def index(slot: tt.Slot) -> None:
                by_teacher[slot.teacher_id].append(slot)
                for c in slot.classroom_ids:
                    by_classroom[c].append(slot)

            for entry in entries.values():
                index(self._slot(entry, term_rows))
            lookup = _Lookup(user_rows)
            for sheet_row in rows:
                row, row_errors = self._import_row(sheet_row, term, lookup)
                if row is not None:
                    row["id"] = new_id()
                    slot = self._slot(row, term_rows)
                    near = {s.entry_id: s for s in
                            [*by_teacher[slot.teacher_id], *(s for c in slot.classroom_ids for s in by_classroom[c])]}
                    for clash in tt.clashes(slot, near.values())[:3]:
                        code = "clash_teacher" if clash.teacher else "clash_classroom"
                        names = "、".join(user_rows[c].name for c in clash.classroom_ids)
                        column = tt.header_of(sheet_row, "teacher" if clash.teacher else "classrooms")
                        row_errors.append(tt.row_error(sheet_row.number, column, code, title=clash.title,
                                                       date=clash.day.isoformat(), start=clash.start_time,
                                                       end=clash.end_time, classrooms=names))
                    if not row_errors:
                        index(slot)  # later rows clash with this one too
                        good.append(row)
                errors.extend(row_errors)
            write = mode == "valid" or (mode == "all" and not errors)
            written = []
            if write:
                for row in good:
                    written.append(await self._insert_entry(db, row, actor))
        return {"rows": len(rows), "valid": len(good), "errors": [e.as_json() for e in errors],
                "written": len(written), "entries": written, "mode": mode}

    def _import_row(self, sheet_row: tt.SheetRow, term: Any,
                    lookup: _Lookup) -> tuple[dict[str, Any] | None, list[tt.RowError]]:
        cells, n = sheet_row.cells, sheet_row.number
        errors: list[tt.RowError] = []

        def err(key: str, code: str, **values: Any) -> None:
            errors.append(tt.row_error(n, tt.header_of(sheet_row, key), code, **values))

        for key in ("title", "teacher", "classrooms", "start_time", "end_time"):
            if not cells.get(key):
                err(key, "required")
        if len(cells.get("title", "")) > tt.MAX_TITLE_CHARS:
            err("title", "too_long", max=tt.MAX_TITLE_CHARS)
        for key in tt.CURRICULUM:
            if len(cells.get(key, "")) > tt.MAX_FIELD_CHARS:
                err(key, "too_long", max=tt.MAX_FIELD_CHARS)
        teacher_id = None
        if cells.get("teacher"):
            teacher_id, code = lookup.find(cells["teacher"], TEACHER)
            if code:
                err("teacher", f"{code}_teacher", value=cells["teacher"])
        classroom_ids = []
        for name in tt.split_classrooms(cells.get("classrooms", "")):
            cid, code = lookup.find(name, CLASSROOM)
            if code:
                err("classrooms", f"{code}_classroom", value=name)
            else:
                classroom_ids.append(cid)
        times = {}
        for key in ("start_time", "end_time"):
            if cells.get(key):
                try:
                    times[key] = tt.parse_time(cells[key])
                except ValueError:
                    err(key, "bad_time", value=cells[key])
        if len(times) == 2 and times["end_time"] <= times["start_time"]:
            err("end_time", "end_before_start", start=times["start_time"], end=times["end_time"])
        period = None
        if cells.get("period"):
            if cells["period"].isdigit() and 1 <= int(cells["period"]) <= 20:
                period = int(cells["period"])
            else:
                err("period", "bad_period", value=cells["period"])
        first = tt.parse_date(term.start_date)
        data: dict[str, Any] = {}
        if cells.get("date"):
            try:
                day = tt.parse_date(cells["date"])
                last = tt.term_end(first, term.weeks)
                if not first <= day <= last:
                    err("date", "date_outside_term", value=day.isoformat(), first=first.isoformat(),
                        last=last.isoformat())
                data.update(kind="once", date=day.isoformat())
            except ValueError:
                err("date", "bad_date", value=cells["date"])
        elif cells.get("weekday"):
            try:
                data.update(kind="weekly", weekday=tt.parse_weekday(cells["weekday"]))
            except ValueError:
                err("weekday", "bad_weekday", value=cells["weekday"])
            try:
                data["weeks"] = tt.format_weeks(tt.parse_weeks(cells.get("weeks", ""), term.weeks))
            except ValueError:
                err("weeks", "bad_weeks", value=cells.get("weeks", ""), weeks=term.weeks)
        else:
            err("weekday", "when_missing")
        if errors:
            return None, errors
        row = {"title": cells["title"], "teacher_id": teacher_id, "classroom_ids": list(dict.fromkeys(classroom_ids)),
               "start_time": times["start_time"], "end_time": times["end_time"], "term_id": term.id,
               "period": period, "date": None, "weekday": None, "weeks": None,
               **{k: cells.get(k, "") for k in tt.CURRICULUM}, **data}
        return row, []


class _Lookup:
    """Accounts of one role by login or by name (a name two accounts share is ambiguous)."""

    def __init__(self, user_rows: Mapping[str, Any]) -> None:
        self._login: dict[tuple[str, str], str] = {}
        self._name: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in user_rows.values():
            if not r.disabled:
                self._login[(r.role, r.login)] = r.id
                self._name[(r.role, r.name)].append(r.id)

    def find(self, text: str, role: str) -> tuple[str | None, str | None]:
        by_login = self._login.get((role, text.lower()))
        if by_login:
            return by_login, None
        named = self._name.get((role, text), [])
        if len(named) == 1:
            return named[0], None
        return None, ("ambiguous" if named else "unknown")


class _Obj:
    """A dict read as a row (attribute access), for JSON of rows just written."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)


def _device_json(row: Any, classroom: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row.id, "classroom": {"id": classroom["id"], "name": classroom["name"],
                                        "school": classroom.get("school", "")},
            "label": row.label, "created_at": row.created_at, "revoked_at": row.revoked_at,
            "last_seen_at": row.last_seen_at, "revoked": row.revoked_at is not None}


def _term_json(row: Any) -> dict[str, Any]:
    start = tt.parse_date(row.start_date)
    return {"id": row.id, "name": row.name, "start_date": row.start_date, "weeks": row.weeks,
            "end_date": tt.term_end(start, row.weeks).isoformat()}


def week_of(day: date) -> tuple[date, date]:
    """The Monday and Sunday of ``day``'s week."""
    monday = day - timedelta(days=day.weekday())
    return monday, monday + timedelta(days=6)

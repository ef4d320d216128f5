"""The accounts' REST API (``/api/login``, ``/api/me/...``, ``/api/admin/...``, ``/api/screen/...``), its guards, and the
OpenAPI 3 document served at ``/api/openapi.json`` — all from one table, ``ROUTES``: each route's method, path, who
may call it, its request body's JSON Schema (checked with ``jsonschema`` before the handler runs, and printed in the
document) and its query parameters. Registering a route anywhere else would leave it out of the document; a test
checks that every route the app has under /api/admin and /api/me is in it.

Guards, in order, for every route but the public ones:
1. a session cookie (``ketang_session``: HttpOnly, SameSite=Lax, Secure when served over https) naming a live
   session, else 401 ``unauthorized``; a screen's routes take a device credential instead (``Authorization: Device
   <credential>``), else 401 ``unauthorized`` / ``device_revoked``;
2. the account's role among the route's roles, else 403 ``forbidden``;
3. for a request that changes something (POST, PATCH, PUT, DELETE): the session's CSRF token in ``X-CSRF-Token``
   (synchronizer token, handed out by ``GET /api/me`` and at sign-in), and an ``Origin`` header, when sent, of this
   host, else 403 ``csrf``. Sign-in checks the Origin too (login CSRF).

Errors are JSON ``{"code": ..., "message": ...}`` plus details (``field``, ``retry_after_s``, ``clashes``); the
message is English for logs and tools, the pages say the code in the reader's language (client_web/i18n.js).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, urlsplit

import segno
from aiohttp import web
from jsonschema import Draft202012Validator
from sqlalchemy.exc import SQLAlchemyError

from signaling.accounts import timetable as tt
from signaling.accounts.service import (
    ADMINISTRATOR,
    CLASSROOM,
    MAX_PASSWORD_CHARS,
    REVIEWER,
    ROLES,
    SESSION_MAX_S,
    TEACHER,
    AccountError,
    Accounts,
    SignedIn,
    week_of,
)
from recorder.library.catalog import Viewer
from recorder.library.web import SESSION_VIEWER
from signaling.audit import AuditLog
from signaling.tokens import issue_token

log = logging.getLogger("ketang.accounts")

COOKIE: Final[str] = "ketang_session"
CSRF_HEADER: Final[str] = "X-CSRF-Token"
MAX_JSON_BYTES: Final[int] = 64 * 1024
BODY_TIMEOUT_S: Final[float] = 30.0
MAX_RANGE_DAYS: Final[int] = 200  # occurrences are asked for a week, a month or a term: never years
SAFE_METHODS: Final[frozenset[str]] = frozenset({"GET", "HEAD", "OPTIONS"})
TEACHER_TOKEN_TTL_S: Final[int] = 6 * 3600
# a classroom screen gets its lesson token from a little before the lesson starts until a while after it should have
# ended (a lesson running over, a screen rebooted late in it): never outside this window
SCREEN_EARLY_S: Final[int] = 5 * 60
SCREEN_LATE_S: Final[int] = 30 * 60
ACCOUNTS_KEY: web.AppKey[Accounts] = web.AppKey("accounts", Accounts)
BODY_KEY: web.RequestKey[Any] = web.RequestKey("accounts_body", object)  # the checked JSON body of a request
ERRORS_DOC: Final[dict[int, str]] = {400: "invalid request (code `invalid`, `weak_password`; `field` names the field)",
                                     401: "no session (`unauthorized`), bad sign-in (`bad_credentials`), a revoked "
                                          "screen (`device_revoked`)",
                                     403: "wrong role (`forbidden`) or missing CSRF token (`csrf`)",
                                     404: "`not_found`", 409: "`login_taken`, `clash` (with `clashes`), "
                                                              "`not_now` (a screen outside its lesson's window)",
                                     429: "`login_locked` (with `retry_after_s`, `until`)"}


@dataclass(frozen=True)
class Who:
    """The caller of a guarded route: a signed-in account (``session``) or a classroom screen (``device``)."""

    user: dict[str, Any]
    session: SignedIn | None = None
    device: str | None = None

    @property
    def actor(self) -> dict[str, Any]:
        return {"role": self.user["role"], "sub": self.user["id"], "name": self.user["name"]}


Handler = Callable[[web.Request, "Who | None"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    roles: frozenset[str] | None  # None: no account needed
    body: dict[str, Any] | None = None  # the JSON body's schema
    query: dict[str, str] = field(default_factory=dict)  # query parameter -> what it is
    device: bool = False  # a classroom screen's credential instead of a session
    raw_body: str | None = None  # the media types of a raw body (an import's file)
    response: str | None = None  # the component schema of the answer


def _error(code: str, message: str, status: int, **detail: Any) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if "retry_after_s" in detail:
        headers["Retry-After"] = str(detail["retry_after_s"])
    return web.json_response({"code": code, "message": message, **detail}, status=status, headers=headers)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request's body, at most ``limit`` bytes (AccountError ``too_large``, 413) within BODY_TIMEOUT_S."""
    if request.content_length is not None and request.content_length > limit:
        raise AccountError("too_large", f"the body is larger than {limit} bytes", 413)
    chunks, size = [], 0
    async with asyncio.timeout(BODY_TIMEOUT_S):
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise AccountError("too_large", f"the body is larger than {limit} bytes", 413)
            chunks.append(chunk)
    return b"".join(chunks)


# -- the API --------------------------------------------------------------------------------------------------------

class AccountsApi:
    def __init__(self, accounts: Accounts, secret: str, audit: AuditLog | None, *, secure_cookies: bool = False,
                 today: Callable[[], date] | None = None, now: Callable[[], datetime] = datetime.now,
                 extra: dict[str, Any] | None = None) -> None:
        self.accounts = accounts
        self.extra = extra or {}  # the API objects of EXTRA_TABLES' route tables, by the table's name
        self.secret = secret
        self.audit = audit
        self.secure_cookies = secure_cookies
        self.now = now  # the school's wall clock (the timetable's times are in it)
        self.today = today or (lambda: now().date())

    def _audit(self, action: str, request: web.Request, who: Who | None, outcome: str = "ok",
               **detail: Any) -> None:
        if self.audit is not None:
            self.audit.record(action, actor=who.actor if who else None, address=request.remote, outcome=outcome,
                              **detail)

    # public -------------------------------------------------------------------------------------------------------

    async def login(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        body = request[BODY_KEY]
        address = request.remote or ""
        try:
            result = await self.accounts.sign_in(body["login"], body["password"], address)
        except AccountError as exc:
            if exc.code == "login_locked":
                self._audit("login", request, None, "locked", login=body["login"], until=exc.detail.get("until"))
            raise
        if result.user is None:
            self._audit("login", request, None, result.outcome, login=body["login"])
            for kind in result.locked_now:
                self._audit("lockout", request, None, kind, login=body["login"])
            raise AccountError("bad_credentials", "wrong login or password", 401)
        cookie, signed_in = await self.accounts.create_session(result.user["id"], address)
        who = Who(result.user, signed_in)
        self._audit("login", request, who, "ok")
        response = _json({"user": result.user, "csrf": signed_in.csrf, "home": home_of(result.user["role"])})
        response.set_cookie(COOKIE, cookie, httponly=True, samesite="Lax", path="/", max_age=int(SESSION_MAX_S),
                            secure=self.secure_cookies or request.secure)
        return response

    async def logout(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        await self.accounts.end_session(request.cookies.get(COOKIE, ""))
        self._audit("logout", request, who)
        response = web.Response(status=204, headers={"Cache-Control": "no-store"})
        response.del_cookie(COOKIE, path="/")
        return response

    async def me(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        assert who is not None and who.session is not None
        return _json({"user": who.user, "csrf": who.session.csrf, "home": home_of(who.user["role"])})

    async def openapi(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        return _json(openapi_document())

    # a teacher ------------------------------------------------------------------------------------------------------

    def _range(self, request: web.Request) -> tuple[date, date]:
        try:
            first = tt.parse_date(request.query["from"]) if "from" in request.query else week_of(self.today())[0]
            last = tt.parse_date(request.query["to"]) if "to" in request.query else first + timedelta(days=6)
        except ValueError:
            raise AccountError("invalid", "from and to are dates YYYY-MM-DD", field="from") from None
        if not timedelta(0) <= last - first <= timedelta(days=MAX_RANGE_DAYS):
            raise AccountError("invalid", f"from..to is 0 to {MAX_RANGE_DAYS} days", field="to")
        return first, last

    async def my_lessons(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        assert who is not None
        first, last = self._range(request)
        found = await self.accounts.occurrences(first, last, teacher_id=who.user["id"])
        return _json({"from": first.isoformat(), "to": last.isoformat(), "today": self.today().isoformat(),
                      "lessons": found})

    async def start_lesson(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        """The teacher page's link for one of the teacher's own lessons: a lesson token minted now (and one per
        receiving classroom, for the page to show), in the URL fragment."""
        assert who is not None
        occurrence = await self.accounts.occurrence(request.match_info["lesson"])
        if occurrence["teacher"]["id"] != who.user["id"]:
            raise AccountError("not_found", "not a lesson of yours", 404)
        if occurrence["date"] < self.today().isoformat():
            raise AccountError("lesson_over", "this lesson's day has passed", 409)
        lesson, title = occurrence["lesson"], occurrence["title"]
        token = issue_token(self.secret, "teacher", lesson, name=who.user["name"], sub=who.user["id"], title=title,
                            ttl_s=TEACHER_TOKEN_TTL_S)
        invites = [issue_token(self.secret, "classroom", lesson, name=c["name"], sub=c["id"], title=title,
                               ttl_s=TEACHER_TOKEN_TTL_S) for c in occurrence["classrooms"]]
        self._audit("lesson_token", request, who, lesson=lesson)
        url = f"/teacher#token={token}" + "".join(f"&invite={quote(i)}" for i in invites)
        return _json({"lesson": lesson, "teacher_url": url})

    # a classroom screen ---------------------------------------------------------------------------------------------

    async def screen_lessons(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        assert who is not None
        first, last = self._range(request) if "from" in request.query else (self.today(), self.today())
        found = await self.accounts.occurrences(first, last, classroom_id=who.user["id"])
        now = self.now()
        return _json({"classroom": who.user, "today": now.date().isoformat(),
                      "now": now.isoformat(timespec="seconds"), "early_s": SCREEN_EARLY_S, "late_s": SCREEN_LATE_S,
                      "lessons": found})

    async def screen_token(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        """A classroom lesson token for the screen's classroom in one of its lessons, only within the lesson's
        window (SCREEN_EARLY_S before its start to SCREEN_LATE_S after its end); valid until the window closes."""
        assert who is not None
        occurrence = await self.accounts.occurrence(request.match_info["lesson"])
        if who.user["id"] not in {c["id"] for c in occurrence["classrooms"]}:
            raise AccountError("not_found", "not a lesson of this classroom", 404)
        day = date.fromisoformat(occurrence["date"])
        starts = datetime.combine(day, datetime.strptime(occurrence["start_time"], "%H:%M").time())
        ends = datetime.combine(day, datetime.strptime(occurrence["end_time"], "%H:%M").time())
        opens, closes = starts - timedelta(seconds=SCREEN_EARLY_S), ends + timedelta(seconds=SCREEN_LATE_S)
        now = self.now()
        if not opens <= now < closes:
            self._audit("screen_token", request, who, "not_now", lesson=occurrence["lesson"], device=who.device)
            raise AccountError("not_now", "this lesson is not on now", 409, opens_at=opens.isoformat(),
                               closes_at=closes.isoformat())
        lesson, title = occurrence["lesson"], occurrence["title"]
        token = issue_token(self.secret, "classroom", lesson, name=who.user["name"], sub=who.user["id"], title=title,
                            ttl_s=max(60, int((closes - now).total_seconds())), now=now.timestamp())
        self._audit("screen_token", request, who, lesson=lesson, device=who.device)
        return _json({"lesson": lesson, "token": token, "closes_at": closes.isoformat()})

    # an administrator ------------------------------------------------------------------------------------------------

    async def list_users(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        role = request.query.get("role")
        if role is not None and role not in ROLES:
            raise AccountError("invalid", "unknown role", field="role")
        return _json({"users": await self.accounts.list_users(role)})

    async def create_user(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        body = request[BODY_KEY]
        user = await self.accounts.create_user(login=body["login"], name=body["name"], role=body["role"],
                                               school=body.get("school", ""), password=body.get("password"))
        self._audit("user_create", request, who, user=user["id"], login=user["login"], role=user["role"])
        return _json(user, 201)

    async def get_user(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        return _json(await self.accounts.get_user(request.match_info["user"]))

    async def update_user(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        assert who is not None
        body, user_id = request[BODY_KEY], request.match_info["user"]
        if user_id == who.user["id"] and body.get("disabled"):
            raise AccountError("invalid", "you cannot disable your own account", field="disabled")
        user = await self.accounts.update_user(user_id, **body)
        self._audit("user_update", request, who, user=user_id, changed=sorted(body))  # (never the password)
        return _json(user)

    async def list_devices(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        return _json({"devices": await self.accounts.list_devices(request.query.get("classroom"))})

    async def create_device(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        body = request[BODY_KEY]
        device, credential = await self.accounts.create_device(body["classroom_id"], body.get("label", ""))
        self._audit("device_create", request, who, device=device["id"], classroom=body["classroom_id"])
        return _json({"device": device, "credential": credential, "screen_path": f"/screen#device={credential}"},
                     201)

    async def revoke_device(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        device = await self.accounts.revoke_device(request.match_info["device"])
        self._audit("device_revoke", request, who, device=device["id"], classroom=device["classroom"]["id"])
        return _json(device)

    async def qr(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        """A QR code (SVG) of a text: a new screen's URL, to scan on the classroom PC or smart board rather than type
        (made here, by segno, not by a script from elsewhere; the page already holds the text it asks about)."""
        out = io.BytesIO()
        segno.make(request[BODY_KEY]["text"], error="m").save(out, kind="svg", scale=6, border=2, xmldecl=False,
                                                              title="QR")
        return _json({"svg": out.getvalue().decode()})

    async def list_terms(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        return _json({"terms": await self.accounts.list_terms()})

    async def create_term(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        body = request[BODY_KEY]
        term = await self.accounts.create_term(body["name"], body["start_date"], body["weeks"])
        self._audit("term_create", request, who, term=term["id"], name=term["name"])
        return _json(term, 201)

    async def get_term(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        return _json(await self.accounts.get_term(request.match_info["term"]))

    async def list_entries(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        return _json({"entries": await self.accounts.list_entries(request.query.get("term"),
                                                                  request.query.get("teacher"))})

    async def create_entry(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        assert who is not None
        entry = await self.accounts.create_entry(request[BODY_KEY], actor=who.user["id"])
        self._audit("timetable_create", request, who, entry=entry["id"], title=entry["title"])
        return _json(entry, 201)

    async def get_entry(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        return _json(await self.accounts.get_entry(request.match_info["entry"]))

    async def delete_entry(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        await self.accounts.delete_entry(request.match_info["entry"])
        self._audit("timetable_delete", request, who, entry=request.match_info["entry"])
        return web.Response(status=204)

    async def occurrences(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        first, last = self._range(request)
        q = request.query
        found = await self.accounts.occurrences(first, last, teacher_id=q.get("teacher"),
                                                classroom_id=q.get("classroom"), term_id=q.get("term"))
        return _json({"from": first.isoformat(), "to": last.isoformat(), "lessons": found})

    async def import_timetable(self, request: web.Request, who: Who | None) -> web.StreamResponse:
        assert who is not None
        mode = request.query.get("mode", "check")
        if mode not in ("check", "all", "valid"):
            raise AccountError("invalid", "mode is check, all or valid", field="mode")
        term_id = request.match_info["term"]
        await self.accounts.get_term(term_id)
        data = await read_body(request, tt.MAX_IMPORT_BYTES)
        try:
            rows = tt.read_sheet(data, request.headers.get("X-Filename", ""))
        except tt.SheetError as exc:
            return _json({"rows": 0, "valid": 0, "written": 0, "entries": [], "mode": mode,
                          "errors": [exc.error.as_json()]}, 422)
        report = await self.accounts.import_timetable(term_id, rows, mode=mode, actor=who.user["id"])
        if mode != "check":
            self._audit("timetable_import", request, who, term=term_id, mode=mode, rows=report["rows"],
                        written=report["written"], errors=len(report["errors"]))
        status = 422 if mode == "all" and report["errors"] else 200
        return _json(report, status)


def home_of(role: str) -> str:
    """The page an account lands on after signing in."""
    return "/admin" if role == ADMINISTRATOR else "/me"


# -- request schemas --------------------------------------------------------------------------------------------------

def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "additionalProperties": False, "properties": properties}


_STR = {"type": "string", "maxLength": 200}
_NAME = {"type": "string", "minLength": 1, "maxLength": 100}
_ID = {"type": "string", "minLength": 1, "maxLength": 32}
_PASSWORD = {"type": "string", "maxLength": MAX_PASSWORD_CHARS}
LOGIN_BODY = _obj(["login", "password"], login={"type": "string", "maxLength": 64}, password=_PASSWORD)
USER_BODY = _obj(["login", "name", "role"], login={"type": "string", "minLength": 1, "maxLength": 64},
                 name=_NAME, role={"enum": list(ROLES)}, school={"type": "string", "maxLength": 100},
                 password=_PASSWORD)
USER_PATCH = _obj([], name=_NAME, school={"type": "string", "maxLength": 100}, disabled={"type": "boolean"},
                  password=_PASSWORD)
DEVICE_BODY = _obj(["classroom_id"], classroom_id=_ID, label={"type": "string", "maxLength": 100})
QR_BODY = _obj(["text"], text={"type": "string", "minLength": 1, "maxLength": 1000})  # (fits a QR code at level M)
TERM_BODY = _obj(["name", "start_date", "weeks"], name=_NAME, start_date={"type": "string", "format": "date",
                                                                          "maxLength": 10},
                 weeks={"type": "integer", "minimum": 1, "maximum": tt.MAX_TERM_WEEKS})
ENTRY_BODY = _obj(
    ["title", "teacher_id", "classroom_ids", "kind", "start_time", "end_time"],
    title={"type": "string", "minLength": 1, "maxLength": tt.MAX_TITLE_CHARS}, teacher_id=_ID,
    classroom_ids={"type": "array", "items": _ID, "minItems": 1, "maxItems": 200},
    kind={"enum": ["once", "weekly"]}, term_id={"type": ["string", "null"], "maxLength": 32},
    date={"type": "string", "maxLength": 10, "description": "once: YYYY-MM-DD"},
    weekday={"type": "integer", "minimum": 1, "maximum": 7, "description": "weekly: 1 = Monday ... 7 = Sunday"},
    weeks={"type": "string", "maxLength": 100, "description": "weekly: the term's weeks, e.g. 1-16 or 1,3,5-9"},
    period={"type": ["integer", "null"], "minimum": 1, "maximum": 20},
    start_time={"type": "string", "maxLength": 5, "description": "HH:MM"},
    end_time={"type": "string", "maxLength": 5, "description": "HH:MM"},
    **{name: {"type": "string", "maxLength": tt.MAX_FIELD_CHARS} for name in tt.CURRICULUM})

# the answers' shapes, for the document
_USER = _obj(["id", "login", "name", "role"], id=_ID, login=_STR, name=_STR, role={"enum": list(ROLES)},
             school=_STR, disabled={"type": "boolean"}, created_at=_STR)
COMPONENTS: Final[dict[str, Any]] = {
    "Error": {"type": "object", "required": ["code", "message"],
              "properties": {"code": _STR, "message": _STR, "field": _STR, "retry_after_s": {"type": "integer"},
                             "until": _STR, "clashes": {"type": "array", "items": {"type": "object"}}}},
    "User": _USER,
    "Me": {"type": "object", "properties": {"user": {"$ref": "#/components/schemas/User"}, "csrf": _STR,
                                            "home": _STR}},
    "Entry": {"type": "object", "properties": {**ENTRY_BODY["properties"], "id": _ID,
                                               "teacher": {"type": "object"},
                                               "classrooms": {"type": "array", "items": {"type": "object"}}}},
    "Occurrences": {"type": "object", "properties": {
        "from": _STR, "to": _STR, "lessons": {"type": "array", "items": {"allOf": [
            {"$ref": "#/components/schemas/Entry"},
            {"type": "object", "properties": {"lesson": {**_STR, "description": "the live lesson id"},
                                              "date": _STR, "entry": _ID}}]}}}},
    "ImportReport": {"type": "object", "properties": {
        "rows": {"type": "integer"}, "valid": {"type": "integer"}, "written": {"type": "integer"},
        "mode": {"enum": ["check", "all", "valid"]},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "row": {"type": "integer"}, "column": _STR, "code": _STR,
            "message": {**_STR, "description": "what is wrong, in Chinese"}}}}}},
}


# more route tables with these guards and a place in the document: the supervision dashboard's
# (signaling/supervision/web.py registers itself here when imported, as signaling.app does); each is given the API
# object passed to AccountsApi(extra={name: ...}), or a stand-in when the document is built
EXTRA_TABLES: dict[str, Callable[[Any], list[Route]]] = {}


def routes(api: AccountsApi) -> list[Route]:
    """Every route of the accounts' API: the one place they are declared."""
    admin = frozenset({ADMINISTRATOR})
    anyone = frozenset(ROLES) - {CLASSROOM}
    teacher = frozenset({TEACHER})
    span = {"from": "first date, YYYY-MM-DD (default: this week's Monday)",
            "to": "last date, YYYY-MM-DD (default: from + 6 days)"}
    table = [
        Route("POST", "/api/login", api.login, "Sign in: sets the session cookie, answers the CSRF token", None,
              LOGIN_BODY, response="Me"),
        Route("POST", "/api/logout", api.logout, "Sign out: the session ends", anyone),
        Route("GET", "/api/me", api.me, "Who is signed in, and the CSRF token", anyone, response="Me"),
        Route("GET", "/api/openapi.json", api.openapi, "This document", None),
        Route("GET", "/api/me/lessons", api.my_lessons, "我的课程: the teacher's lessons in a date range", teacher,
              query=span, response="Occurrences"),
        Route("POST", "/api/me/lessons/{lesson}/start", api.start_lesson,
              "Start one of my lessons: the teacher page's link with a lesson token", teacher),
        Route("GET", "/api/screen/lessons", api.screen_lessons,
              "A classroom screen's lessons (today, or from..to): Authorization: Device <credential>",
              frozenset({CLASSROOM}), query=span, device=True, response="Occurrences"),
        Route("POST", "/api/screen/lessons/{lesson}/token", api.screen_token,
              "A classroom lesson token for the screen's classroom, from 5 minutes before the lesson starts to 30 "
              "minutes after it ends (else 409 `not_now` with `opens_at`, `closes_at`)", frozenset({CLASSROOM}),
              device=True),
        Route("GET", "/api/admin/users", api.list_users, "Accounts", admin, query={"role": "only this role"}),
        Route("POST", "/api/admin/users", api.create_user, "Create an account (classrooms have no password)", admin,
              USER_BODY, response="User"),
        Route("GET", "/api/admin/users/{user}", api.get_user, "One account", admin, response="User"),
        Route("PATCH", "/api/admin/users/{user}", api.update_user,
              "Change an account (disabling it or a new password ends its sessions)", admin, USER_PATCH,
              response="User"),
        Route("GET", "/api/admin/devices", api.list_devices, "Classroom screens' credentials", admin,
              query={"classroom": "only this classroom's"}),
        Route("POST", "/api/admin/devices", api.create_device,
              "A new screen credential for a classroom: shown once, in its screen URL", admin, DEVICE_BODY),
        Route("POST", "/api/admin/devices/{device}/revoke", api.revoke_device, "Revoke a screen's credential",
              admin),
        Route("POST", "/api/admin/qr", api.qr, "A QR code (SVG, in `svg`) of a text: a new screen's URL to scan",
              admin, QR_BODY),
        Route("GET", "/api/admin/terms", api.list_terms, "Terms", admin),
        Route("POST", "/api/admin/terms", api.create_term, "A new term (first day, weeks)", admin, TERM_BODY),
        Route("GET", "/api/admin/terms/{term}", api.get_term, "One term", admin),
        Route("POST", "/api/admin/terms/{term}/import", api.import_timetable,
              "Import a term's timetable from CSV or XLSX: mode=check (nothing written), all (every row or none), "
              "valid (the good rows)", admin, query={"mode": "check | all | valid (default check)"},
              raw_body="text/csv, application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
              response="ImportReport"),
        Route("GET", "/api/admin/timetable", api.list_entries, "Timetable entries", admin,
              query={"term": "only this term's", "teacher": "only this teacher's"}),
        Route("POST", "/api/admin/timetable", api.create_entry,
              "A new lesson, one-off or weekly (refused with `clash` when its teacher or a classroom is busy)",
              admin, ENTRY_BODY, response="Entry"),
        Route("GET", "/api/admin/timetable/{entry}", api.get_entry, "One timetable entry", admin, response="Entry"),
        Route("DELETE", "/api/admin/timetable/{entry}", api.delete_entry, "Remove a timetable entry", admin),
        Route("GET", "/api/admin/occurrences", api.occurrences, "Every lesson in a date range (the week view)",
              admin, query={**span, "term": "only this term's", "teacher": "only this teacher's",
                            "classroom": "only this classroom's"}, response="Occurrences"),
    ]
    for name, more in EXTRA_TABLES.items():
        handlers = api.extra.get(name) if isinstance(api, AccountsApi) else _UNBOUND
        if handlers is not None:
            table += more(handlers)
    return table


# -- guards and registration -------------------------------------------------------------------------------------------

def _same_origin(request: web.Request) -> bool:
    """No Origin header (not a browser's cross-site request), or one naming this host. Host names only: a TLS proxy
    in front (docs/deploy.md) may pass ``Host`` without the public port."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        return (urlsplit(origin).hostname or "") == (urlsplit(f"//{request.headers.get('Host', '')}").hostname or "-")
    except ValueError:  # (a malformed Origin or Host)
        return False


def _guarded(route: Route, accounts: Accounts) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    validator = Draft202012Validator(route.body) if route.body is not None else None

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            unsafe = request.method not in SAFE_METHODS
            who: Who | None = None
            if route.device:
                auth = request.headers.get("Authorization", "")
                if not auth.startswith("Device "):
                    raise AccountError("unauthorized", "a screen's device credential is needed", 401)
                user = await accounts.verify_device(auth.removeprefix("Device ").strip())
                who = Who(user, device=user["device"])
            elif route.roles is not None:
                signed_in = await accounts.session(request.cookies.get(COOKIE, ""))
                if signed_in is None:
                    raise AccountError("unauthorized", "sign in first", 401)
                who = Who(signed_in.user, signed_in)
                if unsafe and (not _same_origin(request) or not hmac.compare_digest(
                        request.headers.get(CSRF_HEADER, "").encode(), signed_in.csrf.encode())):
                    raise AccountError("csrf", "missing or wrong X-CSRF-Token (or a request from another site)",
                                       403)
            elif unsafe and not _same_origin(request):
                raise AccountError("csrf", "a request from another site", 403)
            if route.roles is not None and who is not None and who.user["role"] not in route.roles:
                raise AccountError("forbidden", "your account's role may not do this", 403)
            if validator is not None:
                raw = await read_body(request, MAX_JSON_BYTES)
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    raise AccountError("invalid", "the body is not JSON") from None
                problem = next(iter(sorted(validator.iter_errors(body), key=lambda e: e.path)), None)
                if problem is not None:
                    where = ".".join(str(p) for p in problem.path) or (
                        problem.message.split("'")[1] if problem.validator == "required" else "")
                    raise AccountError("invalid", f"{where or 'body'}: {problem.validator} check failed",
                                       field=where)
                request[BODY_KEY] = body
            return await route.handler(request, who)
        except AccountError as exc:
            return _error(exc.code, exc.message, exc.status, **exc.detail)
        except TimeoutError:
            return _error("timeout", "the body did not arrive in time", 408)
        except (SQLAlchemyError, OSError) as exc:  # the store is down (PostgreSQL restarting, a full disk)
            log.warning("accounts: the store failed on %s %s: %s", request.method, route.path,
                        " ".join(str(exc).split())[:300])
            return _error("unavailable", "the accounts' store cannot be reached just now: try again", 503)

    return handle


def add_routes(app: web.Application, api: AccountsApi) -> list[Route]:
    """Register the API on ``app`` (and the Accounts under ACCOUNTS_KEY, for the pages above)."""
    app[ACCOUNTS_KEY] = api.accounts
    table = routes(api)
    for route in table:
        app.router.add_route(route.method, route.path, _guarded(route, api.accounts))
    return table


# -- the library for signed-in accounts --------------------------------------------------------------------------------

# What an account is in the library (recorder/library): a teacher owns the lessons taught under the account (their
# lesson tokens carry the account's id as `sub`), a reviewer reviews. An administrator keeps accounts and the timetable,
# not the catalog: in the library it sees what everybody sees (give the person a reviewer account to review). A
# classroom screen is anonymous there.
LIBRARY_ROLES: Final[dict[str, str]] = {TEACHER: "teacher", REVIEWER: "reviewer"}
LIBRARY_API: Final[str] = "/api/library"


def library_sessions(accounts: Accounts) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware: a library API request without a bearer token but with a session cookie is the account's. A change
    (not GET/HEAD/OPTIONS) through the cookie needs the session's CSRF token and a same-site origin, as every account
    route (403 ``csrf`` otherwise). Files and pages need none of it: the API hands out signed file URLs."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        cookie = request.cookies.get(COOKIE, "")
        if cookie and request.path.startswith(LIBRARY_API) and not request.headers.get("Authorization"):
            try:
                signed_in = await accounts.session(cookie)
            except (SQLAlchemyError, OSError) as exc:  # the store is down: the library still answers, as for anyone
                log.warning("library: the session could not be read (%s): answered as for anyone", exc)
                signed_in = None
            role = LIBRARY_ROLES.get(signed_in.user["role"]) if signed_in is not None else None
            if signed_in is not None and role is not None:
                if request.method not in SAFE_METHODS and (not _same_origin(request) or not hmac.compare_digest(
                        request.headers.get(CSRF_HEADER, "").encode(), signed_in.csrf.encode())):
                    return _json({"type": "error", "code": "csrf",  # (the library API's error form)
                                  "message": "missing or wrong X-CSRF-Token (or a request from another site)"},
                                 status=403)
                request[SESSION_VIEWER] = Viewer(role=role, sub=signed_in.user["id"], name=signed_in.user["name"])
        return await handler(request)

    return middleware


# -- the OpenAPI document ----------------------------------------------------------------------------------------------

def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``ROUTES`` (built from a table made with no handlers bound)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes(_UNBOUND):
        op: dict[str, Any] = {"summary": route.summary, "operationId": _operation_id(route),
                              "tags": [route.path.split("/")[2]]}
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"\{(\w+)\}", route.path)]
        params += [{"name": name, "in": "query", "required": False, "description": what,
                    "schema": {"type": "string"}} for name, what in route.query.items()]
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
        if route.raw_body is not None:
            op["requestBody"] = {"required": True, "content": {
                t.strip(): {"schema": {"type": "string", "format": "binary"}} for t in route.raw_body.split(",")}}
        ok: dict[str, Any] = {"description": "OK"}
        if route.response:
            ok["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{route.response}"}}}
        responses: dict[str, Any] = {"204" if route.method == "DELETE" or route.path == "/api/logout" else
                                     ("201" if route.method == "POST" and route.path.endswith(("users", "devices",
                                                                                               "terms", "timetable",
                                                                                               "webhooks"))
                                      else "200"): ok}
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        statuses = [400] if route.body is not None or route.query else []
        if route.roles is not None:
            statuses += [401, 403] if not route.device else [401]
        if "{" in route.path:
            statuses.append(404)
        if route.path in ("/api/admin/users", "/api/admin/timetable", "/api/screen/lessons/{lesson}/token") \
                and route.method == "POST":
            statuses.append(409)
        if route.path == "/api/login":
            statuses += [401, 403, 429]
        for status in sorted(set(statuses)):
            responses[str(status)] = {"description": ERRORS_DOC[status], **error}
        op["responses"] = responses
        if route.device:
            op["security"] = [{"device": []}]
        elif route.roles is not None:
            op["security"] = [{"session": []}]
            op["x-roles"] = sorted(route.roles)
            if route.method not in SAFE_METHODS:
                op["parameters"] = [*op.get("parameters", []), {
                    "name": CSRF_HEADER, "in": "header", "required": True, "schema": {"type": "string"},
                    "description": "the session's CSRF token (GET /api/me)"}]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "ketang accounts and timetable API", "version": "1",
                 "description": "Accounts, classroom screens, terms and the timetable (docs/accounts.md)."},
        "paths": paths,
        "components": {"schemas": COMPONENTS, "securitySchemes": {
            "session": {"type": "apiKey", "in": "cookie", "name": COOKIE,
                        "description": "set by POST /api/login; state-changing requests also send X-CSRF-Token"},
            "device": {"type": "http", "scheme": "Device",
                       "description": "a classroom screen's credential: Authorization: Device <credential>"}}},
    }


def _operation_id(route: Route) -> str:
    words = [w for w in re.split(r"[/{}.]+", route.path) if w and w != "api"]
    return route.method.lower() + "_" + "_".join(words)


class _Unbound:
    """Stands for an AccountsApi when the table is read for the document only."""

    def __getattr__(self, name: str) -> Handler:
        async def unbound(request: web.Request, who: Who | None) -> web.StreamResponse:  # pragma: no cover
            raise NotImplementedError(name)
        return unbound


_UNBOUND: Any = _Unbound()

"""Accounts, roles, sessions, classroom screens and the timetable (docs/accounts.md).

- ``service``: the ``Accounts`` kept in the store (store/accounts.py): users, argon2 passwords, sign-in lockout,
  sessions, device credentials, terms, timetable entries with clash checks, the timetable import;
- ``timetable``: the timetable's pure rules (weeks, dates, live lesson ids, clashes, reading CSV/XLSX sheets);
- ``web``: the REST API, its guards (session cookie, role, CSRF) and its OpenAPI document, from one route table.

For the pages built on these (classroom screens, the supervision dashboard): ``Accounts.verify_device`` says which
classroom a screen's credential stands for, ``Accounts.occurrences`` lists lessons with their live lesson ids,
``Accounts.session`` says who holds a session cookie, and ``web.Route`` entries added to ``web.routes`` get the same
guards and a place in /api/openapi.json.
"""

from signaling.accounts.service import (
    ADMINISTRATOR,
    CLASSROOM,
    REVIEWER,
    ROLES,
    TEACHER,
    AccountError,
    Accounts,
    SignedIn,
)
from signaling.accounts.timetable import lesson_id, parse_lesson_id
from signaling.accounts.web import COOKIE, CSRF_HEADER, AccountsApi, add_routes, openapi_document

__all__ = ["ADMINISTRATOR", "CLASSROOM", "COOKIE", "CSRF_HEADER", "REVIEWER", "ROLES", "TEACHER", "AccountError",
           "Accounts", "AccountsApi", "SignedIn", "add_routes", "lesson_id", "openapi_document", "parse_lesson_id"]

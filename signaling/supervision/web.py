"""The supervision dashboard's REST routes (administrators only), declared as ``accounts.web.Route`` entries: they get
the accounts' guards (session, role, CSRF) and their place in /api/openapi.json (``accounts.web.routes`` adds them:
this module registers its table in ``EXTRA_TABLES`` when imported).

- ``GET /api/admin/supervision/live``: lessons live now on this node (expected vs connected classrooms, quality
  bands, rung/layer mix);
- ``GET /api/admin/supervision/figures?from&to`` (default today) and ``?period=term``: per school and per teacher;
- ``GET /api/admin/supervision/lessons?from&to``: each scheduled lesson, held or not, with its classrooms;
- ``GET /api/admin/supervision/report.csv|.xlsx?school&week``: a school's weekly report;
- ``GET/POST /api/admin/webhooks``, ``DELETE /api/admin/webhooks/{webhook}``, ``GET …/{webhook}/deliveries``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from aiohttp import web

from signaling import metrics
from signaling.accounts.service import ADMINISTRATOR, AccountError, week_of
from signaling.accounts.web import BODY_KEY, EXTRA_TABLES, Route, Who
from signaling.accounts.timetable import parse_date, parse_lesson_id
from signaling.supervision.service import Supervision, band
from signaling.supervision.webhooks import EVENTS, Webhooks

if TYPE_CHECKING:
    from signaling.hub import Hub

MAX_FIGURES_DAYS: Final[int] = 200
XLSX: Final[str] = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

WEBHOOK_BODY: Final[dict[str, Any]] = {
    "type": "object", "additionalProperties": False, "required": ["url", "events"],
    "properties": {"url": {"type": "string", "minLength": 8, "maxLength": 500},
                   "events": {"type": "array", "minItems": 1, "uniqueItems": True,
                              "items": {"enum": list(EVENTS)}},
                   "secret": {"type": "string", "minLength": 16, "maxLength": 100,
                              "description": "default: a new random one, answered once"}}}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


class SupervisionApi:
    def __init__(self, supervision: Supervision, webhooks: Webhooks,
                 hub: Callable[[], Hub | None] = lambda: None) -> None:
        self.supervision = supervision
        self.webhooks = webhooks
        self.hub = hub

    def _span(self, request: web.Request) -> tuple[date, date]:
        today = self.supervision.today()
        try:
            first = parse_date(request.query["from"]) if "from" in request.query else today
            last = parse_date(request.query["to"]) if "to" in request.query else first
        except ValueError:
            raise AccountError("invalid", "from and to are dates YYYY-MM-DD", field="from") from None
        if not timedelta(0) <= last - first <= timedelta(days=MAX_FIGURES_DAYS):
            raise AccountError("invalid", f"from..to is 0 to {MAX_FIGURES_DAYS} days", field="to")
        return first, last

    async def _term_span(self) -> tuple[date, date, dict[str, Any]] | None:
        """The term today is in (else the latest that started), from its first day to today."""
        today = self.supervision.today()
        terms = sorted(await self.supervision.accounts.list_terms(), key=lambda t: t["start_date"])
        started = [t for t in terms if date.fromisoformat(t["start_date"]) <= today]
        if not started:
            return None
        term = started[-1]
        first = date.fromisoformat(term["start_date"])
        last = min(today, week_of(first)[0] + timedelta(days=7 * term["weeks"] - 1))
        return first, last, term

    async def figures(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        period = request.query.get("period", "")
        if period == "term":
            span = await self._term_span()
            if span is None:
                return _json({"term": None, "total": None, "schools": [], "teachers": []})
            out = await self.supervision.figures(span[0], span[1])
            return _json({**out, "term": span[2]})
        if period not in ("", "today"):
            raise AccountError("invalid", "period is today or term", field="period")
        return _json(await self.supervision.figures(*self._span(request)))

    async def lessons(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        first, last = self._span(request)
        return _json({"from": first.isoformat(), "to": last.isoformat(),
                      "lessons": await self.supervision.lessons(first, last)})

    async def live(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        hub = self.hub()
        now = time.time()
        out = []
        for lesson in hub.carried() if hub is not None else []:
            stored = lesson.stored
            expected: list[dict[str, Any]] = []
            if parse_lesson_id(lesson.id) is not None:
                try:
                    expected = (await self.supervision.accounts.occurrence(lesson.id))["classrooms"]
                except AccountError:
                    pass
            rows = {r["participant"]: r for r in lesson.attendance(now)["classrooms"]} if lesson.has_interaction \
                else {}
            router = lesson.router
            rungs: Counter[str] = Counter()
            layers: Counter[str] = Counter()
            connected = []
            for pid, conn in sorted(lesson.classrooms().items()):
                row = rows.get(pid, {})
                sub = router.subscribers.get(pid) if router is not None else None
                rung, layer = metrics.rung_and_layer(sub) if sub is not None else (None, None)
                if rung:
                    rungs[rung] += 1
                if layer:
                    layers[layer] += 1
                connected.append({"id": pid, "name": conn.claims.name if conn.claims else pid,
                                  "loss_avg": row.get("loss_avg"), "rtt_ms_avg": row.get("rtt_ms_avg"),
                                  "kbps_avg": row.get("kbps_avg"),
                                  "band": band(row.get("loss_avg"), row.get("rtt_ms_avg")), "rung": rung,
                                  "layer": layer})
            here = {c["id"] for c in connected}
            out.append({"lesson": lesson.id, "title": stored.title if stored else "",
                        "teacher": stored.teacher if stored else "",
                        "started_at": stored.started_at if stored else None,
                        "teacher_connected": any(c.role == "teacher" for c in lesson.connections.values()),
                        "expected": expected, "connected": connected,
                        "missing": [c for c in expected if c["id"] not in here],
                        "bands": dict(Counter(c["band"] or "unknown" for c in connected)),
                        "rungs": dict(rungs), "layers": dict(layers)})
        return _json({"node": hub.config.node_id if hub is not None else "", "lessons": out})

    def _report_args(self, request: web.Request) -> tuple[str, date]:
        school = request.query.get("school", "").strip()
        if not school or len(school) > 200:
            raise AccountError("invalid", "school is needed", field="school")
        try:
            day = parse_date(request.query["week"]) if "week" in request.query else self.supervision.today()
        except ValueError:
            raise AccountError("invalid", "week is a date YYYY-MM-DD", field="week") from None
        return school, week_of(day)[0]

    def _attachment(self, school: str, monday: date, ext: str) -> str:
        name = f"{school}-周报-{monday.isoformat()}.{ext}"
        return f"attachment; filename=\"report-{monday.isoformat()}.{ext}\"; filename*=UTF-8''{quote(name)}"

    async def report_csv(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        school, monday = self._report_args(request)
        text = await self.supervision.report_csv(school, monday)
        return web.Response(body=text.encode(), headers={
            "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
            "Content-Disposition": self._attachment(school, monday, "csv")})

    async def report_xlsx(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        school, monday = self._report_args(request)
        return web.Response(body=await self.supervision.report_xlsx(school, monday), headers={
            "Content-Type": XLSX, "Cache-Control": "no-store",
            "Content-Disposition": self._attachment(school, monday, "xlsx")})

    async def list_webhooks(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        return _json({"webhooks": await self.webhooks.registered(), "events": list(EVENTS)})

    async def create_webhook(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        body = request[BODY_KEY]
        return _json(await self.webhooks.create(body["url"], body["events"], body.get("secret")), 201)

    async def delete_webhook(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        await self.webhooks.delete(request.match_info["webhook"])
        return web.Response(status=204, headers={"Cache-Control": "no-store"})

    async def webhook_deliveries(self, request: web.Request, _who: Who | None) -> web.StreamResponse:
        return _json({"deliveries": await self.webhooks.deliveries(request.match_info["webhook"])})


def routes(api: Any) -> list[Route]:
    """The dashboard's and the webhooks' routes (``api``: a SupervisionApi, or a stand-in for the document)."""
    admin = frozenset({ADMINISTRATOR})
    span = {"from": "first date, YYYY-MM-DD (default: today)", "to": "last date, YYYY-MM-DD (default: from)"}
    report = {"school": "the school (its classrooms' accounts' school)",
              "week": "a day of the week, YYYY-MM-DD (default: this week)"}
    return [
        Route("GET", "/api/admin/supervision/live", api.live,
              "督导: lessons live now on this node: classrooms expected vs connected, quality bands, rung/layer mix",
              admin),
        Route("GET", "/api/admin/supervision/figures", api.figures,
              "督导: 开课率, attendance rate, minutes with video, average loss/RTT per school and per teacher", admin,
              query={**span, "period": "today (default) or term: from the current term's first day to today"}),
        Route("GET", "/api/admin/supervision/lessons", api.lessons,
              "Every scheduled lesson in a range, held or not, with its classrooms' attendance", admin, query=span),
        Route("GET", "/api/admin/supervision/report.csv", api.report_csv,
              "A school's weekly report as CSV (UTF-8 with BOM, for Excel)", admin, query=report),
        Route("GET", "/api/admin/supervision/report.xlsx", api.report_xlsx,
              "A school's weekly report as XLSX", admin, query=report),
        Route("GET", "/api/admin/webhooks", api.list_webhooks, "Webhooks", admin),
        Route("POST", "/api/admin/webhooks", api.create_webhook,
              "Register a webhook: its URL, events and HMAC secret (answered once)", admin, WEBHOOK_BODY),
        Route("DELETE", "/api/admin/webhooks/{webhook}", api.delete_webhook, "Remove a webhook", admin),
        Route("GET", "/api/admin/webhooks/{webhook}/deliveries", api.webhook_deliveries,
              "A webhook's latest deliveries: state, attempts, last status", admin),
    ]


EXTRA_TABLES["supervision"] = routes

"""Webhooks: administrators register URLs with a secret; events (lesson.started, lesson.ended, classroom.absent,
recording.ready) are JSON bodies signed with HMAC-SHA256 and delivered in the background with retries and
exponential back-off, never blocking a lesson (docs/webhooks.md).

An event is first written to ``webhook_deliveries`` (one row per webhook that wants it; ``dedup`` makes an event two
nodes both notice one delivery), then a delivery loop on every node claims due rows (an optimistic update of their
``next_at``: one node sends each attempt) and POSTs them. A 2xx answer delivers; anything else (a 500, a refused
connection, a timeout) is tried again after BACKOFF_S·2^(attempt-1), at most MAX_BACKOFF_S, until MAX_ATTEMPTS,
then the row is ``failed``. Rows live in the store, so a restart or a node's crash loses no delivery.

Signature: header ``X-Ketang-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>``;
``X-Ketang-Event`` names the event, ``X-Ketang-Delivery`` the delivery id (the same on every retry).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from signaling.accounts import AccountError, Accounts
from signaling.accounts.service import new_id
from store import webhook_deliveries, webhooks

log = logging.getLogger("ketang.webhooks")

EVENTS: Final[tuple[str, ...]] = ("lesson.started", "lesson.ended", "classroom.absent", "recording.ready")
SIGNATURE_HEADER: Final[str] = "X-Ketang-Signature"
MAX_ATTEMPTS: Final[int] = 8
BACKOFF_S: Final[float] = 10.0  # then 20, 40, ... (1 h at most): a receiver down for a few hours misses nothing
MAX_BACKOFF_S: Final[float] = 3600.0
SEND_TIMEOUT_S: Final[float] = 10.0
CLAIM_S: Final[float] = 60.0  # a claimed attempt is due again after this if its node died sending it
POLL_S: Final[float] = 2.0
MAX_WEBHOOKS: Final[int] = 50


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Ketang-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None, tolerance_s: float = 300) -> bool:
    """What a receiver does (docs/webhooks.md): the signature matches and its time is within ``tolerance_s``."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={parts.get('v1', '')}")


def check_url(url: str) -> str:
    """An http(s) URL with a host, else AccountError ``invalid``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise AccountError("invalid", "url must be an http:// or https:// URL", field="url")
    return url


def _webhook_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "url": row.url, "events": row.events.split(), "created_at": row.created_at,
            "disabled": bool(row.disabled)}


class Webhooks:
    """The registered webhooks and their deliveries in ``accounts``' store; ``start()`` runs the delivery loop."""

    def __init__(self, accounts: Accounts, *, backoff_s: float = BACKOFF_S, max_attempts: int = MAX_ATTEMPTS,
                 poll_s: float = POLL_S, clock: Callable[[], float] = time.time) -> None:
        self.accounts = accounts
        self.backoff_s, self.max_attempts, self.poll_s = backoff_s, max_attempts, poll_s
        self.clock = clock
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Future[Any]] = set()

    @property
    def store(self) -> Any:
        return self.accounts.store

    # -- administration -----------------------------------------------------------------------------------------

    async def create(self, url: str, events: list[str], secret: str | None = None) -> dict[str, Any]:
        await self.accounts.open()
        unknown = [e for e in events if e not in EVENTS]
        if unknown or not events:
            raise AccountError("invalid", f"events are some of {', '.join(EVENTS)}", field="events")
        secret = secret or "whsec_" + secrets.token_urlsafe(32)
        async with self.store.write() as db:
            count = (await db.execute(sa.select(sa.func.count()).select_from(webhooks))).scalar_one()
            if count >= MAX_WEBHOOKS:
                raise AccountError("invalid", f"at most {MAX_WEBHOOKS} webhooks", field="url")
            row = {"id": new_id(), "url": check_url(url), "secret": secret, "events": " ".join(dict.fromkeys(events)),
                   "created_at": _now_iso(self.clock()), "disabled": 0}
            await db.execute(sa.insert(webhooks).values(**row))
        return {**_webhook_json(_Row(row)), "secret": secret}

    async def registered(self) -> list[dict[str, Any]]:
        await self.accounts.open()
        async with self.store.read() as db:
            return [_webhook_json(r) for r in (await db.execute(sa.select(webhooks)
                                                                .order_by(webhooks.c.created_at))).all()]

    async def delete(self, webhook_id: str) -> None:
        await self.accounts.open()
        async with self.store.write() as db:
            if not (await db.execute(sa.delete(webhooks).where(webhooks.c.id == webhook_id))).rowcount:
                raise AccountError("not_found", "no such webhook", 404)

    async def deliveries(self, webhook_id: str, limit: int = 50) -> list[dict[str, Any]]:
        await self.accounts.open()
        async with self.store.read() as db:
            rows = (await db.execute(sa.select(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id)
                                     .order_by(webhook_deliveries.c.created_at.desc()).limit(limit))).all()
        return [{"id": r.id, "event": r.event, "state": r.state, "attempts": r.attempts,
                 "last_status": r.last_status, "last_error": r.last_error, "created_at": r.created_at,
                 "delivered_at": r.delivered_at} for r in rows]

    # -- events -------------------------------------------------------------------------------------------------

    async def emit(self, event: str, data: dict[str, Any], dedup: str | None = None) -> int:
        """Queue ``event`` for every webhook that wants it (``dedup``: an event with this key is queued once per
        webhook, whichever node notices it first); how many deliveries were queued."""
        assert event in EVENTS
        await self.accounts.open()
        queued = 0
        now = self.clock()
        async with self.store.read() as db:
            hooks = [r for r in (await db.execute(sa.select(webhooks).where(webhooks.c.disabled == 0))).all()
                     if event in r.events.split()]
        for hook in hooks:
            delivery = new_id()
            body = json.dumps({"id": delivery, "event": event, "created_at": _now_iso(now), "data": data},
                              ensure_ascii=False, separators=(",", ":"))
            try:
                async with self.store.write() as db:
                    await db.execute(sa.insert(webhook_deliveries).values(
                        id=delivery, webhook_id=hook.id, event=event, dedup=f"{hook.id}:{dedup or delivery}"[:300],
                        body=body, state="pending", attempts=0, next_at=now, created_at=_now_iso(now)))
                queued += 1
            except IntegrityError:
                pass  # queued already (another node noticed it first)
        if queued:
            self._wake.set()
        return queued

    def emit_soon(self, event: str, data: dict[str, Any], dedup: str | None = None) -> None:
        """``emit`` in the background: for the hub's callbacks, which must not wait (a failure is logged)."""
        async def logged() -> None:
            try:
                await self.emit(event, data, dedup)
            except Exception:  # noqa: BLE001 - a store outage costs the event, never the lesson
                log.exception("could not queue webhook event %s", event)
        task = asyncio.ensure_future(logged())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- delivery -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.ensure_future(self._deliver_loop())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            try:
                await self._loop
            except asyncio.CancelledError:
                pass
            self._loop = None
        if self._pending:
            await asyncio.wait(self._pending, timeout=2)
        if self._http is not None:
            await self._http.close()

    async def _deliver_loop(self) -> None:
        while True:
            try:
                await self.deliver_due()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("webhook deliveries: the store failed: %s", " ".join(str(exc).split())[:200])
            except Exception:  # noqa: BLE001
                log.exception("webhook deliveries failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                pass

    async def deliver_due(self) -> int:
        """Send every due delivery once (those this node claims); how many were sent."""
        await self.accounts.open()
        now = self.clock()
        async with self.store.read() as db:
            due = (await db.execute(sa.select(webhook_deliveries.c.id, webhook_deliveries.c.next_at).where(
                webhook_deliveries.c.state == "pending", webhook_deliveries.c.next_at <= now)
                .order_by(webhook_deliveries.c.next_at).limit(20))).all()
        sent = 0
        for row in due:
            async with self.store.write() as db:  # claimed: the other nodes see it due only after CLAIM_S
                claimed = (await db.execute(sa.update(webhook_deliveries).where(
                    webhook_deliveries.c.id == row.id, webhook_deliveries.c.next_at == row.next_at,
                    webhook_deliveries.c.state == "pending").values(next_at=now + CLAIM_S))).rowcount
                found = (await db.execute(sa.select(webhook_deliveries, webhooks.c.url, webhooks.c.secret).join(
                    webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id).where(
                    webhook_deliveries.c.id == row.id))).first() if claimed else None
            if found is not None:
                await self._attempt(found)
                sent += 1
        return sent

    async def _attempt(self, row: Any) -> None:
        body = row.body.encode()
        headers = {"Content-Type": "application/json", "User-Agent": "ketang-webhooks/1",
                   SIGNATURE_HEADER: sign(row.secret, int(self.clock()), body), "X-Ketang-Event": row.event,
                   "X-Ketang-Delivery": row.id}
        status: int | None = None
        error = ""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_S))
        try:
            async with self._http.post(row.url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                await resp.content.read(4096)  # (the answer's body is not needed: a little is read, then dropped)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        attempts = row.attempts + 1
        now = self.clock()
        values: dict[str, Any] = {"attempts": attempts, "last_status": status,
                                  "last_error": error or ("" if status and 200 <= status < 300 else f"HTTP {status}")}
        if status is not None and 200 <= status < 300:
            values.update(state="delivered", delivered_at=_now_iso(now))
        elif attempts >= self.max_attempts:
            values.update(state="failed")
            log.warning("webhook delivery %s (%s) to %s failed %d times: given up", row.id, row.event, row.url,
                        attempts)
        else:
            values.update(next_at=now + min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempts - 1)))
        async with self.store.write() as db:
            await db.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.id == row.id).values(**values))


class _Row:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _now_iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

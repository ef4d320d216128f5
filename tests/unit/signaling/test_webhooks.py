"""Webhook deliveries on a real SQLite store against a port nobody listens on: each failure is tried again after a
doubling delay, then given up as `failed` after max_attempts; an event noticed twice (same dedup key) is queued
once; a webhook only gets the events it asked for."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from signaling.accounts import Accounts
from signaling.supervision.webhooks import Webhooks
from store import Store, sqlite_url, webhook_deliveries
from tests.support import free_port


async def test_a_failing_receiver_is_retried_with_doubling_back_off_then_given_up(tmp_path: Path) -> None:
    accounts = Accounts(Store(sqlite_url(tmp_path)))
    now = [1_000_000.0]
    hooks = Webhooks(accounts, backoff_s=10, max_attempts=3, clock=lambda: now[0])
    try:
        dead = f"http://127.0.0.1:{free_port()}/hook"
        await hooks.create(dead, ["lesson.ended"])
        assert await hooks.emit("lesson.started", {"lesson": "x"}) == 0  # (not asked for)
        assert await hooks.emit("classroom.absent", {"lesson": "x"}, dedup="a") == 0
        assert await hooks.emit("lesson.ended", {"lesson": "x"}, dedup="ended:x") == 1
        assert await hooks.emit("lesson.ended", {"lesson": "x"}, dedup="ended:x") == 0  # (another node noticed it)
        due_at = []
        for _ in range(3):
            assert await hooks.deliver_due() == 1
            assert await hooks.deliver_due() == 0  # (not due again yet)
            async with accounts.store.read() as db:
                row = (await db.execute(sa.select(webhook_deliveries))).one()
            due_at.append(row.next_at - now[0])
            now[0] = row.next_at
        assert row.state == "failed" and row.attempts == 3 and "ClientConnectorError" in row.last_error
        assert due_at[:2] == [10, 20]  # then given up
        assert await hooks.deliver_due() == 0
    finally:
        await hooks.close()
        await accounts.close()

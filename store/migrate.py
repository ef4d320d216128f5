"""Bring a database to the newest schema (Alembic ``upgrade head``), at every start-up.

The migrations live in this package (store/migrations), so they ship with it. Two nodes starting at once on one
PostgreSQL take turns: the upgrade runs under a session-level advisory lock, and the second finds the schema
already at head. On SQLite the upgrade's transaction holds the write lock from its BEGIN (engine.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from store.engine import Store, redact

log = logging.getLogger("ketang.store")
# alembic says "Context impl SQLiteImpl" at INFO on every start; what changed is logged here instead (from -> to)
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)

MIGRATIONS_DIR: Final[Path] = Path(__file__).parent / "migrations"
# pg_advisory_lock key: "ketang store migrate", any constant the nodes agree on
ADVISORY_LOCK_KEY: Final[int] = 0x6B6574616E67


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


HEAD: Final[str] = ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def _upgrade(sync_conn: Any) -> str | None:
    before = MigrationContext.configure(sync_conn).get_current_revision()
    config = alembic_config()
    config.attributes["connection"] = sync_conn
    command.upgrade(config, "head")
    return before


async def migrate(store: Store) -> None:
    """Upgrade ``store``'s database to the newest schema (idempotent; safe with several nodes at once)."""
    async with store.engine.connect() as conn:
        conn = await conn.execution_options(write=True)
        postgres = store.dialect == "postgresql"
        if postgres:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            await conn.commit()
        try:
            async with conn.begin():
                before = await conn.run_sync(_upgrade)
        finally:
            if postgres:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                await conn.commit()
    if before != HEAD:
        log.info("store %s: schema %s -> %s", redact(store.url), before or "(empty)", HEAD)

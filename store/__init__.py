"""The durable store: one SQL database for everything ketang keeps (the resource library's catalog, accounts and
the timetable), on SQLAlchemy 2 (async) with Alembic migrations.

SQLite (aiosqlite) is the embedded default, a file in the data directory (``<data_dir>/ketang.db``);
``--database-url postgresql+asyncpg://…`` (or ``KETANG_DATABASE_URL``) puts it on PostgreSQL, shared by every
node. ``migrate()`` brings a database to the newest schema at start-up (two nodes starting at once on PostgreSQL
take turns on an advisory lock). This package imports nothing of ketang's own: the layers above use it.
"""

from store.engine import (
    DEFAULT_FILE_NAME,
    Store,
    database_url_from,
    dialect_of,
    redact,
    sqlite_url,
)
from store.migrate import HEAD, migrate
from store.accounts import (
    devices,
    login_throttle,
    sessions,
    terms,
    timetable_classrooms,
    timetable_entries,
    users,
)
from store.models import Base, history, recordings
from store.supervision import lesson_run_classrooms, lesson_runs, webhook_deliveries, webhooks
from store.search import fts_query, like_patterns, search_text, segment

__all__ = [
    "DEFAULT_FILE_NAME", "HEAD", "Base", "Store", "database_url_from", "dialect_of", "fts_query", "history",
    "like_patterns", "migrate", "recordings", "redact", "search_text", "segment", "sqlite_url",
    # accounts and the timetable (store/accounts.py)
    "devices", "login_throttle", "sessions", "terms", "timetable_classrooms", "timetable_entries", "users",
    # the supervision dashboard and webhooks (store/supervision.py)
    "lesson_run_classrooms", "lesson_runs", "webhook_deliveries", "webhooks",
]

"""The resource library's catalog: recordings, their history, and the search index of each engine.

Revision ID: 0001_library
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_library"
down_revision = None
branch_labels = None
depends_on = None

_TEXT_COLUMNS = ("title", "description", "teacher", "school", "language", "date", "license", "stage", "subject",
                 "grade", "edition", "volume", "unit", "chapter")


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("lesson_id", sa.Text, nullable=False),
        sa.Column("file", sa.Text, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("teacher_sub", sa.Text, nullable=False),
        *(sa.Column(name, sa.Text, nullable=False, server_default="") for name in _TEXT_COLUMNS),
        sa.Column("duration_s", sa.Float),
        sa.Column("size_bytes", sa.Integer),
        sa.Column("poster", sa.Text),
        sa.Column("mp4", sa.Text),
        sa.Column("reviewer", sa.Text),
        sa.Column("review_note", sa.Text),
        sa.Column("reviewed_at", sa.String(32)),
        sa.Column("incomplete", sa.Text),
        sa.Column("search_text", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("recordings_state", "recordings", ["state", "created_at"])
    op.create_index("ix_recordings_lesson_id", "recordings", ["lesson_id"])
    op.create_table(
        "recording_history",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rec_id", sa.String(32), sa.ForeignKey("recordings.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(32)),
        sa.Column("to_state", sa.String(32)),
        sa.Column("note", sa.Text),
    )
    op.create_index("recording_history_rec", "recording_history", ["rec_id", "seq"])
    if op.get_bind().dialect.name == "sqlite":
        # store.search: CJK characters segmented into tokens of their own; rowid = recordings.rowid
        op.execute("CREATE VIRTUAL TABLE recordings_fts USING fts5("
                   "title, description, people, curriculum, tokenize = 'unicode61 remove_diacritics 2')")
    else:
        # pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner may create it
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE INDEX recordings_search_trgm ON recordings USING gin (search_text gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE recordings_fts")
    op.drop_table("recording_history")
    op.drop_table("recordings")

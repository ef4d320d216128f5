"""The supervision dashboard's held lessons and their classrooms' attendance; webhooks and their deliveries.

Revision ID: 0005_supervision
Revises: 0004_accounts
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_supervision"
down_revision = "0004_accounts"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(32), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "lesson_runs",
        sa.Column("lesson_id", sa.String(160), primary_key=True),
        sa.Column("entry_id", sa.String(32)),
        sa.Column("date", sa.String(10), nullable=False),
        sa.Column("title", sa.Text, nullable=False, server_default=""),
        sa.Column("teacher", sa.Text, nullable=False, server_default=""),
        _ts("started_at", True), _ts("ended_at"),
    )
    op.create_index("ix_lesson_runs_entry_id", "lesson_runs", ["entry_id"])
    op.create_index("ix_lesson_runs_date", "lesson_runs", ["date"])
    op.create_table(
        "lesson_run_classrooms",
        sa.Column("lesson_id", sa.String(160), sa.ForeignKey("lesson_runs.lesson_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("participant", sa.String(160), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("present_s", sa.Float, nullable=False),
        sa.Column("video_s", sa.Float, nullable=False),
        sa.Column("sessions", sa.Integer, nullable=False),
        sa.Column("loss_avg", sa.Float), sa.Column("rtt_ms_avg", sa.Float), sa.Column("kbps_avg", sa.Float),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("events", sa.Text, nullable=False),
        _ts("created_at"),
        sa.Column("disabled", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("webhook_id", sa.String(32), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("dedup", sa.String(300), nullable=False, unique=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_at", sa.Float, nullable=False),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text, nullable=False, server_default=""),
        _ts("created_at"), _ts("delivered_at", True),
    )
    op.create_index("webhook_deliveries_due", "webhook_deliveries", ["state", "next_at"])


def downgrade() -> None:
    for table in ("webhook_deliveries", "webhooks", "lesson_run_classrooms", "lesson_runs"):
        op.drop_table(table)

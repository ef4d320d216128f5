"""Accounts, classroom screens' credentials, sessions, sign-in throttling, terms and the timetable.

Revision ID: 0004_accounts
Revises: 0003_recording_node
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_accounts"
down_revision = "0003_recording_node"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(32), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("login", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("school", sa.Text, nullable=False, server_default=""),
        sa.Column("password_hash", sa.Text),
        sa.Column("disabled", sa.Integer, nullable=False, server_default="0"),
        _ts("created_at"), _ts("updated_at"),
    )
    op.create_index("ix_users_role", "users", ["role"])
    op.create_table(
        "devices",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("classroom_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("label", sa.Text, nullable=False, server_default=""),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        _ts("created_at"), _ts("revoked_at", True), _ts("last_seen_at", True),
    )
    op.create_index("ix_devices_classroom_id", "devices", ["classroom_id"])
    op.create_table(
        "sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        _ts("created_at"), _ts("seen_at"), _ts("expires_at"), _ts("revoked_at", True),
        sa.Column("address", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        _ts("window_start"), _ts("locked_until", True),
    )
    op.create_table(
        "terms",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("start_date", sa.String(10), nullable=False),
        sa.Column("weeks", sa.Integer, nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "timetable_entries",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("term_id", sa.String(32), sa.ForeignKey("terms.id", ondelete="CASCADE")),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("teacher_id", sa.String(32), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("date", sa.String(10)),
        sa.Column("weekday", sa.Integer),
        sa.Column("weeks", sa.Text),
        sa.Column("period", sa.Integer),
        sa.Column("start_time", sa.String(5), nullable=False),
        sa.Column("end_time", sa.String(5), nullable=False),
        *(sa.Column(name, sa.Text, nullable=False, server_default="")
          for name in ("stage", "subject", "grade", "edition", "chapter")),
        sa.Column("created_by", sa.String(32), nullable=False, server_default=""),
        _ts("created_at"), _ts("updated_at"),
    )
    op.create_index("timetable_entries_term", "timetable_entries", ["term_id"])
    op.create_index("ix_timetable_entries_teacher_id", "timetable_entries", ["teacher_id"])
    op.create_table(
        "timetable_classrooms",
        sa.Column("entry_id", sa.String(32), sa.ForeignKey("timetable_entries.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("classroom_id", sa.String(32), sa.ForeignKey("users.id"), primary_key=True),
    )
    op.create_index("ix_timetable_classrooms_classroom_id", "timetable_classrooms", ["classroom_id"])


def downgrade() -> None:
    for table in ("timetable_classrooms", "timetable_entries", "terms", "login_throttle", "sessions", "devices",
                  "users"):
        op.drop_table(table)

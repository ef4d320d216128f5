"""Which node wrote a recording (its base URL: any other node proxies its files from there) and where its HLS
renditions are.

Revision ID: 0003_recording_node
Revises: 0002_lesson_items
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_recording_node"
down_revision = "0002_lesson_items"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN on both engines (a batch "recreate" on SQLite would renumber the rows the FTS index keys on)
    op.add_column("recordings", sa.Column("node", sa.Text, nullable=True))
    op.add_column("recordings", sa.Column("hls", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("recordings", "hls")
    op.drop_column("recordings", "node")

"""One library item per lesson: a recording row is either a lesson's item (``item_id`` NULL) or one of its sources
(``item_id`` = the item), with the ``role`` and ``label`` of its file.

Existing recordings are grouped by their lesson id: the lesson's item is its first teacher recording (the first
recording when it has none), and the lesson's other recordings become its sources. Their role is read from what
the recorder has always written: a courseware share's file ends in ``-screenN.webm`` and its title in 「（课件 N）」,
a turn on stage ``-stageN.webm`` and 「（上台 name）」. The item keeps its own review state and metadata.

Revision ID: 0002_lesson_items
Revises: 0001_library
"""

import sqlalchemy as sa
from alembic import op

from store.models import group_by_lesson

revision = "0002_lesson_items"
down_revision = "0001_library"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMNs: a foreign key would make SQLite copy the table (and its rowids, the FTS index's keys)
    op.add_column("recordings", sa.Column("item_id", sa.String(32)))
    op.add_column("recordings", sa.Column("role", sa.String(16), nullable=False, server_default="teacher"))
    op.add_column("recordings", sa.Column("label", sa.Text, nullable=False, server_default=""))
    op.create_index("recordings_item", "recordings", ["item_id"])

    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, lesson_id, file, title, teacher FROM recordings "
                                "ORDER BY lesson_id, created_at, id")).mappings().all()
    update = sa.text("UPDATE recordings SET role = :role, label = :label, item_id = :item_id WHERE id = :id")
    for change in group_by_lesson(rows):
        bind.execute(update, change)


def downgrade() -> None:
    op.drop_index("recordings_item", "recordings")
    for column in ("label", "role", "item_id"):
        op.drop_column("recordings", column)  # (SQLite 3.35+)

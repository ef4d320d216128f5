"""Alembic's environment for the store: always run by store.migrate on a connection it gives (online only)."""

from alembic import context

from store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

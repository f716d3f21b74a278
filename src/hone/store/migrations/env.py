"""Alembic's environment: migrations run on the connection, and in the transaction, that hone.store.schema opened."""

from alembic import context

from hone.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("hone's migrations run through `hone db upgrade` or hone.store.schema, not the alembic CLI")
# Batch mode lets generated drafts alter SQLite tables, which cannot change most things in place.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

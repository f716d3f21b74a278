"""Shared storage: one SQLAlchemy database (SQLite under $HONE_HOME by default, or PostgreSQL), migrated by Alembic."""

from hone.store.base import Base
from hone.store.db import (
    database_schema,
    database_url,
    dispose_engine,
    engine_for,
    redacted_url,
    session,
    upgrade_database,
)
from hone.store.schema import SchemaState, SchemaUpgrade, head_revision

__all__ = ["Base", "SchemaState", "SchemaUpgrade", "database_schema", "database_url", "dispose_engine",
           "engine_for", "head_revision", "redacted_url", "session", "upgrade_database"]

"""Shared storage: one SQLAlchemy database (SQLite under $HONE_HOME by default, or PostgreSQL)."""

from hone.store.db import Base, create_all, database_url, dispose_engine, engine_for, session

__all__ = ["Base", "create_all", "database_url", "dispose_engine", "engine_for", "session"]

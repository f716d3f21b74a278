"""Database URLs for store tests: a SQLite file, and a fresh PostgreSQL database per test on the server
$HONE_TEST_POSTGRES_URL names (one where databases may be created, e.g.
postgresql+psycopg://hone@127.0.0.1:5432/postgres), else on the session's throwaway server (conftest's postgres_url)."""

from __future__ import annotations

import os
import uuid

import pytest

POSTGRES_ENV = "HONE_TEST_POSTGRES_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hone.db'}"
    else:
        yield from _fresh_postgres_database(os.environ.get(POSTGRES_ENV) or request.getfixturevalue("postgres_url"))


def _fresh_postgres_database(server: str):
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from hone.store import dispose_engine

    name = f"hone_test_{uuid.uuid4().hex[:12]}"
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url
    finally:
        dispose_engine(url)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

"""The database connection: SQLite under $HONE_HOME by default, any SQLAlchemy URL (PostgreSQL too) otherwise.

One engine per URL is shared by every store in the process. SQLite runs in WAL mode with
`check_same_thread` off, so server worker threads can write while readers read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import StaticPool

from hone.errors import HoneError
from hone.home import hone_home

DATABASE_ENV = "HONE_DATABASE_URL"
DATABASE_FILE = "hone.db"
SQLITE_BUSY_MS = 10_000  # wait this long for another writer rather than fail with "database is locked"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


class Base(DeclarativeBase):
    """Declarative base of every hone table."""


def database_url(db_url: str | None = None) -> str:
    """`db_url`, else $HONE_DATABASE_URL, else the SQLite file $HONE_HOME/hone.db."""
    return db_url or os.environ.get(DATABASE_ENV) or f"sqlite:///{hone_home() / DATABASE_FILE}"


def engine_for(db_url: str | None = None) -> Engine:
    """The shared engine for the database at `db_url` (see `database_url`), with hone's tables created."""
    url = database_url(db_url)
    with _engines_lock:
        if url not in _engines:
            engine = _new_engine(url)
            create_all(engine)
            _engines[url] = engine
        return _engines[url]


def dispose_engine(db_url: str | None = None) -> None:
    """Close the shared engine's pooled connections and forget it (a server shutting down, a test database)."""
    with _engines_lock:
        engine = _engines.pop(database_url(db_url), None)
    if engine is not None:
        engine.dispose()


def _new_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        return _sqlite_engine(url, parsed.database)
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        raise HoneError(f"cannot use the database URL {_redacted(url)}: {error}",
                        hint="use sqlite:///PATH/hone.db, or postgresql+psycopg://USER@HOST/DB after "
                        f"`pip install 'hone[postgres]'`, via --db or ${DATABASE_ENV}") from None


def _sqlite_engine(url: str, database: str | None) -> Engine:
    in_memory = not database or database == ":memory:"
    if not in_memory:
        folder = Path(database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise HoneError(f"cannot create the folder {folder} for the SQLite database {url}: {error.strerror}",
                            hint="pass a writable path with --db sqlite:///PATH/hone.db, or set $HONE_HOME") from None
    # An in-memory database lives in one connection, so every thread must share that one.
    pool = {"poolclass": StaticPool} if in_memory else {}
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000}, **pool)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(connection, _record) -> None:
    """WAL lets readers run during a write; foreign keys are off by default in SQLite."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_all(engine: Engine) -> None:
    """Create any of hone's tables that do not exist yet."""
    import hone.store.tables  # noqa: F401  (registers the tables on Base.metadata)

    try:
        Base.metadata.create_all(engine)
    except SQLAlchemyError as error:
        raise HoneError(f"cannot open the database {_redacted(str(engine.url))}: {error.__class__.__name__}: "
                        f"{getattr(error, 'orig', None) or error}",
                        hint="check the path is writable (SQLite) or the server is reachable and the user may "
                        "create tables (PostgreSQL)") from None


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back on an exception."""
    with Session(engine, expire_on_commit=False) as db, db.begin():
        yield db


def _redacted(url: str) -> str:
    """The URL with any password hidden, for error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url

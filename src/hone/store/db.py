"""The database connection: SQLite under $HONE_HOME by default, any SQLAlchemy URL (PostgreSQL too) otherwise.

One engine per URL is shared by every store in the process; the first use in a process applies any pending
schema migrations (see `hone.store.schema`). SQLite runs in WAL mode with `check_same_thread` off, so server
worker threads can write while readers read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from hone.errors import HoneError
from hone.home import hone_home
from hone.store.schema import SQLITE_BUSY_MS, SchemaState, SchemaUpgrade, empty_state, schema_state, upgrade

DATABASE_ENV = "HONE_DATABASE_URL"
DATABASE_FILE = "hone.db"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def database_url(db_url: str | None = None) -> str:
    """`db_url`, else $HONE_DATABASE_URL, else the SQLite file $HONE_HOME/hone.db."""
    return db_url or os.environ.get(DATABASE_ENV) or f"sqlite:///{hone_home() / DATABASE_FILE}"


def engine_for(db_url: str | None = None) -> Engine:
    """The shared engine for the database at `db_url` (see `database_url`), its schema migrated to the newest."""
    url = database_url(db_url)
    with _engines_lock:
        if url not in _engines:
            _upgraded(url)
        return _engines[url]


def upgrade_database(db_url: str | None = None) -> SchemaUpgrade:
    """Apply the pending schema migrations to the database at `db_url` now, as `hone db upgrade` does."""
    with _engines_lock:
        return _upgraded(database_url(db_url))


def database_schema(db_url: str | None = None) -> SchemaState:
    """The schema revision of the database at `db_url` and the migrations it lacks, without changing it."""
    url = database_url(db_url)
    with _engines_lock:
        cached = _engines.get(url)
    if cached is None and _missing_sqlite_file(url):
        return empty_state()  # rather than create the file just to look inside
    engine = cached or _new_engine(url)
    try:
        return schema_state(engine)
    finally:
        if cached is None:
            engine.dispose()


def dispose_engine(db_url: str | None = None) -> None:
    """Close the shared engine's pooled connections and forget it (a server shutting down, a test database)."""
    with _engines_lock:
        engine = _engines.pop(database_url(db_url), None)
    if engine is not None:
        engine.dispose()


def _upgraded(url: str) -> SchemaUpgrade:
    """Migrate the database at `url` and keep its engine for the process; the caller holds `_engines_lock`."""
    engine = _engines.get(url) or _new_engine(url)
    try:
        result = upgrade(engine)
    except BaseException:
        if _engines.get(url) is not engine:
            engine.dispose()
        raise
    _engines[url] = engine
    return result


def _new_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        return _sqlite_engine(url, parsed.database)
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        raise HoneError(f"cannot use the database URL {redacted_url(url)}: {error}",
                        hint="use sqlite:///PATH/hone.db, or postgresql+psycopg://USER@HOST/DB after "
                        f"`pip install 'hone[postgres]'`, via --db or ${DATABASE_ENV}") from None


def _missing_sqlite_file(url: str) -> bool:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    database = parsed.database
    return (parsed.get_backend_name() == "sqlite" and bool(database) and database != ":memory:"
            and not Path(database).expanduser().exists())


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


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back on an exception."""
    with Session(engine, expire_on_commit=False) as db, db.begin():
        yield db


def redacted_url(url: str) -> str:
    """The URL with any password hidden, fit to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url

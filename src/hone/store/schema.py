"""The database's schema revision: read it, and bring it up to date with hone's numbered migrations (Alembic).

A database created before hone had migrations (its three tables, no `alembic_version`) is stamped at the first
revision and then upgraded like any other. Only one process migrates a database at a time: PostgreSQL holds an
advisory lock, SQLite its write lock, for the whole check-and-upgrade transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from hone.errors import HoneError

SQLITE_BUSY_MS = 10_000  # wait this long for another writer rather than fail with "database is locked"
MIGRATION_WAIT_S = 120  # how long a starting process waits for another's migration of the same SQLite file

MIGRATIONS = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001"
# The tables of FIRST_REVISION: finding all of them without alembic_version means a database from before migrations.
PRE_MIGRATION_TABLES = frozenset({"api_keys", "captured_requests", "feedback"})
# pg_advisory_xact_lock key shared by every hone process ("hone" in ASCII), so they migrate one at a time.
POSTGRES_LOCK_KEY = 0x686F6E65


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands against this version of hone."""

    revision: str | None  # None: no hone tables yet, or tables from before migrations (see pre_migrations)
    head: str  # the newest revision this hone knows
    pending: tuple[str, ...]  # what `upgrade` would apply, oldest first
    pre_migrations: bool = False  # created before numbered migrations: `upgrade` stamps it at FIRST_REVISION

    @property
    def up_to_date(self) -> bool:
        return not self.pending


@dataclass(frozen=True)
class SchemaUpgrade:
    """What `upgrade` did: the revision before and after, and the migrations it applied."""

    before: str | None
    after: str
    applied: tuple[str, ...]
    stamped_pre_migrations: bool = False


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for hone's migrations, running on `connection` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))  # configparser interpolates %
    config.attributes["connection"] = connection
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest schema revision this version of hone knows."""
    return _scripts().get_current_head()


def schema_state(engine: Engine) -> SchemaState:
    """The database's revision and the migrations it lacks; changes nothing."""
    try:
        with engine.connect() as connection:
            return _state(connection)
    except SQLAlchemyError as error:
        raise _unreachable(engine, error) from None


def upgrade(engine: Engine) -> SchemaUpgrade:
    """Apply every pending migration, stamping a database from before migrations first; one process at a time."""
    try:
        with engine.connect() as connection:
            state = _state(connection)
            if state.up_to_date:
                return SchemaUpgrade(before=state.revision, after=state.head, applied=())
            connection.rollback()  # end the read, so the lock below opens the transaction
            with migration_transaction(connection):
                state = _state(connection)  # another process may have migrated it while we waited
                if state.pre_migrations:
                    command.stamp(alembic_config(connection), FIRST_REVISION)
                if state.pending:
                    _apply(connection, state)
                after = _revision(connection)
    except SQLAlchemyError as error:
        raise _unreachable(engine, error) from None
    return SchemaUpgrade(before=state.revision, after=after, applied=state.pending,
                         stamped_pre_migrations=state.pre_migrations)


def empty_state() -> SchemaState:
    """The state of a database with no hone tables yet: every migration pending."""
    return _state_at(None, pre_migrations=False, shown="")


def _state(connection: Connection) -> SchemaState:
    revision = _revision(connection)
    pre_migrations = revision is None and PRE_MIGRATION_TABLES <= set(inspect(connection).get_table_names())
    return _state_at(revision, pre_migrations=pre_migrations, shown=_shown(connection.engine))


def _state_at(revision: str | None, *, pre_migrations: bool, shown: str) -> SchemaState:
    head = head_revision()
    start = FIRST_REVISION if pre_migrations else revision
    try:
        lacking = list(_scripts().iterate_revisions(head, start or "base"))  # newest first
    except RevisionError:
        raise HoneError(f"the database {shown} is at schema revision {revision!r}, which this version of hone "
                        f"does not know (its newest is {head!r})",
                        hint="a newer hone upgraded it: upgrade hone, or use another database with --db or "
                        "$HONE_DATABASE_URL") from None
    return SchemaState(revision=revision, head=head, pending=tuple(script.revision for script in reversed(lacking)),
                       pre_migrations=pre_migrations)


def _revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _apply(connection: Connection, state: SchemaState) -> None:
    try:
        command.upgrade(alembic_config(connection), state.head)
    except SQLAlchemyError as error:
        raise HoneError(f"cannot upgrade the database {_shown(connection.engine)} from schema revision "
                        f"{state.revision or 'none'} to {state.head}: {error.__class__.__name__}: "
                        f"{getattr(error, 'orig', None) or error}",
                        hint="nothing was changed; check the database user may create and alter tables, and that "
                        "no table of the same name was made by something else") from None


@contextmanager
def migration_transaction(connection: Connection) -> Iterator[None]:
    """One transaction on `connection` in which no other process can migrate the database; committed at the end."""
    if connection.dialect.name != "sqlite":
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
            yield
        return
    # SQLite's own procedure for schema changes: foreign keys off (a table copied by a batch migration would
    # cascade-delete the rows pointing at it), one explicit transaction, a foreign key check before commit.
    driver = connection.connection.driver_connection
    isolation_level = driver.isolation_level
    driver.isolation_level = None  # pysqlite would otherwise run DDL outside the transaction
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        # Processes starting together queue here for the write lock; one busy timeout may be shorter than another
        # process's whole migration on a loaded machine, so starters wait up to MIGRATION_WAIT_S for it.
        connection.exec_driver_sql(f"PRAGMA busy_timeout={MIGRATION_WAIT_S * 1000}")
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock now: other starters wait here
        try:
            yield
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise HoneError(f"migrating the database {_shown(connection.engine)} would leave {len(broken)} rows "
                                f"pointing at rows that do not exist (first: table {broken[0][0]}, row {broken[0][1]})",
                                hint="nothing was changed: the migration is at fault, keep this hone version's "
                                "database as it is and report the message")
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")  # the pooled connection's usual wait
        connection.commit()
        driver.isolation_level = isolation_level


def _unreachable(engine: Engine, error: SQLAlchemyError) -> HoneError:
    return HoneError(f"cannot open the database {_shown(engine)}: {error.__class__.__name__}: "
                     f"{getattr(error, 'orig', None) or error}",
                     hint="check the path is writable (SQLite) or the server is reachable and the user may "
                     "create tables (PostgreSQL)")


def _shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)

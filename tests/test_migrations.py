"""Schema migrations: a database from before migrations is upgraded in place with its rows, the migrated schema is
exactly the tables' metadata, and processes starting at once migrate a database only once."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, create_engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from typer.testing import CliRunner

from hone.api.keys import KEY_SCHEME, PREFIX_LENGTH, SCRYPT, KeyStore
from hone.cli import app
from hone.errors import HoneError
from hone.monitor.capture import CaptureStore
from hone.store import Base, dispose_engine, engine_for, head_revision, session
from hone.store.schema import migration_transaction
from hone.store.tables import StoredFile

pytest_plugins = ["store_fixtures"]  # the db_url fixture: SQLite, and PostgreSQL (a throwaway server if none is set)

runner = CliRunner()


# The tables exactly as hone declared them before numbered migrations, created the way it did: metadata.create_all.
class OldBase(DeclarativeBase):
    pass


def utc_now() -> datetime:
    return datetime.now(UTC)


class OldApiKey(OldBase):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    salt: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class OldCapturedRequest(OldBase):
    __tablename__ = "captured_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[str] = mapped_column(String(128), unique=True)
    model: Mapped[str] = mapped_column(String(256), index=True)
    request_json: Mapped[str] = mapped_column(Text)
    response_text: Mapped[str] = mapped_column(Text)
    usage_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)


class OldFeedback(OldBase):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("captured_requests.response_id", ondelete="CASCADE"),
                                             index=True)
    rating: Mapped[int | None] = mapped_column(Integer, default=None)
    correction: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


def old_database(url: str) -> str:
    """Create hone's tables as the code before migrations did, with a key, two captured requests and a
    corrected answer; returns the key in plain text."""
    plain = KEY_SCHEME + secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    engine = create_engine(url)
    OldBase.metadata.create_all(engine)
    question = {"messages": [{"role": "user", "content": "Where is my order?"}]}
    with Session(engine) as db, db.begin():
        db.add(OldApiKey(name="support-app", prefix=plain[:PREFIX_LENGTH], salt=salt.hex(),
                         key_hash=hashlib.scrypt(plain.encode(), salt=salt, **SCRYPT).hex()))
        for n in (1, 2):
            db.add(OldCapturedRequest(response_id=f"chatcmpl-{n}", model="support", request_json=json.dumps(question),
                                      response_text="It shipped.", usage_json="{}"))
        db.flush()
        db.add(OldFeedback(response_id="chatcmpl-1", rating=5, correction="It shipped on Monday."))
    engine.dispose()
    return plain


def cli_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def schema_differences(url: str) -> list:
    with engine_for(url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, Base.metadata)


def test_hone_db_upgrade_stamps_and_upgrades_a_database_from_before_migrations(db_url, tmp_path):
    key = old_database(db_url)
    before = cli_json("db", "current", "--db", db_url)
    assert before["revision"] is None and before["pre_migrations"] and not before["up_to_date"]
    assert before["pending"] == ["0002", "0003", "0004", "0005", "0006", "0007"]
    assert before["head"] == head_revision() == "0007"

    upgraded = cli_json("db", "upgrade", "--db", db_url)
    assert upgraded["before"] is None and upgraded["after"] == "0007"
    assert upgraded["applied"] == ["0002", "0003", "0004", "0005", "0006", "0007"]
    assert upgraded["stamped_pre_migrations"]
    after = cli_json("db", "current", "--db", db_url)
    assert after["revision"] == "0007" and after["up_to_date"] and after["pending"] == []
    again = cli_json("db", "upgrade", "--db", db_url)
    assert again["before"] == again["after"] == "0007" and again["applied"] == []

    keys = KeyStore(db_url)
    assert keys.verify(key) and [k["name"] for k in keys.list()] == ["support-app"]
    assert keys.identify(key).role == "admin"  # a key from before roles keeps the full access it had
    capture = CaptureStore(db_url)
    stats = capture.stats()
    assert stats["captured"] == 2 and stats["ratings"] == 1 and stats["corrections"] == 1
    out = tmp_path / "captured.jsonl"
    assert capture.export(out) == 2
    answers = [json.loads(line)["messages"][-1]["content"] for line in out.read_text().splitlines()]
    assert answers == ["It shipped on Monday.", "It shipped."]
    with engine_for(db_url).connect() as connection:
        for table in ("api_keys", "captured_requests"):
            assert connection.execute(text(f"SELECT DISTINCT project FROM {table}")).scalars().all() == ["default"]
    assert schema_differences(db_url) == []


def test_the_first_start_upgrades_a_database_from_before_migrations(db_url):
    key = old_database(db_url)
    assert KeyStore(db_url).verify(key)  # KeyStore opens the database through engine_for
    with session(engine_for(db_url)) as db:
        db.add(StoredFile(id="file-1", purpose="fine-tune", filename="train.jsonl", bytes=10, sha256="0" * 64,
                          status="processed"))
    with session(engine_for(db_url)) as db:
        assert db.get(StoredFile, "file-1").project == "default"
    assert schema_differences(db_url) == []


def test_migrations_build_exactly_the_tables_hone_declares(db_url):
    """A change to hone/store/tables.py without a migration for it fails here."""
    assert schema_differences(db_url) == []
    with engine_for(db_url).connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0007"]


STARTER = """
import pathlib, sys, time
from hone.store import engine_for
folder = pathlib.Path(sys.argv[2])
(folder / f"ready-{sys.argv[3]}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
engine_for(sys.argv[1])
"""


def test_processes_starting_at_once_migrate_the_database_once(db_url, tmp_path):
    starters = [subprocess.Popen([sys.executable, "-c", STARTER, db_url, str(tmp_path), str(n)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(4)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < len(starters) and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for starter in starters:
        _, errors = starter.communicate(timeout=60)
        assert starter.returncode == 0, errors
    with engine_for(db_url).connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0007"]
    assert schema_differences(db_url) == []


def test_on_sqlite_a_migration_that_copies_a_table_keeps_the_rows_pointing_at_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'hone.db'}"
    old_database(url)
    engine = engine_for(url)
    with engine.connect() as connection, migration_transaction(connection):
        # A batch migration on SQLite copies the table and drops the original: with foreign keys on, the drop
        # would cascade-delete every feedback row.
        with Operations(MigrationContext.configure(connection)).batch_alter_table("captured_requests",
                                                                                  recreate="always") as batch:
            batch.alter_column("model", type_=String(300))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM feedback")).scalar() == 1
        with pytest.raises(IntegrityError):  # foreign keys are enforced again afterwards
            connection.execute(text("INSERT INTO feedback (response_id, created_at) VALUES ('nope', '2025-01-01')"))


def test_a_database_from_a_newer_hone_is_refused_clearly(tmp_path):
    url = f"sqlite:///{tmp_path / 'hone.db'}"
    with engine_for(url).begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    dispose_engine(url)
    with pytest.raises(HoneError, match="revision '0999', which this version of hone does not know"):
        engine_for(url)
    failed = runner.invoke(app, ["db", "current", "--db", url])
    assert isinstance(failed.exception, HoneError) and "upgrade hone" in str(failed.exception)


def test_hone_db_current_reports_a_missing_sqlite_file_without_creating_it(tmp_path):
    path = tmp_path / "new" / "hone.db"
    state = cli_json("db", "current", "--db", f"sqlite:///{path}")
    assert state["revision"] is None and not state["up_to_date"]
    assert state["pending"] == ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]
    assert not path.parent.exists()

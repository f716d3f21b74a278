"""The hash-chained audit log: append an entry in the caller's transaction, read entries back, export them.

Each entry's hash is sha256 over the canonical JSON (`canonical_json`) of its fields, `seq` and the previous
entry's hash, so changing, removing, inserting or reordering any entry breaks the chain that `verify` walks.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from hone.errors import HoneError
from hone.store import engine_for, session
from hone.store.tables import AuditLogEntry

GENESIS_HASH = "0" * 64  # the prev_hash of the first entry
# pg_advisory_xact_lock key for the head of the audit log ("honeaudt" in ASCII); hone.store's migration lock differs.
POSTGRES_HEAD_LOCK_KEY = 0x686F6E6561756474


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry as an auditor sees it, with the hashes that chain it."""

    seq: int
    project: str
    actor: str | None
    action: str
    object_type: str
    object_id: str
    details: Any
    created_at: str  # ISO 8601 UTC, exactly as hashed
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical_json(value: Any) -> bytes:
    """The one byte encoding that hashes and signatures cover (RFC 8785-like): UTF-8, no whitespace, object keys
    sorted by their UTF-16 code units, integral floats written as integers; NaN and infinities are refused."""
    return _canonical(value).encode("utf-8")


def _canonical(value: Any) -> str:
    if value is None or isinstance(value, bool | str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise HoneError(f"the audit log cannot hold the number {value}", hint="record finite numbers only")
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: _key(key).encode("utf-16-be"))
        return "{" + ",".join(f"{json.dumps(_key(key), ensure_ascii=False)}:{_canonical(value[key])}"
                              for key in keys) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    raise HoneError(f"the audit log cannot hold a {type(value).__name__} value: {value!r}",
                    hint="pass details made of str, int, float, bool, None, lists and dicts with str keys")


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise HoneError(f"audit details keys must be strings, not {key!r}")
    return key


def iso_utc(moment: datetime) -> str:
    """The timestamp as hashed: ISO 8601 in UTC with microseconds; SQLite hands it back without its time zone."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(*, seq: int, project: str, actor: str | None, action: str, object_type: str, object_id: str,
               details: Any, created_at: str, prev_hash: str) -> str:
    """sha256 (hex) of the canonical JSON of an entry's fields and its predecessor's hash."""
    fields = {"seq": seq, "project": project, "actor": actor, "action": action, "object_type": object_type,
              "object_id": object_id, "details": details, "created_at": created_at, "prev_hash": prev_hash}
    return hashlib.sha256(canonical_json(fields)).hexdigest()


def row_hash(row: AuditLogEntry) -> str:
    """The hash a stored row should have, recomputed from its columns."""
    return entry_hash(seq=row.seq, project=row.project, actor=row.actor, action=row.action,
                      object_type=row.object_type, object_id=row.object_id, details=json.loads(row.details_json),
                      created_at=iso_utc(row.created_at), prev_hash=row.prev_hash)


def record(db: Session, *, project: str, actor: str | None, action: str, object_type: str, object_id: str,
           details: dict | None = None) -> None:
    """Append one entry to the audit log inside `db`'s transaction, so it commits (or rolls back) with the change
    it describes. Concurrent writers wait for each other and extend one chain."""
    details = details or {}
    details_json = canonical_json(details).decode("utf-8")
    _lock_head(db)
    head = db.execute(select(AuditLogEntry.seq, AuditLogEntry.hash).order_by(AuditLogEntry.seq.desc())
                      .limit(1)).first()
    seq, prev_hash = (head.seq + 1, head.hash) if head else (1, GENESIS_HASH)
    created_at = datetime.now(UTC)
    digest = entry_hash(seq=seq, project=project, actor=actor, action=action, object_type=object_type,
                        object_id=object_id, details=json.loads(details_json), created_at=iso_utc(created_at),
                        prev_hash=prev_hash)
    db.add(AuditLogEntry(seq=seq, project=project, actor=actor, action=action, object_type=object_type,
                         object_id=object_id, details_json=details_json, created_at=created_at,
                         prev_hash=prev_hash, hash=digest))
    db.flush()


def _lock_head(db: Session) -> None:
    """Hold the head of the log until `db`'s transaction ends, so the head read next is still the head at insert.

    PostgreSQL: a transaction-scoped advisory lock; each statement after it (READ COMMITTED) sees every entry
    committed before the lock was granted. SQLite: `hone.store.session` opens a deferred transaction (pysqlite
    issues BEGIN only before the first write), so a bare SELECT of the head could race; a write first takes
    SQLite's single write lock (waiting out other writers via busy_timeout) and the read that follows sees the
    newest head. The no-op UPDATE does that even on an empty log. Other databases lock the head row itself.
    """
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_HEAD_LOCK_KEY})
    elif dialect == "sqlite":
        db.execute(text("UPDATE audit_log SET seq = seq WHERE seq = (SELECT MAX(seq) FROM audit_log)"))
    else:
        db.execute(select(AuditLogEntry.seq).order_by(AuditLogEntry.seq.desc()).limit(1).with_for_update())


def to_entry(row: AuditLogEntry) -> AuditEntry:
    """The stored row as an `AuditEntry`."""
    return AuditEntry(seq=row.seq, project=row.project, actor=row.actor, action=row.action,
                      object_type=row.object_type, object_id=row.object_id, details=json.loads(row.details_json),
                      created_at=iso_utc(row.created_at), prev_hash=row.prev_hash, hash=row.hash)


def entries(limit: int = 50, project: str | None = None, db_url: str | None = None, *, action: str | None = None,
            actor: str | None = None, object_type: str | None = None, object_id: str | None = None,
            since: datetime | str | None = None, before: int | None = None) -> list[AuditEntry]:
    """The newest `limit` entries, newest first, of one project or all; the other arguments keep only entries
    with that action, actor, object type or object id, created at or after `since`, or older than entry `before`
    (a seq)."""
    query = select(AuditLogEntry).order_by(AuditLogEntry.seq.desc()).limit(limit)
    wanted = {AuditLogEntry.project: project, AuditLogEntry.action: action, AuditLogEntry.actor: actor,
              AuditLogEntry.object_type: object_type, AuditLogEntry.object_id: object_id}
    for column, value in wanted.items():
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AuditLogEntry.created_at >= _utc(since))
    if before is not None:
        query = query.where(AuditLogEntry.seq < before)
    with session(engine_for(db_url)) as db:
        return [to_entry(row) for row in db.scalars(query)]


def entry(seq: int, project: str | None = None, db_url: str | None = None) -> AuditEntry | None:
    """Entry `seq`, or None when there is none (or it is another project's than `project`, when given)."""
    query = select(AuditLogEntry).where(AuditLogEntry.seq == seq)
    if project is not None:
        query = query.where(AuditLogEntry.project == project)
    with session(engine_for(db_url)) as db:
        row = db.scalars(query).first()
        return to_entry(row) if row is not None else None


def export(out: str | Path | TextIO, since: datetime | str | None = None, project: str | None = None,
           db_url: str | None = None) -> int:
    """Write entries (oldest first, with their hashes) as JSON lines to `out` for an auditor; returns how many.

    `since` (a datetime or ISO 8601 string; UTC when it names no zone) keeps entries created at or after it.
    """
    query = select(AuditLogEntry).order_by(AuditLogEntry.seq)
    if since is not None:
        query = query.where(AuditLogEntry.created_at >= _utc(since))
    if project is not None:
        query = query.where(AuditLogEntry.project == project)
    if isinstance(out, str | Path):
        with open(out, "w", encoding="utf-8") as stream:
            return _write(stream, query, db_url)
    return _write(out, query, db_url)


def _write(stream: TextIO, query, db_url: str | None) -> int:
    written = 0
    with session(engine_for(db_url)) as db:
        for row in db.scalars(query.execution_options(yield_per=1000)):
            stream.write(json.dumps(to_entry(row).to_dict(), ensure_ascii=False) + "\n")
            written += 1
    return written


def _utc(moment: datetime | str) -> datetime:
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            raise HoneError(f"not an ISO 8601 time: {moment!r}",
                            hint="e.g. 2026-01-31 or 2026-01-31T12:00:00Z") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)

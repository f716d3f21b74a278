"""Signed checkpoints of the audit log and its verification.

A checkpoint signs (entry count, head hash) with an Ed25519 key kept in a file outside the database, so someone
who can rewrite the database (and recompute every hash) still cannot produce a checkpoint that matches.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select

from hone.audit.log import GENESIS_HASH, canonical_json, iso_utc, row_hash
from hone.errors import HoneError
from hone.home import hone_home
from hone.store import engine_for, session
from hone.store.tables import AuditCheckpoint, AuditLogEntry

KEY_ENV = "HONE_AUDIT_KEY"
SIGNED_PURPOSE = "hone-audit-checkpoint-v1"  # so a checkpoint signature cannot be replayed as anything else


def signing_key_path() -> Path:
    """$HONE_AUDIT_KEY, else $HONE_HOME/audit/signing.key."""
    configured = os.environ.get(KEY_ENV)
    return Path(configured).expanduser() if configured else hone_home() / "audit" / "signing.key"


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption())
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(pem)
    return _load_key(path)


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise HoneError(f"cannot read the audit signing key {path}: {error}",
                        hint=f"restore the key file, or point ${KEY_ENV} at it") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise HoneError(f"the audit signing key {path} is not an Ed25519 key", hint=f"point ${KEY_ENV} at hone's key")
    return key


def _public_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _signed_bytes(entries: int, head_hash: str) -> bytes:
    return canonical_json({"purpose": SIGNED_PURPOSE, "entries": entries, "head_hash": head_hash})


def checkpoint(db_url: str | None = None) -> dict[str, Any]:
    """Sign the log's current entry count and head hash with the signing key (created, mode 0600, on first use)
    and store the checkpoint; returns it."""
    key = _load_or_create_key(signing_key_path())
    with session(engine_for(db_url)) as db:
        head = db.execute(select(AuditLogEntry.seq, AuditLogEntry.hash).order_by(AuditLogEntry.seq.desc())
                          .limit(1)).first()
        entries, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
        row = AuditCheckpoint(entries=entries, head_hash=head_hash,
                              signature=key.sign(_signed_bytes(entries, head_hash)).hex(),
                              public_key=_public_hex(key.public_key()))
        db.add(row)
        db.flush()
        return {"id": row.id, "entries": row.entries, "head_hash": row.head_hash, "signature": row.signature,
                "public_key": row.public_key, "created_at": iso_utc(row.created_at)}


@dataclass(frozen=True)
class Problem:
    """One way the log differs from what was recorded: `seq` of the first entry concerned, and what happened."""

    kind: str  # changed | removed | inserted | truncated | rewritten | bad_signature | foreign_key
    seq: int | None
    message: str
    checkpoint: int | None = None


@dataclass
class VerifyReport:
    """The result of `verify`: `ok` when every entry and checkpoint checks out."""

    entries: int = 0
    checkpoints: int = 0
    key_checked: bool = False  # the signing key file was there to check the checkpoints' public keys against
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def verify(db_url: str | None = None) -> VerifyReport:
    """Recompute every entry's hash and the chain, and check every checkpoint's signature and that the log still
    reaches it; problems are listed oldest entry first."""
    report = VerifyReport()
    key_path = signing_key_path()
    own_key = _public_hex(_load_key(key_path).public_key()) if key_path.exists() else None
    report.key_checked = own_key is not None
    with session(engine_for(db_url)) as db:
        checkpoints = list(db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)))
        wanted = {point.entries for point in checkpoints}
        hash_at: dict[int, str] = {0: GENESIS_HASH}
        expected_seq, prev_hash = 1, GENESIS_HASH
        for row in db.scalars(select(AuditLogEntry).order_by(AuditLogEntry.seq).execution_options(yield_per=1000)):
            report.problems.extend(_entry_problems(row, expected_seq, prev_hash))
            if row.seq in wanted:
                hash_at[row.seq] = row.hash
            expected_seq, prev_hash = row.seq + 1, row.hash
            report.entries += 1
    last_seq = expected_seq - 1
    for point in checkpoints:
        report.problems.extend(_checkpoint_problems(point, own_key, hash_at, last_seq))
    report.checkpoints = len(checkpoints)
    report.problems.sort(key=lambda problem: (problem.seq is None, problem.seq or 0))
    return report


def _entry_problems(row: AuditLogEntry, expected_seq: int, prev_hash: str) -> list[Problem]:
    problems = []
    try:
        recomputed = row_hash(row)
    except (ValueError, HoneError):
        recomputed = None  # details_json no longer parses
    if recomputed != row.hash:
        problems.append(Problem("changed", row.seq, f"entry {row.seq} was changed: its contents no longer match its "
                                "hash"))
    if row.seq > expected_seq:
        removed = str(expected_seq) if row.seq == expected_seq + 1 else f"{expected_seq}-{row.seq - 1}"
        problems.append(Problem("removed", expected_seq, f"entries {removed} were removed: the log jumps from "
                                f"entry {expected_seq - 1} to {row.seq}"))
    elif row.prev_hash != prev_hash:
        problems.append(Problem("inserted", row.seq, f"entry {row.seq} does not follow entry {row.seq - 1}: its "
                                "prev_hash differs from that entry's hash, so it was inserted, reordered or replaced"))
    return problems


def _checkpoint_problems(point: AuditCheckpoint, own_key: str | None, hash_at: dict[int, str],
                         last_seq: int) -> list[Problem]:
    problems = []
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(point.public_key)).verify(
            bytes.fromhex(point.signature), _signed_bytes(point.entries, point.head_hash))
    except (ValueError, InvalidSignature):
        problems.append(Problem("bad_signature", point.entries, f"checkpoint {point.id} (entries 1-{point.entries}) "
                                "has a signature that does not verify: it was altered", point.id))
    if own_key is not None and point.public_key != own_key:
        problems.append(Problem("foreign_key", point.entries, f"checkpoint {point.id} was signed by a key other than "
                                f"the signing key at {signing_key_path()}: it was forged or replaced", point.id))
    if last_seq < point.entries:
        problems.append(Problem("truncated", last_seq + 1, f"the log was truncated: it ends at entry {last_seq} but "
                                f"checkpoint {point.id} covers {point.entries} entries", point.id))
    elif hash_at.get(point.entries) != point.head_hash:
        problems.append(Problem("rewritten", point.entries, f"entry {point.entries} is not the entry checkpoint "
                                f"{point.id} signed: the log up to there was rewritten or cut and re-extended",
                                point.id))
    return problems


@dataclass(frozen=True)
class ProjectVerifyReport:
    """`verify` as one project may see it: whether the whole log is intact, and the first broken entry's seq only
    when that entry is the project's own (counts, messages and other projects' seqs would tell it about theirs)."""

    ok: bool
    first_broken_seq: int | None


def verify_for_project(project: str, db_url: str | None = None) -> ProjectVerifyReport:
    """Verify the whole log (see `verify`) and keep what `project` may learn from the result."""
    report = verify(db_url)
    if report.ok:
        return ProjectVerifyReport(ok=True, first_broken_seq=None)
    first = report.problems[0].seq
    with session(engine_for(db_url)) as db:
        owner = db.scalar(select(AuditLogEntry.project).where(AuditLogEntry.seq == first)) if first else None
    return ProjectVerifyReport(ok=False, first_broken_seq=first if owner == project else None)

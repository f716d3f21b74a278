"""The tamper-evident audit trail: a hash-chained log every stage appends to in its own transaction, signed
checkpoints by a key kept outside the database, verification and export for an auditor."""

from hone.audit.checkpoints import (
    Problem,
    ProjectVerifyReport,
    VerifyReport,
    checkpoint,
    signing_key_path,
    verify,
    verify_for_project,
)
from hone.audit.log import AuditEntry, canonical_json, entries, entry, entry_hash, export, record

__all__ = ["AuditEntry", "Problem", "ProjectVerifyReport", "VerifyReport", "canonical_json", "checkpoint", "entries",
           "entry", "entry_hash", "export", "record", "signing_key_path", "verify", "verify_for_project"]

"""API keys for `hone serve`: created once in plain text, stored only as a salted scrypt hash."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select

from hone import audit
from hone.errors import HoneError
from hone.store import engine_for, session
from hone.store.tables import DEFAULT_PROJECT, ApiKey, WebSession, iso_utc

KEY_SCHEME = "hone-"
PREFIX_LENGTH = len(KEY_SCHEME) + 8  # "hone-" and 8 random characters: enough to find a key, useless to guess it
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Keys carry 256 random bits, so a modest work factor suffices; it keeps a verification near 10 ms.
SCRYPT = {"n": 2**12, "r": 8, "p": 1, "dklen": 32}


# What each role may do includes what the roles before it may: viewer < developer < approver < admin.
ROLES = ("viewer", "developer", "approver", "admin")


def role_allows(role: str, needed: str) -> bool:
    """Whether a key with `role` may do what needs `needed`."""
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class KeyIdentity:
    """A stored key as the server sees it: its name, project and role."""

    name: str
    project: str
    role: str
    id: int | None = None  # the key's row: a later key given the same name is another key


def _hash(plain_key: str, salt: bytes) -> bytes:
    return hashlib.scrypt(plain_key.encode(), salt=salt, **SCRYPT)


class KeyStore:
    """Named API keys in hone's database (see `hone.store.database_url`)."""

    def __init__(self, db_url: str | None = None):
        self.engine = engine_for(db_url)
        # sha256 of keys already checked against their scrypt hash, so each request does not pay for scrypt.
        self._verified: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def create(self, name: str, project: str = DEFAULT_PROJECT, role: str = "developer",
               actor: str | None = None) -> str:
        """Make a new key called `name` for `project` with `role` and return it in plain text: the only time it is
        ever visible."""
        for what, value in (("API key name", name), ("project", project)):
            if not NAME_PATTERN.fullmatch(value or ""):
                raise HoneError(f"{what} {value!r} is not allowed",
                                hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if role not in ROLES:
            raise HoneError(f"role {role!r} is not one of {', '.join(ROLES)}",
                            hint="viewer reads; developer also uploads, creates jobs and calls models; approver "
                            "also approves; admin also manages keys and the server's disk")
        plain = KEY_SCHEME + secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        with session(self.engine) as db:
            if self._active(db, name) is not None:
                raise HoneError(f"an active API key named {name!r} already exists",
                                hint=f"choose another name, or revoke it first with `hone keys revoke {name}`")
            db.add(ApiKey(name=name, project=project, role=role, prefix=plain[:PREFIX_LENGTH], salt=salt.hex(),
                          key_hash=_hash(plain, salt).hex()))
            audit.record(db, project=project, actor=actor, action="key.created", object_type="api_key",
                         object_id=name, details={"role": role, "prefix": plain[:PREFIX_LENGTH]})
        return plain

    def verify(self, plain_key: str) -> bool:
        """True when `plain_key` is a key that exists and is not revoked (compared in constant time)."""
        return self.identify(plain_key) is not None

    def name_of(self, plain_key: str) -> str | None:
        """The name of the active key `plain_key`, or None when there is none."""
        identity = self.identify(plain_key)
        return identity.name if identity else None

    def identify(self, plain_key: str) -> KeyIdentity | None:
        """Who the active key `plain_key` is (compared in constant time), or None when there is no such key."""
        if not plain_key or not plain_key.startswith(KEY_SCHEME):
            return None
        with session(self.engine) as db:
            candidates = db.scalars(select(ApiKey).where(ApiKey.prefix == plain_key[:PREFIX_LENGTH],
                                                         ApiKey.revoked_at.is_(None))).all()
        key = next((key for key in candidates if self._matches(key, plain_key)), None)
        return KeyIdentity(key.name, key.project, key.role, key.id) if key else None

    def identify_id(self, key_id: int) -> KeyIdentity | None:
        """Who the key stored as row `key_id` is now, or None when it was revoked or never existed."""
        with session(self.engine) as db:
            key = db.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)))
            return KeyIdentity(key.name, key.project, key.role, key.id) if key else None

    def _matches(self, key: ApiKey, plain_key: str) -> bool:
        digest = hashlib.sha256(plain_key.encode()).digest()
        with self._lock:
            known = self._verified.get(key.id)
        if known is not None:
            return hmac.compare_digest(known, digest)
        if not hmac.compare_digest(_hash(plain_key, bytes.fromhex(key.salt)).hex(), key.key_hash):
            return False
        with self._lock:
            self._verified[key.id] = digest
        return True

    def has_keys(self) -> bool:
        """True when at least one key is active, i.e. the server must require one."""
        with session(self.engine) as db:
            return db.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None

    def list(self) -> list[dict]:
        """Every key ever created, oldest first: name, project, role, prefix, created_at and whether it is revoked."""
        with session(self.engine) as db:
            keys = db.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).all()
        return [{"name": key.name, "project": key.project, "role": key.role, "prefix": key.prefix,
                 "created_at": iso_utc(key.created_at), "revoked": key.revoked_at is not None} for key in keys]

    def revoke(self, name: str, actor: str | None = None) -> None:
        """Revoke the active key called `name`; requests using it are refused from now on."""
        with session(self.engine) as db:
            key = self._active(db, name)
            if key is None:
                known = sorted({k.name for k in db.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)))})
                raise HoneError(f"no active API key named {name!r}",
                                hint=f"active keys: {', '.join(known)}" if known else "there are no active keys")
            key.revoked_at = datetime.now(UTC)
            db.execute(delete(WebSession).where(WebSession.key_id == key.id))  # its dashboard sessions end with it
            audit.record(db, project=key.project, actor=actor, action="key.revoked", object_type="api_key",
                         object_id=name, details={"role": key.role})
        with self._lock:
            self._verified.pop(key.id, None)

    @staticmethod
    def _active(db, name: str) -> ApiKey | None:
        return db.scalar(select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))

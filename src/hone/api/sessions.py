"""Dashboard sessions: logging in with an API key gives an HttpOnly session cookie that stands for that key.

Only the cookie's sha256 is stored. A session never outlives its key: each request looks the key up again, so
a revoked key (or a server restarted without its --api-key) ends every session opened with it. A session also
holds a random CSRF token that every state-changing request made with the cookie must echo.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete

from hone import audit
from hone.store import engine_for, session
from hone.store.tables import WebSession

SESSION_COOKIE = "hone_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_HOURS = 12


@dataclass(frozen=True)
class OpenSession:
    """A live session: whose key it stands for and the CSRF token its state changes must carry."""

    project: str
    key_id: int | None  # the row of a key made with `hone keys create`
    command_line_key: str | None  # HMAC (keyed per server process) of a key given on `hone serve --api-key`
    csrf_token: str


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """The dashboard's sessions in hone's database."""

    def __init__(self, db_url: str | None = None):
        self.engine = engine_for(db_url)

    def open(self, *, project: str, key_id: int | None, command_line_key: str | None, actor: str) -> tuple[str, str]:
        """Start a session for a checked key and return (cookie token, CSRF token); expired sessions are removed."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with session(self.engine) as db:
            db.execute(delete(WebSession).where(WebSession.expires_at < now))
            db.add(WebSession(token_hash=_token_hash(token), project=project, key_id=key_id,
                              command_line_key=command_line_key, csrf_token=csrf, created_at=now,
                              expires_at=now + timedelta(hours=SESSION_HOURS)))
            audit.record(db, project=project, actor=actor, action="session.opened", object_type="web_session",
                         object_id=_token_hash(token)[:12], details={"hours": SESSION_HOURS})
        return token, csrf

    def find(self, token: str) -> OpenSession | None:
        """The live session behind a cookie, or None when there is none or it expired."""
        if not token:
            return None
        with session(self.engine) as db:
            found = db.get(WebSession, _token_hash(token))
            if found is None or _aware(found.expires_at) < datetime.now(UTC):
                return None
            return OpenSession(found.project, found.key_id, found.command_line_key, found.csrf_token)

    def close(self, token: str, actor: str) -> None:
        """End the session behind a cookie (logging out); nothing happens when there is none."""
        with session(self.engine) as db:
            found = db.get(WebSession, _token_hash(token))
            if found is None:
                return
            db.delete(found)
            audit.record(db, project=found.project, actor=actor, action="session.closed", object_type="web_session",
                         object_id=_token_hash(token)[:12], details={})


def _aware(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes; hone stores UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

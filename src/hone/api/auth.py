"""Who is calling: the API key of every /v1 request is checked, and routes get the caller, whose project
scopes every object they read or write. Until projects exist every key belongs to the `default` project.

The dashboard's pages call the same routes with a session cookie instead of the key (see hone.api.sessions):
the cookie stands for the key it was opened with, and a state change made with it must carry the session's CSRF
token in the X-CSRF-Token header."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from hone.api.errors import APIError
from hone.api.keys import KeyStore, role_allows
from hone.api.sessions import CSRF_HEADER, SESSION_COOKIE, OpenSession, Sessions
from hone.errors import HoneError
from hone.store.tables import DEFAULT_PROJECT


@dataclass(frozen=True)
class Caller:
    """The client behind a request: its project, the name of its stored key (None for a key given to
    `hone serve --api-key`, or when the server needs no key) and its role."""

    project: str
    key_name: str | None
    role: str = "developer"

    @property
    def actor(self) -> str:
        """Who the audit log names: the key's name, or how the caller got in without a stored key."""
        return self.key_name or ("command-line key" if self.role == "admin" else "open access")


class KeyAuth:
    """The keys a server accepts: those in its database (`hone keys`) and those passed on its command line.

    While neither exists the server is open: every request is the default project's, with the developer role
    (nothing that touches the server's disk). A key given on the command line is the operator's: admin of the
    default project.
    """

    def __init__(self, database: str | None, api_keys: Sequence[str] = (), required: bool = False):
        self.store = KeyStore(database)
        self.sessions = Sessions(database)
        self._session_secret = secrets.token_bytes(32)
        self._cli_keys = [hashlib.sha256(key.encode()).digest() for key in api_keys]  # never kept in plain text
        if required and not self.keys_required():
            raise HoneError("api_key_required is set but no API key exists",
                            hint="create one with `hone keys create NAME`, or pass --api-key KEY")

    def keys_required(self) -> bool:
        return bool(self._cli_keys) or self.store.has_keys()

    def caller(self, authorization: str) -> Caller:
        """The caller an `Authorization` header value identifies; APIError 401 when a key is needed and it is
        missing or not an active key."""
        if not self.keys_required():
            return Caller(DEFAULT_PROJECT, None, "developer")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise APIError(401, "You didn't provide an API key: send it as 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
        digest = hashlib.sha256(key.encode()).digest()
        if any(hmac.compare_digest(digest, known) for known in self._cli_keys):
            return Caller(DEFAULT_PROJECT, None, "admin")
        identity = self.store.identify(key)
        if identity is None:
            raise APIError(401, "Incorrect API key provided; create one with `hone keys create NAME`",
                           code="invalid_api_key")
        return Caller(identity.project, identity.name, identity.role)

    def login(self, key: str) -> tuple[Caller, str, str]:
        """Check `key` and open a dashboard session for it: (caller, cookie token, CSRF token); APIError 401 for a
        wrong key. A server that needs no key opens a session for anyone."""
        caller = self.caller(f"Bearer {key}" if key else "")
        key_id, command_line_key = None, None
        if caller.key_name is not None:
            key_id = self.store.identify(key).id
        elif self.keys_required():
            command_line_key = self._session_mark(hashlib.sha256(key.encode()).digest())
        token, csrf = self.sessions.open(project=caller.project, key_id=key_id, command_line_key=command_line_key,
                                         actor=caller.actor)
        return caller, token, csrf

    def _session_mark(self, key_digest: bytes) -> str:
        """What a session stores for a command-line key: an HMAC keyed by this process, so a copy of the database
        reveals nothing about the key and a restarted server asks for a new login."""
        return hmac.new(self._session_secret, key_digest, hashlib.sha256).hexdigest()

    def session_caller(self, token: str) -> tuple[Caller, OpenSession]:
        """The caller a session cookie stands for, checked against its key now; APIError 401 when the session
        expired or its key was revoked."""
        found = self.sessions.find(token)
        caller = self._session_key(found) if found else None
        if caller is None:
            raise APIError(401, "Your dashboard session has ended; log in again with your API key",
                           code="session_expired")
        return caller, found

    def _session_key(self, found: OpenSession) -> Caller | None:
        if found.key_id is not None:
            identity = self.store.identify_id(found.key_id)
            return Caller(identity.project, identity.name, identity.role) if identity else None
        if found.command_line_key is not None:
            known = any(hmac.compare_digest(found.command_line_key, self._session_mark(key)) for key in self._cli_keys)
            return Caller(DEFAULT_PROJECT, None, "admin") if known else None
        return None if self.keys_required() else Caller(DEFAULT_PROJECT, None, "developer")


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _cookie_caller(auth: KeyAuth, token: str, method: str, csrf: str) -> Caller:
    """The caller behind a session cookie; a state change without the session's CSRF token is refused (403)."""
    caller, found = auth.session_caller(token)
    if method not in SAFE_METHODS and not hmac.compare_digest(csrf.encode(), found.csrf_token.encode()):
        raise APIError(403, f"this change needs the session's CSRF token in the {CSRF_HEADER} header; reload the "
                       "page and try again", type="permission_error", code="csrf_failed")
    return caller


async def require_caller(request: Request) -> Caller:
    """FastAPI dependency: the request's caller, or 401 in OpenAI's error shape. An Authorization header wins over
    a session cookie."""
    auth: KeyAuth = request.app.state.auth
    authorization = request.headers.get("authorization", "")
    token = request.cookies.get(SESSION_COOKIE)
    if token and not authorization:
        return await run_in_threadpool(_cookie_caller, auth, token, request.method,
                                       request.headers.get(CSRF_HEADER, ""))
    return await run_in_threadpool(auth.caller, authorization)


CurrentCaller = Annotated[Caller, Depends(require_caller)]


def needs(role: str):
    """FastAPI dependency: the caller, or 403 when its key's role is below `role` (see hone.api.keys.ROLES)."""

    def check(me: CurrentCaller) -> Caller:
        if not role_allows(me.role, role):
            key = f"the key '{me.key_name}'" if me.key_name else "this server's open access"
            raise APIError(403, f"this needs the {role} role or above; {key} has the {me.role} role",
                           type="permission_error", code="insufficient_role")
        return me

    return check


Viewer = Annotated[Caller, Depends(needs("viewer"))]
Developer = Annotated[Caller, Depends(needs("developer"))]
Approver = Annotated[Caller, Depends(needs("approver"))]
Admin = Annotated[Caller, Depends(needs("admin"))]

"""Who is calling: the API key of every /v1 request is checked, and routes get the caller, whose project
scopes every object they read or write. Until projects exist every key belongs to the `default` project."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from hone.api.errors import APIError
from hone.api.keys import KeyStore, role_allows
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


async def require_caller(request: Request) -> Caller:
    """FastAPI dependency: the request's caller, or 401 in OpenAI's error shape."""
    auth: KeyAuth = request.app.state.auth
    return await run_in_threadpool(auth.caller, request.headers.get("authorization", ""))


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

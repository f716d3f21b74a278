"""What every dashboard page shares: who is looking (the session), the /v1 API called in-process with the
session's cookie (so a page gets exactly the routes, role checks, project scoping and error messages the SDK
gets), forms checked against the session's CSRF token, and rendering a template with safe headers.

A page module has a `router` (FastAPI APIRouter) whose handlers take `Visitor` and `PageApi` and return
`render(...)`. A failed API call raises ApiFailure, which becomes an error page (or an error fragment for htmx)
showing the API's own message.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

import hone
from hone.api.auth import Caller
from hone.api.errors import APIError
from hone.api.keys import role_allows
from hone.api.sessions import CSRF_HEADER, SESSION_COOKIE, SESSION_HOURS

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
CSRF_FIELD = "csrf_token"

# The dashboard's sections, in the order the navigation shows them: (path, label).
SECTIONS = (
    ("/datasets", "Datasets"), ("/jobs", "Jobs"), ("/evaluations", "Evaluations"), ("/registry", "Registry"),
    ("/monitoring", "Monitoring"), ("/playground", "Playground"), ("/review", "Review"), ("/audit", "Audit"),
)

# Pages load only hone's own scripts and styles: nothing from another origin, no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def static_url(path: str) -> str:
    """The URL of a file under web/static; the version makes a browser fetch it anew after an upgrade."""
    return f"/static/{path}?v={hone.__version__}"


templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.globals.update(static=static_url, sections=SECTIONS, version=hone.__version__)


@dataclass(frozen=True)
class Visitor:
    """Who is looking at the dashboard: the caller their session stands for, and the session's tokens."""

    caller: Caller
    token: str
    csrf: str

    def can(self, role: str) -> bool:
        """True when the visitor's role is `role` or above (the API refuses them anyway when it is not)."""
        return role_allows(self.caller.role, role)


class LoginNeeded(Exception):
    """No live session: the visitor is sent to the login form, and back to `next_path` afterwards."""

    def __init__(self, next_path: str):
        super().__init__(next_path)
        self.next_path = next_path


class ApiFailure(Exception):
    """An API call a page made was refused: the status and the API's own message, shown as they are."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiFailure:
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["message"], error.get("code"), error.get("param"))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, "The server could not answer this request; try again")


def safe_next(path: str | None) -> str:
    """Where to go after logging in: a path on this server only, never another site."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


async def current_visitor(request: Request) -> Visitor:
    """FastAPI dependency: the visitor behind the session cookie, or LoginNeeded."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        raise LoginNeeded(_here(request))
    try:
        caller, found = await run_in_threadpool(request.app.state.auth.session_caller, token)
    except APIError:
        raise LoginNeeded(_here(request)) from None
    return Visitor(caller, token, found.csrf_token)


def _here(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return request.url.path + query


VisitorDep = Annotated[Visitor, Depends(current_visitor)]


class PageApi:
    """The /v1 API as the visitor: each call goes through the whole application in-process with their cookie."""

    def __init__(self, request: Request, visitor: Visitor):
        self.client: httpx.AsyncClient = request.app.state.web_client
        self.headers = {"cookie": f"{SESSION_COOKIE}={visitor.token}", CSRF_HEADER: visitor.csrf}

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The raw answer to one call; ApiFailure for an error status."""
        response = await self.client.request(method, path, headers=self.headers, **kwargs)
        if response.status_code >= 400:
            raise ApiFailure.from_response(response)
        return response

    async def get(self, path: str, **params: Any) -> Any:
        """GET `path` (e.g. "/v1/fine_tuning/jobs") with query `params` (None values left out); the JSON body."""
        clean = {key: value for key, value in params.items() if value is not None}
        return (await self.call("GET", path, params=clean)).json()

    async def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return (await self.call("POST", path, json=json, **kwargs)).json()


async def page_api(request: Request, visitor: VisitorDep) -> PageApi:
    return PageApi(request, visitor)


Api = Annotated[PageApi, Depends(page_api)]


def path_part(value: str) -> str:
    """One user-given value (a model name with ':' or '@') made safe to put inside an API path; dots are encoded
    too, so '.' or '..' cannot climb out of the path."""
    return quote(value, safe="").replace(".", "%2E")


async def checked_form(request: Request, visitor: Visitor) -> dict[str, Any]:
    """A submitted form's fields, after checking that it carries the visitor's CSRF token (ApiFailure 403 if not);
    a field sent twice is refused (400), since every form names each field once. Uploads stay UploadFile objects."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), visitor.csrf.encode()):
        raise ApiFailure(403, "This form's CSRF token does not match your session; reload the page and try again",
                         code="csrf_failed")
    fields: dict[str, Any] = {}
    for key in form.keys():
        values = form.getlist(key)
        if len(values) > 1:
            raise ApiFailure(400, f"The form field '{key}' was sent {len(values)} times; send it once",
                             code="invalid_value", param=key)
        fields[key] = values[0]
    fields.pop(CSRF_FIELD, None)
    return fields


def render(request: Request, visitor: Visitor | None, template: str, *, status: int = 200,
           **context: Any) -> HTMLResponse:
    """A template rendered for `visitor` (None on the login page), with the dashboard's security headers."""
    response = templates.TemplateResponse(request, template, {"visitor": visitor, **context}, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(path: str, *, cookies: dict[str, str | None] | None = None, secure: bool = False) -> Response:
    """A 303 to `path` (after a form post); `cookies` set (or, for None, delete) session cookies."""
    response = RedirectResponse(path, status_code=303)
    for name, value in (cookies or {}).items():
        if value is None:
            response.delete_cookie(name, path="/")
        else:
            response.set_cookie(name, value, httponly=True, samesite="lax", secure=secure, path="/",
                                max_age=SESSION_HOURS * 3600)
    response.headers.update(SECURITY_HEADERS)
    return response

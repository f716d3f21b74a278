"""The dashboard `hone serve` shows at `/`: the login form, an overview of the project, and a page per section
(each a module of hone.web.pages with its own router), plus the vendored scripts and styles under /static."""

from __future__ import annotations

import secrets
from urllib.parse import quote

import httpx
from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from hone.api.app import add_lifespan_hook
from hone.api.errors import APIError
from hone.api.sessions import SESSION_COOKIE
from hone.web import pages
from hone.web.core import (
    STATIC,
    Api,
    ApiFailure,
    LoginNeeded,
    VisitorDep,
    checked_form,
    redirect,
    render,
    safe_next,
)

LOGIN_CSRF_COOKIE = "hone_login_csrf"  # double-submit token: the login form has no session yet

router = APIRouter(include_in_schema=False)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


@router.get("/login")
async def login_form(request: Request, next: str = "/"):
    """The login form (a server that needs no key asks only for a click: a GET never opens a session)."""
    login_csrf = secrets.token_urlsafe(24)
    response = render(request, None, "login.html", next=safe_next(next), login_csrf=login_csrf,
                      open_server=not request.app.state.auth.keys_required())
    response.set_cookie(LOGIN_CSRF_COOKIE, login_csrf, httponly=True, samesite="strict", secure=_secure(request),
                        path="/login", max_age=3600)
    return response


@router.post("/login")
async def login(request: Request, api_key: str = Form(""), csrf_token: str = Form(""), next: str = Form("/")):
    """Check the key and set the HttpOnly session cookie; a wrong key shows the API's own message."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, csrf_token):
        return render(request, None, "login.html", status=403, next=safe_next(next), login_csrf="",
                      error="The login form expired; reload the page and try again")
    try:
        _, token, _ = await run_in_threadpool(request.app.state.auth.login, api_key.strip())
    except APIError as error:
        login_csrf = secrets.token_urlsafe(24)
        response = render(request, None, "login.html", status=error.status, next=safe_next(next),
                          login_csrf=login_csrf, error=error.message)
        response.set_cookie(LOGIN_CSRF_COOKIE, login_csrf, httponly=True, samesite="strict",
                            secure=_secure(request), path="/login", max_age=3600)
        return response
    response = redirect(safe_next(next), cookies={SESSION_COOKIE: token}, secure=_secure(request))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request, visitor: VisitorDep):
    await checked_form(request, visitor)
    await run_in_threadpool(request.app.state.auth.sessions.close, visitor.token, visitor.caller.actor)
    return redirect("/login", cookies={SESSION_COOKIE: None})


@router.get("/")
async def overview(request: Request, visitor: VisitorDep, api: Api):
    """The project at a glance: its latest datasets, jobs and models, each linking to its page."""
    files = await api.get("/v1/files", limit=5, order="desc")
    jobs = await api.get("/v1/fine_tuning/jobs", limit=5)
    versions = await api.get("/v1/registry/models")
    return render(request, visitor, "overview.html", files=files["data"], jobs=jobs["data"],
                  versions=versions["data"][:5])


def _is_page(request: Request) -> bool:
    return not request.url.path.startswith("/v1/") and request.url.path != "/health"


def add_dashboard(app: FastAPI) -> None:
    """Serve the dashboard on `app` (after its /v1 routers and error handlers)."""
    app.state.web_client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://hone.dashboard",
        timeout=httpx.Timeout(600.0))
    add_lifespan_hook(app, "dashboard", lambda: None, app.state.web_client.aclose)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    for page in pages.ALL:
        app.include_router(page.router, include_in_schema=False)
    api_http_error = app.exception_handlers[StarletteHTTPException]

    def login_needed(request: Request, error: LoginNeeded):
        return redirect(f"/login?next={quote(safe_next(error.next_path), safe='/')}")

    def api_failure(request: Request, error: ApiFailure):
        template = "_error.html" if request.headers.get("HX-Request") else "error.html"
        return render(request, None, template, status=error.status, error=error)

    def http_error(request: Request, error: StarletteHTTPException):
        if not _is_page(request):
            return api_http_error(request, error)
        message = "There is no such page" if error.status_code == 404 else str(error.detail)
        return render(request, None, "error.html", status=error.status_code,
                      error=ApiFailure(error.status_code, message))

    app.add_exception_handler(LoginNeeded, login_needed)
    app.add_exception_handler(ApiFailure, api_failure)
    app.add_exception_handler(StarletteHTTPException, http_error)

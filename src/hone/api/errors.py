"""Every failure in OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, and its status."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from hone.errors import RequestError

_STATUS_TEXT = {400: "Invalid request", 401: "Missing or wrong API key", 404: "Unknown model or object",
                413: "Request body too large", 429: "Too many requests at once; retry after Retry-After seconds",
                504: "The request ran past limits.request_timeout_s"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class APIError(Exception):
    """An error answered in OpenAI's shape with `status` (and `headers`, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    @classmethod
    def from_request_error(cls, error: RequestError) -> APIError:
        """A stage's refusal (`hone.errors.RequestError` or a subclass) with the status its class carries."""
        status = error.status
        kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
        return cls(status, error.message, param=error.param, code=error.code, type=kind,
                   headers={"Retry-After": "1"} if status == 429 else None)

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code)).model_dump()


def sse_error(error: APIError) -> str:
    """An error met mid-stream, as the stream's last event before `[DONE]`."""
    return f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n"


def error_responses(*statuses: int) -> dict:
    """OpenAPI `responses=` documenting `statuses` (and any other error, as `default`) with ErrorResponse.

    The body is given as a JSON reference (registered by `hone.api.app`) rather than `model=`, so routes whose
    success is plain text still document JSON errors; `default` also replaces FastAPI's 422, never answered here.
    """
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    documented: dict = {status: {"description": _STATUS_TEXT.get(status, "Error"), "content": content}
                        for status in statuses}
    documented["default"] = {"description": "Any other error", "content": content}
    return documented


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _validation_error(error: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors in OpenAI's shape, `param` naming the first offending field."""
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return _error_response(APIError(400, f"the request body is not valid JSON: {first.get('msg')}"))
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown parameter; remove it (see the OpenAI API reference for this endpoint)"
    return _error_response(APIError(400, f"{param or 'body'}: {message}", param=param, code="invalid_value"))


def add_error_handlers(app: FastAPI) -> None:
    """Answer APIError, the stages' RequestError, validation errors and unknown routes in OpenAI's shape."""

    def api_error(_request: Request, error: APIError) -> JSONResponse:
        return _error_response(error)

    def request_error(_request: Request, error: RequestError) -> JSONResponse:
        return _error_response(APIError.from_request_error(error))

    def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_error(error)

    def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error_response(APIError(error.status_code, str(error.detail),
                                        code="not_found" if error.status_code == 404 else None))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)

"""Request limits: body size (413, checked before the body is parsed) and concurrent requests (429)."""

from __future__ import annotations

import json
import threading

from hone.serve.protocol import APIError, error_body


class BodySizeLimit:
    """ASGI middleware answering 413 for bodies over `max_bytes`, by Content-Length or by counting chunks."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send, int(declared))
        body, more = b"", True
        while more:  # read the body here so an unannounced (chunked) body cannot exceed the limit either
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(send, len(body))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send, size: int) -> None:
        payload = json.dumps(error_body(
            f"the request body is {size} bytes; this server accepts at most {self.max_bytes} "
            "(limits.max_request_bytes); send a shorter request", code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class Slot:
    """One request's place among the concurrent requests; releasing it twice is harmless."""

    def __init__(self, limit: ConcurrencyLimit):
        self._limit = limit
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limit._release()


class ConcurrencyLimit:
    """At most `limit` generation requests at once; the next gets 429 with Retry-After."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()

    def acquire(self) -> Slot:
        with self._lock:
            if self.in_flight >= self.limit:
                raise APIError(429, f"this server is already handling {self.limit} requests "
                               "(limits.max_concurrent_requests); retry after a second",
                               type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "1"})
            self.in_flight += 1
        return Slot(self)

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1

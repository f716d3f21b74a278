"""The request body size limit: 413 before the body is parsed, by Content-Length or by counting chunks."""

from __future__ import annotations

import json

from hone.api.errors import error_body


class BodySizeLimit:
    """ASGI middleware answering 413 for bodies over `max_bytes`, by Content-Length or by counting chunks.

    Paths in `streamed` (uploads) have their own limit and are passed through as they arrive, never held in
    memory: the body is counted on the way and cut off with a 413 once it passes the limit.
    """

    def __init__(self, app, max_bytes: int, streamed: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = streamed or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.streamed.get(scope.get("path", "").rstrip("/"), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._too_large(send, int(declared), limit)
        if limit != self.max_bytes:
            return await self._counted(scope, receive, send, limit)
        body, more = b"", True
        while more:  # read the body here so an unannounced (chunked) body cannot exceed the limit either
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(send, len(body), self.max_bytes)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _counted(self, scope, receive, send, limit: int):
        seen, exceeded = 0, False

        async def counting_receive():
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # the app sees the client leave, and the client gets the 413 below
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not exceeded:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)
        if exceeded:
            await self._too_large(send, seen, limit)

    async def _too_large(self, send, size: int, limit: int) -> None:
        setting = "limits.max_request_bytes" if limit == self.max_bytes else "limits.max_upload_bytes"
        payload = json.dumps(error_body(
            f"the request body is {size} bytes or more; this server accepts at most {limit} ({setting}); "
            "send less", code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

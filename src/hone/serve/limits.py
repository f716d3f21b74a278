"""How many generation requests the model server takes at once; beyond that a request is refused as busy."""

from __future__ import annotations

import threading

from hone.serve.errors import ServerBusy


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
    """At most `limit` generation requests at once; the next is refused (HTTP 429 with Retry-After)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()

    def acquire(self) -> Slot:
        with self._lock:
            if self.in_flight >= self.limit:
                raise ServerBusy(f"this server is already handling {self.limit} requests "
                                 "(limits.max_concurrent_requests); retry after a second",
                                 code="rate_limit_exceeded")
            self.in_flight += 1
        return Slot(self)

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1

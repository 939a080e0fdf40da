"""The inference service's outermost middleware: every HTTP request counted, timed and size-limited."""

from __future__ import annotations

import time
from typing import Any

from fastapi import HTTPException

from readmission.serving import metrics


class RequestMetrics:
    """Counts, times and size-limits every HTTP request (pure ASGI: nothing copied, no extra task)."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
        self._counters: dict[tuple[str, str, int], Any] = {}  # label lookups cost more than the increments
        self._timers: dict[tuple[str, str], Any] = {}
        self._key_counters: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, received = time.perf_counter(), 500, 0
        declared = self._declared_length(scope)

        async def limited_receive():
            nonlocal received
            if declared > self.max_body_bytes:  # refused before a byte of it is read
                raise HTTPException(413, f"request body over {self.max_body_bytes} bytes (MAX_BODY_BYTES)")
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:  # no (or a false) Content-Length: counted as it arrives
                raise HTTPException(413, f"request body over {self.max_body_bytes} bytes (MAX_BODY_BYTES)")
            return message

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, limited_receive, send_status)
        finally:
            metrics.IN_FLIGHT.dec()
            route = scope.get("route")
            path = route.path if route else "unmatched"
            self._record(path, scope["method"], status, time.perf_counter() - started)
            if key := scope.get("state", {}).get("api_key"):
                self._record_key(key, path, status)

    @staticmethod
    def _declared_length(scope) -> int:
        for name, value in scope["headers"]:
            if name == b"content-length":
                return int(value) if value.isdigit() else 0
        return 0

    def _record(self, route: str, method: str, status: int, seconds: float) -> None:
        if (counter := self._counters.get((route, method, status))) is None:
            counter = self._counters[(route, method, status)] = metrics.REQUESTS.labels(route, method, str(status))
        if (timer := self._timers.get((route, method))) is None:
            timer = self._timers[(route, method)] = metrics.LATENCY.labels(route, method)
        counter.inc()
        timer.observe(seconds)

    def _record_key(self, key: str, route: str, status: int) -> None:
        if (counter := self._key_counters.get((key, route, status))) is None:
            counter = self._key_counters[(key, route, status)] = metrics.KEY_REQUESTS.labels(key, route, str(status))
        counter.inc()

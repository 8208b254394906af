"""One log line per request, as a pure ASGI middleware; a flood of successful ``:predict`` calls in summary.

Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``) runs every request
through an extra task group and memory streams, which costs about a
millisecond per call; this wrapper only watches ``http.response.start``.

Online prediction is the one call that arrives thousands of times a second; a line
each cost a seventh of the service's time under load (measured, docs/benchmarks.md).
So each path's first ``PREDICT_LINES_PER_WINDOW`` successful predict calls of a
``WINDOW_S`` window are logged one by one, the rest counted and logged as one line
when the window closes. Every failed call is logged on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

log = logging.getLogger("local_platform")
WINDOW_S = 10.0
PREDICT_LINES_PER_WINDOW = 20


@dataclass
class _Tally:
    """Successful predict calls of one path in the current window."""

    opened: float
    logged: int = 0
    counted: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0


class RequestLog:
    """``METHOD /path status N.Nms`` for every HTTP request but the health check (see the module docstring)."""

    def __init__(self, app):
        self.app = app
        self._tallies: dict[str, _Tally] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            if status != 200 or not scope["path"].endswith(":predict") or self._logs_alone(scope["path"]):
                log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, elapsed_ms)
            else:
                tally = self._tallies[scope["path"]]
                tally.counted += 1
                tally.total_ms += elapsed_ms
                tally.max_ms = max(tally.max_ms, elapsed_ms)

    def _logs_alone(self, path: str) -> bool:
        """Whether this successful predict call gets its own line (else it is counted for the summary)."""
        tally = self._tallies.get(path)
        if tally is None:
            tally = self._tallies[path] = _Tally(opened=time.monotonic())
            asyncio.get_running_loop().call_later(WINDOW_S, self._close, path)
        if tally.logged < PREDICT_LINES_PER_WINDOW:
            tally.logged += 1
            return True
        return False

    def _close(self, path: str) -> None:
        tally = self._tallies.pop(path)
        if tally.counted:
            log.info("POST %s 200: %d more calls in the last %.0f s (not logged one by one): mean %.1fms, "
                     "max %.1fms", path, tally.counted, time.monotonic() - tally.opened,
                     tally.total_ms / tally.counted, tally.max_ms)

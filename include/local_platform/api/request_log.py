"""One log line per request, as a pure ASGI middleware.

Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``) runs every request
through an extra task group and memory streams, which costs about a
millisecond per call; this wrapper only watches ``http.response.start``.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("local_platform")


class RequestLog:
    """``METHOD /path status N.Nms`` for every HTTP request but the health check."""

    def __init__(self, app):
        self.app = app

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
            log.info("%s %s %d %.1fms", scope["method"], scope["path"], status,
                     (time.perf_counter() - started) * 1000)

"""``POST ...:predict`` answered straight from ASGI messages, ahead of FastAPI's router.

Online prediction is the one latency-bound call. Through FastAPI it also passes the
exception middleware, the exit-stack middleware, the router's walk over every route
and Starlette's request/response objects: about 0.2 ms a call, measured (README:
Benchmarks). This middleware sits inside the request log and the caller check, so
those still see every call; only the framework is skipped. The endpoint reads the
body from ``receive`` itself and returns ``(status, JSON bytes)``; other methods on
these paths, and every other path, go on to the app unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect

from include.local_platform.errors import invalid_argument

#: The paths the two ``:predict`` routes of ml/v1 take (Starlette's ``{name}`` is ``[^/]+``).
PREDICT_PATH = re.compile(r"/v1/projects/[^/]+/models/[^/]+(?:/versions/[^/]+)?:predict")
Endpoint = Callable[[dict, Callable[[], Awaitable[dict]]], Awaitable[tuple[int, bytes]]]


class PredictRoute:
    """Send ``POST`` to a ``:predict`` path to ``endpoint``, everything else to ``app``."""

    def __init__(self, app, endpoint: Endpoint):
        self.app, self.endpoint = app, endpoint

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and PREDICT_PATH.fullmatch(scope["path"]):
            try:
                status, body = await self.endpoint(scope, receive)
            except ClientDisconnect:
                return  # the caller went away before its body arrived: nobody to answer
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


async def read_body(receive: Callable[[], Awaitable[dict]], limit: int) -> bytes:
    """The body, refusing (400, nothing changed) once it passes ``limit`` bytes.

    An oversize body is still read to its end (and thrown away) so the client
    gets the error instead of a broken pipe.
    """
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif chunks:
            chunks.clear()
        if not message.get("more_body", False):
            break
    if size > limit:
        raise invalid_argument(f"Request payload size exceeds the limit: {limit} bytes.")
    return b"".join(chunks)

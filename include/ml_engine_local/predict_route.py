"""``POST ...:predict`` handed to its endpoint straight from ASGI, ahead of FastAPI's router.

Online prediction is the one latency-bound call. Through FastAPI it also passes the
exception middleware, the exit-stack middleware, the router's walk over every route
and Starlette's request/response wrapper: about 0.2 ms a call, measured (README:
Performance). This middleware sits inside the request log and the caller check, so
those still see every call; only the framework's routing is skipped. Other methods
on these paths (and every other path) go on to the app unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

#: The paths the two ``:predict`` routes of ml/v1 take (Starlette's ``{name}`` is ``[^/]+``).
PREDICT_PATH = re.compile(r"/v1/projects/[^/]+/models/[^/]+(?:/versions/[^/]+)?:predict")


class PredictRoute:
    """Send ``POST`` to a ``:predict`` path to ``endpoint``, everything else to ``app``."""

    def __init__(self, app, endpoint: Callable[[Request], Awaitable[Response]]):
        self.app, self.endpoint = app, endpoint

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and PREDICT_PATH.fullmatch(scope["path"]):
            response = await self.endpoint(Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

"""ml/v1 over HTTP: the ``/v1/...`` route and the fast path that answers ``:predict`` straight from ASGI.

Online prediction is the one latency-bound call. Through FastAPI it would also
pass the exception middleware, the exit-stack middleware, the router's walk over
every route and Starlette's request/response objects: about 0.2 ms a call,
measured (docs/benchmarks.md). ``PredictRoute`` sits inside the request log and
the caller check, so those still see every call; only the framework is skipped.
Small requests for a loaded model are prepared on the event loop and batched with
the calls that arrive with them (``serving.batching``); the rest, like every other
``/v1`` call, run in a worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from include.local_platform.api.calls import Call, answer, bug_answer, encoded, injected, read_body
from include.local_platform.api.faults import FaultInjector
from include.local_platform.api.ml_v1_predict import PREDICT_LIMIT_BYTES, Pending, batched, predict_call
from include.local_platform.api.ml_v1_routes import PREDICT_PATH, check_path_ids, dispatch
from include.local_platform.api.security import check_json_body, header
from include.local_platform.context import Context
from include.local_platform.errors import ApiError
from include.local_platform.serving.numeric_json import dumps

BODY_LIMIT_BYTES = 10 * 1024 * 1024
# Online requests up to this size run on the event loop when their model is loaded: a thread
# hop costs more than such a prediction's Python part, and a wake-up on a busy machine far more.
INLINE_PREDICT_BYTES = 64 * 1024
#: The paths the two ``:predict`` routes of ml/v1 take (Starlette's ``{name}`` is ``[^/]+``).
PREDICT_ROUTE = re.compile(r"/v1/projects/[^/]+/models/[^/]+(?:/versions/[^/]+)?:predict")
Endpoint = Callable[[dict, Callable[[], Awaitable[dict]]], Awaitable[tuple[int, bytes]]]


class PredictRoute:
    """Send ``POST`` to a ``:predict`` path to ``endpoint``, everything else to ``app``."""

    def __init__(self, app, endpoint: Endpoint):
        self.app, self.endpoint = app, endpoint

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and PREDICT_ROUTE.fullmatch(scope["path"]):
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


def _predict_inline(ctx: Context, call: Call) -> dict | Pending | None:
    check_path_ids(call.params)
    return predict_call(ctx, call, inline=True)


def predict_endpoint(ctx: Context, faults: FaultInjector) -> Endpoint:
    """``POST ...:predict`` as ``PredictRoute`` calls it: (status, JSON bytes)."""

    async def endpoint(scope: dict, receive) -> tuple[int, bytes]:
        path = scope["path"][len("/v1/"):]
        if (status := faults.take("POST", scope["path"])) is not None:
            return status, dumps(injected(status).body())
        try:
            raw = await read_body(receive, PREDICT_LIMIT_BYTES)
        except ApiError as error:
            return error.code, dumps(error.body())
        if error := check_json_body("POST", header(scope, b"content-type"), raw):
            return error.code, dumps(error.body())
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)) \
            if scope["query_string"] else {}
        answered = None
        if len(raw) <= INLINE_PREDICT_BYTES and (match := PREDICT_PATH.match(path)):
            answered = answer("POST", path, _predict_inline, ctx, Call(match.groupdict(), query, raw))
            if isinstance(answered[1], Pending):
                try:
                    answered = 200, await batched(ctx, answered[1])
                except Exception as error:  # a bug of ours, answered as any handler's is
                    answered = bug_answer("POST", path, error)
        if answered is None or answered[1] is None:
            answered = await run_in_threadpool(dispatch, ctx, "POST", path, query, raw)
        return encoded(*answered, dumps)

    return endpoint


def add_routes(app: FastAPI, ctx: Context, faults: FaultInjector) -> None:
    """``/v1/{path}``: every ml/v1 method (``:predict`` arrives through ``PredictRoute`` first)."""

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PATCH", "DELETE", "PUT"])
    async def _v1(path: str, request: Request) -> Response:
        if (status := faults.take(request.method, request.url.path)) is not None:
            return JSONResponse(injected(status).body(), status_code=status)
        limit = PREDICT_LIMIT_BYTES if path.endswith(":predict") else BODY_LIMIT_BYTES
        try:
            raw = await read_body(request.receive, limit)
        except ApiError as error:
            return JSONResponse(error.body(), status_code=error.code)
        if error := check_json_body(request.method, request.headers.get("content-type"), raw):
            return JSONResponse(error.body(), status_code=error.code)
        status, body = await run_in_threadpool(dispatch, ctx, request.method, path, dict(request.query_params), raw)
        status, data = encoded(status, body, dumps)
        return Response(data, status_code=status, media_type="application/json")

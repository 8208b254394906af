"""The HTTP face of the service: ml/v1 paths, Google's error shape, request logs, fault injection.

ml/v1 paths end in custom verbs (``...:predict``, ``...:setDefault``) that path
templates handle badly, so every ``/v1/...`` request goes through one small
regex routing table below, which mirrors the discovery document. Online
prediction, the one latency-bound call, is handed to ``_predict_endpoint`` by a
plain ASGI middleware ahead of FastAPI's router (``predict_route``): same answers,
less machinery.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from include.local_platform.api import pages
from include.local_platform.api.predict_route import PredictRoute, read_body
from include.local_platform.api.request_log import RequestLog
from include.local_platform.api.security import CallerCheck, Guard, check_json_body, header
from include.local_platform.context import Context
from include.local_platform.errors import ApiError, PredictionError, invalid_argument, unimplemented
from include.local_platform.resources import jobs, models, operations, validation
from include.local_platform.resources.names import check_name
from include.local_platform.serving import numeric_json
from include.local_platform.serving.runtime import BadModel, dumps, loads
from include.local_platform.state import crashpoints
from include.local_platform.workers import batch, deployment, recovery, training

log = logging.getLogger("local_platform")

PREDICT_LIMIT_BYTES = 1_572_864  # ml/v1's online prediction payload limit (1.5 MB)
BODY_LIMIT_BYTES = 10 * 1024 * 1024
# Online requests up to this size run on the event loop when their model is loaded: a thread
# hop costs more than such a prediction's Python part, and a wake-up on a busy machine far more.
INLINE_PREDICT_BYTES = 64 * 1024
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED",
                 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


@dataclass
class Call:
    """One API call: path parameters, query parameters and the raw body."""

    params: dict[str, str]
    query: dict[str, str]
    raw: bytes

    def json(self, reader: Callable[[bytes], object] = loads) -> object:
        if not self.raw.strip():
            return {}
        try:
            return reader(self.raw)
        except orjson.JSONDecodeError as error:
            raise invalid_argument(f"Invalid JSON payload received. {error}") from None


def _page(items: list[dict], key: str, call: Call) -> dict:
    """pageSize / pageToken over a full list; ``{}`` when there is nothing, as Google answers."""
    try:
        start = int(call.query.get("pageToken") or 0)
        size = int(call.query.get("pageSize") or 0) or 1000
    except ValueError:
        raise invalid_argument("pageToken and pageSize must be integers.") from None
    if start < 0 or size < 0:
        raise invalid_argument("pageToken and pageSize must not be negative.")
    chunk = items[start:start + size]
    answer: dict = {key: chunk} if chunk else {}
    if start + size < len(items):
        answer["nextPageToken"] = str(start + size)
    return answer


def _predict(ctx: Context, call: Call) -> dict:
    return _predict_call(ctx, call)


def _predict_call(ctx: Context, call: Call, *, inline: bool = False) -> dict | None:
    """Answer one predict call. ``inline`` (on the event loop): None instead of anything that
    could block, i.e. a model not loaded yet or inputs to stage from GCS."""
    if len(call.raw) > PREDICT_LIMIT_BYTES:
        raise invalid_argument(f"Request payload size exceeds the limit: {PREDICT_LIMIT_BYTES} bytes.")
    body = call.json(numeric_json.loads)  # image-sized number arrays skip Python floats
    if not isinstance(body, dict) or "instances" not in body:
        raise invalid_argument('The request body must be a JSON object with "instances".')
    version = models.resolve_for_prediction(ctx, call.params["name"])
    try:
        if inline:
            if (loaded := ctx.models.peek(version["name"])) is None:
                return None
        else:
            loaded = ctx.models.get(version["name"], Path(version["_path"]))
        signature = loaded.signature(body.get("signature_name") or body.get("signatureName"))
        if signature.stages_files and inline:
            return None
        return {"predictions": signature(body["instances"], ctx.scratch_dir if signature.stages_files else None)}
    except PredictionError as error:
        return {"error": str(error)}
    except BadModel as error:
        raise ApiError(500, "INTERNAL", f"Version {version['name']} cannot be loaded: {error}") from None


P, M, V, OP, J = (f"(?P<{n}>[A-Za-z0-9_.-]+)" for n in ("project", "model", "version", "operation", "job"))
Handler = Callable[[Context, Call], object]
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", f"projects/{P}/models", lambda c, r: models.create_model(c, r.params["project"], r.json())),
    ("GET", f"projects/{P}/models",
     lambda c, r: _page(models.list_models(c, r.params["project"]), "models", r)),
    ("GET", f"projects/{P}/models/{M}", lambda c, r: models.get_model(c, r.params["project"], r.params["model"])),
    ("PATCH", f"projects/{P}/models/{M}", lambda c, r: models.patch_model(
        c, r.params["project"], r.params["model"], r.json(), r.query.get("updateMask"))),
    ("DELETE", f"projects/{P}/models/{M}",
     lambda c, r: models.delete_model(c, r.params["project"], r.params["model"])),
    ("POST", f"(?P<name>projects/{P}/models/{M}):predict", _predict),
    ("POST", f"projects/{P}/models/{M}/versions",
     lambda c, r: models.create_version(c, r.params["project"], r.params["model"], r.json())),
    ("GET", f"projects/{P}/models/{M}/versions", lambda c, r: _page(
        models.list_versions(c, r.params["project"], r.params["model"]), "versions", r)),
    ("GET", f"projects/{P}/models/{M}/versions/{V}", lambda c, r: models.with_default_flag(
        c, models.get_version(c, r.params["project"], r.params["model"], r.params["version"]))),
    ("PATCH", f"projects/{P}/models/{M}/versions/{V}", lambda c, r: models.patch_version(
        c, r.params["project"], r.params["model"], r.params["version"], r.json(), r.query.get("updateMask"))),
    ("DELETE", f"projects/{P}/models/{M}/versions/{V}", lambda c, r: models.delete_version(
        c, r.params["project"], r.params["model"], r.params["version"])),
    ("POST", f"projects/{P}/models/{M}/versions/{V}:setDefault", lambda c, r: models.set_default(
        c, r.params["project"], r.params["model"], r.params["version"])),
    ("POST", f"(?P<name>projects/{P}/models/{M}/versions/{V}):predict", _predict),
    ("GET", f"projects/{P}/operations",
     lambda c, r: _page(operations.list_for(c, r.params["project"]), "operations", r)),
    ("GET", f"(?P<name>projects/{P}/operations/{OP})", lambda c, r: operations.get(c, r.params["name"])),
    ("POST", f"(?P<name>projects/{P}/operations/{OP}):cancel", lambda c, r: operations.cancel(c, r.params["name"])),
    ("POST", f"projects/{P}/jobs", lambda c, r: jobs.create_job(c, r.params["project"], r.json())),
    ("GET", f"projects/{P}/jobs", lambda c, r: _page(
        jobs.list_jobs(c, r.params["project"], r.query.get("filter")), "jobs", r)),
    ("GET", f"projects/{P}/jobs/{J}", lambda c, r: jobs.get_job(c, r.params["project"], r.params["job"])),
    ("POST", f"projects/{P}/jobs/{J}:cancel",
     lambda c, r: jobs.cancel_job(c, r.params["project"], r.params["job"])),
]
COMPILED = [(method, re.compile(pattern + r"$"), handler) for method, pattern, handler in ROUTES]
UNIMPLEMENTED = re.compile(r"projects/[^/]+(/.*)?(:explain|:getIamPolicy|:setIamPolicy|:testIamPermissions|"
                           r":getConfig|/locations.*|/studies.*)$|projects/[^/]+/jobs/[^/:]+$")


_PATH_IDS = {"model": ("Model", "model.name"), "version": ("Version", "version.name"), "job": ("Job", "job.job_id")}


def _check_path_ids(params: dict[str, str]) -> None:
    """Ids in the URL follow the same rules as in bodies (no ``..``, no names the service never creates)."""
    validation.project(params["project"])
    for key, (kind, field) in _PATH_IDS.items():
        if params.get(key) is not None:  # the predict route's optional version is None
            check_name(kind, params[key], field)
    if ".." in params.get("operation", ""):
        raise invalid_argument("Invalid operation name.")


PREDICT_PATH = re.compile(f"(?P<name>projects/{P}/models/{M}(/versions/{V})?):predict$")


def _route(ctx: Context, method: str, path: str, query: dict[str, str], raw: bytes) -> object:
    for route_method, pattern, handler in COMPILED:
        if route_method == method and (match := pattern.match(path)):
            params = match.groupdict()
            _check_path_ids(params)
            return handler(ctx, Call(params, query, raw))
    if UNIMPLEMENTED.match(path):
        raise unimplemented(f"{method} v1/{path}")
    raise ApiError(404, "NOT_FOUND", f"Method not found: {method} v1/{path}")


def _answer(method: str, path: str, handler: Callable[..., object], *args) -> tuple[int, object]:
    """Run a handler; ApiError becomes Google's error body, and so does a bug of ours (logged)."""
    try:
        return 200, handler(*args)
    except ApiError as error:
        return error.code, error.body()
    except Exception as error:  # a bug of ours: still answered in Google's shape, and logged with its trace
        log.exception("%s v1/%s failed", method, path)
        return 500, ApiError(500, "INTERNAL", f"Internal error: {error.__class__.__name__}: {error}").body()


def _predict_inline(ctx: Context, call: Call) -> dict | None:
    _check_path_ids(call.params)
    return _predict_call(ctx, call, inline=True)


def dispatch(ctx: Context, method: str, path: str, query: dict[str, str], raw: bytes) -> tuple[int, object]:
    """Route one /v1 request; ApiError becomes Google's error body."""
    return _answer(method, path, _route, ctx, method, path, query, raw)


class FaultInjector:
    """Test switch: make matching requests fail with a given status.

    A rule fails the next ``times`` matching requests (-1: no limit), each with
    ``probability`` (0..1, default 1; ``seed`` makes the draws repeatable); ``matched``
    and ``injected`` count the requests it saw and those it answered.
    """

    def __init__(self):
        self._rules: list[dict] = []
        self._lock = threading.Lock()
        self._random = random.Random()

    def add(self, rule: dict) -> None:
        status = int(rule.get("status", 503))
        probability = float(rule.get("probability", 1.0))
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        draws = random.Random(rule["seed"]) if "seed" in rule else self._random
        with self._lock:
            self._rules.append({"status": status, "times": int(rule.get("times", 1)), "probability": probability,
                                "draws": draws,
                                "method": rule.get("method", "*").upper(),
                                "path": re.compile(rule.get("path_regex", ".*")), "matched": 0, "injected": 0})

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict]:
        with self._lock:
            return [{**{k: v for k, v in rule.items() if k not in ("path", "draws")},
                     "path_regex": rule["path"].pattern} for rule in self._rules]

    def take(self, method: str, path: str) -> int | None:
        with self._lock:
            for rule in self._rules:
                if rule["times"] != 0 and rule["method"] in ("*", method) and rule["path"].search(path):
                    rule["matched"] += 1
                    if rule["probability"] < 1.0 and rule["draws"].random() >= rule["probability"]:
                        continue
                    if rule["times"] > 0:
                        rule["times"] -= 1
                    rule["injected"] += 1
                    return rule["status"]
        return None


async def _read_body(request: Request, limit: int) -> bytes:
    """A FastAPI route's body, at most ``limit`` bytes (see ``predict_route.read_body``)."""
    return await read_body(request.receive, limit)


def _warm_tensorflow() -> None:
    """Import TensorFlow in the background (about 14 s of CPU) so the first deployment is not slow."""
    started = time.monotonic()
    import tensorflow  # noqa: F401

    log.info("TensorFlow ready in %.1f s", time.monotonic() - started)


def _warm_beam() -> None:
    """Import Apache Beam and its runner in the background (several seconds) so the first beam job is not slow."""
    from include.local_platform.workers import beam_engine

    beam_engine.warm()


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.code)


def create_app(state_dir: Path, *, guard: Guard | None = None, enable_faults: bool = False,
               batch_engine: str = "local", beam_options: str = "") -> FastAPI:
    """
    The local ml/v1 service as an ASGI app; work interrupted by a crash resumes when it starts.

    :param state_dir: The service's store, deployed models and job work.
    :param guard: The token and allowed hosts; default: anonymous, loopback only.
    :param enable_faults: Expose the fault switch (``/_local/faults``) for tests.
    :param batch_engine: ``local`` runs batch jobs in this process, ``beam`` as Apache Beam pipelines.
    :param beam_options: Pipeline options for the beam engine (runner, project, region, temp_location...).
    :return: the FastAPI app.
    """
    ctx = Context(state_dir=state_dir, batch_engine=batch_engine, beam_options=beam_options)
    guard = guard or Guard()
    faults = FaultInjector()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        """Resume interrupted work before serving; on a graceful stop release attempts (not a crash)."""
        guard.announce()
        threading.Thread(target=_warm_tensorflow, daemon=True, name="tf-import").start()
        if ctx.batch_engine == "beam":
            threading.Thread(target=_warm_beam, daemon=True, name="beam-import").start()
        recovery.recover(ctx)
        deployment.resume(ctx)
        batch.resume(ctx)
        training.resume(ctx)
        yield
        recovery.release_attempts(ctx)
        ctx.shutdown()

    app = FastAPI(title="Local ml/v1 service", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.ctx = ctx
    app.state.guard = guard
    if enable_faults and os.environ.get(crashpoints.ENV_RULES):
        ctx.crash.arm_from(os.environ[crashpoints.ENV_RULES])  # armed before anything resumes

    @app.get("/healthz")
    def _health() -> dict:
        return {"status": "ok"}

    if enable_faults:
        @app.post("/_local/faults")
        async def _add_fault(request: Request) -> Response:
            raw = await _read_body(request, 64 * 1024)
            if error := check_json_body("POST", request.headers.get("content-type"), raw):
                return _error_response(error)
            try:
                rule = loads(raw)
                if "crash_at" in rule or "delay_at" in rule:  # {"crash_at": POINT, "after": N}: SIGKILL at the
                    # (N+1)-th arrival there; {"delay_at": POINT, "seconds": S}: a pause there, once
                    ctx.crash.arm(rule.get("crash_at") or rule["delay_at"], int(rule.get("after", 0)),
                                  delay_s=float(rule.get("seconds", 1)) if "delay_at" in rule else None)
                else:
                    faults.add(rule)
            except (ValueError, TypeError, AttributeError, KeyError, re.error) as error:
                return _error_response(invalid_argument(f"Invalid fault rule: {error}"))
            return JSONResponse({})

        @app.get("/_local/faults")
        def _list_faults() -> dict:
            return {"rules": faults.rules()}

        @app.delete("/_local/faults")
        def _clear_faults() -> dict:
            faults.clear()
            ctx.crash.clear()
            return {}

    @app.get("/_local/projects/{project}/jobs/{job}/logs")
    async def _training_log(project: str, job: str, offset: int = 0, limit: int = training.LOG_READ_LIMIT):
        """A training job's output lines from byte ``offset`` (README: Training jobs)."""
        try:
            return await run_in_threadpool(training.read_log, ctx, project, job, offset, limit)
        except ApiError as error:
            return JSONResponse(error.body(), status_code=error.code)

    async def _predict_endpoint(scope: dict, receive) -> tuple[int, bytes]:
        """``POST ...:predict``, reached through ``PredictRoute`` (no FastAPI routing); small requests for a
        loaded model are answered on the event loop, the rest like any /v1 call in a worker thread."""
        path = scope["path"][len("/v1/"):]
        if (status := faults.take("POST", scope["path"])) is not None:
            error = ApiError(status, _STATUS_NAMES.get(status, "UNKNOWN"), f"Injected fault {status}.")
            return status, dumps(error.body())
        try:
            raw = await read_body(receive, PREDICT_LIMIT_BYTES)
        except ApiError as error:
            return error.code, dumps(error.body())
        if error := check_json_body("POST", header(scope, b"content-type"), raw):
            return error.code, dumps(error.body())
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)) \
            if scope["query_string"] else {}
        answer = None
        if len(raw) <= INLINE_PREDICT_BYTES and (match := PREDICT_PATH.match(path)):
            answer = _answer("POST", path, _predict_inline, ctx, Call(match.groupdict(), query, raw))
        if answer is None or answer[1] is None:
            answer = await run_in_threadpool(dispatch, ctx, "POST", path, query, raw)
        return answer[0], dumps(answer[1])

    # Each one added wraps the ones before: the request log runs first, then the caller check.
    app.add_middleware(PredictRoute, endpoint=_predict_endpoint)
    app.add_middleware(CallerCheck, guard=guard)
    app.add_middleware(RequestLog)

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PATCH", "DELETE", "PUT"])
    async def _v1(path: str, request: Request) -> Response:
        if (status := faults.take(request.method, request.url.path)) is not None:
            error = ApiError(status, _STATUS_NAMES.get(status, "UNKNOWN"), f"Injected fault {status}.")
            return JSONResponse(error.body(), status_code=status)
        limit = PREDICT_LIMIT_BYTES if path.endswith(":predict") else BODY_LIMIT_BYTES
        try:
            raw = await _read_body(request, limit)
        except ApiError as error:
            return _error_response(error)
        if error := check_json_body(request.method, request.headers.get("content-type"), raw):
            return _error_response(error)
        query = dict(request.query_params)
        status, body = await run_in_threadpool(dispatch, ctx, request.method, path, query, raw)
        return Response(dumps(body), status_code=status, media_type="application/json")

    @app.get("/", response_class=HTMLResponse)
    @app.get("/ui", response_class=HTMLResponse)
    def _index() -> str:
        return pages.index(ctx)

    @app.api_route("/ui/{path:path}", methods=["GET", "POST"], response_class=HTMLResponse)
    async def _page_route(path: str, request: Request) -> HTMLResponse:
        form = None
        if request.method == "POST":
            form = await request.form()
            if not guard.csrf_valid(request.url.path, form.get("csrf_token")):
                return HTMLResponse(pages.refusal("The form has expired or did not come from this page; "
                                                  "reload the page and try again."), status_code=403)
        csrf = guard.csrf_token(request.url.path)
        status, html = await run_in_threadpool(pages.render, ctx, path, form, csrf)
        return HTMLResponse(html, status_code=status)

    return app

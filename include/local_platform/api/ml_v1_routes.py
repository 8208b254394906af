"""The ml/v1 REST surface: one regex routing table from path to resource rule, as the discovery document lists it.

ml/v1 paths end in custom verbs (``...:predict``, ``...:setDefault``) that path
templates handle badly, so every ``/v1/...`` request is matched here against one
small table; ids in the path are checked like ids in bodies before any handler
runs. Methods the local service does not have answer 501, unknown paths 404.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from include.local_platform.api.calls import Call, answer, page
from include.local_platform.api.ml_v1_predict import predict
from include.local_platform.context import Context
from include.local_platform.errors import ApiError, invalid_argument, unimplemented
from include.local_platform.resources import jobs, models, operations, validation
from include.local_platform.resources.names import check_name

P, M, V, OP, J = (f"(?P<{n}>[A-Za-z0-9_.-]+)" for n in ("project", "model", "version", "operation", "job"))
Handler = Callable[[Context, Call], object]
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", f"projects/{P}/models", lambda c, r: models.create_model(c, r.params["project"], r.json())),
    ("GET", f"projects/{P}/models",
     lambda c, r: page(models.list_models(c, r.params["project"]), "models", r)),
    ("GET", f"projects/{P}/models/{M}", lambda c, r: models.get_model(c, r.params["project"], r.params["model"])),
    ("PATCH", f"projects/{P}/models/{M}", lambda c, r: models.patch_model(
        c, r.params["project"], r.params["model"], r.json(), r.query.get("updateMask"))),
    ("DELETE", f"projects/{P}/models/{M}",
     lambda c, r: models.delete_model(c, r.params["project"], r.params["model"])),
    ("POST", f"(?P<name>projects/{P}/models/{M}):predict", predict),
    ("POST", f"projects/{P}/models/{M}/versions",
     lambda c, r: models.create_version(c, r.params["project"], r.params["model"], r.json())),
    ("GET", f"projects/{P}/models/{M}/versions", lambda c, r: page(
        models.list_versions(c, r.params["project"], r.params["model"]), "versions", r)),
    ("GET", f"projects/{P}/models/{M}/versions/{V}", lambda c, r: models.with_default_flag(
        c, models.get_version(c, r.params["project"], r.params["model"], r.params["version"]))),
    ("PATCH", f"projects/{P}/models/{M}/versions/{V}", lambda c, r: models.patch_version(
        c, r.params["project"], r.params["model"], r.params["version"], r.json(), r.query.get("updateMask"))),
    ("DELETE", f"projects/{P}/models/{M}/versions/{V}", lambda c, r: models.delete_version(
        c, r.params["project"], r.params["model"], r.params["version"])),
    ("POST", f"projects/{P}/models/{M}/versions/{V}:setDefault", lambda c, r: models.set_default(
        c, r.params["project"], r.params["model"], r.params["version"])),
    ("POST", f"(?P<name>projects/{P}/models/{M}/versions/{V}):predict", predict),
    ("GET", f"projects/{P}/operations",
     lambda c, r: page(operations.list_for(c, r.params["project"]), "operations", r)),
    ("GET", f"(?P<name>projects/{P}/operations/{OP})", lambda c, r: operations.get(c, r.params["name"])),
    ("POST", f"(?P<name>projects/{P}/operations/{OP}):cancel", lambda c, r: operations.cancel(c, r.params["name"])),
    ("POST", f"projects/{P}/jobs", lambda c, r: jobs.create_job(c, r.params["project"], r.json())),
    ("GET", f"projects/{P}/jobs", lambda c, r: page(
        jobs.list_jobs(c, r.params["project"], r.query.get("filter")), "jobs", r)),
    ("GET", f"projects/{P}/jobs/{J}", lambda c, r: jobs.get_job(c, r.params["project"], r.params["job"])),
    ("POST", f"projects/{P}/jobs/{J}:cancel",
     lambda c, r: jobs.cancel_job(c, r.params["project"], r.params["job"])),
]
COMPILED = [(method, re.compile(pattern + r"$"), handler) for method, pattern, handler in ROUTES]
UNIMPLEMENTED = re.compile(r"projects/[^/]+(/.*)?(:explain|:getIamPolicy|:setIamPolicy|:testIamPermissions|"
                           r":getConfig|/locations.*|/studies.*)$|projects/[^/]+/jobs/[^/:]+$")
#: The two :predict paths, with the routing table's id rules (the fast path checks ids as every route does).
PREDICT_PATH = re.compile(f"(?P<name>projects/{P}/models/{M}(/versions/{V})?):predict$")

_PATH_IDS = {"model": ("Model", "model.name"), "version": ("Version", "version.name"), "job": ("Job", "job.job_id")}


def check_path_ids(params: dict[str, str]) -> None:
    """Ids in the URL follow the same rules as in bodies (no ``..``, no names the service never creates)."""
    validation.project(params["project"])
    for key, (kind, field) in _PATH_IDS.items():
        if params.get(key) is not None:  # the predict route's optional version is None
            check_name(kind, params[key], field)
    if ".." in params.get("operation", ""):
        raise invalid_argument("Invalid operation name.")


def _route(ctx: Context, method: str, path: str, query: dict[str, str], raw: bytes) -> object:
    for route_method, pattern, handler in COMPILED:
        if route_method == method and (match := pattern.match(path)):
            params = match.groupdict()
            check_path_ids(params)
            return handler(ctx, Call(params, query, raw))
    if UNIMPLEMENTED.match(path):
        raise unimplemented(f"{method} v1/{path}")
    raise ApiError(404, "NOT_FOUND", f"Method not found: {method} v1/{path}")


def dispatch(ctx: Context, method: str, path: str, query: dict[str, str], raw: bytes) -> tuple[int, object]:
    """Route one /v1 request (``path`` without ``/v1/``): (status, JSON-ready body)."""
    return answer(method, path, _route, ctx, method, path, query, raw)

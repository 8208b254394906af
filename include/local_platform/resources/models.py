"""projects.models and projects.models.versions: the resource rules of ml/v1.

A new version is stored CREATING and handed to the deployment worker
(``workers.deployment``), which makes it READY (or FAILED) and ends its operation.
"""

from __future__ import annotations

import logging
import os

from include.local_platform.context import Context
from include.local_platform.errors import (
    ApiError,
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
)
from include.local_platform.resources import artifacts, operations
from include.local_platform.resources.names import check_name, model_name, version_name
from include.local_platform.resources.proto_json import camel, camel_case
from include.local_platform.resources.validation import (
    allowed_bucket,
    boolean,
    description,
    gcs_uri,
    labels,
    short_text,
)
from include.local_platform.state.clock import new_etag, now_rfc3339
from include.local_platform.state.store import public

log = logging.getLogger(__name__)

BUSY_STATES = ("CREATING", "DELETING", "UPDATING")
#: Versions one model may hold: each keeps a copy of its artifacts on the service's disk. Google documented
#: no per-model limit for ml/v1; this bound is the local service's (docs/local-service.md).
MAX_VERSIONS_PER_MODEL = int(os.environ.get("ML_ENGINE_MAX_VERSIONS_PER_MODEL", "200"))
SUPPORTED_FRAMEWORKS = ("TENSORFLOW", "FRAMEWORK_UNSPECIFIED")


def _body(body: object, where: str) -> dict:
    """The request's message with lowerCamelCase field names (both proto3 JSON spellings are accepted)."""
    if not isinstance(body, dict):
        raise invalid_argument("The request body must be a JSON object.")
    return camel_case(body, where)


def _mask(update_mask: str | None, allowed: tuple[str, ...]) -> list[str]:
    """Parse updateMask (each path in camelCase or snake_case) into lowerCamelCase field paths."""
    if not update_mask:
        raise invalid_argument("Field: update_mask Error: updateMask is required.", "update_mask")
    fields = []
    for path in update_mask.split(","):
        canonical = ".".join(camel(part) for part in path.strip().split("."))
        if canonical not in allowed:
            raise invalid_argument(f"Field: update_mask Error: '{path}' cannot be updated; "
                                   f"supported: {sorted(allowed)}.", "update_mask")
        fields.append(canonical)
    return fields


#: Optional fields copied into stored resources, each with its check.
_OPTIONAL_FIELDS = {
    "description": description,
    "labels": labels,
    "onlinePredictionLogging": boolean,
    "onlinePredictionConsoleLogging": boolean,
}
_FIELD_NAMES = {"description": "description", "labels": "labels",
                "onlinePredictionLogging": "online_prediction_logging",
                "onlinePredictionConsoleLogging": "online_prediction_console_logging"}


def _checked(kind: str, key: str, value: object):
    return _OPTIONAL_FIELDS[key](value, f"{kind}.{_FIELD_NAMES[key]}")


def _apply_patch(ctx: Context, name: str, changes: dict) -> dict | None:
    """Store patched fields with a new etag; a field the mask names but the body omits is cleared."""
    def change(doc: dict) -> None:
        for key, value in changes.items():
            if value is None:
                doc.pop(key, None)
            else:
                doc[key] = value
        doc["etag"] = new_etag()

    return ctx.store.update(name, change)


# --- models ----------------------------------------------------------------


def get_model(ctx: Context, project: str, model: str) -> dict:
    found = ctx.store.get(model_name(project, model))
    if found is None:
        raise not_found(f"Model {model_name(project, model)}")
    return found


def create_model(ctx: Context, project: str, body: object) -> dict:
    body = _body(body, "model")
    name = check_name("Model", body.get("name"), "model.name")
    regions = body.get("regions") or []
    if not isinstance(regions, list) or len(regions) > 1:
        raise invalid_argument("Field: model.regions Error: A model may be deployed to at most one region.",
                               "model.regions")
    regions = [short_text(region, "model.regions", limit=64) for region in regions]
    model = {
        "name": model_name(project, name),
        "regions": regions or ["us-central1"],
        "etag": new_etag(),
    }
    for optional in _OPTIONAL_FIELDS:
        if body.get(optional) is not None:
            model[optional] = _checked("model", optional, body[optional])
    with ctx.store.transaction():
        if ctx.store.get(model["name"]) is not None:
            raise already_exists("model.name")
        ctx.store.insert(model["name"], "model", f"projects/{project}", model)
    log.info("created model %s", model["name"])
    return model


def patch_model(ctx: Context, project: str, model: str, body: object, update_mask: str | None) -> dict:
    body = _body(body, "model")
    fields = _mask(update_mask, ("description", "labels", "defaultVersion.name"))
    current = get_model(ctx, project, model)
    changes: dict = {}
    for path in fields:
        if path == "defaultVersion.name":
            version = get_version(ctx, project, model, _default_version_id(body, project, model))
            _require_ready(version, "become the default")
            changes["defaultVersion"] = {"name": version["name"]}
        else:
            changes[path] = None if body.get(path) is None else _checked("model", path, body[path])
    updated = _apply_patch(ctx, current["name"], changes)
    return operations.finished(ctx, project=project, kind="update", model=model, operation_type="UPDATE_MODEL",
                               response=updated, response_type=operations.MODEL_TYPE)


def _default_version_id(body: dict, project: str, model: str) -> str:
    """The version id in a patch's ``defaultVersion.name``: a version id or that version's full name."""
    field = "model.default_version.name"
    target = body.get("defaultVersion")
    name = target.get("name") if isinstance(target, dict) else None
    if not isinstance(name, str) or not name:
        raise invalid_argument(f"Field: {field} Error: defaultVersion.name must name a version of {model}.", field)
    prefix = f"{model_name(project, model)}/versions/"
    short = name[len(prefix):] if name.startswith(prefix) else name
    return check_name("Version", short, field)


def delete_model(ctx: Context, project: str, model: str) -> dict:
    with ctx.store.transaction():
        current = get_model(ctx, project, model)
        if ctx.store.list("version", current["name"]):
            raise failed_precondition(f"Model {current['name']} still has versions; delete them first.")
        ctx.store.delete(current["name"])
    log.info("deleted model %s", current["name"])
    return operations.finished(ctx, project=project, kind="delete", model=model, operation_type="DELETE_MODEL")


def list_models(ctx: Context, project: str) -> list[dict]:
    return ctx.store.list("model", f"projects/{project}")


# --- versions --------------------------------------------------------------


def with_default_flag(ctx: Context, version: dict) -> dict:
    """The version as the API shows it: public fields plus isDefault from its model."""
    model = ctx.store.get(version["name"].rsplit("/versions/", 1)[0]) or {}
    shown = public(version)
    shown["isDefault"] = (model.get("defaultVersion") or {}).get("name") == version["name"]
    if not shown["isDefault"]:
        shown.pop("isDefault")
    return shown


def get_version(ctx: Context, project: str, model: str, version: str) -> dict:
    found = ctx.store.get(version_name(project, model, version))
    if found is None:
        get_model(ctx, project, model)
        raise not_found(f"Version {version_name(project, model, version)}")
    return found


def _require_ready(version: dict, action: str) -> None:
    if version["state"] != "READY":
        raise failed_precondition(f"Version {version['name']} is {version['state']} and cannot {action}; "
                                  "it must be READY.")


def _require_not_busy(version: dict) -> None:
    if version["state"] in BUSY_STATES:
        raise failed_precondition(f"Version {version['name']} is {version['state']}; "
                                  "wait for the running operation to finish.")


def create_version(ctx: Context, project: str, model: str, body: object) -> dict:
    body = _body(body, "version")
    parent = get_model(ctx, project, model)
    short = check_name("Version", body.get("name"), "version.name")
    uri = gcs_uri(body.get("deploymentUri"), "version.deployment_uri", "deploymentUri (a SavedModel directory)")
    allowed_bucket(uri, "version.deployment_uri")
    framework = body.get("framework", "TENSORFLOW")
    if framework not in SUPPORTED_FRAMEWORKS:
        raise invalid_argument(f"Field: version.framework Error: framework {framework} is not supported by "
                               "the local service (TENSORFLOW only).", "version.framework")
    version = {
        "name": version_name(project, model, short),
        "deploymentUri": uri,
        "createTime": now_rfc3339(),
        "runtimeVersion": short_text(body.get("runtimeVersion", "2.11"), "version.runtime_version", limit=32),
        "framework": "TENSORFLOW",
        "pythonVersion": short_text(body.get("pythonVersion", "3.7"), "version.python_version", limit=32),
        "machineType": short_text(body.get("machineType", "mls1-c1-m2"), "version.machine_type", limit=64),
        "state": "CREATING",
        "etag": new_etag(),
    }
    for optional in ("description", "labels"):
        if body.get(optional) is not None:
            version[optional] = _checked("version", optional, body[optional])
    with ctx.store.transaction():
        if ctx.store.get(parent["name"]) is None:
            raise not_found(f"Model {parent['name']}")
        if ctx.store.get(version["name"]) is not None:
            raise already_exists("version.name")
        if len(ctx.store.list("version", parent["name"])) >= MAX_VERSIONS_PER_MODEL:
            raise ApiError(429, "RESOURCE_EXHAUSTED", f"Model {parent['name']} has {MAX_VERSIONS_PER_MODEL} "
                           "versions, the most this service keeps per model (ML_ENGINE_MAX_VERSIONS_PER_MODEL); "
                           "delete older versions first.")
        operation = operations.start(ctx, project=project, kind="create", model=model, version=version,
                                     operation_type="CREATE_VERSION")
        version["_operation"] = operation["name"]
        ctx.store.insert(version["name"], "version", parent["name"], version)
    log.info("creating version %s from %s (operation %s)", version["name"], uri, operation["name"])
    ctx.work.submit("deployment", version["name"], lease=deployment_lease(version))
    return operation


def deployment_lease(version: dict) -> str:
    """The name a version's deployment is claimed under: its operation's, not the version's own, since a
    version may be deleted and created again at once while the old deployment's lease is still held."""
    return version.get("_operation") or version["name"]


def patch_version(ctx: Context, project: str, model: str, version: str, body: object,
                  update_mask: str | None) -> dict:
    body = _body(body, "version")
    fields = _mask(update_mask, ("description", "labels"))
    current = get_version(ctx, project, model, version)
    _require_not_busy(current)
    changes = {path: None if body.get(path) is None else _checked("version", path, body[path]) for path in fields}
    updated = _apply_patch(ctx, current["name"], changes)
    return operations.finished(ctx, project=project, kind="update", model=model, version=updated,
                               operation_type="UPDATE_VERSION", response=updated,
                               response_type=operations.VERSION_TYPE)


def delete_version(ctx: Context, project: str, model: str, version: str) -> dict:
    with ctx.store.transaction():
        current = get_version(ctx, project, model, version)
        parent = get_model(ctx, project, model)
        _require_not_busy(current)
        siblings = ctx.store.list("version", parent["name"])
        is_default = (parent.get("defaultVersion") or {}).get("name") == current["name"]
        if is_default and len(siblings) > 1:
            raise failed_precondition(f"Version {current['name']} is the default version of its model and "
                                      "cannot be deleted while other versions exist; set another default first.")
        ctx.store.delete(current["name"])
        if is_default:
            ctx.store.update(parent["name"], lambda doc: doc.pop("defaultVersion", None))
    ctx.models.evict(current["name"])
    artifacts.forget(ctx, current)
    log.info("deleted version %s", current["name"])
    return operations.finished(ctx, project=project, kind="delete", model=model, version=current,
                               operation_type="DELETE_VERSION")


def list_versions(ctx: Context, project: str, model: str) -> list[dict]:
    get_model(ctx, project, model)
    return [with_default_flag(ctx, v) for v in ctx.store.list("version", model_name(project, model))]


def set_default(ctx: Context, project: str, model: str, version: str) -> dict:
    with ctx.store.transaction():  # check and switch atomically (a concurrent delete cannot slip between)
        current = get_version(ctx, project, model, version)
        _require_ready(current, "become the default")
        ctx.store.revise(model_name(project, model), defaultVersion={"name": current["name"]})
    log.info("default version of %s is now %s", model_name(project, model), current["name"])
    return with_default_flag(ctx, current)


def resolve_for_prediction(ctx: Context, name: str) -> dict:
    """A READY version from ``projects/P/models/M`` (its default) or ``.../versions/V``.

    Remembered until the store's next write (setDefault, a version created, deleted or
    changed...), so a stream of online predictions reads no SQLite.
    """
    return ctx.store.memo(("prediction version", name), lambda: _resolve_for_prediction(ctx, name))


def _resolve_for_prediction(ctx: Context, name: str) -> dict:
    parts = name.split("/")
    if len(parts) == 4:
        model = get_model(ctx, parts[1], parts[3])
        default = (model.get("defaultVersion") or {}).get("name")
        if not default:
            raise failed_precondition(f"Model {model['name']} has no default version; create a version first.")
        version = ctx.store.get(default)
        if version is None:
            raise ApiError(404, "NOT_FOUND", f"Default version {default} not found.")
    else:
        version = get_version(ctx, parts[1], parts[3], parts[5])
    _require_ready(version, "serve predictions")
    return version

"""Vertex AI models and their versions: upload, get (by version or alias), list, aliases, update, delete.

Semantics from the API's proto documentation: a model holds versions whose ids count up from 1
and are never reused; an alias names one version at a time (assigning it moves it); ``default``
is on exactly one version (the first upload gets it) and the version holding it cannot be
deleted; a model or version deployed to an endpoint cannot be deleted. Each version is stored
as the Model message Vertex AI answers for it (``name`` without ``@``, ``versionId``,
``versionAliases``...); the model's own document keeps the next version id.
"""

from __future__ import annotations

import logging

from include.local_platform.context import Context
from include.local_platform.errors import ApiError, failed_precondition, invalid_argument, not_found
from include.local_platform.resources import artifacts, validation, vertex_names, vertex_operations
from include.local_platform.state.clock import new_etag, now_rfc3339

log = logging.getLogger(__name__)
MODEL, VERSION = "vertex_model", "vertex_model_version"
DEFAULT = "default"
INPUT_FORMATS = ["jsonl", "tf-record", "tf-record-gzip"]


def _version_key(model_name: str, version_id: str) -> str:
    return f"{model_name}@{version_id}"


def versions(ctx: Context, model_name: str) -> list[dict]:
    """A model's versions, oldest first."""
    return sorted(ctx.store.list(VERSION, model_name), key=lambda v: int(v["versionId"]))


def _model(ctx: Context, model_name: str) -> dict:
    found = ctx.store.get(model_name)
    if found is None:
        raise not_found(f'Model does not exist: "{model_name}"')
    return found


def get(ctx: Context, name: str) -> dict:
    """``.../models/M`` (its default version), ``M@<version id>`` or ``M@<alias>``."""
    parent, model_id, wanted = vertex_names.split(name, "models")
    model_name = vertex_names.resource(parent, "models", model_id)
    _model(ctx, model_name)
    wanted = wanted or DEFAULT
    if wanted.isdigit() and (found := ctx.store.get(_version_key(model_name, wanted))) is not None:
        return found
    for version in versions(ctx, model_name):
        if wanted in version.get("versionAliases", []):
            return version
    raise not_found(f'Model version does not exist: "{name}"')


def upload(ctx: Context, parent: str, body: dict) -> dict:
    """A new model (its version 1, the default), or a new version of ``parentModel``; the done operation."""
    parent = vertex_names.parent(parent)
    spec = body.get("model") or {}
    base = _checked_model(spec)
    parent_model = body.get("parentModel")
    with ctx.store.transaction():
        if parent_model:
            owner, model_id, _ = vertex_names.split(parent_model, "models")  # an @version suffix is allowed
            if owner != parent:
                raise invalid_argument(f"Parent model {parent_model} is not in {parent}.")
            model = _model(ctx, vertex_names.resource(parent, "models", model_id))
        else:
            model_id = vertex_names.check_id(body.get("modelId") or vertex_names.new_id(), "model id")
            model_name = vertex_names.resource(parent, "models", model_id)
            if ctx.store.get(model_name) is not None:
                raise ApiError(409, "ALREADY_EXISTS", f'Model already exists: "{model_name}"')
            model = ctx.store.insert(model_name, MODEL, parent, {"name": model_name, "_nextVersion": 1})
        version = _new_version(ctx, model, base, spec.get("versionAliases") or [])
    log.info("uploaded model %s version %s (aliases %s) from %s", model["name"], version["versionId"],
             version["versionAliases"], version.get("artifactUri"))
    return vertex_operations.finished(
        ctx, model["name"], "UploadModelOperationMetadata", "UploadModelResponse",
        {"model": model["name"], "modelVersionId": version["versionId"]})


def _checked_model(spec: dict) -> dict:
    """The Model fields an upload may set, checked (anything else in ``spec`` is output-only or unsupported)."""
    if not isinstance(spec.get("displayName"), str) or not spec["displayName"].strip():
        raise invalid_argument("Model display name must be set.", "model.display_name")
    checked = {"displayName": validation.short_text(spec["displayName"], "model.display_name", limit=128)}
    if spec.get("artifactUri"):
        uri = validation.gcs_uri(spec["artifactUri"], "model.artifact_uri", "artifactUri (a SavedModel directory)")
        validation.allowed_bucket(uri, "model.artifact_uri")
        checked["artifactUri"] = uri
    image = (spec.get("containerSpec") or {}).get("imageUri")
    if not isinstance(image, str) or not image:
        raise invalid_argument("Model container_spec.image_uri must be set.", "model.container_spec.image_uri")
    checked["containerSpec"] = {"imageUri": validation.short_text(image, "model.container_spec.image_uri",
                                                                  limit=1024)}
    for field, check in (("description", validation.description), ("versionDescription", validation.description),
                         ("labels", validation.labels)):
        if spec.get(field) is not None:
            checked[field] = check(spec[field], f"model.{field}")
    return checked


def _aliases(values: list) -> list[str]:
    for alias in values:
        if not isinstance(alias, str) or not vertex_names.ALIAS_RULE.match(alias) or alias.isdigit():
            raise invalid_argument(f"Invalid version alias '{str(alias)[:80]}': the format is "
                                   "[a-z][a-zA-Z0-9-]{0,126}[a-z0-9].")
    return list(dict.fromkeys(values))


def _new_version(ctx: Context, model: dict, base: dict, aliases: list) -> dict:
    version_id = str(model["_nextVersion"])
    ctx.store.update(model["name"], lambda doc: doc.update(_nextVersion=int(doc["_nextVersion"]) + 1))
    existing = versions(ctx, model["name"])
    wanted = _aliases(aliases)
    if not any(DEFAULT in v.get("versionAliases", []) for v in existing) and DEFAULT not in wanted:
        wanted.insert(0, DEFAULT)  # the first version of a model (or the only one left) is the default
    now = now_rfc3339()
    version = {**base, "name": model["name"], "versionId": version_id, "versionAliases": wanted,
               "versionCreateTime": now, "versionUpdateTime": now, "createTime": now, "updateTime": now,
               "etag": new_etag(), "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"],
               "supportedInputStorageFormats": INPUT_FORMATS, "supportedOutputStorageFormats": ["jsonl"]}
    _take_aliases(ctx, existing, wanted)
    return ctx.store.insert(_version_key(model["name"], version_id), VERSION, model["name"], version)


def _take_aliases(ctx: Context, others: list[dict], aliases: list[str]) -> None:
    """An alias names one version at a time: remove ``aliases`` from ``others``."""
    for other in others:
        kept = [alias for alias in other.get("versionAliases", []) if alias not in aliases]
        if kept != other.get("versionAliases", []):
            ctx.store.revise(_version_key(other["name"], other["versionId"]), versionAliases=kept,
                             versionUpdateTime=now_rfc3339())


def merge_aliases(ctx: Context, name: str, changes: list) -> dict:
    """Add (``alias``) and remove (``-alias``) aliases of the version ``name`` names; the version after."""
    if not isinstance(changes, list) or not changes:
        raise invalid_argument("version_aliases must list at least one alias.", "version_aliases")
    removed = _aliases([c[1:] for c in changes if isinstance(c, str) and c.startswith("-")])
    added = _aliases([c for c in changes if not (isinstance(c, str) and c.startswith("-"))])
    if DEFAULT in removed:
        raise invalid_argument("The default alias cannot be removed; set another version as the default.",
                               "version_aliases")
    if set(removed) & set(added):
        raise invalid_argument(f"Aliases {sorted(set(removed) & set(added))} are both added and removed.",
                               "version_aliases")
    with ctx.store.transaction():
        version = get(ctx, name)
        others = [v for v in versions(ctx, version["name"]) if v["versionId"] != version["versionId"]]
        _take_aliases(ctx, others, added)
        aliases = [a for a in version.get("versionAliases", []) if a not in removed] + [
            a for a in added if a not in version.get("versionAliases", [])]
        updated = ctx.store.revise(_version_key(version["name"], version["versionId"]), versionAliases=aliases,
                                   versionUpdateTime=now_rfc3339())
    log.info("model %s version %s aliases: %s", version["name"], version["versionId"], aliases)
    return updated


#: What UpdateModel may change on a version (the update_mask's paths, lowerCamelCase).
UPDATABLE = {"labels": validation.labels, "description": validation.description,
             "versionDescription": validation.description}


def update(ctx: Context, spec: dict, mask: list[str]) -> dict:
    """UpdateModel: the fields ``mask`` names on the version ``spec["name"]`` names (default: the default version)."""
    unknown = [path for path in mask if path not in UPDATABLE]
    if not mask or unknown:
        raise invalid_argument(f"update_mask must name some of {list(UPDATABLE)}; got {mask}.", "update_mask")
    with ctx.store.transaction():
        version = get(ctx, spec.get("name") or "")
        # a field the mask names but the request leaves out is cleared (proto3: it is its default)
        changes = {path: UPDATABLE[path](spec[path], f"model.{path}") if spec.get(path) is not None
                   else ({} if path == "labels" else "") for path in mask}
        updated = ctx.store.revise(version_key(version), **changes, versionUpdateTime=now_rfc3339(),
                                   updateTime=now_rfc3339())
    log.info("updated model %s version %s: %s", version["name"], version["versionId"], changes)
    return updated


def _deployed_refs(version: dict) -> list[dict]:
    return version.get("deployedModels") or []


def delete_version(ctx: Context, name: str) -> dict:
    """Delete one version: never the default, never one deployed to an endpoint; the done operation."""
    _, _, wanted = vertex_names.split(name, "models")
    if not wanted:
        raise invalid_argument("DeleteModelVersion needs a version: .../models/{model}@{version}.")
    with ctx.store.transaction():
        version = get(ctx, name)
        key = _version_key(version["name"], version["versionId"])
        if DEFAULT in version.get("versionAliases", []):
            raise failed_precondition(f"Model version {key} is the default version and cannot be deleted; "
                                      "set another version as the default first.")
        if _deployed_refs(version):
            raise failed_precondition(f"Model version {key} is deployed to "
                                      f"{[ref.get('endpoint') for ref in _deployed_refs(version)]}; undeploy it first.")
        ctx.store.delete(key)
    ctx.models.evict(key)
    artifacts.forget(ctx, version)
    log.info("deleted model version %s", key)
    return vertex_operations.finished(ctx, key, "DeleteOperationMetadata")


def delete_model(ctx: Context, name: str) -> dict:
    """Delete a model and all its versions, none of them deployed; the done operation."""
    parent, model_id, _ = vertex_names.split(name, "models")
    model_name = vertex_names.resource(parent, "models", model_id)
    with ctx.store.transaction():
        _model(ctx, model_name)
        all_versions = versions(ctx, model_name)
        deployed = [ref.get("endpoint") for v in all_versions for ref in _deployed_refs(v)]
        if deployed:
            raise failed_precondition(f"Model {model_name} is deployed to {sorted(set(deployed))}; undeploy it "
                                      "from every endpoint first.")
        for version in all_versions:
            ctx.store.delete(_version_key(model_name, version["versionId"]))
        ctx.store.delete(model_name)
    for version in all_versions:
        ctx.models.evict(_version_key(model_name, version["versionId"]))
        artifacts.forget(ctx, version)
    log.info("deleted model %s (%d versions)", model_name, len(all_versions))
    return vertex_operations.finished(ctx, model_name, "DeleteOperationMetadata")


def list_models(ctx: Context, parent: str, filter_text: str | None) -> list[dict]:
    """Each model's default version, oldest model first; filters ``display_name="x"`` and ``labels.k="v"``
    joined with AND."""
    parent = vertex_names.parent(parent)
    test = vertex_names.matcher(filter_text)
    found = []
    for model in ctx.store.list(MODEL, parent):
        default = next((v for v in versions(ctx, model["name"]) if DEFAULT in v.get("versionAliases", [])), None)
        if default is not None and test(default):
            found.append(default)
    return found


def list_versions(ctx: Context, name: str) -> list[dict]:
    parent, model_id, _ = vertex_names.split(name, "models")
    model_name = vertex_names.resource(parent, "models", model_id)
    _model(ctx, model_name)
    return versions(ctx, model_name)


def record_deployment(ctx: Context, version: dict, endpoint: str, deployed_id: str, *, deployed: bool) -> None:
    """Note on the version that it is (no longer) deployed as ``deployed_id`` on ``endpoint``."""
    key = _version_key(version["name"], version["versionId"])

    def change(doc: dict) -> None:
        refs = [ref for ref in doc.get("deployedModels", []) if ref.get("deployedModelId") != deployed_id]
        if deployed:
            refs.append({"endpoint": endpoint, "deployedModelId": deployed_id})
        if refs:
            doc["deployedModels"] = refs
        else:
            doc.pop("deployedModels", None)

    ctx.store.update(key, change)


def version_key(version: dict) -> str:
    """The store key (and model-cache key) of a version: ``.../models/M@V``."""
    return _version_key(version["name"], version["versionId"])

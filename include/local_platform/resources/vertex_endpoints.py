"""Vertex AI endpoints: create, get, list, update (traffic), delete; deploy and undeploy model versions.

What ml/v1 did not have: an endpoint serves several deployed model versions and splits
online traffic between them by percentages (``trafficSplit``: deployed model id -> percent,
summing to 100). In a DeployModel request the key ``"0"`` means the model being deployed.
A deployed model with traffic cannot be undeployed unless the request moves its traffic
elsewhere (or it is the last one); an endpoint with deployed models cannot be deleted.
Deploying copies and loads the model in the background (``workers.vertex_deployment``).
"""

from __future__ import annotations

import logging
import random
import re

from include.local_platform.context import Context
from include.local_platform.errors import ApiError, failed_precondition, invalid_argument, not_found
from include.local_platform.resources import validation, vertex_models, vertex_names, vertex_operations
from include.local_platform.state.clock import new_etag, now_rfc3339

log = logging.getLogger(__name__)
KIND = "vertex_endpoint"
UPDATABLE = ("displayName", "description", "labels", "trafficSplit")
_FILTER = re.compile(r'^\s*(display_name|displayName)\s*=\s*"?([^"]*)"?\s*$')


def get(ctx: Context, name: str) -> dict:
    vertex_names.split(name, "endpoints")
    found = ctx.store.get(name)
    if found is None:
        raise not_found(f'Endpoint does not exist: "{name}"')
    return found


def create(ctx: Context, parent: str, body: dict) -> dict:
    """A new endpoint with no deployed model; the done operation."""
    parent = vertex_names.parent(parent)
    spec = body.get("endpoint") or {}
    if not isinstance(spec.get("displayName"), str) or not spec["displayName"].strip():
        raise invalid_argument("Endpoint display name must be set.", "endpoint.display_name")
    endpoint_id = vertex_names.check_id(body.get("endpointId") or vertex_names.new_id(), "endpoint id")
    name = vertex_names.resource(parent, "endpoints", endpoint_id)
    now = now_rfc3339()
    endpoint = {"name": name, "displayName": validation.short_text(spec["displayName"], "endpoint.display_name",
                                                                    limit=128),
                "etag": new_etag(), "createTime": now, "updateTime": now}
    for field, check in (("description", validation.description), ("labels", validation.labels)):
        if spec.get(field) is not None:
            endpoint[field] = check(spec[field], f"endpoint.{field}")
    with ctx.store.transaction():
        if ctx.store.get(name) is not None:
            raise ApiError(409, "ALREADY_EXISTS", f'Endpoint already exists: "{name}"')
        ctx.store.insert(name, KIND, parent, endpoint)
    log.info("created endpoint %s (%s)", name, endpoint["displayName"])
    return vertex_operations.finished(ctx, name, "CreateEndpointOperationMetadata", "Endpoint", endpoint)


def list_endpoints(ctx: Context, parent: str, filter_text: str | None) -> list[dict]:
    parent = vertex_names.parent(parent)
    wanted = None
    if filter_text:
        match = _FILTER.match(filter_text)
        if not match:
            raise invalid_argument(f'Unsupported filter "{filter_text[:200]}": use display_name="...".', "filter")
        wanted = match[2]
    return [e for e in ctx.store.list(KIND, parent) if wanted is None or e.get("displayName") == wanted]


def delete(ctx: Context, name: str) -> dict:
    with ctx.store.transaction():
        endpoint = get(ctx, name)
        if endpoint.get("deployedModels"):
            raise failed_precondition(f"Endpoint {name} still has deployed models "
                                      f"{[m['id'] for m in endpoint['deployedModels']]}; undeploy them first.")
        ctx.store.delete(name)
    log.info("deleted endpoint %s", name)
    return vertex_operations.finished(ctx, name, "DeleteOperationMetadata")


def _split(given: object, ids: set[str], field: str) -> dict[str, int]:
    """A checked traffic split: deployed model ids of this endpoint -> percent, summing to 100 (or empty)."""
    if not isinstance(given, dict):
        raise invalid_argument("traffic_split must map deployed model ids to percentages.", field)
    split = {}
    for key, value in given.items():
        if key not in ids:
            raise invalid_argument(f"traffic_split names {key!r}, which is not a model deployed on this endpoint.",
                                   field)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise invalid_argument(f"traffic_split[{key!r}] must be a percentage from 0 to 100.", field)
        if value:
            split[key] = value
    if ids and sum(split.values()) != 100:
        raise invalid_argument(f"The traffic split must add up to 100, got {sum(split.values())}.", field)
    return split


def update(ctx: Context, endpoint_spec: dict, mask: list[str]) -> dict:
    """UpdateEndpoint: the fields ``mask`` names (trafficSplit among them)."""
    unknown = [path for path in mask if path not in UPDATABLE]
    if not mask or unknown:
        raise invalid_argument(f"update_mask must name some of {list(UPDATABLE)}; got {mask}.", "update_mask")
    with ctx.store.transaction():
        endpoint = get(ctx, endpoint_spec.get("name", ""))
        changes: dict = {"updateTime": now_rfc3339()}
        for path in mask:
            value = endpoint_spec.get(path)
            if path == "trafficSplit":
                value = _split(value or {}, {m["id"] for m in endpoint.get("deployedModels", [])},
                               "endpoint.traffic_split")
            elif path == "labels" and value is not None:
                value = validation.labels(value, "endpoint.labels")
            elif value is not None:
                value = validation.short_text(value, f"endpoint.{path}", limit=2048)
            changes[path] = value
        updated = ctx.store.revise(endpoint["name"], **changes)
    log.info("updated endpoint %s: %s", endpoint["name"], {k: v for k, v in changes.items() if k in mask})
    return updated


def deploy(ctx: Context, endpoint_name: str, deployed_spec: dict, traffic: dict | None) -> dict:
    """Record a deployment and hand it to the deployment worker; the operation (done when the model serves)."""
    model_name = deployed_spec.get("model")
    if not isinstance(model_name, str) or not model_name:
        raise invalid_argument("deployed_model.model must name a model.", "deployed_model.model")
    with ctx.store.transaction():
        endpoint = get(ctx, endpoint_name)
        version = vertex_models.get(ctx, model_name)
        if not version.get("artifactUri"):
            raise failed_precondition(f"Model {model_name} has no artifact_uri: there is nothing to serve.")
        deployed_id = vertex_names.new_id()
        ids = {m["id"] for m in endpoint.get("deployedModels", [])} | {deployed_id}
        given = {deployed_id if key == "0" else key: value for key, value in (traffic or {}).items()}
        split = _split(given, ids, "traffic_split") if given else (
            endpoint.get("trafficSplit") or {} if endpoint.get("deployedModels") else {deployed_id: 100})
        deployed = {"id": deployed_id, "model": version["name"], "modelVersionId": version["versionId"],
                    "displayName": deployed_spec.get("displayName") or version.get("displayName", ""),
                    **({"dedicatedResources": deployed_spec["dedicatedResources"]}
                       if isinstance(deployed_spec.get("dedicatedResources"), dict) else {})}
        operation = vertex_operations.start(ctx, endpoint_name, "DeployModelOperationMetadata")
        ctx.store.update(operation["name"], lambda op: op.update(
            _deployment={"endpoint": endpoint_name, "deployed": deployed, "trafficSplit": split,
                         "version": vertex_models.version_key(version)}))
    log.info("deploying %s@%s to %s as %s (traffic %s)", version["name"], version["versionId"], endpoint_name,
             deployed_id, split)
    ctx.work.submit("vertex_deployment", operation["name"])
    return operation


def add_deployed(ctx: Context, endpoint_name: str, deployed: dict, split: dict[str, int]) -> dict | None:
    """Put a deployed model that now serves on its endpoint, with its traffic split; None if the endpoint is gone."""
    deployed = {**deployed, "createTime": now_rfc3339()}

    def change(doc: dict) -> None:
        doc["deployedModels"] = [*doc.get("deployedModels", []), deployed]
        doc["trafficSplit"] = split
        doc.update(updateTime=now_rfc3339(), etag=new_etag())

    return ctx.store.update(endpoint_name, change)


def undeploy(ctx: Context, endpoint_name: str, deployed_id: str, traffic: dict | None) -> dict:
    """Take a deployed model off its endpoint (its traffic must be moved, unless it is the last); done at once."""
    with ctx.store.transaction():
        endpoint = get(ctx, endpoint_name)
        deployed = next((m for m in endpoint.get("deployedModels", []) if m["id"] == deployed_id), None)
        if deployed is None:
            raise not_found(f'Deployed model "{deployed_id}" does not exist on endpoint "{endpoint_name}".')
        remaining = [m for m in endpoint["deployedModels"] if m["id"] != deployed_id]
        split = {k: v for k, v in (endpoint.get("trafficSplit") or {}).items() if k != deployed_id}
        if traffic:
            split = _split(traffic, {m["id"] for m in remaining}, "traffic_split")
        elif remaining and (endpoint.get("trafficSplit") or {}).get(deployed_id):
            raise failed_precondition(f"Deployed model {deployed_id} has {endpoint['trafficSplit'][deployed_id]}% "
                                      "of the endpoint's traffic; give a traffic_split that moves it elsewhere.")
        ctx.store.revise(endpoint_name, deployedModels=remaining, trafficSplit=split if remaining else {},
                         updateTime=now_rfc3339())
        version = vertex_models.get(ctx, f"{deployed['model']}@{deployed['modelVersionId']}")
        vertex_models.record_deployment(ctx, version, endpoint_name, deployed_id, deployed=False)
    log.info("undeployed %s from %s", deployed_id, endpoint_name)
    return vertex_operations.finished(ctx, endpoint_name, "UndeployModelOperationMetadata", "UndeployModelResponse")


def choose(endpoint: dict) -> dict:
    """The deployed model one online request goes to, drawn by the traffic split."""
    deployed = {m["id"]: m for m in endpoint.get("deployedModels", [])}
    split = [(key, pct) for key, pct in (endpoint.get("trafficSplit") or {}).items() if key in deployed and pct > 0]
    if not split:
        raise failed_precondition(f"Endpoint {endpoint['name']} has no deployed model with traffic.")
    pick = random.uniform(0, sum(pct for _, pct in split))
    for key, pct in split:
        pick -= pct
        if pick <= 0:
            return deployed[key]
    return deployed[split[-1][0]]

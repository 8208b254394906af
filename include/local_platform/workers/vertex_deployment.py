"""Deploying a Vertex AI model version to an endpoint: copy its artifacts, load it, then let it take traffic.

The DeployModel operation stays not done while this runs; a version already copied for
another endpoint is not copied again. The deployed model joins its endpoint, with the
request's traffic split, in the same transaction that ends the operation, so a crash
leaves either nothing or all of it; every start is counted and a deployment interrupted
MAX_ATTEMPTS times ends with an error instead of crash-looping the service.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from include.local_platform import gcs
from include.local_platform.context import Context
from include.local_platform.resources import artifacts, vertex_endpoints, vertex_models, vertex_operations
from include.local_platform.serving.saved_model import BadModel
from include.local_platform.state.clock import new_etag
from include.local_platform.workers.deployment import MAX_FILES, max_artifact_bytes
from include.local_platform.workers.recovery import MAX_ATTEMPTS

log = logging.getLogger(__name__)
ARTIFACTS = "vertex_artifacts"


def submit(ctx: Context, operation_name: str) -> None:
    ctx.deployments.submit(_run_logged, ctx, operation_name)


def _run_logged(ctx: Context, operation_name: str) -> None:
    try:
        deploy(ctx, operation_name)
    except Exception as error:
        log.exception("deployment %s failed unexpectedly", operation_name)
        vertex_operations.finish(ctx, operation_name, error=(vertex_operations.INTERNAL, f"Internal error: {error}"))


def _start_attempt(ctx: Context, operation_name: str) -> tuple[dict, int] | None:
    with ctx.store.transaction():
        operation = ctx.store.get(operation_name)
        if operation is None or operation.get("done"):
            return None
        attempt = int(operation.get("_attempts", 0)) + 1
        ctx.store.update(operation_name, lambda op: op.update(_attempts=attempt))
    return operation, attempt


def deploy(ctx: Context, operation_name: str) -> None:
    started_attempt = _start_attempt(ctx, operation_name)
    if started_attempt is None:
        return
    operation, attempt = started_attempt
    plan = operation["_deployment"]
    if attempt > MAX_ATTEMPTS:
        _fail(ctx, operation_name, f"The deployment was interrupted {attempt - 1} times (the service stopped while "
              "deploying this model); it is not tried again.")
        return
    started = time.monotonic()
    try:
        version = ctx.store.get(plan["version"])
        if version is None:
            raise BadModel(f"Model version {plan['version']} no longer exists.")
        path = local_copy(ctx, version, operation_name)
        ctx.models.get(plan["version"], path)  # loads it (and proves it serves)
        ctx.crash.reach("deploy.ready")
        _finish(ctx, operation_name, plan, version)
    except (gcs.GcsError, BadModel) as error:
        _fail(ctx, operation_name, f"Model server never became ready: {error}", vertex_operations.FAILED_PRECONDITION)
        return
    log.info("deployed %s to %s as %s in %.1f s", plan["version"], plan["endpoint"], plan["deployed"]["id"],
             time.monotonic() - started)


def local_copy(ctx: Context, version: dict, operation_name: str) -> Path:
    """The version's artifacts on this machine: copied once, reused by every endpoint it is deployed to."""
    if version.get("_path") and (copy := artifacts.local_dir(ctx, version)).is_dir():
        return copy
    project, model = version["name"].split("/")[1], version["name"].rsplit("/", 1)[1]
    # an etag is base64: its "/" would nest a directory (an orphan at the next start), so it is replaced first
    name = f"{version['versionId']}-{new_etag().strip('=')}".replace("/", "_").replace("+", "-")
    target = ctx.state_dir / ARTIFACTS / project / model / name

    def before_each_file() -> None:
        if ctx.cancel_event(operation_name).is_set():
            raise BadModel("the deployment was cancelled")
        ctx.crash.reach("deploy.copying")

    try:
        count = gcs.download_prefix(version["artifactUri"], target, max_files=MAX_FILES,
                                    max_bytes=max_artifact_bytes(None), before_each=before_each_file)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    if count == 0:
        shutil.rmtree(target, ignore_errors=True)
        raise BadModel(f"the artifact_uri {version['artifactUri']} is empty or does not exist")
    kept = artifacts.publish(ctx, target)  # where other replicas load it from
    ctx.store.update(vertex_models.version_key(version),
                     lambda doc: doc.update(_path=str(target), **({"_artifacts": kept} if kept else {})))
    return target


def _finish(ctx: Context, operation_name: str, plan: dict, version: dict) -> None:
    """The deployed model joins its endpoint and the operation ends: one transaction."""
    with ctx.store.transaction():
        if (ctx.store.get(operation_name) or {}).get("_cancelRequested"):
            raise BadModel("the deployment was cancelled")
        endpoint = vertex_endpoints.add_deployed(ctx, plan["endpoint"], plan["deployed"], plan["trafficSplit"])
        if endpoint is None:
            raise BadModel(f"endpoint {plan['endpoint']} no longer exists")
        vertex_models.record_deployment(ctx, version, plan["endpoint"], plan["deployed"]["id"], deployed=True)
        deployed = next(m for m in endpoint["deployedModels"] if m["id"] == plan["deployed"]["id"])
        vertex_operations.finish(ctx, operation_name, response_type="DeployModelResponse",
                                 response={"deployedModel": deployed})


def _fail(ctx: Context, operation_name: str, message: str, code: int = vertex_operations.INTERNAL) -> None:
    vertex_operations.finish(ctx, operation_name, error=(code, message))
    log.warning("deployment %s failed: %s", operation_name, message)


def pending(ctx: Context) -> list[str]:
    """Deployments to an endpoint whose operation is not done."""
    return [operation["name"] for operation in ctx.store.list(vertex_operations.KIND, undone=True)
            if "_deployment" in operation]


def adopt(ctx: Context, operation_name: str) -> None:
    """Redo a deployment this replica just took over (after a restart, or from a replica that died)."""
    log.info("resuming deployment %s (interrupted by a stop or a dead replica)", operation_name)
    submit(ctx, operation_name)

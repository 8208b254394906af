"""Version deployment in the background: copy, validate and load a SavedModel.

As the hosted service did, the artifacts under ``deploymentUri`` are copied into
the service's own store (so deleting or overwriting them in GCS later does not
change a deployed version), then loaded with the ``serve`` tag. The version ends
READY or FAILED with an errorMessage, and its operation ends done, in one
transaction. Every start is counted in the version (``_attempts``): a
deployment interrupted MAX_ATTEMPTS times (say, a model whose loading kills
the process) ends FAILED instead of crash-looping the service.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from include.local_platform import gcs
from include.local_platform.context import Context
from include.local_platform.resources import artifacts, models, operations
from include.local_platform.serving.saved_model import BadModel
from include.local_platform.state.clock import new_etag
from include.local_platform.workers.recovery import MAX_ATTEMPTS

log = logging.getLogger(__name__)
MAX_FILES = 1000
# Google's documented maximum model size: 500 MB on legacy (mls1-*) machine types, 10 GB on Compute
# Engine (n1-*) ones. ML_ENGINE_MAX_ARTIFACT_BYTES, when set, replaces both (e.g. a small laptop disk).
MAX_ARTIFACT_BYTES_MLS1 = 500 * 1024 * 1024
MAX_ARTIFACT_BYTES_N1 = 10 * 1024 * 1024 * 1024


class Cancelled(Exception):
    pass


def max_artifact_bytes(machine_type: str | None) -> int:
    """The artifact bytes one version may copy, by machine type (see the constants above)."""
    configured = os.environ.get("ML_ENGINE_MAX_ARTIFACT_BYTES")
    if configured:
        return int(configured)
    return MAX_ARTIFACT_BYTES_MLS1 if (machine_type or "mls1").startswith("mls1") else MAX_ARTIFACT_BYTES_N1


def submit(ctx: Context, version_name: str) -> None:
    ctx.deployments.submit(_deploy_logged, ctx, version_name)


def _deploy_logged(ctx: Context, version_name: str) -> None:
    try:
        deploy(ctx, version_name)
    except Exception:
        log.exception("deploying %s failed unexpectedly", version_name)
    finally:
        operation = (ctx.store.get(version_name) or {}).get("_operation")
        if operation and not ctx.stopping.is_set():
            ctx.cancel_events.pop(operation, None)


def _check_cancel(ctx: Context, operation_name: str) -> None:
    if ctx.cancel_event(operation_name).is_set():
        raise Cancelled()


def _start_attempt(ctx: Context, version_name: str) -> tuple[dict, int] | None:
    """Count this start of a CREATING version's deployment, persisted before any work; None if not CREATING."""
    with ctx.store.transaction():
        version = ctx.store.get(version_name)
        if version is None or version["state"] != "CREATING":
            return None
        attempt = int(version.get("_attempts", 0)) + 1
        ctx.store.update(version_name, lambda doc: doc.update(_attempts=attempt))
    return version, attempt


def deploy(ctx: Context, version_name: str) -> None:
    started_attempt = _start_attempt(ctx, version_name)
    if started_attempt is None:
        return
    version, attempt = started_attempt
    operation_name = version["_operation"]
    started = time.monotonic()
    _, project, _, model, _, short = version_name.split("/")
    target = ctx.artifacts_dir / project / model / f"{short}-{new_etag().strip('=').replace('/', '_')}"
    if attempt > MAX_ATTEMPTS:
        _fail(ctx, version_name, operation_name, target,
              f"Create Version failed. Internal error: the deployment was interrupted {attempt - 1} times "
              "(the service stopped while deploying this version); it is not tried again.", operations.INTERNAL)
        return

    def before_each_file() -> None:
        _check_cancel(ctx, operation_name)
        ctx.crash.reach("deploy.copying")

    try:
        _check_cancel(ctx, operation_name)
        count = gcs.download_prefix(version["deploymentUri"], target, max_files=MAX_FILES,
                                    max_bytes=max_artifact_bytes(version.get("machineType")),
                                    before_each=before_each_file)
        if count == 0:
            raise BadModel(f"Model directory {version['deploymentUri']} is empty or does not exist; it is "
                           "expected to contain exactly one of: [saved_model.pb, saved_model.pbtxt].")
        _check_cancel(ctx, operation_name)
        loaded = ctx.models.get(version_name, target)
        kept = artifacts.publish(ctx, target)  # where other replicas load it from
        _finish_ready(ctx, version_name, operation_name, target, kept)
    except (gcs.GcsError, BadModel) as error:
        _fail(ctx, version_name, operation_name, target,
              f"Create Version failed. Bad model detected with error: {error}", operations.FAILED_PRECONDITION)
        return
    except Cancelled:
        _fail(ctx, version_name, operation_name, target, "Create Version cancelled.", operations.CANCELLED)
        return
    except Exception as error:
        _fail(ctx, version_name, operation_name, target,
              f"Create Version failed. Internal error: {error}", operations.INTERNAL)
        raise
    log.info("version %s READY (%d files, signatures %s) in %.1f s", version_name, count,
             sorted(loaded.signatures), time.monotonic() - started)


def _finish_ready(ctx: Context, version_name: str, operation_name: str, target: Path, kept: str) -> None:
    """Version READY, first version the default, operation done: one transaction, all or nothing."""
    with ctx.store.transaction():
        operation = ctx.store.get(operation_name) or {}
        if operation.get("metadata", {}).get("isCancellationRequested"):
            raise Cancelled()  # asked while the model loaded: honoured, not lost
        updated = ctx.store.transition(version_name, ("CREATING",), state="READY", _path=str(target),
                                       **({"_artifacts": kept} if kept else {}))
        if updated is None:  # deleted meanwhile
            shutil.rmtree(target, ignore_errors=True)
            ctx.models.evict(version_name)
            return
        model_key = version_name.rsplit("/versions/", 1)[0]
        ctx.store.update(model_key, lambda doc: doc.setdefault("defaultVersion", {"name": version_name}))
        operations.finish(ctx, operation_name, response=updated, response_type=operations.VERSION_TYPE)
        ctx.crash.reach("deploy.ready")


def _fail(ctx: Context, version_name: str, operation_name: str, target: Path, message: str, code: int) -> None:
    shutil.rmtree(target, ignore_errors=True)
    ctx.models.evict(version_name)
    with ctx.store.transaction():
        ctx.store.transition(version_name, ("CREATING",), state="FAILED", errorMessage=message)
        operations.finish(ctx, operation_name, error=(code, message))
    log.warning("version %s FAILED: %s", version_name, message)


def pending(ctx: Context) -> list[str]:
    """The leases of deployments under way (here, on another replica, or on none since a crash)."""
    return [models.deployment_lease(version) for version in ctx.store.list("version", states=("CREATING",))]


def adopt(ctx: Context, operation_name: str) -> None:
    """Redo a deployment this replica just took over (after a restart, or from a replica that died)."""
    operation = ctx.store.get(operation_name) or {}
    version_name = ((operation.get("metadata") or {}).get("version") or {}).get("name", "")
    version = ctx.store.get(version_name) if version_name else None
    if version is None or version["state"] != "CREATING" or version.get("_operation") != operation_name:
        return
    if operation.get("metadata", {}).get("isCancellationRequested"):
        ctx.cancel_event(operation_name).set()  # asked before the restart: still honoured
    log.info("resuming deployment of %s (attempt %d; interrupted by a stop or a dead replica)", version_name,
             int(version.get("_attempts", 0)) + 1)
    submit(ctx, version_name)

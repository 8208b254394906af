"""Version deployment in the background: copy, validate and load a SavedModel.

As the hosted service did, the artifacts under `deploymentUri` are copied into
the service's own store (so deleting or overwriting them in GCS later does not
change a deployed version), then loaded with the `serve` tag. The version ends
READY or FAILED with an errorMessage, and its operation ends done.
"""

from __future__ import annotations

import logging
import shutil
import time

from include.ml_engine_local import gcs, operations
from include.ml_engine_local.context import Context, new_etag, revise
from include.ml_engine_local.runtime import BadModel

log = logging.getLogger(__name__)
MAX_FILES = 1000


class Cancelled(Exception):
    pass


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


def deploy(ctx: Context, version_name: str) -> None:
    version = ctx.store.get(version_name)
    if version is None or version["state"] != "CREATING":
        return
    operation_name = version["_operation"]
    started = time.monotonic()
    _, project, _, model, _, short = version_name.split("/")
    target = ctx.artifacts_dir / project / model / f"{short}-{new_etag().strip('=').replace('/', '_')}"
    try:
        _check_cancel(ctx, operation_name)
        count = gcs.download_prefix(version["deploymentUri"], target, max_files=MAX_FILES,
                                    before_each=lambda: _check_cancel(ctx, operation_name))
        if count == 0:
            raise BadModel(f"Model directory {version['deploymentUri']} is empty or does not exist; it is "
                           "expected to contain exactly one of: [saved_model.pb, saved_model.pbtxt].")
        _check_cancel(ctx, operation_name)
        loaded = ctx.models.get(version_name, target)
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

    updated = revise(ctx, version_name, state="READY", _path=str(target))
    if updated is None:  # deleted meanwhile
        shutil.rmtree(target, ignore_errors=True)
        return
    model_key = version_name.rsplit("/versions/", 1)[0]
    ctx.store.update(model_key, lambda doc: doc.setdefault("defaultVersion", {"name": version_name}))
    operations.finish(ctx, operation_name, response=updated, response_type=operations.VERSION_TYPE)
    log.info("version %s READY (%d files, signatures %s) in %.1f s", version_name, count,
             sorted(loaded.signatures), time.monotonic() - started)


def _fail(ctx: Context, version_name: str, operation_name: str, target, message: str, code: int) -> None:
    shutil.rmtree(target, ignore_errors=True)
    revise(ctx, version_name, state="FAILED", errorMessage=message)
    operations.finish(ctx, operation_name, error=(code, message))
    log.warning("version %s FAILED: %s", version_name, message)


def resume(ctx: Context) -> None:
    """After a restart: redo interrupted deployments, reload READY versions in the background."""
    for version in ctx.store.list("version"):
        if version["state"] == "CREATING":
            operation = ctx.store.get(version["_operation"]) or {}
            if operation.get("metadata", {}).get("isCancellationRequested"):
                ctx.cancel_event(version["_operation"]).set()  # asked before the restart: still honoured
            log.info("resuming deployment of %s after a restart", version["name"])
            submit(ctx, version["name"])

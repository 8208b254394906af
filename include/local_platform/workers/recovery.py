"""What a start does before resuming work: close what a crash left half done, drop what nothing uses.

A kill -9 can stop the service between any two writes. Every write that
matters is now in one transaction, but a state directory from an older
version, or a crash inside a copy, can still leave: operations ``done: false``
whose version already ended, artifact directories no version points to (a
deployment killed mid-copy), and scratch files of jobs that were running.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from include.local_platform.context import Context
from include.local_platform.resources import artifacts, jobs, models, operations

log = logging.getLogger(__name__)
#: Starts of one deployment or job: after this many interrupted ones (the service died while doing
#: it, e.g. a poison input that kills the process) it ends FAILED instead of being resumed again.
MAX_ATTEMPTS = 3


def recover(ctx: Context) -> None:
    finish_dangling_operations(ctx)
    remove_orphan_directories(ctx)


def finish_dangling_operations(ctx: Context) -> int:
    """Complete operations left ``done: false`` whose work has ended; CREATING ones are resumed instead."""
    finished = 0
    for operation in ctx.store.list("operation"):
        if operation.get("done"):
            continue
        name = operation["name"]
        metadata = operation.get("metadata", {})
        with ctx.store.transaction():
            if metadata.get("operationType") != "CREATE_VERSION":
                # updates and deletes change their resource first, then record their operation
                operations.finish(ctx, name)
            else:
                version_name = (metadata.get("version") or {}).get("name", "")
                version = ctx.store.get(version_name)
                if version is not None and version.get("_operation") == name and version["state"] == "CREATING":
                    continue  # deployment.resume redoes it
                if version is None or version.get("_operation") != name:
                    operations.finish(ctx, name, error=(operations.INTERNAL,
                                                        f"Version {version_name} no longer exists."))
                elif version["state"] == "READY":
                    operations.finish(ctx, name, response=version, response_type=operations.VERSION_TYPE)
                else:
                    message = version.get("errorMessage") or f"Version {version_name} is {version['state']}."
                    code = operations.CANCELLED if "cancelled" in message else operations.FAILED_PRECONDITION
                    operations.finish(ctx, name, error=(code, message))
        finished += 1
        log.warning("operation %s was left unfinished by a crash; completed it", name)
    return finished


def remove_orphan_directories(ctx: Context) -> list[Path]:
    """Delete artifact directories no version refers to (ml/v1's and Vertex AI's) and every scratch directory
    (nothing runs yet)."""
    referenced = {artifacts.relative(Path(version["_path"])) for kind in ("version", "vertex_model_version")
                  for version in ctx.store.list(kind) if version.get("_path")}
    removed = []
    for root in (ctx.artifacts_dir, ctx.state_dir / "vertex_artifacts"):
        if root.is_dir():
            # layout: <root>/PROJECT/MODEL/VERSION-ETAG
            for directory in root.glob("*/*/*"):
                if artifacts.relative(directory) not in referenced:
                    _remove(directory)
                    removed.append(directory)
    for entry in ctx.scratch_dir.iterdir():
        _remove(entry)
        removed.append(entry)
    for path in removed:
        log.info("removed %s (left by an earlier run, used by nothing)", path)
    return removed


def release_attempts(ctx: Context) -> int:
    """At a graceful stop: give back the attempt of every deployment and job in flight on this replica.

    Only a start that ended in a crash counts towards MAX_ATTEMPTS; work the
    service is asked to stop (make stop, a restart) resumes with its count unchanged.
    """
    released = 0
    held = ctx.work.held()
    with ctx.store.transaction():
        for kind, states in (("version", ("CREATING",)), ("job", jobs.ACTIVE_STATES)):
            for resource in ctx.store.list(kind, states=states):
                name = resource.get("_name") or resource["name"]
                lease = models.deployment_lease(resource) if kind == "version" else name
                if lease in held and int(resource.get("_attempts", 0)) > 0:
                    ctx.store.update(name, lambda doc: doc.update(_attempts=int(doc["_attempts"]) - 1))
                    released += 1
    return released


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

"""Long-running operations (google.longrunning.Operation) as ml/v1 returns them."""

from __future__ import annotations

from include.local_platform.context import Context
from include.local_platform.errors import not_found
from include.local_platform.resources.names import operation_name
from include.local_platform.state.clock import millis, now_rfc3339
from include.local_platform.state.store import public

#: The project number shown in operation metadata (a local project has no real one).
PROJECT_NUMBER = "1234"
METADATA_TYPE = "type.googleapis.com/google.cloud.ml.v1.OperationMetadata"
VERSION_TYPE = "type.googleapis.com/google.cloud.ml.v1.Version"
MODEL_TYPE = "type.googleapis.com/google.cloud.ml.v1.Model"
EMPTY_TYPE = "type.googleapis.com/google.protobuf.Empty"

# google.rpc.Code values used in Operation.error
CANCELLED, INVALID_ARGUMENT, FAILED_PRECONDITION, INTERNAL = 1, 3, 9, 13


def start(ctx: Context, *, project: str, kind: str, model: str, version: dict | None = None,
          operation_type: str) -> dict:
    """Record a new, not yet done operation, e.g. ``create_MODEL_VERSION-TIMESTAMP``."""
    suffix = f"{model}_{version['name'].rsplit('/', 1)[-1]}" if version else model
    stamp = millis()
    while ctx.store.get(name := operation_name(project, f"{kind}_{suffix}-{stamp}")) is not None:
        stamp += 1  # two operations on one resource within a millisecond
    created = now_rfc3339()
    metadata = {
        "@type": METADATA_TYPE,
        "createTime": created,
        "startTime": created,
        "operationType": operation_type,
        "modelName": f"projects/{project}/models/{model}",
        "projectNumber": PROJECT_NUMBER,
    }
    if version is not None:
        metadata["version"] = public(version)
    operation = {"name": name, "metadata": metadata, "done": False}
    return ctx.store.insert(name, "operation", f"projects/{project}", operation)


def finish(ctx: Context, name: str, *, response: dict | None = None, response_type: str = EMPTY_TYPE,
           error: tuple[int, str] | None = None) -> dict | None:
    """Mark an operation done with either a response or an error ``(code, message)``; a done one stays as is."""

    def change(operation: dict) -> None:
        if operation.get("done"):
            return
        operation["done"] = True
        operation["metadata"]["endTime"] = now_rfc3339()
        if error is not None:
            operation["error"] = {"code": error[0], "message": error[1]}
        else:
            operation["response"] = {"@type": response_type, **public(response or {})}

    return ctx.store.update(name, change)


def finished(ctx: Context, *, project: str, kind: str, model: str, operation_type: str,
             version: dict | None = None, response: dict | None = None,
             response_type: str = EMPTY_TYPE) -> dict:
    """An operation that completes at once (deletes, patches): recorded done in one transaction."""
    with ctx.store.transaction():
        operation = start(ctx, project=project, kind=kind, model=model, version=version,
                          operation_type=operation_type)
        return finish(ctx, operation["name"], response=response, response_type=response_type)


def get(ctx: Context, name: str) -> dict:
    operation = ctx.store.get(name)
    if operation is None:
        raise not_found(f"Operation {name}")
    return operation


def list_for(ctx: Context, project: str) -> list[dict]:
    return ctx.store.list("operation", f"projects/{project}")


def cancel(ctx: Context, name: str) -> dict:
    """Ask for cancellation; the worker doing the operation notices and ends it CANCELLED."""
    with ctx.store.transaction():  # read and mark together: a finish cannot slip in between
        operation = get(ctx, name)
        if operation["done"]:
            return {}
        ctx.store.update(name, lambda op: op["metadata"].__setitem__("isCancellationRequested", True))
    ctx.work.cancel(name)
    return {}

"""Vertex AI long-running operations (google.longrunning.Operation), as the store keeps them.

An operation is named under the resource it works on (``.../endpoints/E/operations/O``, as
Vertex AI names them) and holds its metadata and, once done, its response or error as proto3
JSON with ``@type``, so ``GetOperation`` answers exactly what ``operation.result()`` unpacks.
Work that ends at once (uploads, deletes, creating an endpoint) is recorded done, which spares
the client any polling; work that takes time (deploying a model) is finished by its worker.
"""

from __future__ import annotations

from include.local_platform.context import Context
from include.local_platform.errors import ApiError, not_found
from include.local_platform.resources import vertex_names
from include.local_platform.state.clock import now_rfc3339

TYPE_PREFIX = "type.googleapis.com/google.cloud.aiplatform.v1."
EMPTY = "type.googleapis.com/google.protobuf.Empty"
KIND = "vertex_operation"
# google.rpc.Code values for Operation.error
CANCELLED, INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, INTERNAL = 1, 3, 5, 9, 13


def _metadata(metadata_type: str, created: str) -> dict:
    return {"@type": TYPE_PREFIX + metadata_type, "genericMetadata": {"createTime": created, "updateTime": created}}


def start(ctx: Context, resource_name: str, metadata_type: str, **metadata) -> dict:
    """A new operation on ``resource_name``, not done yet (its worker finishes it)."""
    location = resource_name.split("/")[:4]
    name = f"{resource_name}/operations/{vertex_names.new_id()}"
    operation = {"name": name, "metadata": {**_metadata(metadata_type, now_rfc3339()), **metadata}, "done": False}
    return ctx.store.insert(name, KIND, "/".join(location), operation)


def finished(ctx: Context, resource_name: str, metadata_type: str, response_type: str | None = None,
             response: dict | None = None) -> dict:
    """An operation that is done when it is answered (its work happened in the request)."""
    with ctx.store.transaction():
        operation = start(ctx, resource_name, metadata_type)
        return finish(ctx, operation["name"], response_type=response_type, response=response)


def finish(ctx: Context, name: str, *, response_type: str | None = None, response: dict | None = None,
           error: tuple[int, str] | None = None) -> dict:
    """Mark done with ``response`` (of ``response_type``; None: google.protobuf.Empty) or ``error``."""

    def change(operation: dict) -> None:
        if operation.get("done"):
            return
        operation["done"] = True
        operation["metadata"].setdefault("genericMetadata", {})["updateTime"] = now_rfc3339()
        if error is not None:
            operation["error"] = {"code": error[0], "message": error[1]}
        elif response_type is None:
            operation["response"] = {"@type": EMPTY, "value": {}}
        else:
            operation["response"] = {"@type": TYPE_PREFIX + response_type, **(response or {})}

    return ctx.store.update(name, change)


def get(ctx: Context, name: str) -> dict:
    operation = ctx.store.get(name) if "/operations/" in name else None
    if operation is None:
        raise not_found(f"Operation {name}")
    return operation


def delete(ctx: Context, name: str) -> None:
    get(ctx, name)
    ctx.store.delete(name)


def cancel(ctx: Context, name: str) -> None:
    """Ask for cancellation: the worker doing it notices (an operation already done stays as it is)."""
    operation = get(ctx, name)
    if not operation.get("done"):
        ctx.store.update(name, lambda op: op.__setitem__("_cancelRequested", True))
        ctx.work.cancel(name)


def failed(error: ApiError) -> tuple[int, str]:
    """An ApiError as Operation.error's (code, message)."""
    codes = {"CANCELLED": CANCELLED, "INVALID_ARGUMENT": INVALID_ARGUMENT, "NOT_FOUND": NOT_FOUND,
             "FAILED_PRECONDITION": FAILED_PRECONDITION}
    return codes.get(error.status, INTERNAL), error.message

"""One REST call as the routes see it: its body read within a limit, its JSON, its answer in Google's shape.

Every ``/v1`` handler raises ``ApiError`` for a request it refuses; ``answer``
turns that into Google's error body (so ``googleapiclient`` raises ``HttpError``
with the right status), and a bug of ours into a logged 500 in the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from starlette.requests import ClientDisconnect

from include.local_platform.errors import ApiError, invalid_argument

log = logging.getLogger("local_platform")

#: google.rpc status names by HTTP status, for errors the service makes up itself (injected faults).
STATUS_NAMES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED",
                500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                504: "DEADLINE_EXCEEDED"}


@dataclass
class Call:
    """One API call: path parameters, query parameters and the raw body."""

    params: dict[str, str]
    query: dict[str, str]
    raw: bytes

    def json(self, reader: Callable[[bytes], object] = orjson.loads) -> object:
        if not self.raw.strip():
            return {}
        try:
            return reader(self.raw)
        except orjson.JSONDecodeError as error:
            raise invalid_argument(f"Invalid JSON payload received. {error}") from None


def answer(method: str, path: str, handler: Callable[..., object], *args) -> tuple[int, object]:
    """Run a handler: (200, its result), or (status, Google's error body) for an ApiError or a bug (logged)."""
    try:
        return 200, handler(*args)
    except ApiError as error:
        return error.code, error.body()
    except Exception as error:  # a bug of ours: still answered in Google's shape, and logged with its trace
        return bug_answer(method, path, error)


def bug_answer(method: str, path: str, error: Exception) -> tuple[int, dict]:
    """A bug of ours, raised while handling ``method path``: logged with its trace, answered 500 in Google's shape."""
    log.error("%s v1/%s failed", method, path, exc_info=error)
    return 500, ApiError(500, "INTERNAL", f"Internal error: {error.__class__.__name__}: {error}").body()


def encoded(status: int, body: object, dumps: Callable[[object], bytes]) -> tuple[int, bytes]:
    """(status, JSON bytes); an answer that cannot be written (too deep, a value JSON cannot hold) becomes a
    logged 500 in Google's shape instead of a broken response."""
    try:
        return status, dumps(body)
    except (orjson.JSONEncodeError, TypeError, RecursionError) as error:
        log.error("an answer could not be written as JSON (%s); answering 500", error)
        failure = ApiError(500, "INTERNAL", f"Internal error: the answer could not be written as JSON ({error}).")
        return 500, orjson.dumps(failure.body())


def page(items: list[dict], key: str, call: Call) -> dict:
    """pageSize / pageToken over a full list; ``{}`` when there is nothing, as Google answers."""
    try:
        start = int(call.query.get("pageToken") or 0)
        size = int(call.query.get("pageSize") or 0) or 1000
    except ValueError:
        raise invalid_argument("pageToken and pageSize must be integers.") from None
    if start < 0 or size < 0:
        raise invalid_argument("pageToken and pageSize must not be negative.")
    chunk = items[start:start + size]
    answered: dict = {key: chunk} if chunk else {}
    if start + size < len(items):
        answered["nextPageToken"] = str(start + size)
    return answered


def injected(status: int) -> ApiError:
    """The error a fault rule answers with."""
    return ApiError(status, STATUS_NAMES.get(status, "UNKNOWN"), f"Injected fault {status}.")


async def read_body(receive: Callable[[], Awaitable[dict]], limit: int) -> bytes:
    """The body, refusing (400, nothing changed) once it passes ``limit`` bytes.

    An oversize body is still read to its end (and thrown away) so the client
    gets the error instead of a broken pipe.
    """
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif chunks:
            chunks.clear()
        if not message.get("more_body", False):
            break
    if size > limit:
        raise invalid_argument(f"Request payload size exceeds the limit: {limit} bytes.")
    return b"".join(chunks)

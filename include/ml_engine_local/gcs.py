"""GCS access for the service, through google-cloud-storage only.

With STORAGE_EMULATOR_HOST set the client talks to the emulator anonymously;
otherwise it uses Application Default Credentials against real GCS.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from google.api_core import exceptions as gexc

_local = threading.local()


class GcsError(Exception):
    """A GCS object or prefix that cannot be read or written, with a readable message."""


def client():
    """One storage client per thread (the client's HTTP session is not thread-safe)."""
    if getattr(_local, "client", None) is None:
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            project = os.environ.get("GOOGLE_CLOUD_PROJECT", "local-project")
            _local.client = storage.Client(project=project, credentials=AnonymousCredentials())
        else:
            _local.client = storage.Client()
    return _local.client


def split_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` -> ("bucket", "a/b"); anything else is a GcsError."""
    if not isinstance(uri, str) or not uri.startswith("gs://") or len(uri) <= 5:
        raise GcsError(f"'{uri}' is not a gs:// URI")
    bucket, _, path = uri[5:].partition("/")
    if not bucket:
        raise GcsError(f"'{uri}' has no bucket")
    return bucket, path


def _translate(uri: str, error: Exception) -> GcsError:
    if isinstance(error, gexc.NotFound):
        return GcsError(f"{uri} does not exist")
    if isinstance(error, gexc.Forbidden):
        return GcsError(f"no permission to access {uri}")
    return GcsError(f"cannot access {uri}: {error}")


def list_objects(prefix_uri: str, *, limit: int | None = None) -> list[str]:
    """Names (gs:// URIs) of the objects under a prefix; at most `limit` + 1 are fetched."""
    bucket, prefix = split_uri(prefix_uri)
    try:
        blobs = client().list_blobs(bucket, prefix=prefix, max_results=None if limit is None else limit + 1)
        return [f"gs://{bucket}/{blob.name}" for blob in blobs if not blob.name.endswith("/")]
    except gexc.GoogleAPIError as error:
        raise _translate(prefix_uri, error) from error


def expand_pattern(pattern: str) -> list[str]:
    """Input paths as ml/v1 took them: a file, or a path with a `*` wildcard."""
    if "*" not in pattern:
        bucket, path = split_uri(pattern)
        if not client().bucket(bucket).blob(path).exists():
            raise GcsError(f"{pattern} does not exist")
        return [pattern]
    prefix = pattern[: pattern.index("*")]
    return sorted(uri for uri in list_objects(prefix) if fnmatch.fnmatchcase(uri, pattern))


def download_prefix(prefix_uri: str, dest: Path, *, max_files: int,
                    before_each: Callable[[], None] | None = None) -> int:
    """Copy every object under `prefix_uri/` into `dest`, keeping relative paths; returns the count.

    `before_each` runs before every file (a cancellation check may raise there).
    """
    prefix_uri = prefix_uri.rstrip("/") + "/"
    objects = list_objects(prefix_uri, limit=max_files)
    if len(objects) > max_files:
        raise GcsError(f"{prefix_uri} holds more than {max_files} files")
    root = dest.resolve()
    for uri in objects:
        if before_each is not None:
            before_each()
        relative = uri[len(prefix_uri):]
        target = (dest / relative).resolve()
        # Object names are untrusted: `a//etc/x` or `../x` must not escape the destination.
        if not relative or relative.startswith("/") or ".." in relative.split("/") or not target.is_relative_to(root):
            raise GcsError(f"{uri} has a name that is not a plain relative path under {prefix_uri}")
        target.parent.mkdir(parents=True, exist_ok=True)
        download_file(uri, target)
    return len(objects)


def download_file(uri: str, target: Path) -> None:
    bucket, path = split_uri(uri)
    try:
        client().bucket(bucket).blob(path).download_to_filename(str(target))
    except gexc.GoogleAPIError as error:
        target.unlink(missing_ok=True)
        raise _translate(uri, error) from error


def open_read(uri: str, *, chunk_size: int = 4 * 1024 * 1024) -> IO[bytes]:
    """A streaming binary reader, memory bounded: each read fetches max(asked, chunk_size) bytes."""
    bucket, path = split_uri(uri)
    try:
        return client().bucket(bucket).blob(path).open("rb", chunk_size=chunk_size)
    except gexc.GoogleAPIError as error:
        raise _translate(uri, error) from error


def open_write(uri: str, *, binary: bool = False) -> IO:
    """A streaming writer (resumable upload in chunks), text unless `binary`."""
    bucket, path = split_uri(uri)
    try:
        return client().bucket(bucket).blob(path).open("wb" if binary else "w", chunk_size=4 * 1024 * 1024)
    except gexc.GoogleAPIError as error:
        raise _translate(uri, error) from error


def write_small(uri: str, data: bytes | str) -> None:
    """Write a small object in one request (a streaming writer costs two round trips)."""
    bucket, path = split_uri(uri)
    try:
        client().bucket(bucket).blob(path).upload_from_string(data)
    except gexc.GoogleAPIError as error:
        raise _translate(uri, error) from error


def stage(uri: str, directory: Path, index: int) -> str:
    """Copy one object into `directory` (owned by the caller) and return the local path.

    Used for gs:// URLs a model reads inside its graph: TensorFlow's own gs://
    filesystem cannot be pointed at an emulator, so the service reads the
    object itself and hands the model a local path.
    """
    target = directory / f"{index:06d}_{Path(split_uri(uri)[1]).name}"
    download_file(uri, target)
    return str(target)

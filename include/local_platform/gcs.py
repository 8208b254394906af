"""GCS access for the service, through google-cloud-storage only.

With STORAGE_EMULATOR_HOST set the client talks to the emulator anonymously;
otherwise it uses Application Default Credentials against real GCS.
"""

from __future__ import annotations

import os
import re
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
    """``gs://bucket/a/b`` -> ("bucket", "a/b"); anything else is a GcsError."""
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
    """Names (gs:// URIs) of the objects under a prefix; at most ``limit`` + 1 are fetched."""
    return [uri for uri, _ in list_sized(prefix_uri, limit=limit)]


def list_sized(prefix_uri: str, *, limit: int | None = None) -> list[tuple[str, int]]:
    """(gs:// URI, size in bytes) of the objects under a prefix; at most ``limit`` + 1 are fetched."""
    bucket, prefix = split_uri(prefix_uri)
    try:
        blobs = client().list_blobs(bucket, prefix=prefix, max_results=None if limit is None else limit + 1)
        return [(f"gs://{bucket}/{blob.name}", int(blob.size or 0)) for blob in blobs if not blob.name.endswith("/")]
    except gexc.GoogleAPIError as error:
        raise _translate(prefix_uri, error) from error


def wildcard_regex(pattern: str) -> re.Pattern:
    """GCS wildcard semantics: ``*`` and ``?`` stay in one path segment, ``**`` crosses ``/``, ``[...]`` is a set."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end]
            negate = body.startswith("!")
            body = (body[1:] if negate else body).replace("\\", "\\\\").replace("[", "\\[")
            out.append("[" + ("^/" if negate else "") + body + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def expand_pattern(pattern: str) -> list[str]:
    """Input paths as ml/v1 took them: a file, or a path with GCS wildcards (see wildcard_regex)."""
    first = min((pattern.index(c) for c in "*?[" if c in pattern), default=None)
    if first is None:
        bucket, path = split_uri(pattern)
        if not client().bucket(bucket).blob(path).exists():
            raise GcsError(f"{pattern} does not exist")
        return [pattern]
    matcher = wildcard_regex(pattern)
    return sorted(uri for uri in list_objects(pattern[:first]) if matcher.match(uri))


def delete_matching(prefix_uri: str, name: re.Pattern) -> list[str]:
    """Delete the objects directly under ``prefix_uri/`` whose last name segment matches ``name``."""
    prefix_uri = prefix_uri.rstrip("/") + "/"
    bucket, _ = split_uri(prefix_uri)
    deleted = []
    for uri in list_objects(prefix_uri):
        relative = uri[len(prefix_uri):]
        if "/" not in relative and name.match(relative):
            try:
                client().bucket(bucket).blob(split_uri(uri)[1]).delete()
            except gexc.NotFound:
                pass
            except gexc.GoogleAPIError as error:
                raise _translate(uri, error) from error
            deleted.append(uri)
    return deleted


def download_prefix(prefix_uri: str, dest: Path, *, max_files: int, max_bytes: int | None = None,
                    before_each: Callable[[], None] | None = None) -> int:
    """Copy every object under ``prefix_uri/`` into ``dest``, keeping relative paths; returns the count.

    ``before_each`` runs before every file (a cancellation check may raise there).
    More than ``max_files`` objects or ``max_bytes`` bytes in all is a GcsError,
    raised before anything is copied.
    """
    prefix_uri = prefix_uri.rstrip("/") + "/"
    objects = list_sized(prefix_uri, limit=max_files)
    if len(objects) > max_files:
        raise GcsError(f"{prefix_uri} holds more than {max_files} files")
    total = sum(size for _, size in objects)
    if max_bytes is not None and total > max_bytes:
        raise GcsError(f"the files under {prefix_uri} hold {total} bytes, more than the limit of {max_bytes} bytes")
    root = dest.resolve()
    for uri, _ in objects:
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


def create_bucket_if_missing(name: str) -> bool:
    """True if the bucket had to be created."""
    try:
        if client().bucket(name).exists():
            return False
        client().create_bucket(name)
    except gexc.Conflict:
        return False  # created meanwhile (another replica)
    except gexc.GoogleAPIError as error:
        raise _translate(f"gs://{name}", error) from error
    return True


def delete_prefix(prefix_uri: str) -> int:
    """Delete every object under ``prefix_uri/``; returns how many there were."""
    prefix_uri = prefix_uri.rstrip("/") + "/"
    bucket = client().bucket(split_uri(prefix_uri)[0])
    uris = list_objects(prefix_uri)
    for uri in uris:
        try:
            bucket.blob(split_uri(uri)[1]).delete()
        except gexc.NotFound:
            pass
        except gexc.GoogleAPIError as error:
            raise _translate(uri, error) from error
    return len(uris)


def upload_dir(source: Path, prefix_uri: str) -> int:
    """Copy every file under ``source`` to ``prefix_uri/``, keeping relative paths; returns the count."""
    bucket_name, prefix = split_uri(prefix_uri.rstrip("/") + "/")
    bucket = client().bucket(bucket_name)
    files = sorted(path for path in source.rglob("*") if path.is_file())
    for path in files:
        name = prefix + path.relative_to(source).as_posix()
        try:
            bucket.blob(name).upload_from_filename(str(path))
        except gexc.GoogleAPIError as error:
            raise _translate(f"gs://{bucket_name}/{name}", error) from error
    return len(files)


def download_file(uri: str, target: Path) -> None:
    bucket, path = split_uri(uri)
    try:
        client().bucket(bucket).blob(path).download_to_filename(str(target))
    except gexc.GoogleAPIError as error:
        target.unlink(missing_ok=True)
        raise _translate(uri, error) from error


def open_read(uri: str, *, chunk_size: int = 4 * 1024 * 1024) -> IO[bytes]:
    """A streaming binary reader, memory bounded: each read fetches max(asked, chunk_size) bytes.

    Each fetch is one ranged request read whole (``single_shot_download``), not the client's
    8 kB loop: 0.12 instead of 0.27 s of CPU per 100 MB, measured side by side here; a
    truncated response is retried as before (urllib3's IncompleteRead is a retryable error).
    """
    bucket, path = split_uri(uri)
    try:
        return client().bucket(bucket).blob(path).open("rb", chunk_size=chunk_size, single_shot_download=True)
    except gexc.GoogleAPIError as error:
        raise _translate(uri, error) from error


#: Bytes a streaming writer holds before it sends them as one resumable-upload chunk. Fewer,
#: larger chunks mean fewer round trips to GCS, and the emulator rewrites the whole partial
#: object on every chunk (so its cost grows with the square of the object over the chunk
#: size): a 100 MB results file cost it 1.09 s of CPU in 4 MB chunks, 0.49 s in 16 MB chunks.
WRITE_CHUNK_BYTES = 16 * 1024 * 1024


def open_write(uri: str, *, binary: bool = False) -> IO:
    """A streaming writer (resumable upload in WRITE_CHUNK_BYTES chunks), text unless ``binary``."""
    bucket, path = split_uri(uri)
    try:
        return client().bucket(bucket).blob(path).open("wb" if binary else "w", chunk_size=WRITE_CHUNK_BYTES)
    except gexc.GoogleAPIError as error:
        raise _translate(uri, error) from error


def write_small(uri: str, data: bytes | str) -> None:
    """Write a small object in one request (a streaming writer costs two round trips)."""
    bucket, path = split_uri(uri)
    try:
        client().bucket(bucket).blob(path).upload_from_string(data)
    except gexc.GoogleAPIError as error:
        raise _translate(uri, error) from error


#: GCS's limit on the sources of one compose request.
MAX_COMPOSE_SOURCES = 32


def compose(sources: list[str], target: str) -> None:
    """Concatenate objects of one bucket into ``target`` on the server (no byte passes through here);
    more than MAX_COMPOSE_SOURCES sources are composed in steps onto the growing target."""
    bucket_name, target_path = split_uri(target)
    bucket = client().bucket(bucket_name)
    paths = []
    for uri in sources:
        source_bucket, path = split_uri(uri)
        if source_bucket != bucket_name:
            raise GcsError(f"cannot compose {uri} into {target}: objects of another bucket")
        paths.append(path)
    try:
        done = paths[:MAX_COMPOSE_SOURCES]
        bucket.blob(target_path).compose([bucket.blob(path) for path in done])
        for start in range(len(done), len(paths), MAX_COMPOSE_SOURCES - 1):
            step = [target_path, *paths[start:start + MAX_COMPOSE_SOURCES - 1]]
            bucket.blob(target_path).compose([bucket.blob(path) for path in step])
    except gexc.GoogleAPIError as error:
        raise _translate(target, error) from error


#: Caps on what the URL variant copies to local disk. Staged files live only while their request
#: (or batch: a job stages one batch at a time and deletes it after) is predicted, so these bound the
#: disk a request or a running job can fill: at most MAX_STAGED_BYTES_PER_REQUEST per batch, and a job
#: holds at most two batches (one predicting, one prepared ahead).
MAX_STAGED_OBJECT_BYTES = 32 * 1024 * 1024
MAX_STAGED_BYTES_PER_REQUEST = 256 * 1024 * 1024
MAX_OBJECT_NAME_BYTES = 1024  # GCS's own limit


class StagingBudget:
    """Bytes one request (or one batch of a job) may still stage."""

    def __init__(self, limit: int):
        self.left = limit

    def take(self, uri: str, size: int) -> None:
        if size > MAX_STAGED_OBJECT_BYTES:
            raise GcsError(f"{uri} is {size} bytes; at most {MAX_STAGED_OBJECT_BYTES} bytes are read per URL")
        if size > self.left:
            raise GcsError(f"staging {uri} would pass {MAX_STAGED_BYTES_PER_REQUEST} bytes for this request")
        self.left -= size


def _checked_object(uri: str) -> tuple[str, str]:
    bucket, path = split_uri(uri)
    if (not path or len(path.encode("utf-8")) > MAX_OBJECT_NAME_BYTES
            or any(ord(char) < 32 or ord(char) == 127 for char in uri)):
        raise GcsError(f"'{uri[:200]!r}' is not a valid GCS object name")
    return bucket, path


def stage(uri: str, directory: Path, index: int, budget: StagingBudget | None = None) -> str:
    """Copy one object into ``directory`` (owned by the caller) and return the local path.

    Used for gs:// URLs a model reads inside its graph: TensorFlow's own gs://
    filesystem cannot be pointed at an emulator, so the service reads the
    object itself and hands the model a local path. The local name is made
    here (index and a short safe suffix), never taken from the object name.
    """
    bucket, path = _checked_object(uri)
    budget = budget or StagingBudget(MAX_STAGED_BYTES_PER_REQUEST)
    try:
        blob = client().bucket(bucket).get_blob(path)
    except (gexc.GoogleAPIError, ValueError) as error:
        raise _translate(uri, error) from error
    if blob is None:
        raise GcsError(f"{uri} does not exist")
    budget.take(uri, int(blob.size or 0))
    suffix = Path(path).suffix.lower()
    target = directory / f"{index:06d}{suffix if suffix[1:].isalnum() and len(suffix) <= 8 else ''}"
    try:
        blob.download_to_filename(str(target))
    except (gexc.GoogleAPIError, ValueError) as error:
        target.unlink(missing_ok=True)
        raise _translate(uri, error) from error
    return str(target)

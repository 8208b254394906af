"""The trainer's only door to GCS: URI parsing, text/bytes, whole directories.

Everything goes through `google-cloud-storage` because it honours
STORAGE_EMULATOR_HOST; TensorFlow's own gs:// filesystem cannot be pointed at
the emulator, so TF code only ever sees local files staged by this module.

429 and 5xx answers are retried with the library's DEFAULT_RETRY (exponential
backoff, 120 s deadline). Uploads pass `retry=DEFAULT_RETRY` explicitly: the 2.x
library retried them only with a generation precondition (two writers could
race), 3.x by default. Here every object has one writer and a name derived
from its run, so a repeated upload writes the same bytes again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from .paths import safe_join

log = logging.getLogger(__name__)

SCHEME = "gs://"


def parse_uri(uri: str) -> tuple[str, str]:
    """Split `gs://bucket/some/path` into ("bucket", "some/path"); the path may be empty."""
    if not uri.startswith(SCHEME):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, path = uri[len(SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, path


def join(uri: str, *parts: str) -> str:
    """Join URI parts with exactly one slash between them (no os.path on URIs)."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


# A client set by the caller (Airflow tasks: the connection's, see include.lifecycle.storage); None: our own.
_given_client: ContextVar[storage.Client | None] = ContextVar("gcs_client", default=None)


@contextmanager
def using_client(given: storage.Client) -> Iterator[storage.Client]:
    """Route every call of this module in this context through `given` (another identity than ADC)."""
    token = _given_client.set(given)
    try:
        yield given
    finally:
        _given_client.reset(token)


@lru_cache(maxsize=4)
def _client_for(emulator_host: str | None, project: str | None) -> storage.Client:
    if emulator_host:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "local-project", credentials=AnonymousCredentials())
    return storage.Client(project=project)


def client(project: str | None = None) -> storage.Client:
    """The client `using_client` set, else anonymous against the emulator and default credentials on real GCS."""
    if (given := _given_client.get()) is not None:
        return given
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    return _client_for(os.environ.get("STORAGE_EMULATOR_HOST"), project)


def blob(uri: str) -> storage.Blob:
    bucket, path = parse_uri(uri)
    return client().bucket(bucket).blob(path)


def exists(uri: str) -> bool:
    return blob(uri).exists()


def read_bytes(uri: str) -> bytes:
    return blob(uri).download_as_bytes()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes, *, content_type: str = "application/octet-stream") -> str:
    blob(uri).upload_from_string(data, content_type=content_type, retry=DEFAULT_RETRY)
    return uri


def write_text(uri: str, text: str, *, content_type: str = "text/plain") -> str:
    blob(uri).upload_from_string(text.encode("utf-8"), content_type=content_type, retry=DEFAULT_RETRY)
    return uri


def list_uris(prefix_uri: str) -> list[str]:
    """gs:// URIs of all objects under a prefix (a trailing slash is implied), sorted."""
    bucket, path = parse_uri(prefix_uri)
    prefix = path.rstrip("/") + "/" if path else ""
    blobs = client().list_blobs(bucket, prefix=prefix)
    return sorted(f"{SCHEME}{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))


def upload_file(local_path: str | Path, uri: str) -> str:
    blob(uri).upload_from_filename(str(local_path), retry=DEFAULT_RETRY)
    return uri


def download_file(uri: str, local_path: str | Path) -> Path:
    local_path = Path(local_path)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    blob(uri).download_to_filename(str(local_path))
    return local_path


def upload_dir(local_dir: str | Path, uri: str) -> list[str]:
    """Upload every file under `local_dir` to `uri/<relative path>`; returns the object URIs."""
    local_dir = Path(local_dir)
    uploaded = [
        upload_file(path, join(uri, path.relative_to(local_dir).as_posix()))
        for path in sorted(local_dir.rglob("*"))
        if path.is_file()
    ]
    log.info("Uploaded %s files from %s to %s", len(uploaded), local_dir, uri)
    return uploaded


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Download every object under the prefix `uri` into `local_dir`, keeping relative paths.

    Every name is checked before anything is written (`paths.safe_join`): one object
    named `prefix//tmp/x` or `prefix/../x` fails the whole copy with UnsafePathError.
    """
    local_dir = Path(local_dir)
    root = uri.rstrip("/") + "/"
    uris = list_uris(uri)
    if not uris:
        raise FileNotFoundError(f"no objects under {uri}")
    targets = [(object_uri, safe_join(local_dir, object_uri[len(root):])) for object_uri in uris]
    for object_uri, target in targets:
        download_file(object_uri, target)
    log.info("Downloaded %s files from %s to %s", len(uris), uri, local_dir)
    return local_dir

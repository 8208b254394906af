"""Where a deployed version's SavedModel lives: the artifact store every replica reads, and this replica's copy.

A deployment copies a model from the caller's ``deploymentUri`` (or Vertex AI's
``artifactUri``) into the service's own directory, so a later change in GCS does
not change a deployed version. With several replicas (``--artifact-uri``) that
copy is also written to the artifact store in GCS (``_artifacts`` on the
version); any replica that serves the version first fetches it from there into
its own state directory (about 20 ms for a small model on the emulator, plus the
load), never reading another replica's disk. One replica alone keeps only its
directory (``_path``).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path

from include.local_platform import gcs
from include.local_platform.context import Context

log = logging.getLogger(__name__)
MAX_FILES = 1000
_fetching = threading.Lock()


def relative(path: Path) -> Path:
    """A version directory's place under any state dir: ``<artifacts root>/<project>/<model>/<version-etag>``."""
    return Path(*Path(path).parts[-4:])


def publish(ctx: Context, directory: Path) -> str:
    """Copy a just deployed version's directory to the artifact store; its gs:// URI ("" with no store)."""
    if not ctx.artifact_uri:
        return ""
    uri = f"{ctx.artifact_uri}/{relative(directory).as_posix()}"
    started = time.monotonic()
    count = gcs.upload_dir(directory, uri)
    log.info("kept %d file(s) of %s in the artifact store %s (%.2f s)", count, directory.name, uri,
             time.monotonic() - started)
    return uri


def ensure_store(ctx: Context) -> None:
    """Create the artifact store's bucket when it is missing (the GCS emulator starts empty)."""
    if not ctx.artifact_uri:
        return
    bucket = gcs.split_uri(ctx.artifact_uri)[0]
    try:
        if gcs.create_bucket_if_missing(bucket):
            log.info("created the artifact store's bucket gs://%s", bucket)
    except gcs.GcsError as error:
        log.warning("the artifact store %s: %s (deployments fail until it is writable)", ctx.artifact_uri, error)


def local_dir(ctx: Context, version: dict) -> Path:
    """This replica's copy of a deployed version, fetched from the artifact store on first use."""
    recorded = Path(version["_path"])
    mine = ctx.state_dir / relative(recorded)
    if mine.is_dir() or not version.get("_artifacts"):
        return mine if mine.is_dir() else recorded
    with _fetching:  # one fetch at a time: a burst of first calls copies once
        if mine.is_dir():
            return mine
        started = time.monotonic()
        partial = ctx.scratch_dir / f"fetch-{uuid.uuid4().hex}"
        try:
            count = gcs.download_prefix(version["_artifacts"], partial, max_files=MAX_FILES)
            mine.parent.mkdir(parents=True, exist_ok=True)
            partial.rename(mine)  # whole or not at all: a crash mid-copy leaves only scratch
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    log.info("fetched %s (%d files) from the artifact store in %.2f s", version["name"], count,
             time.monotonic() - started)
    return mine


def forget(ctx: Context, version: dict) -> None:
    """A deleted version: this replica's copy and the artifact store's go (other replicas drop theirs at start)."""
    if version.get("_path"):
        shutil.rmtree(ctx.state_dir / relative(Path(version["_path"])), ignore_errors=True)
    if version.get("_artifacts"):
        try:
            gcs.delete_prefix(version["_artifacts"])
        except gcs.GcsError as error:
            log.warning("could not delete %s from the artifact store: %s", version["_artifacts"], error)

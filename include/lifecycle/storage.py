"""Small JSON documents on GCS for the DAG tasks, through the trainer's GCS door (google-cloud-storage).

It honours STORAGE_EMULATOR_HOST, so the same calls hit the emulator locally and GCS on GCP.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from datetime import datetime

from include.trainer import gcs

log = logging.getLogger(__name__)

exists = gcs.exists
list_uris = gcs.list_uris
read_text = gcs.read_text
parse_uri = gcs.parse_uri


def ensure_bucket(uri: str) -> None:
    """Create the bucket of `uri` on the emulator when missing; on real GCS a missing bucket is an error."""
    from google.api_core.exceptions import Conflict

    name, _ = gcs.parse_uri(uri)
    client = gcs.client()
    if client.bucket(name).exists():
        return
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        raise FileNotFoundError(f"Bucket gs://{name} does not exist; create it (and set ML_BUCKET) first")
    try:
        client.create_bucket(name)
        log.info("Created bucket gs://%s on the emulator", name)
    except Conflict:
        pass


def read_lines(uri: str) -> Iterator[str]:
    """The lines of a text object, streamed: a large batch output is never held whole in memory."""
    with gcs.blob(uri).open("rt", encoding="utf-8", chunk_size=4 * 1024 * 1024) as stream:
        for line in stream:
            yield line.rstrip("\n")


def updated_times(prefix_uri: str) -> dict[str, datetime]:
    """gs:// URI -> last update time of every object under a prefix (a trailing slash is implied)."""
    bucket, path = gcs.parse_uri(prefix_uri)
    prefix = path.rstrip("/") + "/" if path else ""
    return {f"{gcs.SCHEME}{bucket}/{b.name}": b.updated for b in gcs.client().list_blobs(bucket, prefix=prefix)
            if not b.name.endswith("/")}


def read_json(uri: str):
    """The JSON document at `uri`."""
    return json.loads(gcs.read_text(uri))


def write_json(uri: str, document) -> str:
    """Write `document` as JSON to `uri`; returns the URI."""
    return gcs.write_text(uri, json.dumps(document, indent=2, default=str), content_type="application/json")


def read_jsonl(uri: str) -> list:
    """Every JSON line of the object at `uri` (blank lines skipped)."""
    return [json.loads(line) for line in gcs.read_text(uri).splitlines() if line.strip()]


def usage(uri: str) -> tuple[int, int]:
    """Objects and bytes at `uri` (one object, or everything under it as a prefix), for the task logs."""
    bucket, path = gcs.parse_uri(uri)
    blobs = [b for b in gcs.client().list_blobs(bucket, prefix=path)
             if b.name == path or b.name.startswith(path.rstrip("/") + "/")]
    return len(blobs), sum(b.size or 0 for b in blobs)


def first_choice(uri: str, choose: Callable[[], dict]) -> dict:
    """The document a run's first attempt chose and wrote at `uri`; `choose()` only when there is none yet.

    A cleared or retried task then repeats its first choice (the same version to
    roll back to, the same batch target) instead of deciding again on a changed world.

    :param uri: gs:// object that records the choice, named from the run.
    :param choose: makes the choice; what it raises propagates and nothing is written.
    :return: the recorded choice.
    """
    if gcs.exists(uri):
        chosen = read_json(uri)
        log.info("Re-run: keeping the choice recorded first at %s: %s", uri, chosen)
        return chosen
    chosen = choose()
    ensure_bucket(uri)
    write_json(uri, chosen)
    return chosen

"""Small JSON documents on GCS for the DAG tasks, through the trainer's GCS door (google-cloud-storage).

It honours STORAGE_EMULATOR_HOST, so the same calls hit the emulator locally and GCS on GCP.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
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
    return json.loads(gcs.read_text(uri))


def write_json(uri: str, document) -> str:
    return gcs.write_text(uri, json.dumps(document, indent=2, default=str), content_type="application/json")


def read_jsonl(uri: str) -> list:
    return [json.loads(line) for line in gcs.read_text(uri).splitlines() if line.strip()]

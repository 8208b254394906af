"""Small JSON documents and object listings on GCS for the DAG tasks, as the Airflow connection's identity.

Calls go through the trainer's GCS module (google-cloud-storage, which honours
STORAGE_EMULATOR_HOST) with the client of the connection `config.gcp_conn_id`
(`ml_engine.gcs.storage_client`): the identity of the tasks' ml/v1 calls, not
application-default credentials.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from include.trainer import gcs

log = logging.getLogger(__name__)

parse_uri = gcs.parse_uri


def client():
    """The google-cloud-storage client of the Airflow connection (anonymous against the emulator)."""
    from ml_engine.gcs import storage_client

    from include import config

    return storage_client(config.load().gcp_conn_id)


@contextmanager
def connection_identity() -> Iterator:
    """Inside, every call of the trainer's GCS module (include.trainer.gcs) runs as the Airflow connection."""
    with gcs.using_client(client()) as given:
        yield given


def exists(uri: str) -> bool:
    with connection_identity():
        return gcs.exists(uri)


def list_uris(prefix_uri: str) -> list[str]:
    with connection_identity():
        return gcs.list_uris(prefix_uri)


def read_text(uri: str) -> str:
    with connection_identity():
        return gcs.read_text(uri)


def ensure_bucket(uri: str) -> None:
    """Create the bucket of `uri` on the emulator when missing; on real GCS a missing bucket is an error."""
    from google.api_core.exceptions import Conflict
    from ml_engine.gcs import emulator_host

    name, _ = gcs.parse_uri(uri)
    storage_client = client()
    if storage_client.bucket(name).exists():
        return
    if not emulator_host():
        raise FileNotFoundError(f"Bucket gs://{name} does not exist; create it (and set ML_BUCKET) first")
    try:
        storage_client.create_bucket(name)
        log.info("Created bucket gs://%s on the emulator", name)
    except Conflict:
        pass


def read_lines(uri: str) -> Iterator[str]:
    """The lines of a text object, streamed: a large batch output is never held whole in memory."""
    bucket, path = gcs.parse_uri(uri)
    with client().bucket(bucket).blob(path).open("rt", encoding="utf-8", chunk_size=4 * 1024 * 1024) as stream:
        for line in stream:
            yield line.rstrip("\n")


def updated_times(prefix_uri: str) -> dict[str, datetime]:
    """gs:// URI -> last update time of every object under a prefix (a trailing slash is implied)."""
    bucket, path = gcs.parse_uri(prefix_uri)
    prefix = path.rstrip("/") + "/" if path else ""
    return {f"{gcs.SCHEME}{bucket}/{b.name}": b.updated for b in client().list_blobs(bucket, prefix=prefix)
            if not b.name.endswith("/")}


def read_json(uri: str):
    return json.loads(read_text(uri))


def write_json(uri: str, document) -> str:
    with connection_identity():
        return gcs.write_text(uri, json.dumps(document, indent=2, default=str), content_type="application/json")


def read_jsonl(uri: str) -> list:
    return [json.loads(line) for line in read_text(uri).splitlines() if line.strip()]

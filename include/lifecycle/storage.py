"""Small JSON documents and object listings on GCS for the DAG tasks, as the Airflow connection's identity.

Calls go through the trainer's GCS module (google-cloud-storage, which honours
STORAGE_EMULATOR_HOST) with the client of the connection `config.gcp_conn_id`
(`ml_engine.gcs.storage_client`): the identity of the tasks' ml/v1 calls, not
application-default credentials.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
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


def listing(prefix_uri: str) -> tuple[list[str], bool]:
    """The folder names directly under a prefix, and whether objects lie directly in it (one listing call)."""
    bucket, path = gcs.parse_uri(prefix_uri)
    prefix = path.rstrip("/") + "/" if path else ""
    pages = client().list_blobs(bucket, prefix=prefix, delimiter="/")
    objects = any(not blob.name.endswith("/") for blob in pages)  # iterating fills pages.prefixes
    return sorted(folder[len(prefix):].rstrip("/") for folder in pages.prefixes), objects


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
    """The JSON document at ``uri``."""
    return json.loads(read_text(uri))


def write_json(uri: str, document) -> str:
    """Write ``document`` as JSON to ``uri``; returns the URI."""
    with connection_identity():
        return gcs.write_text(uri, json.dumps(document, indent=2, default=str), content_type="application/json")


def read_jsonl(uri: str) -> list:
    """Every JSON line of the object at ``uri`` (blank lines skipped)."""
    return [json.loads(line) for line in read_text(uri).splitlines() if line.strip()]


def usage(uri: str) -> tuple[int, int]:
    """Objects and bytes at ``uri`` (one object, or everything under it as a prefix), for the task logs."""
    bucket, path = gcs.parse_uri(uri)
    blobs = [b for b in client().list_blobs(bucket, prefix=path)
             if b.name == path or b.name.startswith(path.rstrip("/") + "/")]
    return len(blobs), sum(b.size or 0 for b in blobs)


def first_choice(uri: str, choose: Callable[[], dict]) -> dict:
    """The document a run's first attempt chose and wrote at ``uri``; ``choose()`` only when there is none yet.

    A cleared or retried task then repeats its first choice (the same version to
    roll back to, the same batch target) instead of deciding again on a changed world.

    :param uri: gs:// object that records the choice, named from the run.
    :param choose: makes the choice; what it raises propagates and nothing is written.
    :return: the recorded choice.
    """
    if exists(uri):
        chosen = read_json(uri)
        log.info("Re-run: keeping the choice recorded first at %s: %s", uri, chosen)
        return chosen
    chosen = choose()
    ensure_bucket(uri)
    write_json(uri, chosen)
    return chosen

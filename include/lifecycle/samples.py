"""Sample inputs for smoke tests and batch jobs, built with the trainer's instance builders.

Images come from the toy generator with a fixed seed, so a re-run writes the
same files. `bad` adds inputs the model cannot read (not a JPEG, a missing
image, a wrong shape, a corrupt record) so the batch error path can be seen and tested.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOKE_SEED = 7
BATCH_SEED = 11


def _images(count: int, image_size: int, seed: int, prefix: str) -> tuple[list[bytes], list[str]]:
    from include.trainer import instances, synthetic

    images, _ = synthetic.make_examples(count, image_size, seed)
    return instances.to_jpegs(images, keys=[f"{prefix}-{i:05d}" for i in range(count)])


def write_smoke_instances(uri: str, *, variant: str, count: int, image_size: int) -> dict:
    """A JSON-lines instance file for one variant; returns {"uri", "keys", ...}."""
    from include.lifecycle import storage
    from include.trainer import instances

    jpegs, keys = _images(count, image_size, SMOKE_SEED, "smoke")
    with storage.connection_identity():
        return instances.write_instances(variant, jpegs, uri, keys=keys, image_size=image_size)


def _bad_json_lines(variant: str, count: int, missing_uri: str) -> list[dict]:
    lines = []
    for n in range(count):
        key = f"bad-{n:05d}"
        if variant == "b64":
            lines.append({"image_bytes": {"b64": base64.b64encode(b"this is not a jpeg").decode()}, "key": key})
        elif variant == "url":
            lines.append({"image_url": f"{missing_uri}/{key}.jpg", "key": key})
        elif variant == "instances":
            lines.append({"image": [[0.5, 0.5]], "key": key})
        else:
            lines.append({"examples": {"b64": base64.b64encode(b"not a tf.Example").decode()}})
    return lines


def write_batch_inputs(prefix: str, *, variant: str, count: int, bad: int = 0, image_size: int = 32) -> dict:
    """Batch inputs under `prefix` for `variant`: {"input_paths", "data_format", "count", "bad", "generated"}."""
    from include.lifecycle import storage

    with storage.connection_identity():
        return _write_batch_inputs(prefix, variant=variant, count=count, bad=bad, image_size=image_size)


def _write_batch_inputs(prefix: str, *, variant: str, count: int, bad: int, image_size: int) -> dict:
    from include.trainer import gcs, instances

    jpegs, keys = _images(count, image_size, BATCH_SEED, "sample")
    tfrecord = variant == "tfexample"
    good_uri = f"{prefix}/samples.{'tfrecord' if tfrecord else 'jsonl'}"
    instances.write_instances(variant, jpegs, good_uri, keys=keys, image_size=image_size)
    paths = [good_uri]
    if bad:
        if tfrecord:
            import tensorflow as tf

            with tempfile.TemporaryDirectory(prefix="bad-records-") as tmp:
                path = Path(tmp) / "bad.tfrecord"
                with tf.io.TFRecordWriter(str(path)) as writer:
                    for n in range(bad):
                        writer.write(f"corrupt record {n}".encode())
                paths.append(gcs.upload_file(path, f"{prefix}/bad.tfrecord"))
        else:
            lines = _bad_json_lines(variant, bad, f"{prefix}/missing")
            paths.append(gcs.write_text(f"{prefix}/bad.jsonl", "".join(json.dumps(x) + "\n" for x in lines)))
    log.info("Wrote %s sample inputs (+%s unreadable) for the %s variant under %s", count, bad, variant, prefix)
    return {"input_paths": paths, "data_format": "TF_RECORD" if tfrecord else "JSON", "count": count,
            "bad": bad, "generated": True}

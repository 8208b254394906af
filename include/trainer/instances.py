"""Instance files for each serving variant: what ml/v1 users wrote by hand as image_to_json scripts.

Builders turn images into JSON-lines files (one instance per line) or a TFRecord
file of serialized tf.Examples (batch jobs with dataFormat TF_RECORD), on GCS,
for smoke tests and batch prediction inputs. Readers decode them back into the
signature inputs, which is how export verification and the tests call the
SavedModels, so a file that verifies is a file the service can serve.

    instances  {"image": [[[r, g, b], ...]], "key": "img-00001"}   floats in [0, 1], 6 decimals
    b64        {"image_bytes": {"b64": "<JPEG>"}, "key": "img-00001"}
    url        {"image_url": "gs://bucket/images/img-00001.jpg", "key": "img-00001"}
    tfexample  {"examples": {"b64": "<serialized tf.Example>"}}      (or one record per example)
"""

from __future__ import annotations

import base64
import json
import logging
import posixpath
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import data, features, gcs
from .serving import B64, INSTANCES, TFEXAMPLE, URL, VARIANTS

log = logging.getLogger(__name__)

JSONL = "jsonl"
TFRECORD = "tfrecord"
FLOAT_DECIMALS = 6
DEFAULT_SOURCE_LIMIT = 16

ImagesOrSource = str | np.ndarray | Sequence[np.ndarray] | Sequence[bytes]


def _b64(data_bytes: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data_bytes).decode("ascii")}


def _unb64(value: dict | str | bytes) -> bytes:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _read_source(source_uri: str, limit: int) -> tuple[list[bytes], list[str]]:
    """JPEGs and keys from a dataset prefix (its eval split) or a single TFRecord file on GCS."""
    with tempfile.TemporaryDirectory(prefix="trainer-instances-") as tmp:
        if gcs.exists(source_uri):
            files = [str(gcs.download_file(source_uri, Path(tmp) / "source.tfrecord"))]
        else:
            files = data.stage_dataset(source_uri, tmp).eval_files
        spec = features.serving_feature_spec()
        jpegs, keys = [], []
        for record in tf.data.TFRecordDataset(files).take(limit):
            parsed = tf.io.parse_single_example(record, spec)
            jpegs.append(parsed[features.IMAGE_FEATURE].numpy())
            keys.append(parsed[features.KEY_FEATURE].numpy().decode("utf-8"))
    return jpegs, keys


def to_jpegs(images_or_source: ImagesOrSource, *, keys: Sequence[str] | None = None,
             limit: int = DEFAULT_SOURCE_LIMIT) -> tuple[list[bytes], list[str]]:
    """Normalise any accepted input to (JPEG bytes, keys).

    Accepted: a gs:// dataset prefix or TFRecord file (up to `limit` examples, keys
    from the data), uint8 images [N, H, W, 3] or a list of them, or JPEG bytes.
    """
    source_keys: list[str] | None = None
    if isinstance(images_or_source, str):
        jpegs, source_keys = _read_source(images_or_source, limit)
    elif isinstance(images_or_source, np.ndarray) or (
            len(images_or_source) and isinstance(images_or_source[0], np.ndarray)):
        jpegs = [features.encode_jpeg(np.asarray(image, np.uint8)) for image in images_or_source]
    else:
        jpegs = [bytes(j) for j in images_or_source]
    keys = list(keys) if keys is not None else source_keys or [f"img-{i:05d}" for i in range(len(jpegs))]
    if len(keys) != len(jpegs):
        raise ValueError(f"{len(keys)} keys for {len(jpegs)} images")
    return jpegs, keys


def jpeg_size(jpeg: bytes) -> int:
    """Side of a square JPEG, the default image size for the float instances."""
    height, width, _ = tf.io.extract_jpeg_shape(jpeg).numpy().tolist()
    if height != width:
        raise ValueError(f"image is {height}x{width}; pass image_size to resize it")
    return int(height)


def build_instances(variant: str, jpegs: Sequence[bytes], keys: Sequence[str], *,
                    image_size: int | None = None, image_urls: Sequence[str] | None = None) -> list[dict]:
    """The JSON instances for `variant`, in memory (what one line of the file holds)."""
    if variant == INSTANCES:
        size = image_size or (jpeg_size(jpegs[0]) if jpegs else features.DEFAULT_IMAGE_SIZE)
        pixels = np.round(features.decode_jpeg_numpy(list(jpegs), size), FLOAT_DECIMALS)
        return [{"image": image.tolist(), "key": key} for image, key in zip(pixels, keys, strict=True)]
    if variant == B64:
        return [{"image_bytes": _b64(jpeg), "key": key} for jpeg, key in zip(jpegs, keys, strict=True)]
    if variant == URL:
        if image_urls is None or len(image_urls) != len(jpegs):
            raise ValueError("the url variant needs one image URL per image (see upload_images)")
        return [{"image_url": url, "key": key} for url, key in zip(image_urls, keys, strict=True)]
    if variant == TFEXAMPLE:
        return [{"examples": _b64(features.make_example(jpeg, key))} for jpeg, key in
                zip(jpegs, keys, strict=True)]
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def upload_images(jpegs: Sequence[bytes], keys: Sequence[str], images_uri: str) -> list[str]:
    """Upload JPEGs as `<images_uri>/<key>.jpg` for the url variant; returns their gs:// URIs."""
    uris = [gcs.write_bytes(gcs.join(images_uri, f"{key}.jpg"), jpeg, content_type="image/jpeg")
            for jpeg, key in zip(jpegs, keys, strict=True)]
    log.info("Uploaded %s images to %s", len(uris), images_uri)
    return uris


def write_instances(
    variant: str,
    images_or_source: ImagesOrSource,
    output_uri: str,
    *,
    keys: Sequence[str] | None = None,
    image_size: int | None = None,
    images_uri: str | None = None,
    data_format: str | None = None,
    limit: int = DEFAULT_SOURCE_LIMIT,
) -> dict:
    """Write the instance file for `variant` to `output_uri`; returns a small JSON-able summary.

    `data_format` is "jsonl" (default) or "tfrecord" (tfexample only: one serialized
    tf.Example per record, ml/v1's TF_RECORD batch input); a `.tfrecord` suffix picks it.
    The url variant uploads the JPEGs to `images_uri` (default: `images/` beside the file).
    """
    data_format = data_format or (TFRECORD if output_uri.endswith(".tfrecord") else JSONL)
    if data_format not in (JSONL, TFRECORD):
        raise ValueError(f"data_format must be {JSONL!r} or {TFRECORD!r}, not {data_format!r}")
    if data_format == TFRECORD and variant != TFEXAMPLE:
        raise ValueError("TFRecord instance files hold serialized tf.Examples: only the tfexample variant")
    jpegs, keys = to_jpegs(images_or_source, keys=keys, limit=limit)
    summary = {"uri": output_uri, "variant": variant, "data_format": data_format, "count": len(jpegs),
               "keys": list(keys)}

    if data_format == TFRECORD:
        with tempfile.TemporaryDirectory(prefix="trainer-instances-") as tmp:
            path = Path(tmp) / "instances.tfrecord"
            with tf.io.TFRecordWriter(str(path)) as writer:
                for jpeg, key in zip(jpegs, keys, strict=True):
                    writer.write(features.make_example(jpeg, key))
            gcs.upload_file(path, output_uri)
    else:
        image_urls = None
        if variant == URL:
            images_uri = images_uri or gcs.join(posixpath.dirname(output_uri), "images")
            image_urls = upload_images(jpegs, keys, images_uri)
            summary["images_uri"] = images_uri
        lines = build_instances(variant, jpegs, keys, image_size=image_size, image_urls=image_urls)
        body = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
        gcs.write_text(output_uri, body, content_type="application/jsonl")
    log.info("Wrote %s %s instances (%s) to %s", len(jpegs), variant, data_format, output_uri)
    return summary


def read_instances(uri: str) -> list[dict]:
    """The JSON instances of a JSON-lines file on GCS, one dict per non-empty line."""
    return [json.loads(line) for line in gcs.read_text(uri).splitlines() if line.strip()]


def read_tfrecord_instances(uri: str) -> list[bytes]:
    """The records of a TFRecord instance file on GCS (serialized tf.Examples)."""
    with tempfile.TemporaryDirectory(prefix="trainer-instances-") as tmp:
        path = gcs.download_file(uri, Path(tmp) / "instances.tfrecord")
        return [record.numpy() for record in tf.data.TFRecordDataset(str(path))]


def to_signature_inputs(variant: str, instances: Sequence[dict], *, stage_dir: str | Path | None = None
                        ) -> dict[str, tf.Tensor]:
    """Decoded instances -> the tensors `serving_default` takes, as the ml/v1 service feeds them.

    {"b64": ...} becomes bytes; gs:// image URLs are staged into `stage_dir` and
    replaced by local paths (TF's gs:// filesystem cannot reach the emulator).
    """
    if variant == INSTANCES:
        return {"image": tf.constant(np.asarray([i["image"] for i in instances], np.float32)),
                "key": tf.constant([i["key"] for i in instances])}
    if variant == B64:
        return {"image_bytes": tf.constant([_unb64(i["image_bytes"]) for i in instances]),
                "key": tf.constant([i["key"] for i in instances])}
    if variant == URL:
        urls = [i["image_url"] for i in instances]
        if any(url.startswith(gcs.SCHEME) for url in urls):
            if stage_dir is None:
                raise ValueError("gs:// image URLs need a stage_dir to download into")
            urls = [str(gcs.download_file(url, Path(stage_dir) / f"{n:05d}.jpg")) if url.startswith(
                gcs.SCHEME) else url for n, url in enumerate(urls)]
        return {"image_url": tf.constant(urls), "key": tf.constant([i["key"] for i in instances])}
    if variant == TFEXAMPLE:
        return {"examples": tf.constant([_unb64(i["examples"]) for i in instances])}
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")

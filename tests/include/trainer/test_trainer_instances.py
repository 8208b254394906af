"""instances.py: every builder's file decodes back to the images and keys it was built from."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from include.trainer import features, gcs, instances, synthetic

SIZE = 12
KEYS = ["cat-1", "dog/2", "img 3"]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic.make_examples(len(KEYS), SIZE, seed=11)[0]


@pytest.fixture(scope="module")
def jpegs(images) -> list[bytes]:
    return [features.encode_jpeg(image) for image in images]


def _parse(serialized: bytes) -> tuple[bytes, str]:
    parsed = tf.io.parse_single_example(serialized, features.serving_feature_spec())
    return parsed[features.IMAGE_FEATURE].numpy(), parsed[features.KEY_FEATURE].numpy().decode()


def test_float_instances_round_trip(bucket, gcs_prefix, images, jpegs):
    uri = f"gs://{bucket.name}/{gcs_prefix}/instances.json"
    summary = instances.write_instances("instances", images, uri, keys=KEYS)
    assert summary == {"uri": uri, "variant": "instances", "data_format": "jsonl", "count": 3, "keys": KEYS}

    lines = instances.read_instances(uri)
    assert [set(line) for line in lines] == [{"image", "key"}] * 3
    assert [line["key"] for line in lines] == KEYS
    inputs = instances.to_signature_inputs("instances", lines)
    assert inputs["image"].shape == (3, SIZE, SIZE, 3) and inputs["image"].dtype == tf.float32
    # The floats are the decoded JPEG pixels every byte variant sees, to 6 decimals.
    np.testing.assert_allclose(inputs["image"].numpy(), features.decode_jpeg_numpy(jpegs, SIZE), atol=5e-7)


def test_b64_instances_round_trip(bucket, gcs_prefix, images, jpegs):
    uri = f"gs://{bucket.name}/{gcs_prefix}/b64.json"
    instances.write_instances("b64", images, uri, keys=KEYS)

    lines = instances.read_instances(uri)
    assert [set(line["image_bytes"]) for line in lines] == [{"b64"}] * 3
    inputs = instances.to_signature_inputs("b64", lines)
    assert inputs["image_bytes"].numpy().tolist() == jpegs
    assert [k.decode() for k in inputs["key"].numpy()] == KEYS


def test_url_instances_upload_images(bucket, gcs_prefix, images, jpegs, tmp_path):
    root = f"gs://{bucket.name}/{gcs_prefix}"
    summary = instances.write_instances("url", images, f"{root}/url.json", keys=KEYS)
    assert summary["images_uri"] == f"{root}/images"

    lines = instances.read_instances(f"{root}/url.json")
    assert [line["image_url"] for line in lines] == [f"{root}/images/{k}.jpg" for k in KEYS]
    assert [gcs.read_bytes(line["image_url"]) for line in lines] == jpegs
    inputs = instances.to_signature_inputs("url", lines, stage_dir=tmp_path)
    staged = [p.decode() for p in inputs["image_url"].numpy()]
    assert all(not p.startswith("gs://") for p in staged)
    assert [tf.io.read_file(p).numpy() for p in staged] == jpegs
    with pytest.raises(ValueError, match="stage_dir"):
        instances.to_signature_inputs("url", lines)


def test_tfexample_instances_round_trip(bucket, gcs_prefix, images, jpegs):
    root = f"gs://{bucket.name}/{gcs_prefix}"
    instances.write_instances("tfexample", images, f"{root}/examples.json", keys=KEYS)
    lines = instances.read_instances(f"{root}/examples.json")
    assert [set(line) for line in lines] == [{"examples"}] * 3
    examples = instances.to_signature_inputs("tfexample", lines)["examples"].numpy().tolist()
    assert [_parse(e) for e in examples] == list(zip(jpegs, KEYS, strict=True))

    # The TF_RECORD form for batch jobs: one serialized tf.Example per record, same content.
    summary = instances.write_instances("tfexample", jpegs, f"{root}/examples.tfrecord", keys=KEYS)
    assert summary["data_format"] == "tfrecord"
    assert instances.read_tfrecord_instances(f"{root}/examples.tfrecord") == examples


def test_tfrecord_is_only_for_tfexample(bucket, gcs_prefix, images):
    with pytest.raises(ValueError, match="tfexample"):
        instances.write_instances("b64", images, f"gs://{bucket.name}/{gcs_prefix}/x.tfrecord")
    with pytest.raises(ValueError, match="unknown variant"):
        instances.build_instances("png", [], [])


def test_instances_from_a_dataset_prefix(tiny_data, bucket, gcs_prefix):
    uri = f"gs://{bucket.name}/{gcs_prefix}/from-data.json"
    summary = instances.write_instances("b64", tiny_data[0], uri, limit=3)
    assert summary["count"] == 3
    assert all(key.startswith("img-") for key in summary["keys"])
    assert [line["key"] for line in instances.read_instances(uri)] == summary["keys"]

"""export.py: every variant, loaded from GCS, agrees with the Keras model on the instance files' inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from include.trainer import export, features, gcs, instances, synthetic
from include.trainer.model import build_model
from include.trainer.serving import VARIANTS

KEYS = [f"smoke-{i}" for i in range(5)]
SIGNATURE_INPUTS = {
    "instances": {"image": (tf.float32, [None, "S", "S", 3]), "key": (tf.string, [None])},
    "b64": {"image_bytes": (tf.string, [None]), "key": (tf.string, [None])},
    "url": {"image_url": (tf.string, [None]), "key": (tf.string, [None])},
    "tfexample": {"examples": (tf.string, [None])},
}


@pytest.fixture(scope="module")
def loaded(tiny_export, tmp_path_factory) -> dict:
    """Each variant downloaded from GCS and loaded the way the serving service loads it."""
    root = tmp_path_factory.mktemp("exported")
    return {v: tf.saved_model.load(str(gcs.download_dir(uri, root / v))) for v, uri in tiny_export.items()}


@pytest.fixture(scope="module")
def smoke_images(tiny_data) -> np.ndarray:
    return synthetic.make_examples(len(KEYS), tiny_data[1]["image_size"], seed=99)[0]


def test_every_variant_is_exported_and_verified(tiny_export, trainer_root):
    assert set(tiny_export) == set(VARIANTS)
    for variant, uri in tiny_export.items():
        assert uri == f"{trainer_root}/export/{variant}"
        names = {u[len(uri) + 1:] for u in gcs.list_uris(uri)}
        assert {"saved_model.pb", "variables/variables.index"} <= names
    report = json.loads(gcs.read_text(f"{trainer_root}/export/verification.json"))
    assert report["tolerance"] == export.TOLERANCE
    assert all(diff <= export.TOLERANCE for diff in report["max_abs_diff"].values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_signature_matches_contract(loaded, variant, tiny_data):
    size = tiny_data[1]["image_size"]
    signature = loaded[variant].signatures["serving_default"]
    _, kwargs = signature.structured_input_signature
    expected = {name: (dtype, [size if d == "S" else d for d in shape])
                for name, (dtype, shape) in SIGNATURE_INPUTS[variant].items()}
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in kwargs.items()} == expected
    outputs = signature.structured_outputs
    assert (outputs["heatmap"].dtype, outputs["heatmap"].shape.as_list()) == (tf.float32, [None, size, size])
    assert (outputs["key"].dtype, outputs["key"].shape.as_list()) == (tf.string, [None])


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_agrees_with_keras_on_instance_file(variant, loaded, tiny_model, smoke_images, bucket, gcs_prefix,
                                                    tmp_path):
    uri = f"gs://{bucket.name}/{gcs_prefix}/{variant}.json"
    instances.write_instances(variant, smoke_images, uri, keys=KEYS)
    inputs = instances.to_signature_inputs(variant, instances.read_instances(uri), stage_dir=tmp_path)

    outputs = loaded[variant].signatures["serving_default"](**inputs)

    size = smoke_images.shape[1]
    jpegs = [features.encode_jpeg(image) for image in smoke_images]
    pixels = inputs["image"] if variant == "instances" else features.decode_jpeg_numpy(jpegs, size)
    expected = np.asarray(tiny_model(pixels, training=False))
    assert outputs["heatmap"].shape == (len(KEYS), size, size)
    assert np.max(np.abs(outputs["heatmap"].numpy() - expected)) <= export.TOLERANCE
    assert [k.decode() for k in outputs["key"].numpy()] == KEYS


def test_tfexample_variant_reads_tfrecord_batch_input(loaded, tiny_model, smoke_images, bucket, gcs_prefix):
    uri = f"gs://{bucket.name}/{gcs_prefix}/batch.tfrecord"
    instances.write_instances("tfexample", smoke_images, uri, keys=KEYS)
    records = instances.read_tfrecord_instances(uri)

    outputs = loaded["tfexample"].signatures["serving_default"](examples=tf.constant(records))

    pixels = features.decode_jpeg_numpy([features.encode_jpeg(i) for i in smoke_images], smoke_images.shape[1])
    assert np.max(np.abs(outputs["heatmap"].numpy() - np.asarray(tiny_model(pixels)))) <= export.TOLERANCE
    assert [k.decode() for k in outputs["key"].numpy()] == KEYS


def test_all_variants_agree_with_each_other(loaded, smoke_images, bucket, gcs_prefix, tmp_path):
    heatmaps = {}
    for variant in VARIANTS:
        built = instances.write_instances(variant, smoke_images, f"gs://{bucket.name}/{gcs_prefix}/{variant}.json")
        inputs = instances.to_signature_inputs(variant, instances.read_instances(built["uri"]),
                                               stage_dir=tmp_path / variant)
        heatmaps[variant] = loaded[variant].signatures["serving_default"](**inputs)["heatmap"].numpy()
    for variant in set(VARIANTS) - {"instances"}:
        np.testing.assert_allclose(heatmaps[variant], heatmaps["instances"], atol=export.TOLERANCE)


def test_verification_catches_a_model_mismatch(tiny_export, tiny_model, smoke_images, tmp_path):
    other = build_model(smoke_images.shape[1])  # same architecture, other weights
    local = gcs.download_dir(tiny_export["b64"], tmp_path / "b64")
    jpegs = [features.encode_jpeg(image) for image in smoke_images]
    assert export.verify_saved_model(local, "b64", tiny_model, jpegs, KEYS, stage_dir=tmp_path) <= export.TOLERANCE
    with pytest.raises(export.VerificationError, match="exceeds"):
        export.verify_saved_model(local, "b64", other, jpegs, KEYS, stage_dir=tmp_path)


def test_unknown_variant_is_rejected_before_any_work(tiny_job, trainer_root):
    with pytest.raises(ValueError, match="unknown variants"):
        export.export_variants(tiny_job[0], f"{trainer_root}/never", variants=("instances", "png"))
    assert not gcs.list_uris(f"{trainer_root}/never")

"""data.py: the generated dataset round-trips through GCS and tf.data; generation is idempotent."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from include.trainer import data, features, gcs, synthetic


def test_synthetic_examples_are_seeded_and_in_range():
    images, heatmaps = synthetic.make_examples(6, 16, seed=3)
    again, _ = synthetic.make_examples(6, 16, seed=3)
    other, _ = synthetic.make_examples(6, 16, seed=4)
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert heatmaps.shape == (6, 16, 16) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    np.testing.assert_array_equal(images, again)
    assert not np.array_equal(images, other)


def _keys_of(files: list[str]) -> list[str]:
    spec = features.serving_feature_spec()
    return [tf.io.parse_single_example(r, spec)["key"].numpy().decode() for r in tf.data.TFRecordDataset(files)]


def test_generated_dataset_round_trips(tiny_data, tmp_path):
    uri, summary = tiny_data
    n, size = summary["num_examples"], summary["image_size"]
    assert summary["train_examples"] + summary["eval_examples"] == n
    assert summary["eval_examples"] == round(n * data.DEFAULT_EVAL_FRACTION)
    assert data.read_summary(uri) == summary

    splits = data.stage_dataset(uri, tmp_path)
    assert (splits.image_size, splits.train_examples, splits.eval_examples) == (
        size, summary["train_examples"], summary["eval_examples"])
    train_keys, eval_keys = _keys_of(splits.train_files), _keys_of(splits.eval_files)
    assert not set(train_keys) & set(eval_keys)
    assert sorted(train_keys + eval_keys) == [f"img-{i:05d}" for i in range(n)]

    # What tf.data yields is the generator's data: same heatmaps, JPEG-close pixels.
    images, heatmaps = synthetic.make_examples(n, size, seed=summary["seed"])
    batches = list(data.make_dataset(splits, "eval", batch_size=4))
    got_images = np.concatenate([b[0].numpy() for b in batches])
    got_heatmaps = np.concatenate([b[1].numpy() for b in batches])
    assert got_images.shape == (summary["eval_examples"], size, size, 3)
    assert got_heatmaps.shape == (summary["eval_examples"], size, size)
    index = [int(k.split("-")[1]) for k in eval_keys]
    np.testing.assert_allclose(got_heatmaps, heatmaps[index], atol=1e-6)
    assert np.abs(got_images - images[index] / 255.0).mean() < 0.02
    assert sum(b[0].shape[0] for b in data.make_dataset(splits, "train", batch_size=8)) == len(train_keys)


def test_generate_dataset_is_idempotent(tiny_data, gcs_client):
    uri, summary = tiny_data
    bucket_name, prefix = gcs.parse_uri(uri)
    before = {b.name: b.generation for b in gcs_client.list_blobs(bucket_name, prefix=prefix + "/")}

    again = data.generate_dataset(uri, num_examples=summary["num_examples"], image_size=summary["image_size"],
                                  seed=summary["seed"])

    assert again == summary
    after = {b.name: b.generation for b in gcs_client.list_blobs(bucket_name, prefix=prefix + "/")}
    assert after == before  # nothing rewritten
    with pytest.raises(ValueError, match="already holds a dataset"):
        data.generate_dataset(uri, num_examples=summary["num_examples"] + 1, image_size=summary["image_size"],
                              seed=summary["seed"])


def _write_user_records(tmp_path, uri: str, name: str, start: int, count: int, size: int) -> None:
    images, heatmaps = synthetic.make_examples(count, size, seed=start)
    path = tmp_path / name
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(count):
            writer.write(features.make_example(features.encode_jpeg(images[i]), f"user-{start + i}", heatmaps[i]))
    gcs.upload_file(path, gcs.join(uri, name))


def test_user_dataset_without_eval_files_is_split_by_key_hash(bucket, gcs_prefix, tmp_path):
    uri = f"gs://{bucket.name}/{gcs_prefix}/user"
    _write_user_records(tmp_path, uri, "part-0.tfrecord", 0, 40, 12)

    splits = data.stage_dataset(uri, tmp_path / "stage", seed=5)
    assert splits.hash_split and splits.image_size == 12
    assert splits.train_examples + splits.eval_examples == 40 and splits.eval_examples > 0
    train = sum(b[0].shape[0] for b in data.make_dataset(splits, "train", batch_size=64, seed=5))
    evals = sum(b[0].shape[0] for b in data.make_dataset(splits, "eval", batch_size=64, seed=5))
    assert (train, evals) == (splits.train_examples, splits.eval_examples)
    # Same seed, same split.
    assert data.stage_dataset(uri, tmp_path / "again", seed=5).eval_examples == splits.eval_examples


def test_user_dataset_with_eval_files(bucket, gcs_prefix, tmp_path):
    uri = f"gs://{bucket.name}/{gcs_prefix}/user"
    _write_user_records(tmp_path, uri, "train.tfrecord", 0, 10, 8)
    _write_user_records(tmp_path, uri, "eval.tfrecord", 100, 4, 8)

    splits = data.stage_dataset(uri, tmp_path / "stage")
    assert not splits.hash_split
    assert (splits.train_examples, splits.eval_examples, splits.image_size) == (10, 4, 8)

"""Training data on GCS: generate the toy dataset as TFRecords, read any dataset back with tf.data.

Layout under a data prefix (what `generate_dataset` writes, `summary.json` last
as the completion marker):

    <prefix>/train-00000-of-00002.tfrecord ...  tf.Examples: image/encoded, heatmap, key
    <prefix>/eval-00000-of-00001.tfrecord ...
    <prefix>/summary.json

User datasets need no summary: every object under the prefix is a TFRecord
file; names containing "eval" or "valid" form the held-out split, and if there
are none the split is made from a hash of each example's key and the seed.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import features, gcs, synthetic

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
DATA_FORMAT = "heatmap-tfrecord/v1"
DEFAULT_NUM_EXAMPLES = 1024
DEFAULT_EVAL_FRACTION = 0.2
DEFAULT_SEED = 42
EXAMPLES_PER_SHARD = 512
_EVAL_NAME_HINTS = ("eval", "valid")
_NOT_RECORDS = (".json", ".txt", ".md")
_SHARD_NAME = re.compile(r"^(train|eval)-\d{5}-of-\d{5}\.tfrecord$")


def is_unfinished_generation(data_uri: str) -> bool:
    """True when the prefix holds only our shard files and no summary: a generation cut short."""
    uris = gcs.list_uris(data_uri)
    return bool(uris) and all(_SHARD_NAME.match(posixpath.basename(u)) for u in uris)


def summary_uri(data_uri: str) -> str:
    return gcs.join(data_uri, SUMMARY_NAME)


def read_summary(data_uri: str) -> dict | None:
    """The dataset summary, or None when the prefix holds no generated dataset."""
    uri = summary_uri(data_uri)
    return json.loads(gcs.read_text(uri)) if gcs.exists(uri) else None


def _write_shards(examples: list[bytes], split: str, local_dir: Path) -> list[Path]:
    num_shards = max(1, -(-len(examples) // EXAMPLES_PER_SHARD))
    paths = []
    for shard in range(num_shards):
        path = local_dir / f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for record in examples[shard::num_shards]:
                writer.write(record)
        paths.append(path)
    return paths


def generate_dataset(
    output_uri: str,
    *,
    num_examples: int = DEFAULT_NUM_EXAMPLES,
    image_size: int = features.DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
    overwrite: bool = False,
    drift: float = 0.0,
) -> dict:
    """Write the toy dataset under `output_uri` and return its summary.

    Idempotent: when a summary with the same parameters is already there, nothing
    is written and that summary is returned, so a retried Airflow task converges.
    Different parameters on an existing prefix raise instead of mixing datasets.
    """
    requested = {"num_examples": num_examples, "image_size": image_size, "seed": seed,
                 "eval_fraction": eval_fraction, "drift": drift}
    existing = None if overwrite else read_summary(output_uri)
    if existing is not None:
        recorded = {"drift": 0.0, **existing}  # summaries written before drift existed had none
        differing = {k: recorded.get(k) for k, v in requested.items() if recorded.get(k) != v}
        if differing:
            raise ValueError(
                f"{output_uri} already holds a dataset with {differing} (asked for {requested}); "
                "use another prefix or overwrite=True"
            )
        log.info("Dataset already at %s (%s examples), skipping generation", output_uri,
                 existing["num_examples"])
        return existing
    if num_examples < 2:
        raise ValueError("num_examples must be at least 2 (one train, one eval)")

    log.info("Generating %s examples of %sx%s (seed %s) into %s", num_examples, image_size, image_size,
             seed, output_uri)
    images, heatmaps = synthetic.make_examples(num_examples, image_size, seed, drift)
    order = np.random.default_rng(seed + 1).permutation(num_examples)
    num_eval = min(num_examples - 1, max(1, round(num_examples * eval_fraction)))
    splits = {"eval": sorted(order[:num_eval]), "train": sorted(order[num_eval:])}

    with tempfile.TemporaryDirectory(prefix="trainer-data-") as tmp:
        local_dir = Path(tmp)
        files: dict[str, list[str]] = {}
        for split, indices in splits.items():
            records = [
                features.make_example(features.encode_jpeg(images[i]), f"img-{i:05d}", heatmaps[i])
                for i in indices
            ]
            files[split] = [p.name for p in _write_shards(records, split, local_dir)]
        for path in sorted(local_dir.iterdir()):
            gcs.upload_file(path, gcs.join(output_uri, path.name))

    summary = {
        "format": DATA_FORMAT,
        **requested,
        "train_examples": len(splits["train"]),
        "eval_examples": len(splits["eval"]),
        "train_files": files["train"],
        "eval_files": files["eval"],
        "positive_fraction": float((heatmaps >= 0.5).mean()),
        "features": {features.IMAGE_FEATURE: "bytes (JPEG)",
                     features.HEATMAP_FEATURE: f"float list ({image_size}*{image_size})",
                     features.KEY_FEATURE: "bytes"},
    }
    gcs.write_text(summary_uri(output_uri), json.dumps(summary, indent=2), content_type="application/json")
    log.info("Wrote dataset %s: %s train / %s eval examples", output_uri, summary["train_examples"],
             summary["eval_examples"])
    return summary


@dataclass(frozen=True)
class LocalSplits:
    """A dataset staged to local disk, ready for tf.data."""

    train_files: list[str]
    eval_files: list[str]
    image_size: int
    train_examples: int
    eval_examples: int
    hash_split: bool = False  # True when eval is carved out of the train files by key hash


def _count_records(dataset: tf.data.Dataset) -> int:
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1).numpy())


def _in_eval(serialized: tf.Tensor, seed: int, eval_fraction: float) -> tf.Tensor:
    key = tf.io.parse_single_example(serialized, {features.KEY_FEATURE: features.serving_feature_spec()[
        features.KEY_FEATURE]})[features.KEY_FEATURE]
    bucket = tf.strings.to_hash_bucket_fast(tf.strings.join([key, f"#{seed}"]), 1000)
    return bucket < int(eval_fraction * 1000)


def _records(files: list[str]) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)


def stage_dataset(data_uri: str, local_dir: str | Path, *, seed: int = DEFAULT_SEED,
                  eval_fraction: float = DEFAULT_EVAL_FRACTION) -> LocalSplits:
    """Download the dataset under `data_uri` and work out its splits and image size."""
    local_dir = gcs.download_dir(data_uri, Path(local_dir))
    summary_path = local_dir / SUMMARY_NAME
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        return LocalSplits(
            train_files=[str(local_dir / name) for name in summary["train_files"]],
            eval_files=[str(local_dir / name) for name in summary["eval_files"]],
            image_size=int(summary["image_size"]),
            train_examples=int(summary["train_examples"]),
            eval_examples=int(summary["eval_examples"]),
        )

    all_files = sorted(str(p) for p in local_dir.rglob("*") if p.is_file() and p.suffix not in _NOT_RECORDS)
    eval_files = [f for f in all_files if any(h in Path(f).name.lower() for h in _EVAL_NAME_HINTS)]
    train_files = [f for f in all_files if f not in eval_files]
    if not train_files:
        raise ValueError(f"no training TFRecord files under {data_uri}")
    first = next(iter(_records(train_files).take(1))).numpy()
    image_size = features.heatmap_size_of(first)
    if eval_files:
        splits = LocalSplits(train_files, eval_files, image_size,
                             _count_records(_records(train_files)), _count_records(_records(eval_files)))
    else:
        records = _records(train_files)
        num_eval = _count_records(records.filter(lambda r: _in_eval(r, seed, eval_fraction)))
        splits = LocalSplits(train_files, train_files, image_size, _count_records(records) - num_eval,
                             num_eval, hash_split=True)
    log.info("User dataset %s: %s train / %s eval examples of %sx%s%s", data_uri, splits.train_examples,
             splits.eval_examples, image_size, image_size, " (eval split by key hash)" if splits.hash_split
             else "")
    return splits


def make_dataset(
    splits: LocalSplits,
    split: str,
    *,
    batch_size: int,
    seed: int = DEFAULT_SEED,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
) -> tf.data.Dataset:
    """(image, heatmap) batches for `split` ("train" or "eval"): parallel decode, cache, batch, prefetch."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    files = splits.train_files if split == "train" else splits.eval_files
    records = _records(files)
    if splits.hash_split:
        keep_eval = split == "eval"
        records = records.filter(lambda r: tf.equal(_in_eval(r, seed, eval_fraction), keep_eval))
    # Known sizes let Keras plan epochs without "ran out of data" warnings.
    count = splits.train_examples if split == "train" else splits.eval_examples
    records = records.apply(tf.data.experimental.assert_cardinality(count))
    dataset = records.map(lambda r: features.parse_training_example(r, splits.image_size),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
    if split == "train":
        dataset = dataset.shuffle(max(1, splits.train_examples), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class HeldOut:
    """The held-out split as the serving side sees it: JPEG bytes and keys in, the target heatmaps to score."""

    jpegs: list[bytes]
    keys: list[str]
    heatmaps: np.ndarray  # float32 [N, S, S]


def read_held_out(data_uri: str, *, limit: int, seed: int = DEFAULT_SEED,
                  eval_fraction: float = DEFAULT_EVAL_FRACTION) -> HeldOut:
    """The first ``limit`` examples of the dataset's eval split (the split training held out), in file order."""
    with tempfile.TemporaryDirectory(prefix="trainer-heldout-") as tmp:
        splits = stage_dataset(data_uri, tmp, seed=seed, eval_fraction=eval_fraction)
        records = tf.data.TFRecordDataset(splits.eval_files)  # file order: the same examples every time
        if splits.hash_split:
            records = records.filter(lambda r: _in_eval(r, seed, eval_fraction))
        spec = features.training_feature_spec(splits.image_size)
        jpegs, keys, heatmaps = [], [], []
        for record in records.take(limit):
            parsed = tf.io.parse_single_example(record, spec)
            jpegs.append(parsed[features.IMAGE_FEATURE].numpy())
            keys.append(parsed[features.KEY_FEATURE].numpy().decode("utf-8"))
            heatmaps.append(parsed[features.HEATMAP_FEATURE].numpy().reshape(splits.image_size, splits.image_size))
    size = splits.image_size
    return HeldOut(jpegs, keys, np.stack(heatmaps) if heatmaps else np.zeros((0, size, size), np.float32))

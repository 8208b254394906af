"""task.py: a tiny training run writes model.keras and metrics.json; the CLI works outside Airflow."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from include.trainer import data, gcs, task
from include.trainer.model import ThresholdIoU

METRIC_KEYS = {"loss", "val_loss", "val_iou", "epochs", "train_examples", "eval_examples", "image_size"}


def test_threshold_iou_counts_pixels():
    target = np.array([[[1.0, 0.9, 0.0, 0.2]]], np.float32)
    predicted = np.array([[[0.8, 0.1, 0.7, 0.4]]], np.float32)
    metric = ThresholdIoU()
    metric.update_state(target, predicted)
    assert float(metric.result()) == pytest.approx(1 / 3)  # 1 shared of 3 positive pixels
    metric.reset_state()
    metric.update_state(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))
    assert float(metric.result()) == 1.0  # nothing to find, nothing found


def test_training_writes_model_and_metrics(tiny_job, tiny_data, tiny_model):
    job_dir, metrics = tiny_job
    summary = tiny_data[1]
    assert set(metrics) == METRIC_KEYS
    assert json.loads(gcs.read_text(f"{job_dir}/metrics.json")) == metrics
    assert task.read_metrics(job_dir) == metrics
    assert gcs.exists(f"{job_dir}/model.keras")
    assert metrics["epochs"] == 1
    assert (metrics["train_examples"], metrics["eval_examples"], metrics["image_size"]) == (
        summary["train_examples"], summary["eval_examples"], summary["image_size"])
    assert all(isinstance(metrics[k], float) and np.isfinite(metrics[k]) for k in ("loss", "val_loss", "val_iou"))
    assert 0.0 <= metrics["val_iou"] <= 1.0
    size = summary["image_size"]
    assert tiny_model.input_shape == (None, size, size, 3)
    assert tiny_model.output_shape == (None, size, size)
    heatmap = np.asarray(tiny_model(np.zeros((2, size, size, 3), np.float32)))
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def test_cli_generates_missing_data_and_logs_each_epoch(bucket, gcs_prefix, caplog):
    root = f"gs://{bucket.name}/{gcs_prefix}"
    caplog.set_level(logging.INFO)

    metrics = task.main(["--data-uri", f"{root}/data", "--job-dir", f"{root}/job", "--epochs", "2",
                         "--num-examples", "24", "--image-size", "8", "--batch-size", "8", "--seed", "3"])

    assert data.read_summary(f"{root}/data")["num_examples"] == 24
    assert metrics == task.read_metrics(f"{root}/job")
    assert (metrics["epochs"], metrics["image_size"]) == (2, 8)
    epoch_lines = [r.getMessage() for r in caplog.records if r.name == "include.trainer.callbacks"]
    assert len(epoch_lines) == 2
    assert epoch_lines[0].startswith("Epoch 1/2") and "val_loss=" in epoch_lines[0] and "val_iou=" in epoch_lines[0]


def test_train_without_data_says_so(bucket, gcs_prefix):
    root = f"gs://{bucket.name}/{gcs_prefix}"
    with pytest.raises(FileNotFoundError, match="no training data"):
        task.train(f"{root}/nothing", f"{root}/job", epochs=1)


def test_unfinished_generation_is_redone_not_trained_on(bucket, gcs_prefix):
    root = f"gs://{bucket.name}/{gcs_prefix}"
    gcs.write_bytes(f"{root}/data/train-00000-of-00001.tfrecord", b"cut short")
    assert data.is_unfinished_generation(f"{root}/data")
    with pytest.raises(FileNotFoundError, match="unfinished"):
        task.train(f"{root}/data", f"{root}/job", epochs=1)

    metrics = task.train(f"{root}/data", f"{root}/job", epochs=1, generate_if_missing=True, num_examples=16,
                         image_size=8, batch_size=8)

    assert data.read_summary(f"{root}/data")["num_examples"] == 16
    assert metrics["train_examples"] + metrics["eval_examples"] == 16

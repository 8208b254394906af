"""Train the heatmap model from TFRecords on GCS and write the model and its metrics back to GCS.

Usable from an Airflow task (`train(...)`), a shell, or an ml/v1 training job, as in Google's cloudml samples:

    python -m include.trainer.task --data-uri gs://bucket/data --job-dir gs://bucket/jobs/run1 --epochs 8
    python -m trainer.task ...      # the same, installed as the `trainer` package (include/trainer/pyproject.toml)

Any failure ends the process with a non-zero exit status (a training job then ends FAILED).

Outputs in the job dir: `model.keras`, `history.json` (per-epoch values) and
`metrics.json` (written last, so its presence means the job finished).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import keras

from . import data, features, gcs
from .callbacks import EpochLogger
from .model import build_model, compile_model

log = logging.getLogger(__name__)

MODEL_NAME = "model.keras"
METRICS_NAME = "metrics.json"
HISTORY_NAME = "history.json"
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 5e-3


def _ensure_data(data_uri: str, *, generate_if_missing: bool, num_examples: int, image_size: int,
                 seed: int) -> None:
    if data.read_summary(data_uri) is not None:
        return
    if data.is_unfinished_generation(data_uri):
        if generate_if_missing:
            log.warning("%s holds shards but no summary.json (generation cut short): regenerating", data_uri)
            data.generate_dataset(data_uri, num_examples=num_examples, image_size=image_size, seed=seed,
                                  overwrite=True)
            return
        raise FileNotFoundError(f"{data_uri} holds an unfinished generated dataset (no summary.json)")
    if gcs.list_uris(data_uri):
        return  # the user's own TFRecords
    if not generate_if_missing:
        raise FileNotFoundError(f"no training data under {data_uri} (pass generate_if_missing=True)")
    log.info("No data under %s: generating the default dataset first", data_uri)
    data.generate_dataset(data_uri, num_examples=num_examples, image_size=image_size, seed=seed)


def train(
    data_uri: str,
    job_dir: str,
    *,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int = data.DEFAULT_SEED,
    generate_if_missing: bool = False,
    num_examples: int = data.DEFAULT_NUM_EXAMPLES,
    image_size: int = features.DEFAULT_IMAGE_SIZE,
) -> dict:
    """Train on `data_uri`, write `job_dir/model.keras` and `job_dir/metrics.json`, return the metrics.

    `num_examples` and `image_size` only matter when the data is generated here;
    otherwise the image size comes from the data.
    """
    _ensure_data(data_uri, generate_if_missing=generate_if_missing, num_examples=num_examples,
                 image_size=image_size, seed=seed)
    keras.utils.set_random_seed(seed)
    with tempfile.TemporaryDirectory(prefix="trainer-job-") as tmp:
        splits = data.stage_dataset(data_uri, Path(tmp) / "data", seed=seed)
        train_ds = data.make_dataset(splits, "train", batch_size=batch_size, seed=seed)
        eval_ds = data.make_dataset(splits, "eval", batch_size=batch_size, seed=seed)
        steps = math.ceil(splits.train_examples / batch_size) * epochs
        model = compile_model(build_model(splits.image_size), learning_rate=learning_rate, decay_steps=steps)
        log.info("Training %s params on %s examples (%s held out), %sx%s images, %s epochs, batch %s",
                 model.count_params(), splits.train_examples, splits.eval_examples, splits.image_size,
                 splits.image_size, epochs, batch_size)
        started = time.monotonic()
        # shuffle=False: the tf.data pipeline already shuffles (seeded) each epoch.
        history = model.fit(train_ds, validation_data=eval_ds, epochs=epochs, verbose=0, shuffle=False,
                            callbacks=[EpochLogger(epochs)])
        seconds = time.monotonic() - started
        evaluated = model.evaluate(eval_ds, verbose=0, return_dict=True)
        metrics = {
            "loss": float(history.history["loss"][-1]),
            "val_loss": float(evaluated["loss"]),
            "val_iou": float(evaluated["iou"]),
            "epochs": int(epochs),
            "train_examples": int(splits.train_examples),
            "eval_examples": int(splits.eval_examples),
            "image_size": int(splits.image_size),
        }
        log.info("Trained in %.1f s: loss=%.4f val_loss=%.4f val_iou=%.4f", seconds, metrics["loss"],
                 metrics["val_loss"], metrics["val_iou"])

        model_path = Path(tmp) / MODEL_NAME
        model.save(model_path)
        gcs.upload_file(model_path, gcs.join(job_dir, MODEL_NAME))
    history_doc = {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
                   "train_seconds": seconds, "batch_size": batch_size, "learning_rate": learning_rate,
                   "seed": seed, "data_uri": data_uri}
    gcs.write_text(gcs.join(job_dir, HISTORY_NAME), json.dumps(history_doc, indent=2),
                   content_type="application/json")
    gcs.write_text(gcs.join(job_dir, METRICS_NAME), json.dumps(metrics, indent=2),
                   content_type="application/json")
    log.info("Wrote %s and %s to %s", MODEL_NAME, METRICS_NAME, job_dir)
    return metrics


def load_model(job_dir: str) -> keras.Model:
    """The trained Keras model from `job_dir/model.keras` (staged locally; Keras can't read the emulator)."""
    with tempfile.TemporaryDirectory(prefix="trainer-model-") as tmp:
        path = gcs.download_file(gcs.join(job_dir, MODEL_NAME), Path(tmp) / MODEL_NAME)
        return keras.models.load_model(path)


def read_metrics(job_dir: str) -> dict:
    return json.loads(gcs.read_text(gcs.join(job_dir, METRICS_NAME)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-uri", required=True, help="gs:// prefix of the TFRecords")
    parser.add_argument("--job-dir", required=True, help="gs:// prefix for model.keras and metrics.json")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=data.DEFAULT_SEED)
    parser.add_argument("--generate-if-missing", action=argparse.BooleanOptionalAction, default=True,
                        help="generate the toy dataset at --data-uri when nothing is there (default: yes)")
    parser.add_argument("--num-examples", type=int, default=data.DEFAULT_NUM_EXAMPLES,
                        help="size of the generated dataset")
    parser.add_argument("--image-size", type=int, default=features.DEFAULT_IMAGE_SIZE,
                        help="side of the generated images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = train(
        args.data_uri, args.job_dir, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, generate_if_missing=args.generate_if_missing,
        num_examples=args.num_examples, image_size=args.image_size,
    )
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()

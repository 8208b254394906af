"""A prediction: prepared input tensors through a signature, output tensors back to JSON-ready rows.

Rows keep numeric outputs as numpy values; ``numeric_json.dumps`` writes them.
A failure caused by the instances raises ``PredictionError`` (answered
``{"error": ...}`` online, counted per instance in batch jobs).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from include.local_platform.errors import PredictionError
from include.local_platform.serving.saved_model import Signature
from include.local_platform.serving.tensors import PreparedBatch, prepare


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    return value


_TRACE_NOISE = ("Graph execution error", "Detected at node", "File ", "[[", "defined at", "Traceback")


def _tf_message(error: Exception) -> str:
    """The line of a TensorFlow error that says what went wrong, without the graph stack."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines()]
    useful = [line for line in lines if line and not any(noise in line for noise in _TRACE_NOISE)
              and not line.startswith(("|", "^", "\\"))]
    return (useful[-1] if useful else lines[0])[:500]


def run(signature: Signature, batch: PreparedBatch) -> list[dict]:
    """Call the signature on a prepared batch; one row per instance, keyed by output alias.

    Rows hold numpy values for numeric outputs: serialise them with ``dumps``.
    """
    import tensorflow as tf

    try:
        outputs = signature.call(batch.feeds)
    except (tf.errors.OpError, ValueError, TypeError) as error:
        raise PredictionError(f"Prediction failed: {_tf_message(error)}") from None
    finally:
        batch.cleanup()
    rows: list[dict] = [{} for _ in range(batch.count)]
    for alias, tensor in outputs.items():
        array = tensor.numpy()
        if array.ndim == 0 or array.shape[0] != batch.count:
            raise PredictionError(f"Output '{alias}' is not batched (shape {list(array.shape)}).")
        # numeric rows stay numpy (serialised by `dumps`); strings become text or {"b64": ...}
        values = [_json_value(value) for value in array.tolist()] if array.dtype == object else array
        for row, value in zip(rows, values, strict=True):
            row[alias] = value
    return rows


def predict(signature: Signature, instances: list, staging_dir: Path | None = None) -> list[dict]:
    """Run one batch of instances; raise PredictionError for anything the instances got wrong."""
    return run(signature, prepare(signature, instances, staging_dir))

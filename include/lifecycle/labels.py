"""What a deployed version records about itself in its ml/v1 labels.

Label values must be lowercase strings, so the gate metric is stored as an
integer in ten-thousandths: val_iou 0.8123 -> label `val_iou_x10000: "8123"`.
The gate reads it back from the current default version, so the comparison
needs nothing but the ml/v1 API (no side database).
"""

from __future__ import annotations

from include.config import METRIC_LABEL
from include.lifecycle.naming import label_value

SCALE = 10_000
DATA_PERIOD_LABEL = "data_period"


def encode_metric(value: float) -> str:
    """The metric as a label value: an integer string in ten-thousandths (labels are lowercase strings)."""
    return str(round(float(value) * SCALE))


def decode_metric(labels: dict | None) -> float | None:
    """The metric recorded in a version's labels, or None when absent or unreadable."""
    raw = (labels or {}).get(METRIC_LABEL)
    try:
        return int(raw) / SCALE
    except (TypeError, ValueError):
        return None


def version_labels(*, metric: float, variant: str, key: str, dag_id: str,
                   period: str | None = None) -> dict[str, str]:
    """The labels a deployed version carries: the training's metric, its variant, its run and DAG, and the
    data period it was trained on (DATA_PERIOD_LABEL: a scheduled run with nothing newer stops early)."""
    found = {
        METRIC_LABEL: encode_metric(metric),
        "variant": label_value(variant),
        "run": label_value(key),
        "dag": label_value(dag_id),
    }
    if period:
        found[DATA_PERIOD_LABEL] = label_value(period)
    return found

"""Deterministic names per DAG run: the run key, version ids, job ids, GCS prefixes.

A re-run or a cleared task computes the same names again, so it converges on
the same versions, jobs and objects instead of creating duplicates. The id rule
itself is the plugin's (`ml_engine.names`), so a DAG and an operator that
normalise the same raw id get the same ml/v1 id.
"""

from __future__ import annotations

import re
from datetime import datetime

from ml_engine.names import MAX_ID_LENGTH, normalize_id, short_name

__all__ = ["MAX_ID_LENGTH", "job_id", "label_value", "ml_id", "run_key", "short_name", "training_job_id",
           "version_id"]

_LABEL_INVALID = re.compile(r"[^a-z0-9_-]")
MAX_LABEL_LENGTH = 63


def run_key(when: datetime) -> str:
    """`20260101T000000`: the run's logical date (or run_after for runs without one), like ts_nodash."""
    return when.strftime("%Y%m%dT%H%M%S")


def ml_id(raw: str, *, prefix: str = "v") -> str:
    """`raw` as an ml/v1 id by the plugin's rule; a run's names start with `v` (versions) unless told."""
    return normalize_id(raw, prefix=prefix)


def version_id(key: str, variant: str) -> str:
    """`v20260101T000000_b64`: one version per serving variant per run."""
    return ml_id(f"v{key}_{variant}")


def job_id(dag_id: str, run_id: str) -> str:
    """`batch_prediction_scheduled__2026_01_01T00_00_00_00_00`: one batch job per DAG run."""
    return ml_id(f"{dag_id}_{run_id}", prefix="job")


def training_job_id(model: str, key: str) -> str:
    """`heatmap_train_20260101T000000`: one training job per model per run."""
    return ml_id(f"{model}_train_{key}", prefix="job")


def label_value(raw: str) -> str:
    """ml/v1 label values: lowercase letters, digits, '_' and '-', at most 63 characters."""
    return _LABEL_INVALID.sub("_", str(raw).lower())[:MAX_LABEL_LENGTH]


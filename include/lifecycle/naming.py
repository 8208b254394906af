"""Deterministic names per DAG run: the run key, version ids, job ids, GCS prefixes.

A re-run or a cleared task computes the same names again, so it converges on
the same versions, jobs and objects instead of creating duplicates.
"""

from __future__ import annotations

import re
from datetime import datetime

_ID_INVALID = re.compile(r"[^A-Za-z0-9_]")
_LABEL_INVALID = re.compile(r"[^a-z0-9_-]")
MAX_ID_LENGTH = 128
MAX_LABEL_LENGTH = 63


def run_key(when: datetime) -> str:
    """`20260101T000000`: the run's logical date (or run_after for runs without one), like ts_nodash."""
    return when.strftime("%Y%m%dT%H%M%S")


def ml_id(raw: str, *, prefix: str = "v") -> str:
    """Normalise to ml/v1's id rule ^[A-Za-z][A-Za-z0-9_]{0,127}$ (same rule as ml_engine.names)."""
    value = _ID_INVALID.sub("_", raw.strip())
    if not value or not value[0].isalpha():
        value = f"{prefix}_{value}" if value and value[0] != "_" else f"{prefix}{value}"
    return value[:MAX_ID_LENGTH]


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


def short_name(name: str) -> str:
    """'projects/p/models/m/versions/v' -> 'v'."""
    return name.rstrip("/").rsplit("/", 1)[-1]

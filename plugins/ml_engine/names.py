"""Resource names for ml/v1: id normalisation and full resource paths.

ml/v1 accepts model, version and job ids that start with a letter and hold only
letters, digits and underscores, at most 128 characters. DAGs derive ids from the
run (``v{{ ts_nodash }}``, ``batch_{{ ds }}``...), so ids are normalised here,
deterministically: the same raw id always maps to the same ml/v1 id, which is
what makes a re-run converge on the same version or job.
"""

from __future__ import annotations

import hashlib
import re

MAX_ID_LENGTH = 128
_VALID_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_]")


def normalize_id(raw: str, *, prefix: str = "z") -> str:
    """Map any string to a valid ml/v1 id (letters, digits, '_'; leading letter; <= 128 chars).

    Invalid characters become '_'; an id not starting with a letter gets ``prefix``
    (old Airflow ML Engine operators used 'z'); an id too long is cut and suffixed
    with a short hash so two long ids do not collide.
    """
    if raw is None or not str(raw).strip():
        raise ValueError("An ml/v1 id cannot be empty")
    value = _INVALID_CHARS.sub("_", str(raw).strip())
    if not value[0].isalpha() or not value[0].isascii():
        if not prefix or not _VALID_ID.match(prefix):
            raise ValueError(f"prefix {prefix!r} must itself be a valid ml/v1 id")
        value = f"{prefix}{value}" if value[0] == "_" else f"{prefix}_{value}"
    if len(value) > MAX_ID_LENGTH:
        digest = hashlib.sha1(str(raw).encode()).hexdigest()[:8]
        value = f"{value[: MAX_ID_LENGTH - 9]}_{digest}"
    return value


def is_valid_id(value: str) -> bool:
    """True when ``value`` is already a valid ml/v1 id."""
    return bool(value) and len(value) <= MAX_ID_LENGTH and bool(_VALID_ID.match(value))


def short_name(name: str) -> str:
    """Last path segment: 'projects/p/models/m/versions/v' -> 'v'."""
    return name.rstrip("/").rsplit("/", 1)[-1]


def project_path(project_id: str) -> str:
    return f"projects/{project_id}"


def model_path(project_id: str, model_name: str) -> str:
    """Full model name; accepts either a short id or an already full name."""
    if model_name.startswith("projects/"):
        return model_name
    return f"projects/{project_id}/models/{model_name}"


def version_path(project_id: str, model_name: str, version_name: str) -> str:
    """Full version name; accepts either a short id or an already full name."""
    if version_name.startswith("projects/"):
        return version_name
    return f"{model_path(project_id, model_name)}/versions/{version_name}"


def job_path(project_id: str, job_id: str) -> str:
    if job_id.startswith("projects/"):
        return job_id
    return f"projects/{project_id}/jobs/{job_id}"


VERSION_PREFIX = "v"
JOB_PREFIX = "job"


def normalize_version_id(raw: str) -> str:
    """Version id as ml/v1 accepts it; a timestamp like '20240101T000000' becomes 'v_20240101T000000'."""
    return normalize_id(_strip_path(raw), prefix=VERSION_PREFIX)


def normalize_job_id(raw: str) -> str:
    """Job id as ml/v1 accepts it; '2024-01-01' becomes 'job_2024_01_01'."""
    return normalize_id(_strip_path(raw), prefix=JOB_PREFIX)


def _strip_path(raw: str) -> str:
    """A full resource name ('projects/...') gives its last segment; anything else is kept."""
    raw = str(raw).strip()
    return short_name(raw) if raw.startswith("projects/") else raw

"""ml/v1 resource names: validation and parsing."""

from __future__ import annotations

import re

from include.local_platform.errors import field_error, invalid_argument

NAME_RULE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
#: Google's wording for an invalid model, version or job id.
NAME_RULE_TEXT = "A name should start with a letter and contain only letters, numbers and underscores."
NAME_LENGTH_TEXT = "A name should be at most 128 characters long."


def check_name(kind: str, value: object, field: str) -> str:
    """Return ``value`` if it is a valid ml/v1 id, else raise 400 INVALID_ARGUMENT naming the field."""
    if not isinstance(value, str) or not value:
        raise field_error(field, f"{kind} name is required.")
    if len(value) > 128:
        raise field_error(field, NAME_LENGTH_TEXT)
    if not NAME_RULE.match(value):
        raise field_error(field, NAME_RULE_TEXT)
    return value


def model_name(project: str, model: str) -> str:
    return f"projects/{project}/models/{model}"


def version_name(project: str, model: str, version: str) -> str:
    return f"projects/{project}/models/{model}/versions/{version}"


def job_name(project: str, job: str) -> str:
    return f"projects/{project}/jobs/{job}"


def operation_name(project: str, operation: str) -> str:
    return f"projects/{project}/operations/{operation}"


def split_version(name: str) -> tuple[str, str, str]:
    """``projects/P/models/M/versions/V`` -> (P, M, V)."""
    parts = name.split("/")
    if len(parts) != 6 or parts[0] != "projects" or parts[2] != "models" or parts[4] != "versions":
        raise invalid_argument(f"Invalid version name '{name}'.")
    return parts[1], parts[3], parts[5]


def split_model(name: str) -> tuple[str, str]:
    """``projects/P/models/M`` -> (P, M)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "models":
        raise invalid_argument(f"Invalid model name '{name}'.")
    return parts[1], parts[3]

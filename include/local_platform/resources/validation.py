"""Checks for every field the service copies into a stored resource.

A stored value is served back by every get and list for the resource's whole
life, so anything that could later break a reader (a list where a string is
expected, a 300-deep nesting, megabytes of text) is refused at the door with a
400 that names the field, and nothing is stored.
"""

from __future__ import annotations

import os
import re

from include.local_platform.errors import field_error, invalid_argument

MAX_LABELS = 64
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
LABEL_RULE_TEXT = ("keys start with a lowercase letter; keys and values hold only lowercase letters, digits, "
                   "'_' and '-', at most 63 characters each")
MAX_DESCRIPTION_BYTES = 8 * 1024
MAX_SHORT_TEXT = 256  # runtimeVersion, machineType, region, signatureName ...
MAX_URI_LENGTH = 2048
# Google's project ids (6-30 characters, optionally domain-scoped `example.com:id`) or a project number.
PROJECT_RULE = re.compile(r"^(?:[a-z0-9][a-z0-9.-]{0,61}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[0-9]{1,20}$")
ALLOWED_BUCKETS_ENV = "ML_ENGINE_ALLOWED_BUCKETS"


def labels(value: object, field: str) -> dict[str, str]:
    """GCP label rules: an object of at most 64 string pairs, lowercase keys and values."""
    if not isinstance(value, dict):
        raise field_error(field, f"labels must be an object of string keys and values, got {type(value).__name__}.")
    if len(value) > MAX_LABELS:
        raise field_error(field, f"at most {MAX_LABELS} labels are allowed, got {len(value)}.")
    for key, item in value.items():
        if not LABEL_KEY.match(key):
            raise field_error(field, f"label key '{key[:80]}' is invalid: {LABEL_RULE_TEXT}.")
        if not isinstance(item, str) or not LABEL_VALUE.match(item):
            shown = item[:80] if isinstance(item, str) else type(item).__name__
            raise field_error(field, f"label value of '{key}' ({shown}) is invalid: {LABEL_RULE_TEXT}.")
    return dict(value)


def description(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise field_error(field, f"description must be a string, got {type(value).__name__}.")
    if len(value.encode("utf-8")) > MAX_DESCRIPTION_BYTES:
        raise field_error(field, f"description must be at most {MAX_DESCRIPTION_BYTES} bytes.")
    return value


def short_text(value: object, field: str, *, limit: int = MAX_SHORT_TEXT) -> str:
    """A plain string field (versions, machine types, regions): a string of at most ``limit`` characters."""
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise field_error(field, f"{field.rsplit('.', 1)[-1]} must be a string of at most {limit} characters.")
    return value


def boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise field_error(field, f"must be true or false, got {type(value).__name__}.")
    return value


def positive_int(value: object, field: str, *, name: str, maximum: int) -> int:
    """An int64 field as JSON carries it (a number or a decimal string), 1..maximum."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise field_error(field, f"{name} must be a positive integer, got {type(value).__name__}.")
    try:
        number = int(value)
    except ValueError:
        raise field_error(field, f"{name} must be a positive integer, got {str(value)[:40]!r}.") from None
    if not 1 <= number <= maximum:
        raise field_error(field, f"{name} must be between 1 and {maximum}, got {number}.")
    return number


def gcs_uri(value: object, field: str, what: str) -> str:
    """A gs://bucket/... URI of bounded length, without NUL or ``..`` segments."""
    if (not isinstance(value, str) or not value.startswith("gs://") or len(value) > MAX_URI_LENGTH
            or "\x00" in value or not value[5:].split("/", 1)[0] or ".." in value[5:].split("/")):
        raise field_error(field, f"{what} must be a gs:// URI (at most {MAX_URI_LENGTH} characters).")
    return value


def allowed_bucket(uri: str, field: str) -> None:
    """With ML_ENGINE_ALLOWED_BUCKETS set, models and training packages come only from those buckets (both run
    as code in the service or its trainers)."""
    allowed = {b.strip() for b in os.environ.get(ALLOWED_BUCKETS_ENV, "").split(",") if b.strip()}
    bucket = uri[5:].split("/", 1)[0]
    if allowed and bucket not in allowed:
        raise field_error(field, f"bucket '{bucket}' is not one this service deploys from "
                          f"({ALLOWED_BUCKETS_ENV}).")


def project(value: str) -> str:
    if not PROJECT_RULE.match(value):
        raise invalid_argument(f"Invalid project id '{value[:80]}': a project id has 6 to 30 lowercase "
                               "letters, digits or hyphens and starts with a letter, or is a project number.")
    return value


def unknown_keys(given: dict, known: frozenset[str], where: str) -> None:
    """Google's own wording for a field the API does not have."""
    for key in given:
        if key not in known:
            raise invalid_argument(f'Invalid JSON payload received. Unknown name "{str(key)[:80]}" at '
                                   f"'{where}': Cannot find field.")


def filter_clauses(filter_text: str, clause: re.Pattern, usage: str) -> list[tuple]:
    """A list filter's clauses joined by AND, each matched by ``clause`` (its groups); any other clause
    is refused with ``usage``, which names the clause as ``{clause}``."""
    clauses = []
    for text in re.split(r"\s+AND\s+", filter_text.strip()):
        match = clause.match(text)
        if not match:
            raise invalid_argument(usage.format(clause=text), "filter")
        clauses.append(match.groups())
    return clauses

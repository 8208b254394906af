"""Promotion bookkeeping in ml/v1 itself: the promoted version's labels name the default it replaced.

`promoted_from` is what model_maintenance's rollback follows; `promoted_run`
says which run promoted it. Label values are lowercase ml/v1 ids, as version ids
are not: the value is looked up case-insensitively among the model's versions.
"""

from __future__ import annotations

import logging

from include.lifecycle.naming import label_value, short_name

log = logging.getLogger(__name__)


def current_default(hook, *, model: str) -> str | None:
    """Short id of the model's default version; None when the model or its default does not exist."""
    found = hook.get_model(model_name=model) or {}
    name = (found.get("defaultVersion") or {}).get("name")
    return short_name(name) if name else None


def patch_labels(hook, *, model: str, version: str, changes: dict[str, str | None]) -> dict:
    """Merge `changes` into a version's labels (None removes a label) with versions.patch."""
    current = hook.get_version(model_name=model, version_name=version)
    if current is None:
        raise ValueError(f"Version {version} of model {model} does not exist; cannot label it")
    labels = dict(current.get("labels") or {})
    for key, value in changes.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = label_value(value)
    if labels == (current.get("labels") or {}):
        return current
    operation = hook.patch_version(model_name=model, version_name=version, version={"labels": labels},
                                   update_mask="labels")
    log.info("Labels of %s: %s", current["name"], labels)
    return operation


def label_promoted(hook, *, model: str, version: str, previous: str | None, key: str) -> None:
    """Record the promotion; a re-run that finds no previous default keeps the trail it already wrote."""
    changes = {"promoted_run": key}
    if previous is not None:
        changes["promoted_from"] = previous
    patch_labels(hook, model=model, version=version, changes=changes)


def resolve_label(versions: list[dict], value: str | None) -> str | None:
    """The version id whose lowercase form is the label `value` (labels are lowercase, ids may not be)."""
    if not value:
        return None
    for version in versions:
        name = short_name(version["name"])
        if label_value(name) == value:
            return name
    return None

"""model_maintenance's choice of the next default: the version a rollback returns to, or a named one.

The rollback target is the `promoted_from` trail first (model_lifecycle labels every
version it promotes with the default it replaced), then the newest older READY
version of the same variant. A request the model cannot meet is an `InvalidRequest`.
"""

from __future__ import annotations

import logging

from include.lifecycle import retention
from include.lifecycle.errors import InvalidRequest
from include.lifecycle.naming import ml_id, short_name

log = logging.getLogger(__name__)

ACTIONS = ("rollback", "set_default", "delete_older_than")


def branch_for(action: str, version: str) -> str:
    """The task that handles `action`: choose_default (rollback, set_default) or choose_old_versions."""
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown action {action!r}; choose one of {ACTIONS}")
    if action == "set_default" and not version.strip():
        raise InvalidRequest("action set_default needs a version")
    return "choose_default" if action in ("rollback", "set_default") else "choose_old_versions"


def named_ready_version(versions: list[dict], wanted: str) -> str:
    """The short id of the READY version named `wanted` (normalised like the ids the DAGs create)."""
    wanted = ml_id(wanted.strip())
    found = next((v for v in versions if short_name(v["name"]) == wanted), None)
    if found is None or found.get("state") != "READY":
        raise InvalidRequest(f"Version {wanted} is not a READY version of the model: {found}")
    return wanted


def rollback_target(versions: list[dict], *, current_default: str | None) -> str:
    """The version that was default before `current_default`, or the newest older READY one of its variant."""
    target = (retention.previous_default(versions, current_default=current_default)
              or retention.previous_of_variant(versions, current_default=current_default))
    if target is None:
        raise InvalidRequest(f"No version to roll back to from {current_default}: no promotion trail and no "
                             "older READY version of the same variant")
    return target


def next_default(hook, *, model: str, action: str, version: str = "") -> dict:
    """The default `action` asks for, read against the model's versions in ml/v1.

    :param hook: an MLEngineHook (or anything with get_model and list_versions).
    :param model: the model's id.
    :param action: `rollback` or `set_default`.
    :param version: the version to make default (set_default only).
    :return: {"version": the new default, "previous": the current default, "action": action}.
    """
    found = hook.get_model(model_name=model)
    if found is None:
        raise InvalidRequest(f"Model {model} does not exist")
    versions = hook.list_versions(model_name=model)
    current = short_name((found.get("defaultVersion") or {}).get("name", "")) or None
    if action == "set_default":
        target = named_ready_version(versions, version)
    elif action == "rollback":
        target = rollback_target(versions, current_default=current)
    else:
        raise InvalidRequest(f"action {action!r} does not choose a default")
    log.info("Default of %s: %s -> %s (%s)", model, current, target, action)
    return {"version": target, "previous": current, "action": action}

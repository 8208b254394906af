"""Which versions to delete: keep the N newest; never the default, its rollback trail, or what a caller protects.

The rollback trail is the `promoted_from` chain from the default backwards
(model_lifecycle labels every version it promotes with the default it replaced;
model_maintenance's rollback follows that label). Deleting a version on it would
make rollback fall back to "newest older version of the variant", which may be a
candidate the gate rejected. The trail is protected to ROLLBACK_DEPTH earlier
defaults: older ones age out like any version, so a model promoted every week
does not keep every version it ever promoted. Versions a batch run has pinned come
in as `protect` (see include/lifecycle/pins.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from include.lifecycle.naming import short_name
from include.lifecycle.promotion import current_default as read_default

#: Earlier defaults retention keeps for rollback, behind the current default.
ROLLBACK_DEPTH = 5


@dataclass(frozen=True)
class Survey:
    """A model's versions as retention sees them: all of them, the default, and the pinned ones."""

    versions: list[dict]
    default: str | None
    pinned: set[str]


def survey(hook, *, model: str, batch_uri: str, now: datetime, pin_max_age: timedelta) -> Survey:
    """Read what retention decides on from ml/v1 and GCS (pins: see include/lifecycle/pins.py).

    :param hook: an MLEngineHook.
    :param model: the model's id.
    :param batch_uri: gs:// prefix of batch_prediction's runs (their target.json pin a version).
    :param now: the time pins are aged against.
    :param pin_max_age: how long an unfinished batch run pins its version.
    """
    from include.lifecycle.pins import pinned_versions

    return Survey(versions=hook.list_versions(model_name=model), default=read_default(hook, model=model),
                  pinned=pinned_versions(hook, model=model, batch_uri=batch_uri, now=now, max_age=pin_max_age))


def _created(version: dict) -> str:
    return version.get("createTime") or ""


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None


def _default(versions: list[dict]) -> str | None:
    return next((short_name(v["name"]) for v in versions if v.get("isDefault")), None)


def rollback_trail(versions: list[dict], *, current_default: str | None, depth: int | None = None) -> list[str]:
    """The default, then the version it replaced, and so on (`promoted_from` labels), each once;
    at most ``depth`` versions behind the default when a depth is given."""
    from include.lifecycle.promotion import resolve_label

    by_name = {short_name(v["name"]): v for v in versions}
    trail: list[str] = []
    name = current_default
    while name in by_name and name not in trail and (depth is None or len(trail) <= depth):
        trail.append(name)
        name = resolve_label(versions, (by_name[name].get("labels") or {}).get("promoted_from"))
    return trail


def protected(versions: list[dict], *, protect: set[str] = frozenset(), current_default: str | None = None) -> set[str]:
    """What retention must keep whatever its age: the default, ROLLBACK_DEPTH earlier defaults, and `protect`.

    `current_default` (from models.get) wins over the versions' `isDefault` flags when given.
    """
    default = current_default or _default(versions)
    trail = rollback_trail(versions, current_default=default, depth=ROLLBACK_DEPTH)
    return set(protect) | set(trail) | ({default} if default else set())


def beyond_newest(versions: list[dict], *, keep: int, protect: set[str] = frozenset(),
                  current_default: str | None = None) -> list[str]:
    """Short ids of versions older than the `keep` newest, less the `protected` ones."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    kept = protected(versions, protect=protect, current_default=current_default)
    ordered = sorted(versions, key=lambda v: (_created(v), v.get("name", "")), reverse=True)
    doomed = []
    for index, version in enumerate(ordered):
        name = short_name(version["name"])
        if index < keep or version.get("isDefault") or name in kept:
            continue
        doomed.append(name)
    return doomed


def older_than(versions: list[dict], *, days: float, now: datetime, protect: set[str] = frozenset(),
               current_default: str | None = None) -> list[str]:
    """Short ids of versions created more than `days` ago, less the `protected` ones."""
    cutoff = now - timedelta(days=days)
    kept = protected(versions, protect=protect, current_default=current_default)
    doomed = []
    for version in versions:
        created = _parse_time(_created(version))
        name = short_name(version["name"])
        if created is None or version.get("isDefault") or name in kept:
            continue
        if created < cutoff:
            doomed.append(name)
    return doomed


def previous_default(versions: list[dict], *, current_default: str | None) -> str | None:
    """The version that was default before the current one, from the `promoted_from` label trail.

    Rollback needs this when no XCom of the promoting run is at hand: the
    lifecycle DAG labels each promoted version with the default it replaced.
    """
    from include.lifecycle.promotion import resolve_label

    by_name = {short_name(v["name"]): v for v in versions}
    current = by_name.get(current_default or "")
    if current is None:
        return None
    previous = resolve_label(versions, (current.get("labels") or {}).get("promoted_from"))
    return previous if previous and by_name[previous].get("state") == "READY" else None


def previous_of_variant(versions: list[dict], *, current_default: str | None) -> str | None:
    """Fallback rollback target: the newest READY version of the default's variant created before it."""
    by_name = {short_name(v["name"]): v for v in versions}
    current = by_name.get(current_default or "")
    if current is None:
        return None
    variant = (current.get("labels") or {}).get("variant")
    older = [
        v for v in versions
        if v.get("state") == "READY" and _created(v) < _created(current)
        and (current_default is None or short_name(v["name"]) != current_default)
        and (variant is None or (v.get("labels") or {}).get("variant") == variant)
    ]
    if not older:
        return None
    return short_name(max(older, key=lambda v: (_created(v), v["name"]))["name"])

"""Versions that batch runs have pinned, so retention leaves them alone.

batch_prediction writes `target.json` (model, version, job id) under
`<batch_uri>/<model>/<job_id>/` before it starts its ml/v1 job, and
`outputs/summary.json` when it is done. A run with a target and no summary yet
is running, or failed and may still be cleared and retried: its version is
pinned while the target is younger than `max_age` (`ML_BATCH_PIN_HOURS`, 48 h:
the batch job's 6 h wait, task retries, and time for someone to clear a failed
run). Active ml/v1 jobs on a version pin it too, whoever started them. GCS and
ml/v1 are the only sources, so no side database has to agree with them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from include.lifecycle.naming import short_name

log = logging.getLogger(__name__)

TARGET = "target.json"
SUMMARY = "outputs/summary.json"
ACTIVE_JOB_STATES = ("QUEUED", "PREPARING", "RUNNING", "CANCELLING")


def open_targets(objects: dict[str, datetime], *, now: datetime, max_age: timedelta) -> list[str]:
    """URIs of `target.json` objects whose run has no summary yet and that were written within `max_age`."""
    done = {uri[: -len(SUMMARY)] for uri in objects if uri.endswith("/" + SUMMARY)}
    return sorted(
        uri for uri, updated in objects.items()
        if uri.endswith("/" + TARGET) and uri[: -len(TARGET)] not in done and now - updated <= max_age
    )


def versions_of_jobs(jobs: list[dict], *, model: str) -> set[str]:
    """Short ids of the `model`'s versions that the given ml/v1 jobs predict with."""
    pinned = set()
    for job in jobs:
        parts = ((job.get("predictionInput") or {}).get("versionName") or "").split("/")
        if len(parts) == 6 and parts[2] == "models" and parts[3] == model and parts[4] == "versions":
            pinned.add(parts[5])
    return pinned


def pinned_versions(hook, *, model: str, batch_uri: str, now: datetime, max_age: timedelta) -> set[str]:
    """Versions of `model` pinned by unfinished batch runs (target.json) or active ml/v1 prediction jobs."""
    from include.lifecycle import storage

    pinned = set()
    for uri in open_targets(storage.updated_times(f"{batch_uri}/{model}"), now=now, max_age=max_age):
        target = storage.read_json(uri)
        if target.get("model") == model and target.get("version"):
            pinned.add(short_name(target["version"]))
    jobs = [job for state in ACTIVE_JOB_STATES for job in hook.list_jobs(filter=f"state={state}")]
    pinned |= versions_of_jobs(jobs, model=model)
    log.info("Versions of %s pinned by batch runs or active jobs: %s", model, sorted(pinned) or "none")
    return pinned

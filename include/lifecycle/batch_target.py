"""batch_prediction's target: which version of which model a batch run predicts with.

The version is the one asked for, else the one the promotion event names, else the
model's default at the start of the run. It must be READY; a model with no version
to use is a `NothingToPredict` (the DAG skips a scheduled run on it: a fresh
deployment's first daily run has nothing to predict with yet).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from include.lifecycle.errors import InvalidRequest
from include.lifecycle.promotion import current_default


class NothingToPredict(InvalidRequest):
    """The model does not exist or has no default version yet."""


@contextmanager
def skipped_when_nothing_to_predict(*, scheduled: bool) -> Iterator[None]:
    """A scheduled run with nothing to predict with skips (AirflowSkipException); any other run fails."""
    try:
        yield
    except NothingToPredict as error:
        if not scheduled:
            raise
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(str(error)) from error


def promotion_event(triggering_asset_events) -> dict:
    """The `extra` of the newest asset event that triggered the run ({} for a scheduled or manual run)."""
    events = [event for asset_events in (triggering_asset_events or {}).values() for event in asset_events]
    newest = max(events, key=lambda event: event.timestamp, default=None)
    return dict(newest.extra or {}) if newest is not None else {}


def resolve(hook, *, model: str, wanted: str | None, job_id: str, prefix: str, default_variant: str) -> dict:
    """The version to predict with, its serving variant and the run's job id and GCS prefixes.

    :param hook: an MLEngineHook (or anything with get_model and get_version).
    :param model: the model's id.
    :param wanted: the version asked for (Param or promotion event); blank or None: the default.
    :param job_id: the ml/v1 job id of this run.
    :param prefix: gs:// prefix of this run (inputs/ and outputs/ go under it).
    :param default_variant: the variant of a version that records none in its labels.
    :return: {"model", "version", "variant", "job_id", "inputs_uri", "output_path"}.
    """
    version_id = (wanted or "").strip() or current_default(hook, model=model)
    if not version_id:
        missing = "does not exist" if hook.get_model(model_name=model) is None else "has no default version"
        raise NothingToPredict(f"Model {model} {missing}: run model_lifecycle first")
    version = hook.get_version(model_name=model, version_name=version_id)
    if version is None or version.get("state") != "READY":
        raise InvalidRequest(f"Version {version_id} of {model} is not READY: {version}")
    return {
        "model": model,
        "version": version_id,
        "variant": (version.get("labels") or {}).get("variant", default_variant),
        "job_id": job_id,
        "inputs_uri": f"{prefix}/inputs",
        "output_path": f"{prefix}/outputs",
    }

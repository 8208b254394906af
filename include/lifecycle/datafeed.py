"""A run's data: which period folder under the data root it uses, and the local feed that writes one.

Real feeds write ``<data root>/<YYYY-MM-DD>/`` with their own pipeline; the local
stack's feed generates the period's toy examples with the period's drift and seed
(include/lifecycle/periods.py), so every period holds new examples from a moved
distribution. Writing is idempotent: a period that holds a finished dataset is kept.
"""

from __future__ import annotations

import logging

from include.lifecycle import periods, storage
from include.lifecycle.errors import InvalidRequest
from include.lifecycle.periods import PeriodData

log = logging.getLogger(__name__)


class MissingData(InvalidRequest):
    """The run's period holds no data and this deployment does not generate any."""


def choose(data_root: str, *, wanted: str | None, run_period: str) -> PeriodData:
    """The period and data prefix of a run (see ``periods.resolve``); a root holding one flat dataset is used whole."""
    storage.ensure_bucket(data_root)  # the emulator's bucket appears on first use; on GCS a clear error
    folders, flat_objects = storage.listing(data_root)
    dated = [name for name in folders if periods.PERIOD.match(name)]
    if flat_objects and not dated:
        log.info("%s holds one dataset without period folders: training and evaluating on all of it", data_root)
        return periods.flat(data_root)
    chosen = periods.resolve(data_root, dated, wanted=wanted, run_period=run_period)
    log.info("Data period %s (%s; periods present: %s)", chosen.period, chosen.data_uri,
             ", ".join(dated[-5:]) or "none yet")
    return chosen


def ensure(chosen: PeriodData, *, num_examples: int, image_size: int, drift_per_week: float,
           generate: bool = True) -> dict:
    """The summary of the dataset at ``chosen.data_uri``; the local feed generates it when the prefix is empty.

    :param generate: False with a real feed (ML_GENERATE_DATA=false): an empty period is an error, not toy data.
    :return: {"period", "data_uri", "generated", "drift", "eval_examples", ...}: small, for XCom.
    :raises MissingData: the period holds no data and ``generate`` is False.
    """
    from include.trainer import data

    storage.ensure_bucket(chosen.data_uri)
    with storage.connection_identity():
        summary = data.read_summary(chosen.data_uri)
        if summary is None and storage.list_uris(chosen.data_uri) and not data.is_unfinished_generation(
                chosen.data_uri):
            log.info("User data under %s (no summary.json): used as it is", chosen.data_uri)
            return {"period": chosen.period, "data_uri": chosen.data_uri, "generated": False}
        generated = summary is None
        if generated and not generate:
            raise MissingData(f"No data for period {chosen.period} under {chosen.data_uri}: the feed has not "
                              "written it (ML_GENERATE_DATA=false, so no toy data is generated in its place)")
        if generated:
            drift = periods.drift(chosen.period, per_week=drift_per_week) if chosen.period else 0.0
            seed = periods.seed(chosen.period) if chosen.period else data.DEFAULT_SEED
            summary = data.generate_dataset(chosen.data_uri, num_examples=num_examples, image_size=image_size,
                                            seed=seed, drift=drift, overwrite=True)
        else:
            log.info("Data for period %s already present under %s (%s examples); kept", chosen.period,
                     chosen.data_uri, summary.get("num_examples"))
    keys = ("num_examples", "train_examples", "eval_examples", "image_size", "seed")
    return {"period": chosen.period, "data_uri": chosen.data_uri, "generated": generated,
            "drift": float(summary.get("drift", 0.0)), **{k: summary.get(k) for k in keys}}


def from_events(triggering_asset_events) -> PeriodData | None:
    """The newest data-arrival event's period and prefix (a run the data Asset triggered), else None."""
    newest = None
    for events in (triggering_asset_events or {}).values():
        for event in events:
            extra = event.extra or {}
            if extra.get("period") and extra.get("data_uri"):
                newest = PeriodData(extra["period"], extra["data_uri"])
    return newest


def judged_on(hook, *, model: str, chosen: PeriodData) -> str | None:
    """A version of ``model`` trained on ``chosen``'s period and evaluated there (its data_period and
    eval_period labels), else None: an automatic run on that period would repeat its work."""
    from include.lifecycle.labels import DATA_PERIOD_LABEL
    from include.lifecycle.naming import short_name

    if not chosen.period or hook.get_model(model_name=model) is None:
        return None
    for version in hook.list_versions(model_name=model):
        labels = version.get("labels") or {}
        if labels.get(DATA_PERIOD_LABEL) == chosen.period == labels.get("eval_period"):
            return short_name(version["name"])
    return None

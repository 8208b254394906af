"""
## data_arrival: the local feed, one new period of training data a week

Stands in for the pipeline that delivers a real team's data: on its schedule
(`ML_DATA_SCHEDULE`, weekly; `none` turns it off) it writes the period's examples to
`<data root>/<YYYY-MM-DD>/` and marks the data Asset, which triggers `model_lifecycle`.

1. **write_period**: the period (the `period` Param, else the run's date) gets its own
   examples, generated with the period's drift (`ML_DATA_DRIFT_PER_WEEK`: the camera's gain,
   then the spots' size, move week by week) and seed; a period that already holds data is
   kept as it is. Then the data Asset event `{period, data_uri, examples}`.

With a real feed, turn this DAG off and let the feed write the same layout (and, if it
can, post the Asset event through Airflow's REST API); see docs/retrains.md.
"""

from __future__ import annotations

import logging

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from include import assets, config, dag_defaults

log = logging.getLogger(__name__)
CFG = config.load()
DATA = assets.data_asset()


@dag(
    dag_id="data_arrival",
    schedule=CronTriggerTimetable(CFG.data_schedule, timezone="UTC") if CFG.data_schedule else None,
    start_date=dag_defaults.START_DATE,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "data"],
    default_args=dag_defaults.default_args(CFG),
    params={
        "period": Param("", type="string", pattern=r"^(\d{4}-\d{2}-\d{2})?$", title="Period (YYYY-MM-DD)",
                        description="Blank: the run's date."),
        "data_uri": Param(CFG.data_uri, type="string", pattern=r"^gs://", title="Data root (gs://)"),
        "num_examples": Param(CFG.num_examples, type="integer", minimum=2, title="Examples in the period"),
    },
    render_template_as_native_obj=True,
)
def data_arrival():
    """Wiring only; the feed lives in include/lifecycle/datafeed.py."""
    @task(outlets=[DATA])
    def write_period(params: dict, dag_run=None, outlet_events=None) -> dict:
        """Write the period's examples (kept when present), then mark the data Asset for the retrain."""
        from include.lifecycle import datafeed, periods

        period = params["period"] or periods.period_of(dag_run.logical_date or dag_run.run_after)
        chosen = periods.PeriodData(period, f"{params['data_uri'].rstrip('/')}/{period}")
        written = datafeed.ensure(chosen, num_examples=params["num_examples"], image_size=CFG.image_size,
                                  drift_per_week=CFG.data_drift_per_week)
        outlet_events[DATA].extra = {"period": period, "data_uri": chosen.data_uri,
                                     "examples": written.get("num_examples")}
        log.info("Period %s: %s examples (drift %.2f) at %s; data Asset marked", period,
                 written.get("num_examples"), written.get("drift", 0.0), chosen.data_uri)
        return written

    write_period()


data_arrival()

"""
## batch_prediction: batch predictions with the model's default version, then a summary

Runs daily (`ML_BATCH_SCHEDULE`) **and** whenever `model_lifecycle` (or a
rollback in `model_maintenance`) changes the default version (the promotion Asset).

1. **resolve_target**: the model's default version at the start of the run (or the
   `version` param), its serving variant (version label `variant`), and the run's job id
   and GCS prefixes, all derived from the run id.
2. **prepare_inputs**: the configured `input_uris`, or, when none are given, sample inputs
   generated for the default's variant (JSON lines, or TFRecords of tf.Example for
   `tfexample`). `bad_samples` adds lines the model cannot read, to exercise the error path.
3. **batch_predict**: an ml/v1 batch prediction job on that version; outputs
   `prediction.results-*` and `prediction.errors_stats-*` under the output prefix.
4. **summarize**: prediction and error counts, error types (from errors_stats), output
   location, written to `<output>/summary.json`; the task fails when errors / (predictions +
   errors) is above `max_error_rate`.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from ml_engine.operators import MLEngineStartBatchPredictionJobOperator

from include import assets, config

log = logging.getLogger(__name__)
CFG = config.load()
PROMOTION = assets.promotion_asset()
DATA_FORMATS = ["AUTO", "JSON", "TEXT", "TF_RECORD", "TF_RECORD_GZIP"]


def _promotion_event(triggering_asset_events) -> dict:
    """The `extra` of the newest promotion event that triggered this run ({} for other runs)."""
    try:
        events = [event for asset_events in (triggering_asset_events or {}).values() for event in asset_events]
        newest = max(events, key=lambda event: event.timestamp, default=None)
        return dict(getattr(newest, "extra", None) or {})
    except (AttributeError, TypeError) as error:  # an Airflow without the accessor: use the params
        log.warning("Cannot read the triggering asset events (%s); using the params", error)
        return {}


@dag(
    dag_id="batch_prediction",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(CFG.batch_schedule, timezone="UTC"), assets=[PROMOTION]
    ),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "ml_engine", "batch-prediction"],
    default_args={"owner": "ml-platform", "retries": CFG.task_retries,
                  "retry_delay": timedelta(seconds=CFG.retry_delay_seconds)},
    params={
        "model_name": Param(CFG.model_name, type="string", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,127}$",
                            title="Model name"),
        "version": Param("", type="string", title="Version (blank: the default version)"),
        "input_uris": Param(list(CFG.batch_input_uris), type="array", items={"type": "string"},
                            title="Input files (gs://, wildcards allowed)",
                            description="Blank: sample inputs generated for the version's serving variant."),
        "data_format": Param("AUTO", type="string", enum=DATA_FORMATS, title="Input data format",
                             description="AUTO: TF_RECORD for the tfexample variant, JSON otherwise."),
        "sample_count": Param(CFG.batch_sample_count, type="integer", minimum=1, title="Generated samples"),
        "bad_samples": Param(0, type="integer", minimum=0, title="Unreadable samples to add (tests errors)"),
        "max_error_rate": Param(CFG.max_error_rate, type="number", minimum=0, maximum=1,
                                title="Maximum error rate"),
    },
    render_template_as_native_obj=True,
)
def batch_prediction():
    @task(multiple_outputs=True)
    def resolve_target(params: dict, dag_run=None, triggering_asset_events=None) -> dict:
        """The version to use (the default unless named), its variant, and this run's job id and prefixes."""
        from ml_engine.hooks import MLEngineHook

        from include.lifecycle import naming, storage

        promoted = _promotion_event(triggering_asset_events)  # the event names the model it promoted
        model_name = promoted.get("model") or params["model_name"]
        job_id = naming.job_id(dag_run.dag_id, dag_run.run_id)
        prefix = f"{CFG.batch_uri}/{model_name}/{job_id}"
        if storage.exists(f"{prefix}/target.json"):  # a cleared or retried run keeps the version it chose first
            target = storage.read_json(f"{prefix}/target.json")
            log.info("Re-run of %s: keeping the target chosen first: %s", job_id, target)
            return target
        hook = MLEngineHook(gcp_conn_id=CFG.gcp_conn_id)
        model = hook.get_model(model_name=model_name)
        version_id = params["version"].strip() or promoted.get("version") or naming.short_name(
            ((model or {}).get("defaultVersion") or {}).get("name", ""))
        if not version_id:
            message = (f"Model {model_name} does not exist" if model is None else
                       f"Model {model_name} has no default version") + ": run model_lifecycle first"
            if dag_run.run_type == "scheduled":  # a fresh deployment's first daily run: nothing to predict with yet
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(message)
            raise ValueError(message)
        version = hook.get_version(model_name=model_name, version_name=version_id)
        if version is None or version.get("state") != "READY":
            raise ValueError(f"Version {version_id} of {model_name} is not READY: {version}")
        target = {
            "model": model_name,
            "version": version_id,
            "variant": (version.get("labels") or {}).get("variant", CFG.serving_variant),
            "job_id": job_id,
            "inputs_uri": f"{prefix}/inputs",
            "output_path": f"{prefix}/outputs",
        }
        storage.ensure_bucket(prefix)
        storage.write_json(f"{prefix}/target.json", target)
        log.info("Batch prediction %s on %s/%s (%s variant) -> %s", job_id, model_name, version_id,
                 target["variant"], target["output_path"])
        return target

    @task(multiple_outputs=True)
    def prepare_inputs(target: dict, params: dict) -> dict:
        """The configured inputs, or generated samples in the version's input format."""
        from include.lifecycle import samples

        if params["input_uris"]:
            data_format = params["data_format"]
            if data_format == "AUTO":
                data_format = "TF_RECORD" if target["variant"] == "tfexample" else "JSON"
            return {"input_paths": list(params["input_uris"]), "data_format": data_format, "generated": False}
        return samples.write_batch_inputs(target["inputs_uri"], variant=target["variant"],
                                          count=params["sample_count"], bad=params["bad_samples"],
                                          image_size=CFG.image_size)

    @task
    def summarize(target: dict, output: dict, params: dict) -> dict:
        """Counts, error types and output location; fails above the error-rate threshold."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.lifecycle import batch_outputs, storage

        summary = batch_outputs.summarize(job_id=target["job_id"], output_path=target["output_path"],
                                          prediction_output=output, list_uris=storage.list_uris,
                                          read_lines=storage.read_lines)
        document = {**summary.to_dict(), "model": target["model"], "version": target["version"],
                    "variant": target["variant"], "max_error_rate": params["max_error_rate"]}
        storage.write_json(f"{target['output_path']}/summary.json", document)
        log.info("Job %s on %s/%s: %s predictions, %s errors (rate %.3f); outputs in %s",
                 summary.job_id, target["model"], target["version"], summary.prediction_count,
                 summary.error_count, summary.error_rate, summary.output_path)
        for error, count in summary.error_types.items():
            log.info("  %5d x %s", count, error)
        if summary.error_rate > params["max_error_rate"]:
            raise AirflowFailException(
                f"Error rate {summary.error_rate:.3f} ({summary.error_count} errors, {summary.prediction_count} "
                f"predictions) is above max_error_rate {params['max_error_rate']}; see "
                f"{target['output_path']}/prediction.errors_stats-*"
            )
        return document

    target = resolve_target()
    inputs = prepare_inputs(target)
    job = MLEngineStartBatchPredictionJobOperator(
        task_id="batch_predict",
        job_id=target["job_id"],
        region=CFG.region,
        data_format=inputs["data_format"],
        input_paths=inputs["input_paths"],
        output_path=target["output_path"],
        model_name=target["model"],
        version_name=target["version"],
        labels={"dag": "batch_prediction"},
        max_error_rate=None,  # judged by summarize, after the summary is written
        gcp_conn_id=CFG.gcp_conn_id,
        poll_interval=2,
        wait_timeout=6 * 3600,
    )
    summarize(target, job.output)


batch_prediction()

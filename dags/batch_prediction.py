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

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from ml_engine.operators import MLEngineStartBatchPredictionJobOperator

from include import assets, config, dag_defaults

log = logging.getLogger(__name__)
CFG = config.load()
PROMOTION = assets.promotion_asset()
ON_VERTEX = CFG.platform == "vertex"
DATA_FORMATS = ["AUTO", "JSON", "TEXT", "TF_RECORD", "TF_RECORD_GZIP"]


@dag(
    dag_id="batch_prediction",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(CFG.batch_schedule, timezone="UTC"), assets=[PROMOTION]
    ),
    start_date=dag_defaults.START_DATE,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "ml_engine", "batch-prediction"],
    default_args=dag_defaults.default_args(CFG),
    params={
        "model_name": dag_defaults.model_name_param(CFG.model_name),
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
    """Wiring only; the target choice and the summary live in include/lifecycle."""
    @task(multiple_outputs=True)
    def resolve_target(params: dict, dag_run=None, triggering_asset_events=None) -> dict:
        """The version to use (the default unless named), its variant, and this run's job id and prefixes.

        The target is recorded in GCS first, so a cleared or retried run keeps the version it chose.
        """
        from include.lifecycle import batch_target, naming, storage

        promoted = batch_target.promotion_event(triggering_asset_events)  # names the model it promoted
        model = promoted.get("model") or params["model_name"]
        job_id = naming.job_id(dag_run.dag_id, dag_run.run_id)
        prefix = f"{CFG.batch_uri}/{model}/{job_id}"
        with batch_target.skipped_when_nothing_to_predict(scheduled=dag_run.run_type == "scheduled"):
            target = storage.first_choice(f"{prefix}/target.json", lambda: batch_target.resolve(
                dag_defaults.platform_hook(CFG), model=model, job_id=job_id, prefix=prefix,
                wanted=params["version"].strip() or promoted.get("version"), default_variant=CFG.serving_variant))
        log.info("Batch prediction %s on %s/%s (%s variant) -> %s", job_id, model, target["version"],
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

        from include.lifecycle import storage

        summary = _job_summary(target, output)
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
                f"{', '.join(summary.errors_stats_files) or target['output_path']}"
            )
        return document

    target = resolve_target()
    inputs = prepare_inputs(target)
    job = (_vertex_job if ON_VERTEX else _ml_engine_job)(target, inputs)
    summarize(target, job.output)



def _job_summary(target: dict, output: dict):
    """The job's counts and files, read from its outputs (ml/v1's or Vertex AI's layout)."""
    from include.lifecycle import batch_outputs, storage

    readers = {"list_uris": storage.list_uris, "read_lines": storage.read_lines}
    if ON_VERTEX:
        return batch_outputs.summarize_vertex(job_id=target["job_id"], output_path=target["output_path"], job=output,
                                              **readers)
    return batch_outputs.summarize(job_id=target["job_id"], output_path=target["output_path"],
                                   prediction_output=output, **readers)


def _ml_engine_job(target, inputs):
    """An ml/v1 batch prediction job on the target version, waited for in the triggerer."""
    return MLEngineStartBatchPredictionJobOperator(
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
        deferrable=True,  # the wait (up to BATCH_TIMEOUT) holds no worker slot
        poll_interval=config.BATCH_POLL_SECONDS,
        wait_timeout=config.BATCH_TIMEOUT.total_seconds(),
    )


def _vertex_job(target, inputs):
    """A Vertex AI batch prediction job on the target version (by its run alias), waited for in the triggerer."""
    from include.vertex.batch import VertexBatchPredictionOperator

    return VertexBatchPredictionOperator(
        task_id="batch_predict",
        project_id=CFG.project,
        region=CFG.region,
        job_display_name=target["job_id"],
        model_name=f"projects/{CFG.project}/locations/{CFG.region}/models/"
                   "{{ ti.xcom_pull(task_ids='resolve_target', key='model') | lower }}@"
                   "{{ ti.xcom_pull(task_ids='resolve_target', key='version') | replace('_', '-') }}",
        gcs_source=inputs["input_paths"],
        instances_format="{{ 'tf-record' if ti.xcom_pull(task_ids='prepare_inputs', key='data_format') "
                         "== 'TF_RECORD' else 'jsonl' }}",
        gcs_destination_prefix=target["output_path"],
        machine_type=CFG.vertex_machine_type,
        labels={"dag": "batch_prediction"},
        gcp_conn_id=CFG.gcp_conn_id,
        poll_interval=config.BATCH_POLL_SECONDS,
        execution_timeout=config.BATCH_TIMEOUT,
    )


batch_prediction()

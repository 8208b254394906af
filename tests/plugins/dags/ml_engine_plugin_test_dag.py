"""Every ml_engine operator in one small DAG, for dag.test() in tests/plugins/test_dag_runs.py.

Names come from params and `ds`, so two runs on the same day (or a cleared run)
address the same model, versions and job: that is what the idempotency test checks.
v2 and the batch job use deferrable=True and defer_after=0, so a deferred wait completes in the run.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag
from ml_engine.operators import (
    MLEngineCreateModelOperator,
    MLEngineCreateVersionOperator,
    MLEngineDeleteVersionOperator,
    MLEngineListVersionsOperator,
    MLEnginePredictOperator,
    MLEngineSetDefaultVersionOperator,
    MLEngineStartBatchPredictionJobOperator,
)

MODEL = "{{ params.model_name }}"


@dag(
    dag_id="ml_engine_plugin_test",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test", "ml_engine"],
    params={"model_name": "", "model_uri": "", "model_uri_v2": "", "instances_uri": "", "batch_output": ""},
    doc_md=__doc__,
)
def ml_engine_plugin_test():
    create_model = MLEngineCreateModelOperator(task_id="create_model", model={"name": MODEL})
    create_v1 = MLEngineCreateVersionOperator(
        task_id="create_v1",
        model_name=MODEL,
        version={"name": "v1_{{ ds_nodash }}", "deploymentUri": "{{ params.model_uri }}", "runtimeVersion": "2.11"},
        poll_interval=0.5,
    )
    create_v2 = MLEngineCreateVersionOperator(
        task_id="create_v2",
        model_name=MODEL,
        version={"name": "{{ ds }}-b", "deploymentUri": "{{ params.model_uri_v2 }}"},
        poll_interval=0.5,
        deferrable=True,
        defer_after=0,  # defer at once, even though the wait is short
        resume_hold=0,  # dag.test runs the trigger in-process: no deferring worker to wait for
    )
    predict_inline = MLEnginePredictOperator(
        task_id="predict_inline",
        model_name=MODEL,
        version_name="{{ ti.xcom_pull(task_ids='create_v1', key='version_name') }}",
        instances=[{"x": [1.0, 2.0], "key": "inline"}],
    )
    smoke_v2 = MLEnginePredictOperator(
        task_id="smoke_v2",
        model_name=MODEL,
        version_name="{{ ds }}-b",
        instances_uri="{{ params.instances_uri }}",
    )
    promote = MLEngineSetDefaultVersionOperator(task_id="promote", model_name=MODEL, version_name="{{ ds }}-b")
    batch = MLEngineStartBatchPredictionJobOperator(
        task_id="batch",
        job_id="{{ params.model_name }}_batch_{{ ds }}",
        region="us-central1",
        data_format="JSON",
        input_paths=["{{ params.instances_uri }}"],
        output_path="{{ params.batch_output }}",
        model_name=MODEL,
        max_error_rate=0.0,
        poll_interval=0.5,
        deferrable=True,
        defer_after=0,  # defer at once, even though the wait is short
        resume_hold=0,  # dag.test runs the trigger in-process: no deferring worker to wait for
    )
    create_tmp = MLEngineCreateVersionOperator(
        task_id="create_tmp",
        model_name=MODEL,
        version={"name": "tmp_{{ ds_nodash }}", "deploymentUri": "{{ params.model_uri }}"},
        poll_interval=0.5,
    )
    delete_tmp = MLEngineDeleteVersionOperator(
        task_id="delete_tmp", model_name=MODEL, version_name="tmp_{{ ds_nodash }}", poll_interval=0.5
    )
    list_versions = MLEngineListVersionsOperator(task_id="list_versions", model_name=MODEL)

    create_model >> create_v1 >> [create_v2, predict_inline, create_tmp]
    create_v2 >> smoke_v2 >> promote >> batch
    create_tmp >> delete_tmp
    [batch, delete_tmp] >> list_versions


ml_engine_plugin_test()

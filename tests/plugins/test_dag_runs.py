"""Every operator in a real dag.test() run against the local service, then again: same end state.

Three runs of tests/plugins/dags/ml_engine_plugin_test_dag.py: a first run, a second run on
the same day (so the same names), and the first run cleared and re-run. Each must succeed
and leave exactly the same models, versions, default and jobs: no duplicates, no 409s.
"""

from __future__ import annotations

import importlib.util
import uuid

import pendulum
import pytest

from tests.plugins.helpers import TEST_PROJECT, instances, write_lines

pytestmark = pytest.mark.slow

FIRST = pendulum.datetime(2024, 3, 1, 1, tz="UTC")
SAME_DAY = pendulum.datetime(2024, 3, 1, 7, tz="UTC")


def _load_dag(dags_folder):
    path = dags_folder / "ml_engine_plugin_test_dag.py"
    spec = importlib.util.spec_from_file_location("ml_engine_plugin_test_dag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ml_engine_plugin_test()


def _states(dag_run) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}


def _xcom(dag_run, task_id: str, key: str = "return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(run_id=dag_run.run_id, key=key, dag_ids=dag_run.dag_id, task_ids=task_id)
        ).first()
        return XComModel.deserialize_value(row[0]) if row else None


def _mark_running(dag_id: str, logical_date) -> None:
    """'Clear' a finished run the way the UI does: the run goes back to RUNNING for dag.test()."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    with create_session() as session:
        for run in session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.logical_date == logical_date):
            run.state = DagRunState.RUNNING


def _end_state(hook, model_name: str) -> dict:
    versions = hook.list_versions(model_name=model_name)
    return {
        "versions": sorted((v["name"].rsplit("/", 1)[-1], v["state"], v["deploymentUri"]) for v in versions),
        "default": hook.get_model(model_name=model_name)["defaultVersion"]["name"].rsplit("/", 1)[-1],
        "jobs": sorted((j["jobId"], j["state"]) for j in hook.list_jobs(filter=f"jobId:{model_name}*")),
    }


def test_every_operator_in_dag_runs_and_reruns(
    dags_folder, ml_conn, hook, bucket, gcs_prefix, tiny_model_uri, tiny_model_uri_v2, capsys
):
    model_name = f"dagtest_{uuid.uuid4().hex[:8]}"
    conf = {
        "model_name": model_name,
        "model_uri": tiny_model_uri,
        "model_uri_v2": tiny_model_uri_v2,
        "instances_uri": write_lines(bucket, f"{gcs_prefix}/instances.json", instances(4)),
        "batch_output": f"gs://test-bucket/{gcs_prefix}/batch",
    }
    dag = _load_dag(dags_folder)

    first = dag.test(logical_date=FIRST, run_conf=conf)
    states = _states(first)
    assert set(states.values()) == {"success"}, states
    assert len(states) == 10
    log = capsys.readouterr().out
    assert log.count("Pausing task as DEFERRED") == 2  # create_v2 and batch waited in their triggers
    assert "MLEngineOperationTrigger" in log and "MLEngineJobTrigger" in log

    # XCom outputs and links of the first run.
    assert _xcom(first, "create_v1", "version_name") == "v1_20240301"
    assert _xcom(first, "create_v2", "version_name") == "v_2024_03_01_b"
    assert _xcom(first, "create_v2")["state"] == "READY"
    assert _xcom(first, "promote", "previous_default_version") == "v1_20240301"
    assert _xcom(first, "predict_inline") == [{"y": pytest.approx(6.0), "key": "inline"}]
    smoke = _xcom(first, "smoke_v2")
    assert [p["key"] for p in smoke] == ["k0", "k1", "k2", "k3"]
    assert smoke[1]["y"] == pytest.approx(3 * (1.0 + 1.0))  # v2 is the 3x model
    output = _xcom(first, "batch")
    assert (output["predictionCount"], output["errorCount"]) == ("4", "0")
    assert output["outputPath"] == conf["batch_output"]
    job_id = _xcom(first, "batch", "job_id")
    assert job_id == f"{model_name}_batch_2024_03_01"
    assert _xcom(first, "batch", "ml_engine_job_link") == f"{ml_conn.url}ui/projects/{TEST_PROJECT}/jobs/{job_id}"
    assert _xcom(first, "create_v2", "ml_engine_version_link") == (
        f"{ml_conn.url}ui/projects/{TEST_PROJECT}/models/{model_name}/versions/v_2024_03_01_b"
    )
    assert [v["name"].rsplit("/", 1)[-1] for v in _xcom(first, "list_versions")] == [
        "v1_20240301",
        "v_2024_03_01_b",
    ]
    expected = {
        "versions": [
            ("v1_20240301", "READY", tiny_model_uri),
            ("v_2024_03_01_b", "READY", tiny_model_uri_v2),
        ],
        "default": "v_2024_03_01_b",
        "jobs": [(job_id, "SUCCEEDED")],
    }
    assert _end_state(hook, model_name) == expected

    # A second run the same day: same names, every task succeeds, nothing new is created.
    second = dag.test(logical_date=SAME_DAY, run_conf=conf)
    assert set(_states(second).values()) == {"success"}, _states(second)
    assert _xcom(second, "promote", "previous_default_version") is None
    assert _end_state(hook, model_name) == expected

    # The first run cleared and re-run.
    _mark_running(dag.dag_id, FIRST)
    rerun = dag.test(logical_date=FIRST, run_conf=conf)
    assert set(_states(rerun).values()) == {"success"}, _states(rerun)
    assert _end_state(hook, model_name) == expected

"""kill -9 of the service at every named crash point during a real dag.test() run: the run converges.

The service is restarted whenever it dies, as a restart policy would (compose,
systemd); the operators' requests ride over the restart (googleapiclient
retries refused connections) and the service resumes its work. The end state
must equal a clean run's: every task succeeded, no duplicate versions or jobs.
"""

from __future__ import annotations

import json
import uuid

import pendulum
import pytest

from tests.crashing import Lives, Supervisor, crashing_service  # noqa: F401 - a fixture
from tests.plugins.helpers import TEST_PROJECT, instances, write_lines
from tests.plugins.test_dag_runs import _end_state, _load_dag, _states, _xcom

pytestmark = pytest.mark.slow

# life 1 dies mid-copy of create_v1, life 2 just before that deployment's commit, life 3 mid-batch,
# life 4 while the resumed job uploads its results; life 5 finishes everything
PLAN = ["deploy.ready", "batch.predicting", "batch.uploading"]


def test_dag_run_converges_through_kill_9_at_every_crash_point(
    crashing_service, dags_folder, bucket, gcs_prefix, tiny_model_uri, tiny_model_uri_v2, monkeypatch  # noqa: F811
):
    from ml_engine.hooks import MLEngineHook

    from tests.include.local_platform.conftest import post_fault

    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps({
        "conn_type": "google_cloud_platform",
        "extra": {"ml_engine_endpoint": crashing_service.url, "is_anonymous": True, "project": TEST_PROJECT}}))
    model_name = f"dagcrash_{uuid.uuid4().hex[:8]}"
    conf = {
        "model_name": model_name,
        "model_uri": tiny_model_uri,
        "model_uri_v2": tiny_model_uri_v2,
        "instances_uri": write_lines(bucket, f"{gcs_prefix}/instances.json", instances(4)),
        "batch_output": f"gs://test-bucket/{gcs_prefix}/batch",
    }
    lives = Lives(crashing_service)
    supervisor = Supervisor(lives, PLAN)
    post_fault(crashing_service.url, {"crash_at": "deploy.copying", "after": 1})
    supervisor.start()
    try:
        run = _load_dag(dags_folder).test(logical_date=pendulum.datetime(2024, 3, 1, 1, tz="UTC"), run_conf=conf)
    finally:
        supervisor.stop()
    assert lives.deaths == len(PLAN) + 1, crashing_service.server.log_tail()
    states = _states(run)
    assert set(states.values()) == {"success"}, states
    output = _xcom(run, "batch")
    assert (output["predictionCount"], output["errorCount"]) == ("4", "0")
    names = sorted(blob.name.rsplit("/", 1)[-1] for blob in bucket.list_blobs(prefix=f"{gcs_prefix}/batch/"))
    assert names == ["prediction.errors_stats-00000-of-00001", "prediction.results-00000-of-00001"]
    hook = MLEngineHook(retry_deadline=30)
    assert _end_state(hook, model_name) == {
        "versions": [("v1_20240301", "READY", tiny_model_uri), ("v_2024_03_01_b", "READY", tiny_model_uri_v2)],
        "default": "v_2024_03_01_b",
        "jobs": [(_xcom(run, "batch", "job_id"), "SUCCEEDED")],
    }
    assert all(op["done"] for op in hook.get_conn().projects().operations().list(
        name=f"projects/{TEST_PROJECT}").execute().get("operations", []))

"""The Airflow path on the beam batch engine: the hook and MLEngineStartBatchPredictionJobOperator, unchanged,
against a service whose batch jobs run as Apache Beam pipelines; a re-run converges on the same job."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from tests.plugins.helpers import TEST_PROJECT, instances, write_lines


class _TI:
    """Records XCom pushes, as much of a task instance as execute() uses outside a DAG run."""

    def __init__(self):
        self.xcom: dict = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


@pytest.fixture
def beam_hook(beam_service, monkeypatch):
    """google_cloud_default pointing at the beam-engine service, as the DAGs configure it."""
    from ml_engine.hooks import MLEngineHook

    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps({
        "conn_type": "google_cloud_platform",
        "extra": {"ml_engine_endpoint": beam_service.url, "is_anonymous": True, "project": TEST_PROJECT}}))
    return MLEngineHook(retry_deadline=30)


def _operator(model_name: str, source: str, output: str, *, job_id: str, **kwargs):
    from ml_engine.operators import MLEngineStartBatchPredictionJobOperator

    return MLEngineStartBatchPredictionJobOperator(
        task_id="batch", job_id=job_id, region="us-central1", data_format="JSON",
        input_paths=[source], output_path=output, model_name=model_name, poll_interval=0.2, **kwargs)


def test_operator_on_the_beam_engine_predicts_cancels_and_converges(beam_hook, bucket, gcs_prefix, tiny_model_uri):
    model_name = f"m_beam_op_{uuid.uuid4().hex[:6]}"
    beam_hook.create_model(model={"name": model_name})
    beam_hook.create_version(model_name=model_name, version_spec={"name": "v1", "deploymentUri": tiny_model_uri},
                             poll_interval=0.2)
    source = write_lines(bucket, f"{gcs_prefix}/in.json", instances(40, bad_every=10))
    output = f"gs://test-bucket/{gcs_prefix}/out"
    ti = _TI()
    result = _operator(model_name, source, output, job_id=f"{model_name}_beam", batch_size=8).execute({"ti": ti})
    assert (result["predictionCount"], result["errorCount"]) == ("36", "4")
    names = sorted(blob.name.rsplit("/", 1)[1] for blob in bucket.list_blobs(prefix=f"{gcs_prefix}/out/"))
    assert names == ["prediction.errors_stats-00000-of-00001", "prediction.results-00000-of-00001"]
    # a cleared task converges on the job it already ran (no second pipeline)
    again = _operator(model_name, source, output, job_id=f"{model_name}_beam", batch_size=8).execute({"ti": _TI()})
    assert again["predictionCount"] == "36"
    assert [job["jobId"] for job in beam_hook.list_jobs(filter=f"jobId:{model_name}*")] == [ti.xcom["job_id"]]

    # on_kill cancels the running pipeline
    big = write_lines(bucket, f"{gcs_prefix}/big.json", instances(20_000))
    op = _operator(model_name, big, f"{output}_big", batch_size=1, job_id=f"{model_name}_big")
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(error=_run_catching(op)))
    worker.start()
    deadline = time.monotonic() + 120
    while op._job_id is None or beam_hook.get_job(job_id=op._job_id)["state"] != "RUNNING":
        assert time.monotonic() < deadline, "the job never reached RUNNING"
        time.sleep(0.1)
    op.on_kill()
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert beam_hook.get_job(job_id=op._job_id)["state"] == "CANCELLED"
    assert "ended CANCELLED" in str(outcome["error"])


def _run_catching(op) -> Exception | None:
    try:
        op.execute({"ti": _TI()})
    except Exception as error:
        return error
    return None

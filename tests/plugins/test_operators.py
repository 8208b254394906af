"""Operators and triggers outside a DAG run: on_kill, deferral events and every failure path."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from airflow.providers.common.compat.sdk import AirflowException

from tests.plugins.helpers import TEST_PROJECT, instances, write_lines


@pytest.fixture
def deployed(hook, model_name, tiny_model_uri) -> str:
    """A model with a READY default version v1 of the tiny model."""
    hook.create_model(model={"name": model_name})
    hook.create_version(
        model_name=model_name, version_spec={"name": "v1", "deploymentUri": tiny_model_uri}, poll_interval=0.2
    )
    return model_name


def _batch_operator(model_name: str, source: str, output: str, **kwargs):
    from ml_engine.operators import MLEngineStartBatchPredictionJobOperator

    return MLEngineStartBatchPredictionJobOperator(
        task_id="batch",
        job_id=kwargs.pop("job_id", f"{model_name}-{uuid.uuid4().hex[:6]}"),
        region="us-central1",
        data_format="JSON",
        input_paths=[source],
        output_path=output,
        model_name=model_name,
        poll_interval=0.2,
        **kwargs,
    )


def _first_event(trigger):
    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first())


def test_on_kill_cancels_running_job(deployed, bucket, gcs_prefix, hook):
    source = write_lines(bucket, f"{gcs_prefix}/many.json", instances(3000))
    op = _batch_operator(deployed, source, f"gs://test-bucket/{gcs_prefix}/out", batch_size=1)
    outcome: dict = {}

    def run():
        try:
            op.execute({"ti": _TI()})
        except Exception as err:
            outcome["error"] = err

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while op._job_id is None or hook.get_job(job_id=op._job_id)["state"] != "RUNNING":
        assert time.monotonic() < deadline, "the job never reached RUNNING"
        time.sleep(0.1)
    op.on_kill()
    worker.join(timeout=60)
    assert not worker.is_alive()
    job = hook.get_job(job_id=op._job_id)
    assert job["state"] == "CANCELLED"
    assert "ended CANCELLED" in str(outcome["error"])

    # clearing the task converges: the same input goes to the next id of the job's chain
    ti = _TI()
    output = op.execute({"ti": ti})
    assert ti.xcom["job_id"] == f"{job['jobId']}_r2"
    assert output["predictionCount"] == "3000"
    assert op.execute({"ti": _TI()})["predictionCount"] == "3000"  # and again: reused, not resubmitted
    assert [j["jobId"] for j in hook.list_jobs(filter=f"jobId:{job['jobId']}*")] in (
        [f"{job['jobId']}_r2", job["jobId"]], [job["jobId"], f"{job['jobId']}_r2"])


def test_batch_job_error_rate_and_failure(deployed, bucket, gcs_prefix):
    source = write_lines(bucket, f"{gcs_prefix}/some_bad.json", instances(8, bad_every=4))
    ok = _batch_operator(deployed, source, f"gs://test-bucket/{gcs_prefix}/ok", max_error_rate=0.5)
    ti = _TI()
    output = ok.execute({"ti": ti})
    assert (output["predictionCount"], output["errorCount"]) == ("6", "2")
    assert ti.xcom["job_id"].startswith(deployed)
    assert ti.xcom["ml_engine_job_link"].endswith(f"ui/projects/{TEST_PROJECT}/jobs/{ti.xcom['job_id']}")

    strict = _batch_operator(deployed, source, f"gs://test-bucket/{gcs_prefix}/strict", max_error_rate=0.1)
    with pytest.raises(AirflowException, match=r"2 error\(s\) for 6 prediction\(s\).*exceeds max_error_rate 0.1"):
        strict.execute({"ti": _TI()})

    missing = _batch_operator(
        deployed, f"gs://test-bucket/{gcs_prefix}/absent*.json", f"gs://test-bucket/{gcs_prefix}/x"
    )
    with pytest.raises(AirflowException, match=r"ended FAILED: .+"):
        missing.execute({"ti": _TI()})


def test_create_version_failed_and_conflict_messages(hook, model_name, tiny_model_uri, tiny_model_uri_v2):
    from ml_engine.hooks import MLEngineConflictError
    from ml_engine.operators import MLEngineCreateVersionOperator

    hook.create_model(model={"name": model_name})
    broken = MLEngineCreateVersionOperator(
        task_id="v",
        model_name=model_name,
        version={"name": "2024-01-01T00:00", "deploymentUri": f"gs://test-bucket/empty-{uuid.uuid4().hex}"},
        poll_interval=0.2,
    )
    with pytest.raises(AirflowException, match=r"v_2024_01_01T00_00 FAILED: .+creates it again"):
        broken.execute({"ti": _TI()})

    ok = MLEngineCreateVersionOperator(
        task_id="v", model_name=model_name, version={"name": "v1", "deploymentUri": tiny_model_uri}, poll_interval=0.2
    )
    ti = _TI()
    assert ok.execute({"ti": ti})["state"] == "READY"
    assert ti.xcom["version_name"] == "v1"
    assert ti.xcom["ml_engine_version_link"].endswith(f"/models/{model_name}/versions/v1")
    clash = MLEngineCreateVersionOperator(
        task_id="v", model_name=model_name, version={"name": "v1", "deploymentUri": tiny_model_uri_v2}
    )
    with pytest.raises(MLEngineConflictError, match="already exists with a different deployment"):
        clash.execute({"ti": _TI()})


def test_set_default_pushes_previous_and_reruns_cleanly(deployed, hook, tiny_model_uri_v2):
    from ml_engine.operators import MLEngineSetDefaultVersionOperator

    hook.create_version(
        model_name=deployed, version_spec={"name": "v2", "deploymentUri": tiny_model_uri_v2}, poll_interval=0.2
    )
    op = MLEngineSetDefaultVersionOperator(task_id="promote", model_name=deployed, version_name="v2")
    ti = _TI()
    assert op.execute({"ti": ti})["name"].endswith("/versions/v2")
    assert ti.xcom["previous_default_version"] == "v1"
    again = _TI()
    op.execute({"ti": again})
    assert again.xcom["previous_default_version"] is None  # already default: nothing to roll back to
    missing = MLEngineSetDefaultVersionOperator(task_id="p", model_name=f"{deployed}_nope", version_name="v2")
    with pytest.raises(AirflowException, match="does not exist"):
        missing.execute({"ti": _TI()})


def test_predict_operator_from_gcs_and_failures(deployed, bucket, gcs_prefix):
    from ml_engine.operators import MLEnginePredictOperator

    uri = write_lines(bucket, f"{gcs_prefix}/smoke.json", instances(5))
    op = MLEnginePredictOperator(task_id="p", model_name=deployed, version_name="v1", instances_uri=uri, batch_size=2)
    predictions = op.execute({"ti": _TI()})
    assert [p["key"] for p in predictions] == [f"k{i}" for i in range(5)]
    assert predictions[3]["y"] == pytest.approx(2 * (3.0 + 1.0))

    bad = MLEnginePredictOperator(task_id="p", model_name=deployed, instances=instances(4, bad_every=2))
    with pytest.raises(AirflowException, match="must not be negative"):
        bad.execute({"ti": _TI()})
    bucket.blob(f"{gcs_prefix}/broken.json").upload_from_string('{"x": [1, 2], "key": "a"}\nnot json\n')
    broken = MLEnginePredictOperator(
        task_id="p", model_name=deployed, instances_uri=f"gs://test-bucket/{gcs_prefix}/broken.json"
    )
    with pytest.raises(AirflowException, match="line 2 is not JSON"):
        broken.execute({"ti": _TI()})
    too_many = MLEnginePredictOperator(task_id="p", model_name=deployed, instances=instances(3), max_instances=2)
    with pytest.raises(AirflowException, match="exceed max_instances=2"):
        too_many.execute({"ti": _TI()})


def test_delete_and_list_versions_operators(deployed, hook, tiny_model_uri_v2):
    from ml_engine.operators import MLEngineDeleteVersionOperator, MLEngineListVersionsOperator

    hook.create_version(
        model_name=deployed, version_spec={"name": "v2", "deploymentUri": tiny_model_uri_v2}, poll_interval=0.2
    )
    listed = MLEngineListVersionsOperator(task_id="l", model_name=deployed).execute({"ti": _TI()})
    assert [v["name"].rsplit("/", 1)[-1] for v in listed] == ["v1", "v2"]
    delete = MLEngineDeleteVersionOperator(task_id="d", model_name=deployed, version_name="v2", poll_interval=0.2)
    assert delete.execute({"ti": _TI()}) == "v2"
    assert delete.execute({"ti": _TI()}) is None  # already gone
    default = MLEngineDeleteVersionOperator(task_id="d", model_name=deployed, version_name="v1")
    hook.create_version(
        model_name=deployed, version_spec={"name": "v3", "deploymentUri": tiny_model_uri_v2}, poll_interval=0.2
    )
    with pytest.raises(Exception, match="default version"):
        default.execute({"ti": _TI()})


def test_triggers_serialize_every_argument_and_complete(deployed, hook, bucket, gcs_prefix, tiny_model_uri_v2):
    from ml_engine.triggers import MLEngineJobTrigger, MLEngineOperationTrigger

    common = {
        "gcp_conn_id": "google_cloud_default",
        "impersonation_chain": None,
        "endpoint": hook.endpoint,
        "poll_interval": 0.2,
        "max_poll_interval": 1,
        "timeout": 120,
        "not_before": time.time() - 1,  # already passed: fire at once
    }
    source = write_lines(bucket, f"{gcs_prefix}/in.json", instances(3))
    job_id = f"{deployed}_trig"
    hook.create_job(
        job={
            "jobId": job_id,
            "predictionInput": {
                "dataFormat": "JSON",
                "inputPaths": [source],
                "outputPath": f"gs://test-bucket/{gcs_prefix}/out",
                "region": "us-central1",
                "modelName": f"projects/{TEST_PROJECT}/models/{deployed}",
            },
        }
    )
    trigger = MLEngineJobTrigger(project_id=TEST_PROJECT, job_id=job_id, **common)
    classpath, kwargs = trigger.serialize()
    assert classpath == "ml_engine.triggers.MLEngineJobTrigger"
    assert kwargs == {"project_id": TEST_PROJECT, "job_id": job_id, **common}
    event = _first_event(MLEngineJobTrigger(**kwargs))
    assert event["status"] == "success"
    assert event["job"]["state"] == "SUCCEEDED"

    operation, _ = hook.begin_create_version(
        model_name=deployed, version_spec={"name": "v2", "deploymentUri": tiny_model_uri_v2}
    )
    classpath, kwargs = MLEngineOperationTrigger(operation_name=operation["name"], **common).serialize()
    assert classpath == "ml_engine.triggers.MLEngineOperationTrigger"
    assert kwargs == {"operation_name": operation["name"], **common}
    event = _first_event(MLEngineOperationTrigger(**kwargs))
    assert event["status"] == "success"
    assert event["operation"]["done"] is True

    missing = _first_event(MLEngineJobTrigger(**{**common, "project_id": TEST_PROJECT, "job_id": "no_such_job"}))
    assert missing["status"] == "error"
    assert "no_such_job" in missing["message"]


def test_deferrable_operators_defer_with_resolved_endpoint(deployed, bucket, gcs_prefix, hook):
    from airflow.providers.common.compat.sdk import TaskDeferred
    from ml_engine.triggers import MLEngineJobTrigger

    source = write_lines(bucket, f"{gcs_prefix}/in.json", instances(3))
    op = _batch_operator(deployed, source, f"gs://test-bucket/{gcs_prefix}/out", deferrable=True, batch_size=1,
                         defer_after=0, resume_hold=1.5)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": _TI()})
    deferred_at = time.time()
    trigger = deferred.value.trigger
    assert isinstance(trigger, MLEngineJobTrigger)
    assert trigger.endpoint == hook.endpoint
    assert trigger.not_before == pytest.approx(deferred_at + 1.5, abs=1)
    event = _first_event(trigger)
    # The 3-instance job is done well within the hold; the event still waits for it.
    assert time.time() >= trigger.not_before
    assert op.execute_complete({"ti": _TI()}, event)["predictionCount"] == "3"
    with pytest.raises(AirflowException, match="not finished within"):
        op.execute_complete({"ti": _TI()}, {"status": "error", "message": "Job x not finished within 5 s"})


def test_a_deferred_wait_holds_its_event_past_the_deferring_workers_reported_exit(deployed, hook,
                                                                                  tiny_model_uri_v2, capsys):
    """Airflow 3.3 marks a task FAILED if it resumes before its deferring worker is reported gone
    (apache/airflow#72716). That report comes [workers] min_heartbeat_interval late, so by default the
    trigger fires no earlier than that interval plus RESUME_MARGIN_SECONDS after the task deferred."""
    from airflow.providers.common.compat.sdk import TaskDeferred, conf
    from ml_engine.operators import RESUME_MARGIN_SECONDS, MLEngineCreateVersionOperator

    version = MLEngineCreateVersionOperator(
        task_id="create", model_name=deployed, version={"name": "held", "deploymentUri": tiny_model_uri_v2},
        poll_interval=0.2, deferrable=True, defer_after=0,
    )
    with pytest.raises(TaskDeferred) as deferred:
        version.execute({"ti": _TI()})
    default_hold = conf.getfloat("workers", "min_heartbeat_interval") + RESUME_MARGIN_SECONDS
    trigger = deferred.value.trigger
    assert trigger.not_before == pytest.approx(time.time() + default_hold, abs=2)
    assert trigger.serialize()[1]["not_before"] == trigger.not_before  # a restarted triggerer holds it too

    trigger.not_before = time.time() + 2  # the same hold, shorter, for the test's sake
    started = time.monotonic()
    event = _first_event(trigger)
    assert event["status"] == "success" and event["operation"]["done"] is True
    assert time.monotonic() - started >= 1.5
    assert "Done; firing in " in capsys.readouterr().out


def test_deferrable_waits_that_end_within_defer_after_finish_in_the_worker(deployed, bucket, gcs_prefix, hook,
                                                                           tiny_model_uri_v2, capsys):
    """A quick operation or job never defers: no triggerer round trip, no window for Airflow's defer race."""
    from ml_engine.operators import MLEngineCreateVersionOperator

    version = MLEngineCreateVersionOperator(
        task_id="create", model_name=deployed, version={"name": "quick", "deploymentUri": tiny_model_uri_v2},
        poll_interval=0.2, deferrable=True, defer_after=60,
    )
    assert version.execute({"ti": _TI()})["state"] == "READY"  # no TaskDeferred raised

    source = write_lines(bucket, f"{gcs_prefix}/in.json", instances(3))
    batch = _batch_operator(deployed, source, f"gs://test-bucket/{gcs_prefix}/out", deferrable=True, defer_after=60)
    assert batch.execute({"ti": _TI()})["predictionCount"] == "3"
    assert "deferring" not in capsys.readouterr().out


def test_deferrable_wait_still_running_after_defer_after_defers_with_the_rest_of_its_timeout(
    deployed, bucket, gcs_prefix, hook, capsys
):
    from airflow.providers.common.compat.sdk import TaskDeferred

    source = write_lines(bucket, f"{gcs_prefix}/many.json", instances(3000))
    op = _batch_operator(deployed, source, f"gs://test-bucket/{gcs_prefix}/out", batch_size=1,
                         deferrable=True, defer_after=0.5, wait_timeout=600)
    started = time.monotonic()
    try:
        with pytest.raises(TaskDeferred) as deferred:
            op.execute({"ti": _TI()})
        assert 0.5 <= time.monotonic() - started < 30
        assert deferred.value.trigger.timeout == pytest.approx(599.5)
        assert "Still running after 0.5 s: deferring the wait to the triggerer" in capsys.readouterr().out
        assert hook.get_job(job_id=op._job_id)["state"] in ("QUEUED", "PREPARING", "RUNNING")
    finally:
        hook.cancel_job(job_id=op._job_id)


class _TI:
    """Records XCom pushes, as much of a task instance as execute() uses outside a DAG run."""

    def __init__(self):
        self.xcom: dict = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


def test_operators_dispatch_by_methods_not_by_names_in_strings():
    """Job operators override the hook calls and trigger class that differ: a renamed hook method or trigger
    fails at import or in a linter, never first in a running task (no getattr by name, no import_string)."""
    import ast
    import inspect

    from ml_engine import operators
    from ml_engine.triggers import MLEngineJobTrigger, MLEngineTrainingJobTrigger

    tree = ast.parse(inspect.getsource(operators))
    by_name = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("getattr", "import_string")]
    assert by_name == []
    assert operators.MLEngineStartBatchPredictionJobOperator.trigger_class is MLEngineJobTrigger
    assert operators.MLEngineStartTrainingJobOperator.trigger_class is MLEngineTrainingJobTrigger
    assert operators.MLEngineStartTrainingJobOperator._wait is not operators._MLEngineJobOperator._wait

"""MLEngineStartTrainingJobOperator against the real service: run, re-run, clear + re-run, logs, defer, kill."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from airflow.providers.common.compat.sdk import AirflowException

from tests.plugins.conftest import FakeTI


def _operator(package: str, job_dir: str, args: list[str], **kwargs):
    from ml_engine.operators import MLEngineStartTrainingJobOperator

    return MLEngineStartTrainingJobOperator(
        task_id="train",
        job_id=kwargs.pop("job_id", f"train-{uuid.uuid4().hex[:8]}"),
        region="us-central1",
        package_uris=[package],
        training_python_module="tinytrainer.task",
        training_args=args,
        scale_tier="BASIC",
        runtime_version="2.11",
        python_version="3.7",
        job_dir=job_dir,
        labels={"owner": "tests"},
        poll_interval=0.2,
        **kwargs,
    )


def _first_event(trigger):
    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first())


def test_run_streams_logs_and_rerun_reuses_the_job(ml_conn, hook, tiny_trainer_package, bucket, gcs_prefix, capsys):
    job_dir = f"gs://{bucket.name}/{gcs_prefix}/job"
    op = _operator(tiny_trainer_package, job_dir, ["--seconds", "1"])
    ti = FakeTI()
    result = op.execute({"ti": ti})
    logged = capsys.readouterr().out
    job_id = ti.xcom["job_id"]
    assert result == {"jobId": job_id, "state": "SUCCEEDED", "jobDir": job_dir,
                      "trainingOutput": hook.get_job(job_id=job_id)["trainingOutput"]}
    assert ti.xcom["ml_engine_job_link"].endswith(f"/ui/projects/test-project/jobs/{job_id}")
    assert f"[{job_id}] tick 1" in logged and f"[{job_id}] epoch 1/1 loss=0.5 done" in logged
    assert bucket.blob(f"{gcs_prefix}/job/result.json").exists()

    assert op.execute({"ti": FakeTI()})["jobId"] == job_id  # re-run: the same job, read again
    assert [job["jobId"] for job in hook.list_jobs(filter=f"jobId:{job_id}*")] == [job_id]

    changed = _operator(tiny_trainer_package, job_dir, ["--seconds", "2"], job_id=job_id)
    from ml_engine.hooks import MLEngineConflictError

    with pytest.raises(MLEngineConflictError, match="trainingInput differs"):
        changed.execute({"ti": FakeTI()})


def test_failed_job_then_clear_and_rerun_converges(ml_conn, hook, tiny_trainer_package, bucket, gcs_prefix):
    flag = f"gs://{bucket.name}/{gcs_prefix}/flag"
    op = _operator(tiny_trainer_package, f"gs://{bucket.name}/{gcs_prefix}/job", ["--require", flag])
    ti = FakeTI()
    with pytest.raises(AirflowException, match=r"ended FAILED: The replica chief 0 exited with a non-zero status "
                                               r"of 1\. FileNotFoundError: required input .+ is missing"):
        op.execute({"ti": ti})
    first = ti.xcom["job_id"]

    bucket.blob(f"{gcs_prefix}/flag").upload_from_string("ok")  # the cause is fixed; the task is cleared
    ti = FakeTI()
    assert op.execute({"ti": ti})["state"] == "SUCCEEDED"
    assert ti.xcom["job_id"] == f"{first}_r2"
    assert op.execute({"ti": FakeTI()})["jobId"] == f"{first}_r2"  # and again: reused, not resubmitted
    assert sorted(job["jobId"] for job in hook.list_jobs(filter=f"jobId:{first}*")) == [first, f"{first}_r2"]


def test_on_kill_cancels_the_running_job(ml_conn, hook, tiny_trainer_package, bucket, gcs_prefix):
    op = _operator(tiny_trainer_package, f"gs://{bucket.name}/{gcs_prefix}/job", ["--seconds", "300"])
    outcome: dict = {}

    def run():
        try:
            op.execute({"ti": FakeTI()})
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
    assert hook.get_job(job_id=op._job_id)["state"] == "CANCELLED"
    assert "ended CANCELLED" in str(outcome["error"])


def test_deferrable_trigger_logs_lines_and_completes(ml_conn, hook, tiny_trainer_package, bucket, gcs_prefix,
                                                     capsys):
    from airflow.providers.common.compat.sdk import TaskDeferred
    from ml_engine.triggers import MLEngineTrainingJobTrigger

    op = _operator(tiny_trainer_package, f"gs://{bucket.name}/{gcs_prefix}/job", ["--seconds", "1"],
                   deferrable=True, defer_after=0, resume_hold=0)
    ti = FakeTI()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": ti})
    deferred_at = time.time()
    trigger = deferred.value.trigger
    assert isinstance(trigger, MLEngineTrainingJobTrigger)
    path, kwargs = trigger.serialize()
    assert path == "ml_engine.triggers.MLEngineTrainingJobTrigger"
    assert kwargs == {"project_id": "test-project", "job_id": ti.xcom["job_id"], "log_cursor": None,
                      "gcp_conn_id": "google_cloud_default", "impersonation_chain": None,
                      "endpoint": ml_conn.url, "poll_interval": 0.2, "max_poll_interval": 10,
                      "timeout": 24 * 3600, "not_before": pytest.approx(deferred_at, abs=5)}
    capsys.readouterr()
    event = _first_event(MLEngineTrainingJobTrigger(**kwargs))
    assert event["status"] == "success" and event["job"]["state"] == "SUCCEEDED"
    assert f"[{ti.xcom['job_id']}] tick 1" in capsys.readouterr().out
    assert int(event["log_cursor"]) > 0
    result = op.execute_complete({"ti": ti}, event)
    assert result["state"] == "SUCCEEDED"
    assert "tick 1" not in capsys.readouterr().out  # the trigger printed those; nothing is printed twice

    failed = dict(event, job={**event["job"], "state": "FAILED", "errorMessage": "boom"})
    with pytest.raises(AirflowException, match="ended FAILED: boom"):
        op.execute_complete({"ti": ti}, failed)


def test_deferrable_job_that_ends_within_defer_after_prints_its_log_once_without_deferring(
    hook, tiny_trainer_package, bucket, gcs_prefix, capsys
):
    op = _operator(tiny_trainer_package, f"gs://{bucket.name}/{gcs_prefix}/job", ["--seconds", "1"],
                   deferrable=True, defer_after=120)
    ti = FakeTI()
    result = op.execute({"ti": ti})  # no TaskDeferred
    assert result["state"] == "SUCCEEDED"
    assert capsys.readouterr().out.count(f"[{ti.xcom['job_id']}] tick 1") == 1


def test_logs_on_google_come_from_cloud_logging(ml_conn, monkeypatch):
    """No GCP here: Cloud Logging's client is the one stand-in; the query and the cursor are what is checked."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import logging as cloud_logging
    from ml_engine.hooks import MLEngineHook

    queries = []

    class FakeClient:
        def __init__(self, *, project, credentials):
            self.project = project

        def list_entries(self, *, filter_, order_by, page_size):
            queries.append((self.project, filter_, order_by))
            return [SimpleNamespace(payload="Epoch 1/2 loss=0.5", timestamp=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)),
                    SimpleNamespace(payload={"message": "Epoch 2/2 loss=0.4\n"},
                                    timestamp=datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC))]

    monkeypatch.setattr(cloud_logging, "Client", FakeClient)
    hook = MLEngineHook(endpoint="https://us-central1-ml.googleapis.com/")
    monkeypatch.setattr(hook, "get_credentials_and_project_id", lambda: (AnonymousCredentials(), "gcp-project"))
    lines, cursor = hook.read_training_logs(project_id="gcp-project", job_id="train_1")
    assert lines == ["Epoch 1/2 loss=0.5", "Epoch 2/2 loss=0.4"]
    assert cursor == "2026-01-01T00:00:02+00:00"
    hook.read_training_logs(project_id="gcp-project", job_id="train_1", cursor=cursor)
    assert queries == [
        ("gcp-project", 'resource.type="ml_job" AND resource.labels.job_id="train_1"', cloud_logging.ASCENDING),
        ("gcp-project", 'resource.type="ml_job" AND resource.labels.job_id="train_1" '
                        'AND timestamp>"2026-01-01T00:00:02+00:00"', cloud_logging.ASCENDING),
    ]

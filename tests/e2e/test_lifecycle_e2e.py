"""End to end on the local stack: model_lifecycle, batch_prediction and model_maintenance with tiny settings.

One scenario, run once (real GCS emulator, real ml/v1 service, real training,
`dag.test()` in a fresh interpreter against a SQLite Airflow home):

1. lifecycle A (4 epochs, training_backend ml_engine): data generated, the trainer packaged and run as an
   ml/v1 training job whose log lines stream into the task log, 2 variants deployed, smoke-tested, A promoted.
2. batch on the default, with 2 unreadable lines: results, errors_stats, counts, summary.json.
3. lifecycle B (1 epoch, worse, training_backend in_task): trained in the task, deployed and smoke-tested,
   NOT promoted; the default stays A.
4. maintenance set_default B, then 5. rollback: back to A (the promotion trail).
6. lifecycle A again (same logical date, as a cleared run): reuses the package and the training job,
   converges on the same versions and default.
7. batch with a low max_error_rate: the run fails at summarize, after writing its summary.
8. lifecycle C (promoted by policy `always`, keep_versions 4): retention keeps A's b64 version, the
   rollback target on C's `promoted_from` trail, though the 4 newest are C's and B's (issue 8).
9. rollback: back to A, not to B, the candidate the gate rejected.
"""

from __future__ import annotations

import json

import pytest

from include import config
from tests.e2e.run_dags import migrate, run_scenario, settings_env

pytestmark = pytest.mark.slow

MODEL = "e2e_heatmap"
BUCKET = "e2e-lifecycle"
KEY_A, KEY_B, KEY_C = "20260101T000000", "20260102T000000", "20260104T000000"
A_B64, B_B64, C_B64 = f"v{KEY_A}_b64", f"v{KEY_B}_b64", f"v{KEY_C}_b64"
BATCH_SAMPLES, BAD_SAMPLES = 8, 2


def _steps() -> list[dict]:
    # dag.test() runs share one DAG object in one process, and a param set by an earlier conf was seen to
    # stick (lifecycle_a_again ran in_task): each conf names the params it relies on.
    step = {"model_name": MODEL}
    return [
        {**step, "name": "lifecycle_a", "dag_id": "model_lifecycle", "logical_date": "2026-01-01T00:00:00+00:00",
         "conf": {"epochs": 4}},
        {**step, "name": "batch_a", "dag_id": "batch_prediction", "logical_date": "2026-01-01T06:00:00+00:00",
         "conf": {"bad_samples": BAD_SAMPLES, "max_error_rate": 0.5}},
        {**step, "name": "lifecycle_b_worse", "dag_id": "model_lifecycle",
         "logical_date": "2026-01-02T00:00:00+00:00", "conf": {"epochs": 1, "training_backend": "in_task"}},
        {**step, "name": "set_default_b", "dag_id": "model_maintenance", "logical_date": "2026-01-03T00:00:00+00:00",
         "conf": {"action": "set_default", "version": B_B64}},
        {**step, "name": "rollback", "dag_id": "model_maintenance", "logical_date": "2026-01-03T01:00:00+00:00",
         "conf": {"action": "rollback"}},
        {**step, "name": "lifecycle_a_again", "dag_id": "model_lifecycle",
         "logical_date": "2026-01-01T00:00:00+00:00", "conf": {"epochs": 4, "training_backend": "ml_engine"}},
        {**step, "name": "batch_too_many_errors", "dag_id": "batch_prediction",
         "logical_date": "2026-01-03T06:00:00+00:00", "conf": {"bad_samples": BAD_SAMPLES, "max_error_rate": 0.05},
         "expect": "failed"},
        {**step, "name": "lifecycle_c_keep_4", "dag_id": "model_lifecycle", "logical_date": "2026-01-04T00:00:00+00:00",
         "conf": {"epochs": 1, "promotion_policy": "always", "keep_versions": 4}},
        {**step, "name": "rollback_after_retention", "dag_id": "model_maintenance",
         "logical_date": "2026-01-04T01:00:00+00:00", "conf": {"action": "rollback"}},
    ]


@pytest.fixture(scope="module")
def scenario(ml_service, gcs_emulator, tmp_path_factory) -> dict[str, dict]:
    env = settings_env(
        tmp_path_factory.mktemp("airflow_home"),
        ML_BUCKET=BUCKET,
        ML_MODEL_NAME=MODEL,
        ML_NUM_EXAMPLES="96",
        ML_VARIANTS="b64,tfexample",
        ML_SERVING_VARIANT="b64",
        ML_SMOKE_INSTANCES="2",
        ML_BATCH_SAMPLE_COUNT=str(BATCH_SAMPLES),
        ML_TASK_RETRIES="0",
        ML_ENGINE_ENDPOINT=ml_service.url,
        STORAGE_EMULATOR_HOST=gcs_emulator,
    )
    migrate(env)
    result = run_scenario(_steps(), env)
    assert result.returncode == 0, result.failure()
    return {**result.reports, "stdout": result.stdout}


def _metric(report: dict, version: str) -> float:
    return int(report["model"]["versions"][version]["labels"][config.METRIC_LABEL]) / 10_000


def test_first_run_deploys_smoke_tests_and_promotes(scenario):
    run = scenario["lifecycle_a"]
    tasks = run["tasks"]
    assert run["state"] == "success"
    assert tasks["prepare_data"] == "success"  # no data yet: generated
    assert tasks["smoke_test[0]"] == tasks["smoke_test[1]"] == "success"
    assert tasks["set_default"] == tasks["record_promotion"] == tasks["retention"] == "success"
    assert tasks["not_promoted"] == "skipped"
    assert run["decision"]["promote"] is True
    model = run["model"]
    assert model["default"] == A_B64
    assert set(model["versions"]) == {A_B64, f"v{KEY_A}_tfexample"}
    assert all(v["state"] == "READY" for v in model["versions"].values())
    labels = model["versions"][A_B64]["labels"]
    assert labels["variant"] == "b64" and labels["run"] == KEY_A.lower() and labels["promoted_run"] == KEY_A.lower()
    assert 0.0 < _metric(run, A_B64) <= 1.0
    [event] = run["asset_events"]  # the promotion Asset that schedules batch_prediction
    assert event["task_id"] == "record_promotion"
    assert event["extra"]["version"] == A_B64 and event["extra"]["model"] == MODEL


def test_batch_prediction_outputs_and_counts(scenario, gcs_client):
    run = scenario["batch_a"]
    assert run["state"] == "success", run["tasks"]
    outputs = f"batch/{MODEL}/"
    blobs = [b.name for b in gcs_client.list_blobs(BUCKET, prefix=outputs)]
    summaries = [b for b in blobs if b.endswith("/outputs/summary.json") and "2026_01_01T06" in b]
    assert len(summaries) == 1, blobs
    summary = json.loads(gcs_client.bucket(BUCKET).blob(summaries[0]).download_as_text())
    assert summary["version"] == A_B64 and summary["variant"] == "b64"
    assert (summary["prediction_count"], summary["error_count"]) == (BATCH_SAMPLES, BAD_SAMPLES)
    assert summary["result_lines"] == BATCH_SAMPLES
    assert sum(summary["error_types"].values()) == BAD_SAMPLES
    prefix = summaries[0].rsplit("/", 1)[0]
    names = {b.rsplit("/", 1)[-1] for b in blobs if b.startswith(prefix)}
    assert {"prediction.results-00000-of-00002", "prediction.results-00001-of-00002",
            "prediction.errors_stats-00000-of-00002", "prediction.errors_stats-00001-of-00002"} <= names
    lines = []
    for name in sorted(n for n in names if n.startswith("prediction.results-")):
        text = gcs_client.bucket(BUCKET).blob(f"{prefix}/{name}").download_as_text()
        lines += [json.loads(line) for line in text.splitlines() if line.strip()]
    assert sorted(line["key"] for line in lines) == [f"sample-{i:05d}" for i in range(BATCH_SAMPLES)]
    assert all(len(line["heatmap"]) == len(line["heatmap"][0]) for line in lines)


JOB_A = f"{MODEL}_train_{KEY_A}"


def test_training_job_logs_stream_into_the_task_log(scenario):
    tasks = scenario["lifecycle_a"]["tasks"]
    assert tasks["package_trainer"] == tasks["train_job"] == tasks["train"] == "success"
    lines = scenario["stdout"].splitlines()
    epochs = [i for i, line in enumerate(lines) if f"[{JOB_A}] " in line and "Epoch " in line]
    assert len(epochs) >= 4, "the trainer's epochs are not in the task log"
    assert "val_iou=" in lines[epochs[-1]]
    succeeded = next(i for i, line in enumerate(lines) if f"Training job {JOB_A}: state SUCCEEDED" in line)
    running = [i for i, line in enumerate(lines) if f"Training job {JOB_A}: state RUNNING" in line]
    assert running and epochs[0] < succeeded  # printed while the job ran, before its end was seen
    assert any(f"[{JOB_A}] [local_platform] running python -m trainer.task --data-uri" in line for line in lines)
    # the cleared run of A reused the staged package and the finished job: no second training
    assert scenario["lifecycle_a_again"]["tasks"]["train_job"] == "success"
    assert any(f"Job {JOB_A} already exists (state SUCCEEDED); reusing it" in line for line in lines)
    assert not any(f"{JOB_A}_r2" in line for line in lines)
    assert sum("Trainer package for these sources already staged" in line for line in lines) >= 1


def test_worse_second_run_is_not_promoted(scenario):
    first, run = scenario["lifecycle_a"], scenario["lifecycle_b_worse"]
    tasks = run["tasks"]
    assert run["state"] == "success"
    assert tasks["prepare_data"] == "success"  # kept A's data: the newest period on or before B's date
    assert tasks["package_trainer"] == tasks["train_job"] == "skipped"  # training_backend in_task
    assert tasks["train"] == "success"
    assert tasks["smoke_test[0]"] == tasks["smoke_test[1]"] == "success"
    assert tasks["not_promoted"] == "success"
    assert tasks["set_default"] == tasks["record_promotion"] == "skipped"
    assert tasks["retention"] == "success"
    assert run["decision"]["promote"] is False and run["decision"]["current_version"] == A_B64
    assert _metric(run, B_B64) < _metric(first, A_B64)
    assert run["model"]["default"] == A_B64  # untouched
    assert run["asset_events"] == []  # no promotion, no batch trigger
    assert run["model"]["versions"][B_B64]["state"] == "READY"  # deployed, just not promoted


def test_set_default_then_rollback(scenario):
    assert scenario["set_default_b"]["state"] == "success"
    assert scenario["set_default_b"]["model"]["default"] == B_B64
    assert scenario["set_default_b"]["model"]["versions"][B_B64]["labels"]["promoted_from"] == A_B64.lower()
    rollback = scenario["rollback"]
    assert rollback["state"] == "success"
    assert rollback["tasks"]["choose_old_versions"] == "skipped"
    assert rollback["model"]["default"] == A_B64


def test_batch_fails_above_the_error_rate_threshold(scenario):
    run = scenario["batch_too_many_errors"]
    assert run["state"] == "failed"
    assert run["tasks"]["batch_predict"] == "success"
    assert run["tasks"]["summarize"] == "failed"


def test_rerun_of_a_run_converges(scenario):
    before, again = scenario["rollback"], scenario["lifecycle_a_again"]
    assert again["state"] == "success", again["tasks"]
    assert again["model"]["default"] == A_B64
    assert set(again["model"]["versions"]) == set(before["model"]["versions"])  # no duplicates, nothing lost
    assert again["decision"]["promote"] is True  # its own version is the default: no baseline to beat
    assert "own version" in again["decision"]["reason"]


def test_retention_keeps_the_rollback_target(scenario):
    run = scenario["lifecycle_c_keep_4"]
    assert run["state"] == "success", run["tasks"]
    assert run["tasks"]["retention"] == "success"
    model = run["model"]
    assert model["default"] == C_B64
    assert model["versions"][C_B64]["labels"]["promoted_from"] == A_B64.lower()
    # The 4 newest are C's and B's; A's tfexample goes, A's b64 (C's rollback target) stays.
    assert set(model["versions"]) == {C_B64, f"v{KEY_C}_tfexample", B_B64, f"v{KEY_B}_tfexample", A_B64}
    rollback = scenario["rollback_after_retention"]
    assert rollback["state"] == "success"
    assert rollback["model"]["default"] == A_B64  # not B_B64, which the gate rejected

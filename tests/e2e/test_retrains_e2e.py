"""Periodic retrains on drifting data, judged by the fair gate: the whole DAGs with dag.test().

Real GCS emulator, real ml/v1 service, real training (in the task), the local feed
(`data_arrival`) writing three periods whose distribution moves (period 1: the
original task; period 2: a brighter camera; period 3: also bigger spots):

1. data for period 1, then a retrain: deployed and promoted (nothing to compare).
2. data for period 2, then a retrain: the old default scores clearly worse on period 2's
   held-out examples than its own label says, the new model beats it, it is promoted.
3. a retrain on period 2 again (same data, same seed): rejected, the interval in the reason.
4. run 2 cleared (same logical date): its evaluation is read back, the same decision, no change.
5. data for period 3 (twice the examples), then a 1-epoch retrain: its own val_iou is above the
   default's label (the data got easier), yet on the same examples it is worse: rejected.
"""

from __future__ import annotations

import pytest

from include import config
from tests.e2e.run_dags import migrate, run_scenario, settings_env

pytestmark = pytest.mark.slow

MODEL = "retrain_heatmap"
BUCKET = "e2e-retrains"
P1, P2, P3 = "2026-01-05", "2026-01-12", "2026-01-26"  # drift 0, 1 and 3 (docs/retrains.md)
V1, V2, V2_AGAIN, V3 = (f"v{key}_b64" for key in ("20260105T010000", "20260112T010000", "20260112T020000",
                                                  "20260126T010000"))


def _steps() -> list[dict]:
    lifecycle = {"model_name": MODEL, "dag_id": "model_lifecycle"}
    train = {"training_backend": "in_task", "epochs": 6, "data_period": "latest", "promotion_policy": "better"}
    arrival = {"model_name": MODEL, "dag_id": "data_arrival"}
    return [
        {**arrival, "name": "data_p1", "logical_date": f"{P1}T00:00:00+00:00", "conf": {"num_examples": 512}},
        {**lifecycle, "name": "retrain_p1", "logical_date": f"{P1}T01:00:00+00:00", "conf": train},
        {**arrival, "name": "data_p2", "logical_date": f"{P2}T00:00:00+00:00", "conf": {"num_examples": 512}},
        {**lifecycle, "name": "retrain_p2", "logical_date": f"{P2}T01:00:00+00:00", "conf": train},
        {**lifecycle, "name": "retrain_p2_same_data", "logical_date": f"{P2}T02:00:00+00:00", "conf": train},
        {**lifecycle, "name": "retrain_p2_cleared", "logical_date": f"{P2}T01:00:00+00:00", "conf": train},
        {**arrival, "name": "data_p3", "logical_date": f"{P3}T00:00:00+00:00", "conf": {"num_examples": 1024}},
        {**lifecycle, "name": "retrain_p3_weak", "logical_date": f"{P3}T01:00:00+00:00",
         "conf": {**train, "epochs": 1}},
    ]


@pytest.fixture(scope="module")
def runs(ml_service, gcs_emulator, tmp_path_factory) -> dict[str, dict]:
    env = settings_env(
        tmp_path_factory.mktemp("airflow_home"),
        ML_BUCKET=BUCKET,
        ML_MODEL_NAME=MODEL,
        ML_VARIANTS="b64",
        ML_SERVING_VARIANT="b64",
        ML_SMOKE_INSTANCES="2",
        ML_TASK_RETRIES="0",
        ML_ENGINE_ENDPOINT=ml_service.url,
        STORAGE_EMULATOR_HOST=gcs_emulator,
    )
    migrate(env)
    result = run_scenario(_steps(), env, timeout=1500)
    assert result.returncode == 0, result.failure()
    return {**result.reports, "stdout": result.stdout}


def _label(run: dict, version: str, label: str) -> str | None:
    return run["model"]["versions"][version]["labels"].get(label)


def _metric(run: dict, version: str, label: str = config.METRIC_LABEL) -> float:
    return int(_label(run, version, label)) / 10_000


def _evaluation(gcs_client, version: str) -> dict:
    import json

    key = version[1:].split("_")[0]
    blob = gcs_client.bucket(BUCKET).blob(f"runs/{MODEL}/{key}/evaluation/evaluation.json")
    return json.loads(blob.download_as_text())


def test_the_feed_marks_each_period_with_the_data_asset(runs):
    for name, period in (("data_p1", P1), ("data_p2", P2), ("data_p3", P3)):
        [event] = runs[name]["asset_events"]
        assert event["extra"]["period"] == period
        assert event["extra"]["data_uri"] == f"gs://{BUCKET}/data/default/{period}"
    assert runs["data_p3"]["asset_events"][0]["extra"]["examples"] == 1024


def test_first_period_deploys_and_promotes(runs):
    run = runs["retrain_p1"]
    assert run["state"] == "success" and run["model"]["default"] == V1
    assert run["tasks"]["evaluate"] == "success" and run["decision"]["promote"] is True
    assert _label(run, V1, "data_period") == P1 and _label(run, V1, "eval_period") == P1
    assert _label(run, V1, "eval_baseline") is None  # nothing to compare with


def test_second_period_beats_the_aged_default_and_is_promoted(runs, gcs_client):
    run = runs["retrain_p2"]
    decision = run["decision"]
    assert decision["promote"] is True and decision["current_version"] == V1
    assert run["model"]["default"] == V2
    found = _evaluation(gcs_client, V2)
    assert (found["period"], found["baseline_version"], found["candidate_version"]) == (P2, V1, V2)
    # The old default got measurably worse on the new period than its own label says
    assert found["baseline_iou"] < _metric(runs["retrain_p1"], V1) - 0.1
    assert found["interval"][0] > 0 and found["candidate_iou"] > found["baseline_iou"]
    assert found["examples"] == round(512 * 0.2)
    assert _metric(run, V2, "eval_iou_x10000") == pytest.approx(found["candidate_iou"], abs=1e-4)
    assert _metric(run, V2, "eval_diff_low_x10000") == pytest.approx(found["interval"][0], abs=1e-4)
    assert run["asset_events"] and run["asset_events"][0]["extra"]["version"] == V2


def test_a_retrain_on_the_same_data_is_rejected_with_the_interval(runs):
    run = runs["retrain_p2_same_data"]
    assert run["tasks"]["prepare_data"] == "success" and run["tasks"]["not_promoted"] == "success"
    decision = run["decision"]
    assert decision["promote"] is False and decision["current_version"] == V2
    low, high = decision["interval"]
    assert low <= 0 and f"[{low:+.4f}, {high:+.4f}]" in decision["reason"] and "not better" in decision["reason"]
    assert run["model"]["default"] == V2


def test_a_cleared_evaluation_repeats_its_first_decision(runs, gcs_client):
    first, cleared = runs["retrain_p2"], runs["retrain_p2_cleared"]
    assert cleared["state"] == "success"
    assert cleared["decision"] == first["decision"]  # though V2 is the default by now
    assert cleared["model"]["default"] == V2
    assert "Re-run: keeping the choice recorded first at" in runs["stdout"]


def test_a_weak_candidate_with_a_flattering_own_metric_is_rejected(runs, gcs_client):
    run = runs["retrain_p3_weak"]
    decision = run["decision"]
    # The old gate compared these two numbers, measured on different data, and would have promoted:
    assert _metric(run, V3) > _metric(run, V2)
    assert decision["promote"] is False and decision["current_version"] == V2
    found = _evaluation(gcs_client, V3)
    assert found["period"] == P3 and found["candidate_iou"] < found["baseline_iou"]
    assert found["interval"][0] < 0
    assert run["model"]["default"] == V2 and run["asset_events"] == []

"""The lifecycle on Vertex AI (ML_PLATFORM=vertex), end to end on the local Vertex AI surface with dag.test().

The provider's hooks (and, for training, its operator) talk to the local service through the
route, as on Google Cloud:

1. run A: the trainer as a Vertex AI Python package training pipeline; versions uploaded with the
   run's aliases, smoke-tested alone on their staging endpoints, evaluated, promoted: the serving
   endpoint had nothing, so A takes all its traffic at once; the `default` alias is A's.
2. run B (1 epoch, in the task): rejected by the gate: no traffic moves, staging released.
3. run C (policy always): a canary of 10 % on the serving endpoint, probes pass, all the traffic,
   the `default` alias moves, A leaves the serving endpoint (its version stays, for rollback).
4. run D (policy always) while the serving endpoint fails every call after the evaluation's:
   the canary fails, the traffic goes back to C, D leaves the endpoint, the default stays C.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.e2e.run_dags import migrate, run_scenario, settings_env

pytestmark = pytest.mark.slow

MODEL = "vertexheatmap"
BUCKET = "e2e-vertex"
KEYS = {"a": "20260105T000000", "b": "20260106T000000", "c": "20260107T000000", "d": "20260108T000000"}
B64 = {run: f"v{key}_b64" for run, key in KEYS.items()}


def _step(run: str, conf: dict) -> dict:
    day = KEYS[run][6:8]
    return {"name": f"lifecycle_{run}", "dag_id": "model_lifecycle", "model_name": MODEL,
            "logical_date": f"2026-01-{day}T00:00:00+00:00",
            "conf": {"data_period": "2026-01-05", "training_backend": "in_task", "epochs": 4,
                     "promotion_policy": "better", **conf}}


def _faults(ml_service, method: str, rule: dict | None = None) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {ml_service.token}"}
    request = urllib.request.Request(f"{ml_service.url}_local/faults", method=method, headers=headers,
                                     data=json.dumps(rule).encode() if rule else None)
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope="module")
def runs(ml_service, gcs_emulator, vertex, tmp_path_factory) -> dict:
    env = settings_env(tmp_path_factory.mktemp("airflow_home"), ML_PLATFORM="vertex", ML_BUCKET=BUCKET,
                       ML_MODEL_NAME=MODEL, ML_NUM_EXAMPLES="96", ML_VARIANTS="b64,tfexample",
                       ML_SERVING_VARIANT="b64", ML_SMOKE_INSTANCES="2", ML_TASK_RETRIES="0",
                       ML_CANARY_SECONDS="2", ML_ENGINE_ENDPOINT=ml_service.url, STORAGE_EMULATOR_HOST=gcs_emulator)
    migrate(env)
    first = run_scenario([_step("a", {"training_backend": "ml_engine"}), _step("b", {"epochs": 1}),
                          _step("c", {"promotion_policy": "always"})], env, timeout=1500)
    assert first.returncode == 0, first.failure()
    # Every call to the serving endpoint fails once the evaluation has read the default through it (one call).
    _faults(ml_service, "POST", {"status": 500, "times": -1, "after": 1,
                                 "path_regex": f"PredictionService/Predict/.*/endpoints/{MODEL}-serving$"})
    try:
        second = run_scenario([_step("d", {"promotion_policy": "always"})], env, timeout=900)
    finally:
        _faults(ml_service, "DELETE")
    assert second.returncode == 0, second.failure()
    return {**first.reports, **second.reports, "stdout": first.stdout + second.stdout}


def test_first_run_trains_on_vertex_and_takes_all_traffic(runs):
    run = runs["lifecycle_a"]
    tasks = run["tasks"]
    assert run["state"] == "success", tasks
    assert tasks["train_job"] == tasks["upload_version[0]"] == tasks["stage_version[1]"] == "success"
    assert tasks["canary"] == tasks["canary_check"] == tasks["take_all_traffic"] == tasks["set_default"] == "success"
    assert tasks["canary_rollback"] == tasks["not_promoted"] == "skipped"
    state = run["model"]
    assert state["default"] == B64["a"]
    assert state["endpoints"]["serving"] == {B64["a"]: 100}
    assert all(not deployed for role, deployed in state["endpoints"].items() if role != "serving")  # released
    labels = state["versions"][B64["a"]]["labels"]
    assert labels["variant"] == "b64" and labels["data_period"] == "2026-01-05" and "eval_iou_x10000" in labels
    assert "Training pipeline" in runs["stdout"]


def test_a_rejected_candidate_moves_no_traffic(runs):
    run = runs["lifecycle_b"]
    assert run["state"] == "success" and run["tasks"]["not_promoted"] == "success"
    assert run["tasks"]["canary"] == run["tasks"]["set_default"] == "skipped"
    assert run["decision"]["promote"] is False and run["decision"]["current_version"] == B64["a"]
    assert run["model"]["endpoints"]["serving"] == {B64["a"]: 100}
    assert run["model"]["default"] == B64["a"]


def test_a_canary_that_passes_takes_all_traffic(runs):
    run = runs["lifecycle_c"]
    assert run["state"] == "success", run["tasks"]
    assert run["tasks"]["take_all_traffic"] == "success" and run["tasks"]["canary_rollback"] == "skipped"
    assert run["model"]["default"] == B64["c"]
    assert run["model"]["endpoints"]["serving"] == {B64["c"]: 100}  # A undeployed from serving
    assert B64["a"] in run["model"]["versions"]  # kept for rollback
    assert run["model"]["versions"][B64["c"]]["labels"]["promoted_from"] == B64["a"].lower()
    assert "Canary of v20260107T000000_b64: canary passed" in runs["stdout"]


def test_a_canary_that_fails_sends_the_traffic_back(runs):
    run = runs["lifecycle_d"]
    assert run["state"] == "success", run["tasks"]
    assert run["tasks"]["canary_rollback"] == "success" and run["tasks"]["take_all_traffic"] == "skipped"
    assert run["model"]["default"] == B64["c"]
    assert run["model"]["endpoints"]["serving"] == {B64["c"]: 100}
    assert "canary failed" in runs["stdout"]

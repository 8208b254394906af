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
5. batch_prediction on the default (C), with two unreadable lines: a Vertex AI batch job, waited for
   by the provider's trigger, counted from its predictions_/errors_ files.
6. model_maintenance rollback: C's `promoted_from` trail leads to A: A takes the traffic and the alias.
7. run E (policy never, keep 2) while an unfinished batch run pins D: retention deletes the versions
   no rule needs (undeployed first), keeps the default A, the pinned D and its own.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.e2e.run_dags import migrate, run_scenario, settings_env

pytestmark = pytest.mark.slow

MODEL = "vertexheatmap"
BUCKET = "e2e-vertex"
KEYS = {"a": "20260105T000000", "b": "20260106T000000", "c": "20260107T000000", "d": "20260108T000000",
        "e": "20260109T000000"}
B64 = {run: f"v{key}_b64" for run, key in KEYS.items()}


def _step(run: str, conf: dict) -> dict:
    day = KEYS[run][6:8]
    return {"name": f"lifecycle_{run}", "dag_id": "model_lifecycle", "model_name": MODEL,
            "logical_date": f"2026-01-{day}T00:00:00+00:00",
            "conf": {"data_period": "2026-01-05", "training_backend": "in_task", "epochs": 4,
                     "promotion_policy": "better", **conf}}


def _other(name: str, dag_id: str, day: str, conf: dict) -> dict:
    return {"name": name, "dag_id": dag_id, "model_name": MODEL, "logical_date": f"2026-01-{day}T06:00:00+00:00",
            "conf": conf}


def _faults(ml_service, method: str, rule: dict | None = None) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {ml_service.token}"}
    request = urllib.request.Request(f"{ml_service.url}_local/faults", method=method, headers=headers,
                                     data=json.dumps(rule).encode() if rule else None)
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope="module")
def runs(ml_service, gcs_emulator, gcs_client, vertex, tmp_path_factory) -> dict:
    env = settings_env(tmp_path_factory.mktemp("airflow_home"), ML_PLATFORM="vertex", ML_BUCKET=BUCKET,
                       ML_MODEL_NAME=MODEL, ML_NUM_EXAMPLES="96", ML_VARIANTS="b64,tfexample",
                       ML_SERVING_VARIANT="b64", ML_SMOKE_INSTANCES="2", ML_TASK_RETRIES="0",
                       ML_CANARY_SECONDS="2", ML_ENGINE_ENDPOINT=ml_service.url, STORAGE_EMULATOR_HOST=gcs_emulator)
    migrate(env)
    first = run_scenario([_step("a", {"training_backend": "vertex"}), _step("b", {"epochs": 1}),
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
    third = run_scenario([_other("batch_c", "batch_prediction", "08", {"bad_samples": 2, "max_error_rate": 0.5}),
                          _other("rollback", "model_maintenance", "08", {"action": "rollback"})], env, timeout=900)
    assert third.returncode == 0, third.failure()
    # an unfinished batch run (a target, no summary yet) pins D's serving version
    gcs_client.bucket(BUCKET).blob(f"batch/{MODEL}/job_open/target.json").upload_from_string(
        json.dumps({"model": MODEL, "version": B64["d"]}))
    fourth = run_scenario([_step("e", {"promotion_policy": "never", "keep_versions": 2})], env, timeout=900)
    assert fourth.returncode == 0, fourth.failure()
    return {**first.reports, **second.reports, **third.reports, **fourth.reports,
            "stdout": first.stdout + second.stdout + third.stdout + fourth.stdout}


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


def test_batch_prediction_on_the_default_version(runs):
    run = runs["batch_c"]
    assert run["state"] == "success", run["tasks"]
    logs = runs["stdout"]
    assert "Created batch prediction job" in logs and "waiting in the triggerer" in logs
    assert f"on {MODEL}/{B64['c']} (b64 variant)" in logs
    assert "64 predictions, 2 errors" in logs


def test_rollback_moves_traffic_and_alias_back(runs):
    run = runs["rollback"]
    assert run["state"] == "success", run["tasks"]
    assert run["model"]["default"] == B64["a"]
    assert run["model"]["endpoints"]["serving"] == {B64["a"]: 100}
    [event] = run["asset_events"]
    assert event["extra"]["version"] == B64["a"] and event["extra"]["previous"] == B64["c"]


def test_retention_deletes_what_no_rule_needs_and_keeps_the_pinned(runs):
    run = runs["lifecycle_e"]
    assert run["state"] == "success", run["tasks"]
    kept = set(run["model"]["versions"])
    assert B64["a"] in kept and B64["d"] in kept  # the default, the pinned
    assert {B64["e"], f"v{KEYS['e']}_tfexample"} <= kept  # the run's own
    assert not {B64["b"], f"v{KEYS['b']}_tfexample", f"v{KEYS['a']}_tfexample"} & kept
    assert run["model"]["endpoints"]["serving"] == {B64["a"]: 100}
    assert all(not deployed for role, deployed in run["model"]["endpoints"].items() if role != "serving")

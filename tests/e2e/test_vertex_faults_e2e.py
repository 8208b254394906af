"""The lifecycle on Vertex AI under faults: 20 % of all Vertex AI calls and 10 % of the tasks' GCS calls fail.

As tests/e2e/test_faults_e2e.py does for ml/v1: model_lifecycle (its trainer as a Vertex AI training
pipeline) then batch_prediction, once clean and once with the service's fault switch failing 20 % of the
gRPC calls (503 UNAVAILABLE or 429 RESOURCE_EXHAUSTED; predictions included) and mitmproxy failing 10 % of
the GCS requests. Task retries are 0: the code's own retries must absorb every fault. The faulted run must
end as the clean one did, names mapped across: default, versions and labels, the serving traffic, one
training pipeline, one batch job, the batch counts. Nothing duplicated, nothing lost.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.run_dags import migrate, run_scenario, settings_env
from tests.e2e.test_faults_e2e import GCS_FAULT_RATE, gcs_proxy  # noqa: F401 - the shared proxy fixture
from tests.e2e.test_faults_e2e import _local as local

pytestmark = pytest.mark.slow

CLEAN = {"model": "vxclean", "bucket": "vx-faults-clean", "day": "2026-03-01"}
FAULTED = {"model": "vxchaos", "bucket": "vx-faults-chaos", "day": "2026-03-02"}
VERTEX_FAULT_RULES = [  # tried in order: 10 % 503, then 11.1 % of the rest 429 = 20 % in all
    {"status": 503, "times": -1, "probability": 0.1, "path_regex": "^/google\\.cloud\\.aiplatform\\.v1\\.",
     "seed": 18},
    {"status": 429, "times": -1, "probability": 0.1 / 0.9, "path_regex": "^/google\\.cloud\\.aiplatform\\.v1\\.",
     "seed": 19},
]


def _steps(run: dict) -> list[dict]:
    return [
        {"model_name": run["model"], "name": "lifecycle", "dag_id": "model_lifecycle",
         "logical_date": f"{run['day']}T00:00:00+00:00", "conf": {"epochs": 2}},
        {"model_name": run["model"], "name": "batch", "dag_id": "batch_prediction",
         "logical_date": f"{run['day']}T06:00:00+00:00", "conf": {"bad_samples": 1, "max_error_rate": 0.5}},
    ]


def _env(home, run: dict, *, ml_service, gcs_host: str) -> dict[str, str]:
    return settings_env(home, ML_PLATFORM="vertex", ML_BUCKET=run["bucket"], ML_MODEL_NAME=run["model"],
                        ML_NUM_EXAMPLES="96", ML_VARIANTS="b64,tfexample", ML_SERVING_VARIANT="b64",
                        ML_SMOKE_INSTANCES="2", ML_BATCH_SAMPLE_COUNT="8", ML_TASK_RETRIES="0",
                        ML_ENGINE_ENDPOINT=ml_service.url, STORAGE_EMULATOR_HOST=gcs_host)


def _jobs(run: dict) -> dict:
    """How many training pipelines and batch jobs the run's names have (and their states)."""
    from google.cloud import aiplatform_v1 as v1
    from google.oauth2.credentials import Credentials

    from tests.include.local_platform.api.test_vertex_models_endpoints import OPTIONS

    credentials = Credentials(token=os.environ["ML_ENGINE_TOKEN"])
    parent = "projects/test-project/locations/us-central1"
    pipelines = v1.PipelineServiceClient(credentials=credentials, client_options=OPTIONS).list_training_pipelines(
        parent=parent)
    jobs = v1.JobServiceClient(credentials=credentials, client_options=OPTIONS).list_batch_prediction_jobs(
        parent=parent)
    day = run["day"].replace("-", "")
    return {"pipelines": sorted(p.state.name for p in pipelines if p.display_name.startswith(f"{run['model']}_")),
            "batch_jobs": sorted(j.state.name for j in jobs if day in j.display_name.replace("_", ""))}


@pytest.fixture(scope="module")
def runs(ml_service, gcs_emulator, gcs_proxy, vertex, tmp_path_factory) -> dict:  # noqa: F811
    clean_env = _env(tmp_path_factory.mktemp("vx_clean_home"), CLEAN, ml_service=ml_service, gcs_host=gcs_emulator)
    migrate(clean_env)
    clean = run_scenario(_steps(CLEAN), clean_env, timeout=1200)
    assert clean.returncode == 0, clean.failure()
    faulted_env = _env(tmp_path_factory.mktemp("vx_faulted_home"), FAULTED, ml_service=ml_service,
                       gcs_host=gcs_proxy)
    migrate(faulted_env)
    local(ml_service, "DELETE", "_local/faults")
    for rule in VERTEX_FAULT_RULES:
        local(ml_service, "POST", "_local/faults", rule)
    try:
        faulted = run_scenario(_steps(FAULTED), faulted_env, timeout=1800)
        rules = local(ml_service, "GET", "_local/faults")["rules"]
    finally:
        local(ml_service, "DELETE", "_local/faults")
    assert faulted.returncode == 0, faulted.failure()
    return {"clean": clean.reports, "faulted": faulted.reports, "rules": rules,
            "jobs": {"clean": _jobs(CLEAN), "faulted": _jobs(FAULTED)}}


def test_faults_were_injected(runs):
    matched = runs["rules"][0]["matched"]
    injected = sum(rule["injected"] for rule in runs["rules"])
    assert matched > 50 and 0.1 < injected / matched < 0.3, runs["rules"]
    print(f"Vertex AI calls: {matched}, failed by the switch: {injected}; GCS fault rate {GCS_FAULT_RATE}")


def test_the_faulted_runs_succeed_without_task_retries(runs):
    for report in runs["faulted"].values():
        assert report["state"] == "success", report["tasks"]
        assert all(state in ("success", "skipped") for state in report["tasks"].values()), report["tasks"]


def _mapped(value, run: dict) -> str:
    text = json.dumps(value, sort_keys=True)
    return text.replace(run["model"], "M").replace(run["day"].replace("-", ""), "D").replace(run["day"], "D")


def test_same_end_state_as_the_clean_run_nothing_duplicated(runs):
    clean, faulted = runs["clean"]["batch"]["model"], runs["faulted"]["batch"]["model"]
    strip = {"val_iou_x10000", "eval_iou_x10000"}

    def shape(state: dict, run: dict) -> dict:
        return _mapped({"default": state["default"], "endpoints": state["endpoints"],
                        "versions": {name: {k: v for k, v in version["labels"].items() if k not in strip}
                                     for name, version in sorted(state["versions"].items())}}, run)

    assert shape(faulted, FAULTED) == shape(clean, CLEAN)
    assert len(faulted["versions"]) == 2  # one per variant: no duplicate upload
    assert runs["jobs"]["faulted"] == runs["jobs"]["clean"] == {
        "pipelines": ["PIPELINE_STATE_SUCCEEDED"], "batch_jobs": ["JOB_STATE_SUCCEEDED"]}

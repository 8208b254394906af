"""Whole DAGs under faults: model_lifecycle then batch_prediction with a flaky ml/v1 service and a flaky GCS.

- ml/v1: the service's fault switch answers 20 % of all /v1 requests 503 or 429 (two rules with `probability`).
- GCS: mitmproxy in reverse mode in front of the emulator (addon tests/e2e/gcs_fault_proxy.py) answers 10 % of the
  DAG tasks' GCS requests 503 or 429. The ml/v1 service itself reads and writes GCS directly, not through it.

Task retries are 0, so the code's own retries (the hook's loop, google-cloud-storage's DEFAULT_RETRY) must absorb
every fault. The same steps run once without faults (own model, bucket and Airflow home, logical dates a day
earlier: ml/v1 jobs cannot be deleted, so each run needs its own job ids); the faulted run must end in the same
state, names mapped across: default version, versions and their labels, the batch job and its counts, the objects
written to GCS. Nothing duplicated, nothing lost.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.run_dags import ROOT, migrate, run_scenario, settings_env
from tools.devstack import LocalProcess, free_port

pytestmark = pytest.mark.slow

CLEAN = {"model": "faults_clean", "bucket": "faults-clean", "day": "2026-02-01"}
FAULTED = {"model": "faults_chaos", "bucket": "faults-chaos", "day": "2026-02-02"}
KEY = "20260202T000000"  # the faulted run's
BATCH_SAMPLES, BAD_SAMPLES = 8, 1
ML_FAULT_RULES = [  # tried in order: 10 % 503, then 11.1 % of the rest 429 = 20 % in all
    {"status": 503, "times": -1, "probability": 0.1, "path_regex": "^/v1/", "seed": 8},
    {"status": 429, "times": -1, "probability": 0.1 / 0.9, "path_regex": "^/v1/", "seed": 9},
]
GCS_FAULT_RATE = 0.1


def _steps(run: dict) -> list[dict]:
    return [
        {"model_name": run["model"], "name": "lifecycle", "dag_id": "model_lifecycle",
         "logical_date": f"{run['day']}T00:00:00+00:00", "conf": {"epochs": 2}},
        {"model_name": run["model"], "name": "batch", "dag_id": "batch_prediction",
         "logical_date": f"{run['day']}T06:00:00+00:00", "conf": {"bad_samples": BAD_SAMPLES, "max_error_rate": 0.5}},
    ]


def _as_faulted(value):
    """The clean run's names as the faulted run spells them (model, bucket, run key and run id dates)."""
    if isinstance(value, dict):
        return {_as_faulted(k): _as_faulted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_faulted(v) for v in value]
    if not isinstance(value, str):
        return value
    for old, new in ((CLEAN["model"], FAULTED["model"]), (CLEAN["bucket"], FAULTED["bucket"])):
        value = value.replace(old, new)
    for separator in ("", "-", "_"):
        value = value.replace(CLEAN["day"].replace("-", separator), FAULTED["day"].replace("-", separator))
    return value


def _mitmdump() -> Path:
    path = Path(os.environ.get("MITMDUMP") or ROOT / ".state" / "tools" / "mitmproxy" / "bin" / "mitmdump")
    if not path.exists():
        pytest.skip(f"mitmproxy is not installed at {path}: `make tools` (make test does it) installs it")
    return path


def _local(service, method: str, path: str, body: dict | None = None) -> dict:
    """A call to the service's /_local/ test switch, with the bearer token when one is configured."""
    headers = {"Content-Type": "application/json"}
    if os.environ.get("ML_ENGINE_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['ML_ENGINE_TOKEN']}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{service.url}{path}", data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


@pytest.fixture(scope="module")
def gcs_proxy(gcs_emulator, tmp_path_factory):
    """URL of a mitmproxy reverse proxy in front of the emulator that fails GCS_FAULT_RATE of the requests."""
    port = free_port()
    home = tmp_path_factory.mktemp("mitmproxy")
    proxy = LocalProcess(
        name="gcs-fault-proxy",
        argv=[str(_mitmdump()), "--mode", f"reverse:{gcs_emulator}", "--listen-host", "127.0.0.1",
              "--listen-port", str(port), "--set", f"confdir={home}", "--set", "keep_host_header=true",
              # The emulator serves one connection at a time: never hold an idle one open to it.
              "--set", "connection_strategy=lazy",
              "-s", str(ROOT / "tests" / "e2e" / "gcs_fault_proxy.py"), "--set", f"fault_rate={GCS_FAULT_RATE}",
              "--set", f"upstream_origin={gcs_emulator}", "--set", "fault_seed=issue-8",
              "--set", "fault_first_per_kind=true"],
        health_url=f"http://127.0.0.1:{port}/_proxy/stats",
        log_path=home / "mitmdump.log",
    ).start(timeout=60)
    yield f"http://127.0.0.1:{port}"
    proxy.stop()


def _proxy_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_proxy/stats", timeout=10) as response:
        return json.loads(response.read())


def _env(home: Path, run: dict, *, ml_service, gcs_host: str) -> dict[str, str]:
    return settings_env(home, ML_BUCKET=run["bucket"], ML_MODEL_NAME=run["model"], ML_NUM_EXAMPLES="96",
                        ML_VARIANTS="b64,tfexample", ML_SERVING_VARIANT="b64", ML_SMOKE_INSTANCES="2",
                        ML_BATCH_SAMPLE_COUNT=str(BATCH_SAMPLES), ML_TASK_RETRIES="0",
                        ML_ENGINE_ENDPOINT=ml_service.url, STORAGE_EMULATOR_HOST=gcs_host)


@pytest.fixture(scope="module")
def runs(ml_service, gcs_emulator, gcs_proxy, tmp_path_factory) -> dict:
    """The clean run, then the faulted run (same steps, own bucket), and the faults each side injected."""
    clean_env = _env(tmp_path_factory.mktemp("clean_home"), CLEAN, ml_service=ml_service, gcs_host=gcs_emulator)
    migrate(clean_env)
    clean = run_scenario(_steps(CLEAN), clean_env)
    assert clean.returncode == 0, clean.failure()

    faulted_env = _env(tmp_path_factory.mktemp("faulted_home"), FAULTED, ml_service=ml_service, gcs_host=gcs_proxy)
    migrate(faulted_env, copy_from=Path(clean_env["AIRFLOW_HOME"]))
    before = _proxy_stats(gcs_proxy)
    for rule in ML_FAULT_RULES:
        _local(ml_service, "POST", "_local/faults", rule)
    try:
        faulted = run_scenario(_steps(FAULTED), faulted_env, timeout=1500)
        ml_rules = _local(ml_service, "GET", "_local/faults")["rules"]
    finally:
        _local(ml_service, "DELETE", "_local/faults")
    after = _proxy_stats(gcs_proxy)
    assert faulted.returncode == 0, faulted.failure()
    gcs = {"requests": after["requests"] - before["requests"],
           "injected": {k: after["injected"][k] - before["injected"][k] for k in after["injected"]},
           "injected_by_kind": {k: n - before["injected_by_kind"].get(k, 0)
                                for k, n in after["injected_by_kind"].items()}}
    ml = {"requests": ml_rules[0]["matched"], "injected": {str(rule["status"]): rule["injected"] for rule in ml_rules}}
    figures = {"ml_v1": ml, "gcs": gcs,
               "seconds": {"clean": sum(r["seconds"] for r in clean.reports.values()),
                           "faulted": sum(r["seconds"] for r in faulted.reports.values())}}
    print("fault figures:", json.dumps(figures))
    (Path(faulted_env["AIRFLOW_HOME"]) / "figures.json").write_text(json.dumps(figures, indent=1))
    return {"clean": _as_faulted(_end_state(ml_service, CLEAN)), "faulted": _end_state(ml_service, FAULTED),
            "figures": figures, "reports": faulted.reports}


def _end_state(ml_service, run: dict) -> dict:
    """What a run leaves: the model's versions and labels, its batch jobs, the GCS objects of the bucket."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    api = ml_service.build_api()
    project = os.environ["GOOGLE_CLOUD_PROJECT"]
    bucket = run["bucket"]
    name = f"projects/{project}/models/{run['model']}"
    model = api.projects().models().get(name=name).execute()
    versions = api.projects().models().versions().list(parent=name).execute().get("versions", [])
    jobs = [job for job in api.projects().jobs().list(parent=f"projects/{project}").execute().get("jobs", [])
            if (job.get("predictionInput") or {}).get("outputPath", "").startswith(f"gs://{bucket}/")]
    client = storage.Client(project=project, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": os.environ["STORAGE_EMULATOR_HOST"]})
    objects = sorted(blob.name for blob in client.list_blobs(bucket))
    summary_name = next(o for o in objects if o.endswith("/outputs/summary.json"))
    summary = json.loads(client.bucket(bucket).blob(summary_name).download_as_text())
    return {
        "default": model["defaultVersion"]["name"].rsplit("/", 1)[-1],
        "versions": {v["name"].rsplit("/", 1)[-1]: {"state": v["state"], "labels": v.get("labels", {})}
                     for v in versions},
        "jobs": [{"jobId": job["jobId"], "state": job["state"],
                  "version": job["predictionInput"].get("versionName", "").rsplit("/", 1)[-1]} for job in jobs],
        "objects": objects,
        "counts": {k: summary[k] for k in ("prediction_count", "error_count", "result_lines", "version")},
    }


def _without_metric(versions: dict) -> dict:
    """Versions and labels, less the metrics (`val_iou_x10000`, the evaluation's `eval_*_x10000`): training is
    not bit-for-bit repeatable across processes."""
    return {name: {**v, "labels": {k: x for k, x in v["labels"].items() if not k.endswith("_x10000")}}
            for name, v in versions.items()}


def test_faults_were_injected_on_both_sides(runs):
    figures = runs["figures"]  # both sides draw from seeds: about the same requests fail from run to run
    ml, gcs = figures["ml_v1"], figures["gcs"]
    assert ml["injected"]["503"] > 0 and ml["injected"]["429"] > 0, figures
    assert 0.05 < sum(ml["injected"].values()) / ml["requests"] < 0.4, figures
    assert gcs["injected"]["503"] > 0 and gcs["injected"]["429"] > 0, figures
    assert 0.05 < sum(gcs["injected"].values()) / gcs["requests"] < 0.3, figures
    # metadata reads and lists, downloads, uploads and bucket creation all met faults
    assert {"GET storage", "GET download", "POST upload", "POST storage"} <= set(gcs["injected_by_kind"]), figures


def test_faulted_run_succeeds_without_task_retries(runs):
    for report in runs["reports"].values():
        assert report["state"] == "success", report["tasks"]
        assert all(state in ("success", "skipped") for state in report["tasks"].values()), report["tasks"]


def test_no_duplicate_versions_or_jobs(runs):
    state = runs["faulted"]
    assert sorted(state["versions"]) == [f"v{KEY}_b64", f"v{KEY}_tfexample"]
    assert all(v["state"] == "READY" for v in state["versions"].values())
    [job] = state["jobs"]  # one job: no `_r2` retry chain, no second create
    assert job["state"] == "SUCCEEDED" and job["version"] == f"v{KEY}_b64", state["jobs"]


def test_same_end_state_as_a_clean_run(runs):
    clean, faulted = runs["clean"], runs["faulted"]
    assert faulted["default"] == clean["default"] == f"v{KEY}_b64"
    assert _without_metric(faulted["versions"]) == _without_metric(clean["versions"])
    assert faulted["versions"][f"v{KEY}_b64"]["labels"]["promoted_run"] == KEY.lower()
    assert [j["jobId"] for j in faulted["jobs"]] == [j["jobId"] for j in clean["jobs"]]
    assert faulted["counts"] == clean["counts"] == {"prediction_count": BATCH_SAMPLES, "error_count": BAD_SAMPLES,
                                                    "result_lines": BATCH_SAMPLES, "version": f"v{KEY}_b64"}
    assert faulted["objects"] == clean["objects"]  # every object written once, under the same name

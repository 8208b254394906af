"""Training jobs through googleapiclient: a tiny sdist built here, installed and run by the real service."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from googleapiclient.errors import HttpError

from tests.conftest import ServiceHandle
from tests.include.local_platform.conftest import PARENT, PROJECT, unique, wait_job
from tools import devstack


def training_body(package: str, job_dir: str | None, args: list[str], **extra) -> dict:
    training_input = {"packageUris": [package], "pythonModule": "tinytrainer.task", "args": args,
                      "region": "us-central1", **extra}
    if job_dir:
        training_input["jobDir"] = job_dir
    return {"jobId": unique("train"), "trainingInput": training_input}


def read_log(service_url: str, job_id: str, offset: int = 0) -> dict:
    """GET /_local/projects/P/jobs/J/logs (with the bearer token when the service requires one)."""
    request = urllib.request.Request(f"{service_url}_local/projects/{PROJECT}/jobs/{job_id}/logs?offset={offset}")
    if os.environ.get("ML_ENGINE_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['ML_ENGINE_TOKEN']}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_log(service_url: str, job_id: str, pattern: str, timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = "\n".join(read_log(service_url, job_id)["lines"])
        if match := re.search(pattern, text):
            return match
        time.sleep(0.2)
    raise TimeoutError(f"{pattern!r} not in the log of {job_id}")


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_sdist_job_succeeds_with_args_env_and_logs(ml_api, ml_service, tiny_trainer_package, bucket, gcs_prefix):
    job_dir = f"gs://{bucket.name}/{gcs_prefix}/job"
    body = training_body(tiny_trainer_package, job_dir, ["--seconds", "0.5", "--extra", "a b", "--extra=c"],
                         scaleTier="CUSTOM", masterType="n1-standard-4", runtimeVersion="2.11",
                         pythonVersion="3.7")
    created = ml_api.projects().jobs().create(parent=PARENT, body=body).execute()
    assert created["state"] == "QUEUED" and created["trainingInput"]["scaleTier"] == "CUSTOM"
    job = wait_job(ml_api, body["jobId"])
    assert job["state"] == "SUCCEEDED", job
    assert job["trainingOutput"]["consumedMLUnits"] >= 0
    assert job["startTime"] <= job["endTime"]
    result = json.loads(bucket.blob(f"{gcs_prefix}/job/result.json").download_as_text())
    assert result["argv"] == ["--seconds", "0.5", "--extra", "a b", "--extra=c", "--job-dir", job_dir]
    assert result["CLOUD_ML_JOB"]["python_module"] == "tinytrainer.task"
    assert result["CLOUD_ML_JOB"]["job_dir"] == job_dir and result["CLOUD_ML_JOB"]["scale_tier"] == "CUSTOM"
    assert result["TF_CONFIG"]["cluster"] == {"chief": ["127.0.0.1:2222"]}  # runtime 2.1+: chief, as documented
    assert result["TF_CONFIG"]["task"]["type"] == "chief" and result["TF_CONFIG"]["environment"] == "cloud"
    assert result["STORAGE_EMULATOR_HOST"] == os.environ["STORAGE_EMULATOR_HOST"]
    assert "/training/" in result["module_file"]  # ran from the job's own install, not the project tree
    log = read_log(ml_service.url, body["jobId"])
    assert log["done"] and log["state"] == "SUCCEEDED"
    assert "tick 1" in log["lines"] and "epoch 1/1 loss=0.5 done" in log["lines"]
    offset = int(log["nextOffset"])
    assert read_log(ml_service.url, body["jobId"], offset)["lines"] == []
    page = urllib.request.urlopen(urllib.request.Request(f"{ml_service.url}ui/{PARENT}/jobs/{body['jobId']}",
                                                         headers=ml_service.headers), timeout=10).read().decode()
    assert "epoch 1/1 loss=0.5 done" in page


def test_failing_trainer_ends_failed_with_its_error(ml_api, tiny_trainer_package, bucket, gcs_prefix):
    body = training_body(tiny_trainer_package, f"gs://{bucket.name}/{gcs_prefix}", ["--mode", "fail"])
    ml_api.projects().jobs().create(parent=PARENT, body=body).execute()
    job = wait_job(ml_api, body["jobId"])
    assert job["state"] == "FAILED"
    assert job["errorMessage"] == ("The replica master 0 exited with a non-zero status of 1. "
                                   "ValueError: learning rate must be positive, got -1")


def test_missing_package_fails_in_preparing(ml_api, bucket, gcs_prefix):
    body = training_body(f"gs://{bucket.name}/{gcs_prefix}/nope-0.1.tar.gz", None, [])
    ml_api.projects().jobs().create(parent=PARENT, body=body).execute()
    job = wait_job(ml_api, body["jobId"])
    assert job["state"] == "FAILED" and "does not exist" in job["errorMessage"]


def test_cancel_mid_run_stops_the_process_group(ml_api, ml_service, tiny_trainer_package, bucket, gcs_prefix):
    body = training_body(tiny_trainer_package, f"gs://{bucket.name}/{gcs_prefix}", ["--seconds", "300"])
    ml_api.projects().jobs().create(parent=PARENT, body=body).execute()
    pid = int(wait_log(ml_service.url, body["jobId"], r"tiny trainer pid=(\d+)").group(1))
    wait_log(ml_service.url, body["jobId"], r"tick 2")
    ml_api.projects().jobs().cancel(name=f"{PARENT}/jobs/{body['jobId']}", body={}).execute()
    job = wait_job(ml_api, body["jobId"], timeout=30)
    assert job["state"] == "CANCELLED"
    assert gone(pid)
    with pytest.raises(HttpError) as error:
        ml_api.projects().jobs().cancel(name=f"{PARENT}/jobs/{body['jobId']}", body={}).execute()
    assert error.value.status_code == 400


def _nested(depth: int) -> dict:
    """``{"a": {"a": ... {}}}``, ``depth`` levels deep (the 300-deep field that once made jobs.list fail)."""
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(("change", "status", "text"), [
    ({"pythonModule": None}, 400, "pythonModule is required"),
    ({"pythonModule": "not a module"}, 400, "pythonModule is required"),
    ({"packageUris": []}, 400, "at least one gs:// package"),
    ({"packageUris": ["/tmp/trainer-0.1.tar.gz"]}, 400, "is not a gs:// URI"),
    ({"packageUris": ["gs://b/../x.sh"]}, 400, "must name a Python package file"),
    ({"packageUris": [f"gs://b/p{i}.tar.gz" for i in range(101)]}, 400, "at most 100"),
    ({"args": "--epochs 3"}, 400, "Field: job.training_input.args Error: must be a list"),
    ({"args": ["--epochs", 3]}, 400, "Invalid value at 'job.training_input.args' (TYPE_STRING), 3"),
    ({"workerCount": "two"}, 400, "Invalid value at 'job.training_input.worker_count' (TYPE_INT64)"),
    ({"useChiefInTfConfig": "yes"}, 400, "(TYPE_BOOL)"),
    ({"masterConfig": {"acceleratorConfig": {"type": {"nested": [1]}}}}, 400,
     "Invalid value at 'job.training_input.master_config.accelerator_config.type' (TYPE_STRING)"),
    ({"notAField": 1}, 400, 'Unknown name "notAField" at \'job.training_input\': Cannot find field.'),
    ({"region": "r" * 5000}, 400, "Invalid value at 'job.training_input.region' (TYPE_STRING)"),
    ({"args": ["x"] * 1001}, 400, "must be a list of at most 1000 items (got 1001 items)"),
    ({"masterConfig": _nested(300)}, 400, "Unknown name \"a\" at 'job.training_input.master_config'"),
    ({"masterConfig": {"acceleratorConfig": {"count": _nested(300)}}}, 400, "(TYPE_INT64)"),
    ({"pythonModule": "m", "python_module": "m"}, 400, 'Field "python_module" is set twice'),
    ({"region": None}, 400, "region is required"),
    ({"jobDir": "/local/dir"}, 400, "jobDir must be a gs:// path"),
    ({"scaleTier": "HUGE"}, 400, "scaleTier must be one of"),
    ({"scaleTier": "CUSTOM"}, 400, "masterType is required"),
    ({"masterConfig": {"imageUri": "gcr.io/p/trainer:1"}}, 400, "container engine"),
    ({"hyperparameters": {"goal": "MAXIMIZE", "maxTrials": 4}}, 501, "Hyperparameter tuning"),
])
def test_bad_training_requests(ml_api, change, status, text):
    body = training_body("gs://b/trainer-0.1.tar.gz", "gs://b/job", [])
    body["trainingInput"].update(change)
    body["trainingInput"] = {k: v for k, v in body["trainingInput"].items() if v is not None}
    with pytest.raises(HttpError) as error:
        ml_api.projects().jobs().create(parent=PARENT, body=body).execute()
    assert error.value.status_code == status
    assert text in json.loads(error.value.content)["error"]["message"]
    with pytest.raises(HttpError) as missing:  # refused: nothing stored, and every list still answers
        ml_api.projects().jobs().get(name=f"{PARENT}/jobs/{body['jobId']}").execute()
    assert missing.value.status_code == 404
    ml_api.projects().jobs().list(parent=PARENT).execute()
    with pytest.raises(HttpError):  # nothing was stored
        ml_api.projects().jobs().get(name=f"{PARENT}/jobs/{body['jobId']}").execute()


def test_job_id_reused_is_409(ml_api, tiny_trainer_package, bucket, gcs_prefix):
    body = training_body(tiny_trainer_package, f"gs://{bucket.name}/{gcs_prefix}", [])
    ml_api.projects().jobs().create(parent=PARENT, body=body).execute()
    body["trainingInput"]["args"] = ["--mode", "fail"]
    with pytest.raises(HttpError) as error:
        ml_api.projects().jobs().create(parent=PARENT, body=body).execute()
    assert error.value.status_code == 409
    assert wait_job(ml_api, body["jobId"])["state"] == "SUCCEEDED"


@pytest.fixture
def own_service(gcs_emulator, tmp_path):
    """A service of this test's own, so killing it disturbs no other test."""
    port = devstack.free_port()
    server = devstack.ml_service(port=port, state_dir=tmp_path / "state", gcs_host=gcs_emulator,
                                 log_path=tmp_path / "service.log").start(timeout=120)
    yield ServiceHandle(server=server, port=port)
    server.stop()


def test_restart_mid_run_reattaches_or_fails_clearly(own_service, tiny_trainer_package, bucket, gcs_prefix):
    api = own_service.build_api()
    survivor = training_body(tiny_trainer_package, f"gs://{bucket.name}/{gcs_prefix}/a", ["--seconds", "15"])
    orphan = training_body(tiny_trainer_package, f"gs://{bucket.name}/{gcs_prefix}/b", ["--seconds", "300"])
    for body in (survivor, orphan):
        api.projects().jobs().create(parent=PARENT, body=body).execute()
    wait_log(own_service.url, survivor["jobId"], r"tick 1")
    orphan_pid = int(wait_log(own_service.url, orphan["jobId"], r"tiny trainer pid=(\d+)").group(1))

    own_service.server.stop(sig=signal.SIGKILL)
    os.killpg(os.getpgid(orphan_pid), signal.SIGKILL)  # this trainer dies with the service
    own_service.server.start(timeout=120)
    api = own_service.build_api()

    assert [job["state"] for job in api.projects().jobs().list(parent=PARENT).execute()["jobs"]
            ].count("RUNNING") <= 1  # only the re-attached one
    job = wait_job(api, orphan["jobId"], timeout=30)
    assert job["state"] == "FAILED" and "exit status is unknown" in job["errorMessage"], job
    job = wait_job(api, survivor["jobId"], timeout=60)
    assert job["state"] == "SUCCEEDED", job
    lines = read_log(own_service.url, survivor["jobId"])["lines"]
    assert any("re-attached" in line for line in lines) and "epoch 1/1 loss=0.5 done" in lines
    assert bucket.blob(f"{gcs_prefix}/a/result.json").exists()


def test_queued_jobs_cost_no_thread_and_a_queued_cancel_ends_at_once(gcs_emulator, passable_dir,
                                                                     tiny_trainer_package, bucket, gcs_prefix):
    """One slot, one long job running, 20 more queued: the service holds a thread per running trainer (and one
    dispatcher), not one per queued job; cancelling a queued job ends it without waiting for the slot."""
    from tests.conftest import session_token_file

    token_file, port = session_token_file(), devstack.free_port()
    server = devstack.ml_service(port=port, state_dir=passable_dir / "one_slot", gcs_host=gcs_emulator,
                                 log_path=passable_dir / "one_slot.log", token_file=token_file)
    server.env["ML_ENGINE_TRAINING_SLOTS"] = "1"
    service = ServiceHandle(server=server.start(timeout=120), port=port, token=token_file.read_text().strip())
    try:
        api = service.build_api()
        threads = lambda: len(list(Path(f"/proc/{server.process.pid}/task").iterdir()))  # noqa: E731
        first = training_body(tiny_trainer_package, f"gs://{bucket.name}/{gcs_prefix}/first", ["--seconds", "60"])
        api.projects().jobs().create(parent=PARENT, body=first).execute()
        wait_job(api, first["jobId"], states=("RUNNING",), timeout=120)
        before = threads()
        queued = [training_body(tiny_trainer_package, None, []) for _ in range(20)]
        for body in queued:
            api.projects().jobs().create(parent=PARENT, body=body).execute()
        time.sleep(2)
        assert threads() - before <= 2, (before, threads())
        assert {api.projects().jobs().get(name=f"{PARENT}/jobs/{b['jobId']}").execute()["state"]
                for b in queued} == {"QUEUED"}
        started = time.monotonic()
        for body in (queued[0], queued[10]):  # the head of the queue, and one behind others still waiting
            api.projects().jobs().cancel(name=f"{PARENT}/jobs/{body['jobId']}").execute()
        for body in (queued[0], queued[10]):
            assert wait_job(api, body["jobId"], timeout=30)["state"] == "CANCELLED"
        assert time.monotonic() - started < 5  # not after the running job's 60 s
        assert api.projects().jobs().get(name=f"{PARENT}/jobs/{queued[1]['jobId']}").execute()["state"] == "QUEUED"
        for body in [first, *queued[1:10], *queued[11:]]:
            api.projects().jobs().cancel(name=f"{PARENT}/jobs/{body['jobId']}").execute()
    finally:
        server.stop()

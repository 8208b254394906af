"""Training code is not the service: a real trainer and its package build, checked from the inside.

The service runs as the test's user. As root (this machine, CI), trainers must run as the
unprivileged ``ml-trainer`` user that ``make install`` creates, unable to read the service's
state or token and unable to write its venv; as any user, with an allow-listed environment and
limits, and stopped on cancel with every process they started (``setsid`` or not).
"""

from __future__ import annotations

import json
import os
import pwd
import time
from pathlib import Path

import pytest

from tests.conftest import start_service
from tests.include.local_platform.conftest import PARENT, unique, wait_job
from tests.include.local_platform.workers.test_training import gone, read_log

#: Everything a trainer's environment may hold (the job's variables, the sandbox's, the allow-list; PWD from sh).
ALLOWED = {"CLOUD_ML_JOB", "CLOUD_ML_JOB_ID", "TF_CONFIG", "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONNOUSERSITE",
           "PATH", "HOME", "TMPDIR", "LANG", "PWD", "LOCAL_TRAINER_ID", "LOCAL_TRAINER_EXIT_FILE",
           "LOCAL_TRAINER_LOG_CAP",
           "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "LC_ALL", "TZ", "TF_CPP_MIN_LOG_LEVEL", "SSL_CERT_FILE",
           "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS",
           "PIP_TRUSTED_HOST", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
           "http_proxy", "https_proxy", "no_proxy"}
# Variables pip's isolated build adds for its own subprocesses.
BUILD_ADDS = ("PIP_", "PYTHONNOUSERSITE", "PYTHONPATH", "_PYPROJECT_HOOKS_BUILD_BACKEND", "PEP517_")


@pytest.fixture(scope="module")
def sandboxed(gcs_emulator, passable_dir):
    """A service of its own (its state dir inspected here), where other users can pass through."""
    handle = start_service(gcs_emulator, passable_dir / "sandbox_state")
    yield handle, passable_dir / "sandbox_state"
    handle.server.stop()


@pytest.fixture(scope="module")
def probe_package(bucket, tmp_path_factory) -> str:
    from tests.trainer_packages import build_probe_sdist

    sdist = build_probe_sdist(tmp_path_factory.mktemp("probetrainer"))
    blob = bucket.blob(f"packages/probe-{unique('p')}/{sdist.name}")
    blob.upload_from_filename(str(sdist))
    return f"gs://{bucket.name}/{blob.name}"


def _probe_job(api, package: str, job_dir: str, *args: str) -> str:
    job_id = unique("probe")
    body = {"jobId": job_id, "trainingInput": {"packageUris": [package], "pythonModule": "probetrainer.task",
                                                "region": "us-central1", "jobDir": job_dir, "args": list(args),
                                                "runtimeVersion": "2.11"}}
    api.projects().jobs().create(parent=PARENT, body=body).execute()
    return job_id


def _report(bucket, prefix: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        blob = bucket.blob(f"{prefix}/probe.json")
        if blob.exists():
            return json.loads(blob.download_as_text())
        time.sleep(0.3)
    raise TimeoutError("the probe trainer wrote no report")


def test_trainer_and_build_see_only_their_own_identity_environment_and_files(sandboxed, probe_package, bucket,
                                                                             gcs_prefix):
    service, state = sandboxed
    api = service.build_api()
    token_file = Path(service.server.argv[service.server.argv.index("--token-file") + 1])
    # SQLite's file; on PostgreSQL the store is not in the state dir, and its URL not in the trainer's environment
    store_file = state / "state.sqlite"
    secrets = [*([store_file] if store_file.exists() else []), token_file, state / "artifacts" / "anything"]
    (state / "artifacts" / "anything").write_text("a deployed model's file")
    job_id = _probe_job(api, probe_package, f"gs://{bucket.name}/{gcs_prefix}",
                        *[arg for path in secrets for arg in ("--secret", str(path))])
    job = wait_job(api, job_id, timeout=180)
    assert job["state"] == "SUCCEEDED", (job, read_log(service.url, job_id)["lines"][-20:])
    report = _report(bucket, gcs_prefix)
    build = json.loads(report["setup_env"])

    assert os.environ.get("ML_ENGINE_TOKEN")  # the service's own environment holds the token...
    assert not set(report["env"]) - ALLOWED, set(report["env"]) - ALLOWED  # ...the trainer's never does
    assert not [key for key in build["env"] if key not in ALLOWED and not key.startswith(BUILD_ADDS)]
    assert report["cwd"] == report["home"] and report["home"].endswith(f"/training/test-project/{job_id}/home")
    assert report["limits"]["RLIMIT_NOFILE"] == 4096 and report["limits"]["RLIMIT_AS"] == 32 * 1024**3
    assert report["limits"]["RLIMIT_CPU"] == 7 * 24 * 3600
    if os.geteuid() == 0:  # a user of its own: the service's state, token and venv are out of its reach
        trainer_uid = pwd.getpwnam("ml-trainer").pw_uid
        assert report["uid"] == build["uid"] == trainer_uid
        assert set(report["read"].values()) == {"PermissionError"}, report["read"]
        if store_file.exists():
            assert report["list"][str(store_file)] == "PermissionError"
        assert report["write_venv"] == "PermissionError"
        assert report["limits"]["RLIMIT_NPROC"] == 4096
    lines = read_log(service.url, job_id)["lines"]
    assert any(line.startswith("[local_platform] running python -m probetrainer.task") for line in lines)


def test_cancel_stops_every_process_of_the_trainer_even_one_that_called_setsid(sandboxed, probe_package, bucket,
                                                                               gcs_prefix):
    service, _ = sandboxed
    api = service.build_api()
    job_id = _probe_job(api, probe_package, f"gs://{bucket.name}/{gcs_prefix}", "--hold")
    child = _report(bucket, gcs_prefix)["child"]
    assert not gone(child)
    api.projects().jobs().cancel(name=f"{PARENT}/jobs/{job_id}").execute()
    assert wait_job(api, job_id, timeout=60)["state"] == "CANCELLED"
    deadline = time.monotonic() + 20
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone(child), f"pid {child} (setsid) outlived its cancelled job"

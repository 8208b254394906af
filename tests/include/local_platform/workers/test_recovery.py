"""State survives a kill -9: models, versions and jobs are all there; in-flight work resumes."""

from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import start_service
from tests.include.local_platform.conftest import PARENT, unique, wait_job, wait_operation


@pytest.fixture
def own_service(gcs_emulator, tmp_path):
    """A service of this test's own, so killing it disturbs no other test."""
    handle = start_service(gcs_emulator, tmp_path / "state")
    yield handle
    handle.server.stop()


def test_kill_9_keeps_state_and_resumes_work(own_service, model_uris, bucket, gcs_prefix):
    api = own_service.build_api()
    model = unique("durable")
    api.projects().models().create(parent=PARENT, body={"name": model}).execute()
    model_name = f"{PARENT}/models/{model}"
    first = api.projects().models().versions().create(
        parent=model_name, body={"name": "v1", "deploymentUri": model_uris["tiny"]}).execute()
    wait_operation(api, first["name"])
    bucket.blob(f"{gcs_prefix}/small.json").upload_from_string(json.dumps({"x": [1, 1], "key": "a"}))
    finished = unique("done")
    api.projects().jobs().create(parent=PARENT, body={"jobId": finished, "predictionInput": {
        "modelName": model_name, "dataFormat": "JSON", "inputPaths": [f"gs://{bucket.name}/{gcs_prefix}/small.json"],
        "outputPath": f"gs://{bucket.name}/{gcs_prefix}/out_small", "region": "us-central1"}}).execute()
    assert wait_job(api, finished)["state"] == "SUCCEEDED"

    # in flight at the kill: a long job and a version being created
    lines = "\n".join(json.dumps({"x": [i % 5, 1], "key": str(i)}) for i in range(3000))
    bucket.blob(f"{gcs_prefix}/big.json").upload_from_string(lines)
    running = unique("inflight")
    api.projects().jobs().create(parent=PARENT, body={"jobId": running, "predictionInput": {
        "modelName": model_name, "dataFormat": "JSON", "inputPaths": [f"gs://{bucket.name}/{gcs_prefix}/big.json"],
        "outputPath": f"gs://{bucket.name}/{gcs_prefix}/out_big", "region": "us-central1", "batchSize": 1}}).execute()
    wait_job(api, running, states=("RUNNING",))
    second = api.projects().models().versions().create(
        parent=model_name, body={"name": "v2", "deploymentUri": model_uris["tiny3"]}).execute()

    own_service.server.stop(sig=signal.SIGKILL)
    own_service.server.start(timeout=120)
    api = own_service.build_api()

    model_after = api.projects().models().get(name=model_name).execute()
    assert model_after["defaultVersion"]["name"] == f"{model_name}/versions/v1"
    assert api.projects().jobs().get(name=f"{PARENT}/jobs/{finished}").execute()["state"] == "SUCCEEDED"
    done = wait_operation(api, second["name"])
    assert done["response"]["state"] == "READY"
    job = wait_job(api, running)
    assert job["state"] == "SUCCEEDED" and job["predictionOutput"]["predictionCount"] == "3000"
    results = bucket.blob(f"{gcs_prefix}/out_big/prediction.results-00000-of-00001").download_as_text()
    assert len(results.splitlines()) == 3000  # rerun from the start, not appended
    # the READY version serves at once after the restart (loaded lazily, then cached)
    predictions = api.projects().predict(name=f"{model_name}/versions/v2",
                                         body={"instances": [{"x": [1, 1], "key": "k"}]}).execute()
    assert predictions == {"predictions": [{"key": "k", "y": 6.0}]}

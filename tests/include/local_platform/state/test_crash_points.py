"""kill -9 at named crash points: after a restart every resource converges, nothing is stuck or mixed.

One service of this module's own lives through several deaths (each restart
costs a TensorFlow import, so the cases are chained): the service kills
itself (SIGKILL) where the fault switch or ML_ENGINE_CRASH_AT tells it to,
the test starts it again and checks what the restart made of the work.
"""

from __future__ import annotations

import ast
import json

import pytest

from include.local_platform.state.database import default_url
from include.local_platform.state.store import Store
from include.local_platform.workers.recovery import MAX_ATTEMPTS
from tests.crashing import LIFE_TIMEOUT_S, Lives
from tests.include.local_platform.conftest import PARENT, post_fault, unique, wait_job, wait_operation
from tools import devstack

pytestmark = pytest.mark.slow


def _outputs(bucket, prefix: str) -> dict[str, str]:
    return {blob.name.rsplit("/", 1)[-1]: blob.download_as_text() for blob in bucket.list_blobs(prefix=prefix + "/")}


def test_kill_9_at_every_crash_point_converges(crashing_service, model_uris, bucket, gcs_prefix, tmp_path):
    lives = Lives(crashing_service)
    api = crashing_service.build_api()
    url = crashing_service.url
    state = tmp_path / "state"
    model = unique("crashy")
    model_name = f"{PARENT}/models/{model}"
    api.projects().models().create(parent=PARENT, body={"name": model}).execute()

    # life 1: killed while copying the first version's artifacts (one file copied)
    post_fault(url, {"crash_at": "deploy.copying", "after": 1})
    creating = api.projects().models().versions().create(
        parent=model_name, body={"name": "v1", "deploymentUri": model_uris["tiny"]}).execute()
    lives.wait_death()
    # life 2: the resumed deployment is killed just before its READY/default/done transaction commits
    api = lives.restart(crash_at="deploy.ready")
    lives.wait_death()
    # life 3: the third attempt finishes; the half copies of attempts 1 and 2 are gone
    api = lives.restart()
    done = wait_operation(api, creating["name"], timeout=LIFE_TIMEOUT_S)
    assert done["response"]["state"] == "READY" and "error" not in done
    default = api.projects().models().get(name=model_name).execute()["defaultVersion"]["name"]
    assert default == f"{model_name}/versions/v1"
    assert len(list((state / "artifacts" / "test-project" / model).iterdir())) == 1

    # a job over two files, killed mid-batch (life 3), then mid-upload of its second file (life 4)
    root = f"gs://{bucket.name}/{gcs_prefix}"
    for part in range(2):
        bucket.blob(f"{gcs_prefix}/in/part-{part}.json").upload_from_string("\n".join(
            [json.dumps({"x": [i, 1], "key": f"{part}-{i}"}) for i in range(200)] + ["{bad"]))
    bucket.blob(f"{gcs_prefix}/out/prediction.results-00002-of-00003").upload_from_string('{"stale": 1}\n')
    post_fault(url, {"crash_at": "batch.predicting", "after": 5})
    job_id = unique("crashjob")
    api.projects().jobs().create(parent=PARENT, body={"jobId": job_id, "predictionInput": {
        "modelName": model_name, "dataFormat": "JSON", "inputPaths": [f"{root}/in/part-*.json"],
        "outputPath": f"{root}/out", "region": "us-central1", "batchSize": 10}}).execute()
    lives.wait_death()
    api = lives.restart(crash_at="batch.uploading:25")  # 20 writes for file 0, then 5 into file 1
    lives.wait_death()
    assert "prediction.results-00000-of-00002" in _outputs(bucket, f"{gcs_prefix}/out")  # file 0 was final
    api = lives.restart()
    job = wait_job(api, job_id, timeout=LIFE_TIMEOUT_S)
    assert job["state"] == "SUCCEEDED", job
    assert (job["predictionOutput"]["predictionCount"], job["predictionOutput"]["errorCount"]) == ("400", "2")
    outputs = _outputs(bucket, f"{gcs_prefix}/out")
    assert sorted(outputs) == ["prediction.errors_stats-00000-of-00002", "prediction.errors_stats-00001-of-00002",
                               "prediction.results-00000-of-00002", "prediction.results-00001-of-00002"]
    keys = [json.loads(line)["key"] for name, text in outputs.items() if "results" in name
            for line in text.splitlines()]
    assert sorted(keys) == sorted(f"{part}-{i}" for part in range(2) for i in range(200))  # each exactly once
    assert sum(ast.literal_eval(line)[1] for name, text in outputs.items() if "errors_stats" in name
               for line in text.splitlines()) == 2

    # poison: a job and a deployment that kill the service at every start end FAILED after 3 attempts
    post_fault(url, {"crash_at": "batch.predicting"})
    poison_job = unique("poison")
    api.projects().jobs().create(parent=PARENT, body={"jobId": poison_job, "predictionInput": {
        "modelName": model_name, "dataFormat": "JSON", "inputPaths": [f"{root}/in/part-0.json"],
        "outputPath": f"{root}/poison_out", "region": "us-central1", "batchSize": 10}}).execute()
    lives.wait_death()
    api = lives.restart(crash_at="deploy.copying,batch.predicting")
    poison_version = api.projects().models().versions().create(
        parent=model_name, body={"name": "v_poison", "deploymentUri": model_uris["tiny3"]}).execute()
    lives.wait_death()
    for _ in range(2 * MAX_ATTEMPTS):
        try:  # a life may end before it answers: the poison is resumed while the service starts
            api = lives.restart(crash_at="deploy.copying,batch.predicting")
            job = wait_job(api, poison_job, timeout=30)
            operation = wait_operation(api, poison_version["name"], timeout=30)
            break
        except Exception:  # the service died under the calls: start it again
            lives.wait_death()
    else:
        pytest.fail(f"the poison resources did not converge; log:\n{crashing_service.server.log_tail()}")
    interrupted = f"interrupted {MAX_ATTEMPTS} times"
    assert job["state"] == "FAILED" and interrupted in job["errorMessage"], job
    assert operation["error"]["code"] == 13 and interrupted in operation["error"]["message"], operation
    version = api.projects().models().versions().get(name=f"{model_name}/versions/v_poison").execute()
    assert version["state"] == "FAILED" and interrupted in version["errorMessage"]
    assert crashing_service.server.process.poll() is None  # the crash points are still armed: nothing runs them

    # nothing stuck anywhere; finished work untouched
    assert {v["state"] for v in api.projects().models().versions().list(parent=model_name).execute()["versions"]} \
        == {"READY", "FAILED"}
    assert all(op["done"] for op in api.projects().operations().list(name=PARENT).execute()["operations"])
    jobs = api.projects().jobs().list(parent=PARENT).execute()["jobs"]
    assert {j["jobId"]: j["state"] for j in jobs} == {job_id: "SUCCEEDED", poison_job: "FAILED"}
    print(f"crash points: {lives.deaths} kills, every resource converged")


def test_start_completes_dangling_operations_and_removes_orphans(crashing_service, model_uris, bucket, gcs_prefix,
                                                                 tmp_path):
    """A state left by an older service or an outside kill: done:false operations, unreferenced directories.

    Also: a graceful stop costs a job in flight no attempt.
    """
    api = crashing_service.build_api()
    model = unique("dangling")
    model_name = f"{PARENT}/models/{model}"
    api.projects().models().create(parent=PARENT, body={"name": model}).execute()
    operation = api.projects().models().versions().create(
        parent=model_name, body={"name": "v1", "deploymentUri": model_uris["tiny"]}).execute()
    assert wait_operation(api, operation["name"], timeout=LIFE_TIMEOUT_S)["response"]["state"] == "READY"
    bucket.blob(f"{gcs_prefix}/in.json").upload_from_string('{"x": [1, 2], "key": "a"}\n')
    post_fault(crashing_service.url, {"delay_at": "batch.preparing", "seconds": 3})
    job_id = unique("stopped")
    api.projects().jobs().create(parent=PARENT, body={"jobId": job_id, "predictionInput": {
        "modelName": model_name, "dataFormat": "JSON", "inputPaths": [f"gs://{bucket.name}/{gcs_prefix}/in.json"],
        "outputPath": f"gs://{bucket.name}/{gcs_prefix}/out", "region": "us-central1"}}).execute()
    wait_job(api, job_id, states=("PREPARING",))
    crashing_service.server.stop()  # graceful (SIGTERM)

    state = tmp_path / "state"
    store = Store(devstack.service_backend(state)["database_url"] if devstack.service_backend else default_url(state))
    try:  # as a crash between two writes of an older service left it
        job = store.get(f"{PARENT}/jobs/{job_id}")
        assert (job["state"], job["_attempts"]) == ("PREPARING", 0)
        body = store.get(operation["name"])
        body["done"] = False
        body.pop("response")
        store.put(operation["name"], body)
    finally:
        store.close()
    orphan = state / "artifacts" / "test-project" / model / "v0-abandoned"
    (orphan / "variables").mkdir(parents=True)
    (orphan / "saved_model.pb").write_bytes(b"half a copy")
    (state / "scratch" / "projects_test-project_jobs_old").mkdir(parents=True)
    kept = [path for path in (state / "artifacts" / "test-project" / model).iterdir() if path != orphan]

    crashing_service.server.env["ML_ENGINE_MAX_ARTIFACT_BYTES"] = "1000"  # smaller than any SavedModel
    crashing_service.server.start(timeout=120)
    api = crashing_service.build_api()
    done = api.projects().operations().get(name=operation["name"]).execute()
    assert done["done"] and done["response"]["state"] == "READY"
    assert list((state / "artifacts" / "test-project" / model).iterdir()) == kept
    assert not (state / "scratch" / "projects_test-project_jobs_old").exists()
    assert wait_job(api, job_id, timeout=LIFE_TIMEOUT_S)["state"] == "SUCCEEDED"
    assert api.projects().predict(name=model_name, body={"instances": [{"x": [1, 1], "key": "k"}]}).execute() \
        == {"predictions": [{"key": "k", "y": 4.0}]}

    # the artifact bytes cap: a version over it ends FAILED, nothing copied
    operation = api.projects().models().versions().create(
        parent=model_name, body={"name": "v_big", "deploymentUri": model_uris["tiny3"]}).execute()
    failed = wait_operation(api, operation["name"])
    assert "more than the limit of 1000 bytes" in failed["error"]["message"], failed
    assert list((state / "artifacts" / "test-project" / model).iterdir()) == kept

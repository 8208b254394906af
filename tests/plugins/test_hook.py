"""MLEngineHook against the real local ml/v1 service and GCS emulator."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from googleapiclient.errors import HttpError

from tests.plugins.helpers import TEST_PROJECT, instances, write_lines


def test_endpoint_precedence(ml_conn, monkeypatch):
    from ml_engine.hooks import MLEngineHook

    monkeypatch.setenv("ML_ENGINE_ENDPOINT", "http://env-host:1/")
    assert MLEngineHook(endpoint="http://arg-host:2").endpoint == "http://arg-host:2/"
    assert MLEngineHook().endpoint == ml_conn.url  # the connection extra beats the environment
    monkeypatch.setenv(
        "AIRFLOW_CONN_BARE", json.dumps({"conn_type": "google_cloud_platform", "extra": {"is_anonymous": True}})
    )
    assert MLEngineHook(gcp_conn_id="bare").endpoint == "http://env-host:1/"
    monkeypatch.delenv("ML_ENGINE_ENDPOINT")
    assert MLEngineHook(gcp_conn_id="bare").endpoint is None
    monkeypatch.setenv(
        "AIRFLOW_CONN_REGIONAL",
        json.dumps({"conn_type": "google_cloud_platform", "extra": {"ml_engine_region": "us-central1"}}),
    )
    regional = MLEngineHook(gcp_conn_id="regional")
    assert regional.endpoint == "https://us-central1-ml.googleapis.com/"
    assert not regional.is_local


def test_get_conn_uses_endpoint_and_the_service_token(hook):
    from google.oauth2.credentials import Credentials

    conn = hook.get_conn()
    assert conn._baseUrl.startswith(hook.endpoint)
    assert isinstance(hook.get_credentials(), Credentials) and hook.get_credentials().token == hook.local_token
    assert hook.project_id == TEST_PROJECT


def test_token_from_the_connection_extra_else_the_environment(ml_conn, monkeypatch, tmp_path):
    """The local service's token travels as an OAuth bearer token; without one the hook is anonymous (401)."""
    from google.auth.credentials import AnonymousCredentials
    from ml_engine.hooks import MLEngineHook

    def connection(conn_id: str, **extra) -> MLEngineHook:
        extra = {"ml_engine_endpoint": ml_conn.url, "project": TEST_PROJECT, **extra}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                           json.dumps({"conn_type": "google_cloud_platform", "extra": extra}))
        return MLEngineHook(gcp_conn_id=conn_id, retry_deadline=1)

    monkeypatch.delenv("ML_ENGINE_TOKEN")
    assert isinstance(connection("with_token", ml_engine_token=ml_conn.token).list_models(), list)
    for hook in (connection("wrong_token", ml_engine_token="wrong"), connection("no_token")):
        with pytest.raises(HttpError) as excinfo:
            hook.list_models()
        assert excinfo.value.resp.status == 401
    assert isinstance(connection("no_token").get_credentials(), AnonymousCredentials)
    token_file = tmp_path / "ml_engine_token"  # docker-compose's way: a file in a shared secrets volume
    token_file.write_text(ml_conn.token + "\n")
    monkeypatch.setenv("ML_ENGINE_TOKEN_FILE", str(token_file))
    assert isinstance(connection("file_token").list_models(), list)
    monkeypatch.setenv("ML_ENGINE_TOKEN", ml_conn.token)
    assert isinstance(connection("env_token").list_models(), list)


def test_create_model_is_idempotent_and_lists_follow_pages(hook, model_name):
    first = hook.create_model(model={"name": model_name, "regions": ["us-central1"]})
    again = hook.create_model(model={"name": model_name})
    assert first["name"] == again["name"] == f"projects/{TEST_PROJECT}/models/{model_name}"
    for i in range(2):
        hook.create_model(model={"name": f"{model_name}_{i}"})
    names = [m["name"] for m in hook.list_models(page_size=1)]
    assert len(names) == len(set(names))
    mine = [n for n in names if n.split("/")[-1].startswith(model_name)]
    assert len(mine) == 3
    for i in range(2):
        hook.delete_model(model_name=f"{model_name}_{i}")
    hook.delete_model(model_name=f"{model_name}_0")  # 404 is done
    assert hook.get_model(model_name=f"{model_name}_0") is None


def storage_bucket():
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project=TEST_PROJECT, credentials=AnonymousCredentials()).bucket("test-bucket")


def test_create_version_idempotent_conflict_and_failed(hook, model_name, tiny_model_uri, tiny_model_uri_v2, capsys):
    from ml_engine.hooks import MLEngineConflictError

    hook.create_model(model={"name": model_name})
    spec = {"name": "v1", "deploymentUri": tiny_model_uri, "runtimeVersion": "2.11"}
    version = hook.create_version(model_name=model_name, version_spec=spec, poll_interval=0.5, timeout=300)
    assert version["state"] == "READY"
    assert version["isDefault"] is True  # the first version becomes the default
    assert "state READY (0 s elapsed)" in capsys.readouterr().out  # every poll logs state and time

    # Same name, same deployment: the existing version comes back, nothing new is created.
    assert hook.create_version(model_name=model_name, version_spec=spec, poll_interval=0.2)["name"] == version["name"]
    assert len(hook.list_versions(model_name=model_name, page_size=1)) == 1

    with pytest.raises(MLEngineConflictError, match=r"deploymentUri.*Delete it or choose another"):
        hook.create_version(
            model_name=model_name, version_spec={**spec, "deploymentUri": tiny_model_uri_v2}, poll_interval=0.2
        )

    broken = hook.create_version(
        model_name=model_name,
        version_spec={"name": "broken", "deploymentUri": f"gs://test-bucket/nothing-{uuid.uuid4().hex}"},
        poll_interval=0.5,
        timeout=300,
    )
    assert broken["state"] == "FAILED"
    assert broken["errorMessage"]
    # once the artifacts are there, the same create (a retry) deletes the FAILED version and converges
    fixed_uri = broken["deploymentUri"]
    bucket = storage_bucket()
    for blob in bucket.list_blobs(prefix=tiny_model_uri.split("/", 3)[3] + "/"):
        relative = blob.name[len(tiny_model_uri.split("/", 3)[3]) + 1:]
        bucket.copy_blob(blob, bucket, f"{fixed_uri.split('/', 3)[3]}/{relative}")
    again = hook.create_version(model_name=model_name, version_spec={"name": "broken", "deploymentUri": fixed_uri},
                                poll_interval=0.5, timeout=300)
    assert again["state"] == "READY" and "errorMessage" not in again

    hook.create_version(
        model_name=model_name, version_spec={"name": "v2", "deploymentUri": tiny_model_uri_v2}, poll_interval=0.2
    )
    assert hook.set_default_version(model_name=model_name, version_name="v2")["name"].endswith("/v2")
    assert hook.get_model(model_name=model_name)["defaultVersion"]["name"].endswith("/v2")
    names = sorted(v["name"].split("/")[-1] for v in hook.list_versions(model_name=model_name, page_size=1))
    assert names == ["broken", "v1", "v2"]

    assert hook.delete_version(model_name=model_name, version_name="broken", poll_interval=0.5)["done"]
    assert hook.delete_version(model_name=model_name, version_name="broken") is None  # 404 is done
    hook.delete_model(model_name=model_name, delete_contents=True, poll_interval=0.5)
    assert hook.get_model(model_name=model_name) is None


def test_predict_answers_and_clear_error(hook, model_name, tiny_model_uri):
    from ml_engine.hooks import MLEnginePredictionError

    hook.create_model(model={"name": model_name})
    hook.create_version(
        model_name=model_name, version_spec={"name": "v1", "deploymentUri": tiny_model_uri}, poll_interval=0.2
    )
    answer = hook.predict(model_name=model_name, instances=[{"x": [1.0, 2.0], "key": "a"}])
    assert answer["predictions"] == [{"y": pytest.approx(6.0), "key": "a"}]
    with pytest.raises(MLEnginePredictionError, match="must not be negative"):
        hook.predict(model_name=model_name, version_name="v1", instances=[{"x": [-1.0, 2.0], "key": "b"}])


def test_patch_version_labels_and_refusal(hook, model_name, tiny_model_uri):
    from googleapiclient.errors import HttpError

    hook.create_model(model={"name": model_name})
    hook.create_version(
        model_name=model_name, version_spec={"name": "v1", "deploymentUri": tiny_model_uri}, poll_interval=0.2
    )
    operation = hook.patch_version(model_name=model_name, version_name="v1", version={"labels": {"a": "b"}},
                                   update_mask="labels")
    assert operation["done"] and operation["response"]["labels"] == {"a": "b"}
    assert hook.get_version(model_name=model_name, version_name="v1")["labels"] == {"a": "b"}
    with pytest.raises(HttpError, match="cannot be updated"):
        hook.patch_version(model_name=model_name, version_name="v1", version={"deploymentUri": "gs://x/y"},
                           update_mask="deploymentUri")


def test_jobs_idempotent_wait_list_and_conflict(hook, model_name, tiny_model_uri, bucket, gcs_prefix, capsys):
    from ml_engine.hooks import MLEngineConflictError

    hook.create_model(model={"name": model_name})
    hook.create_version(
        model_name=model_name, version_spec={"name": "v1", "deploymentUri": tiny_model_uri}, poll_interval=0.2
    )
    source = write_lines(bucket, f"{gcs_prefix}/in.json", instances(5))
    job = {
        "jobId": f"{model_name}_job",
        "predictionInput": {
            "dataFormat": "JSON",
            "inputPaths": [source],
            "outputPath": f"gs://test-bucket/{gcs_prefix}/out",
            "region": "us-central1",
            "modelName": f"projects/{TEST_PROJECT}/models/{model_name}",
            "batchSize": 2,
        },
    }
    created = hook.create_job(job=job)
    assert created["state"] in ("QUEUED", "PREPARING", "RUNNING", "SUCCEEDED")
    reused = hook.create_job(job=job)
    assert reused["jobId"] == created["jobId"]
    done = hook.wait_for_job(job_id=job["jobId"], poll_interval=0.2, timeout=120)
    assert done["state"] == "SUCCEEDED"
    assert done["predictionOutput"]["predictionCount"] == "5"
    assert f"Job {job['jobId']}: state SUCCEEDED, predictions 5, errors 0" in capsys.readouterr().out

    other = {**job, "predictionInput": {**job["predictionInput"], "inputPaths": [source + "x"]}}
    with pytest.raises(MLEngineConflictError, match="inputPaths"):
        hook.create_job(job=other)
    ids = [j["jobId"] for j in hook.list_jobs(page_size=1, filter=f"jobId:{model_name}*")]
    assert ids == [job["jobId"]]
    hook.cancel_job(job_id=job["jobId"])  # finished: a no-op, not an error


def test_retries_injected_429_and_503(hook, faults, model_name):
    faults(status=503, times=2, method="POST", path_regex=f"/v1/projects/{TEST_PROJECT}/models$")
    faults(status=429, times=2, method="GET", path_regex=f"/v1/projects/{TEST_PROJECT}/models/{model_name}$")
    assert hook.create_model(model={"name": model_name})["name"].endswith(model_name)
    assert hook.get_model(model_name=model_name)["name"].endswith(model_name)


def test_retries_past_num_retries_until_deadline(ml_conn, faults, model_name, monkeypatch):
    """More faults than num_retries: the time-bounded outer loop still gets through, then gives up."""
    from ml_engine.hooks import MLEngineHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_ONE_RETRY",
        json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {
                    "ml_engine_endpoint": ml_conn.url,
                    "is_anonymous": True,
                    "project": TEST_PROJECT,
                    "num_retries": 1,
                },
            }
        ),
    )
    hook = MLEngineHook(gcp_conn_id="one_retry", retry_deadline=30)
    faults(status=503, times=3, method="GET", path_regex=f"/models/{model_name}$")
    assert hook.get_model(model_name=model_name) is None  # 3 x 503, then the real 404

    impatient = MLEngineHook(gcp_conn_id="one_retry", retry_deadline=3)
    faults(status=503, times=1000, method="GET", path_regex=f"/models/{model_name}$")
    started = time.monotonic()
    with pytest.raises(HttpError) as raised:
        impatient.get_model(model_name=model_name)
    assert raised.value.resp.status == 503
    assert time.monotonic() - started < 15


def test_wait_times_out_with_clear_message(hook, model_name):
    from ml_engine.hooks import MLEngineTimeoutError

    hook.create_model(model={"name": model_name})
    with pytest.raises(MLEngineTimeoutError, match="did not finish within 1 s"):
        hook._poll(
            what="Thing",
            fetch=lambda: {"state": "RUNNING"},
            is_done=lambda r: False,
            describe=lambda r: r["state"],
            timeout=1,
            poll_interval=0.3,
            max_poll_interval=1,
        )


def test_create_retried_after_lost_answer_resolves_409(ml_conn):
    """A create whose first answer was lost (503) and whose retry meets 409 returns the existing model.

    The local service applies injected faults before doing the work, so this case (work done,
    answer lost) needs HttpMockSequence.
    """
    from googleapiclient.discovery import build
    from googleapiclient.http import HttpMockSequence
    from ml_engine.hooks import MLEngineHook

    def error(status: int, reason: str) -> bytes:
        return json.dumps({"error": {"code": status, "message": reason, "status": reason}}).encode()

    existing = {"name": f"projects/{TEST_PROJECT}/models/m1", "regions": ["us-central1"]}
    http = HttpMockSequence(
        [
            ({"status": "503"}, error(503, "UNAVAILABLE")),
            ({"status": "409"}, error(409, "ALREADY_EXISTS")),
            ({"status": "200"}, json.dumps(existing).encode()),
        ]
    )
    hook = MLEngineHook()
    hook._conn = build("ml", "v1", http=http, static_discovery=True, client_options={"api_endpoint": ml_conn.url})
    assert hook.create_model(model={"name": "m1"}) == existing


def test_predict_in_chunks_keeps_instance_order(hook, model_name, tiny_model_uri):
    from ml_engine.hooks import MLEnginePredictionError

    hook.create_model(model={"name": model_name})
    hook.create_version(model_name=model_name, version_spec={"name": "v1", "deploymentUri": tiny_model_uri},
                        poll_interval=0.2)
    rows = instances(5)
    by_version = hook.predict_in_chunks(model_name=model_name, version_name="v1", instances=rows, batch_size=2)
    by_default = hook.predict_in_chunks(model_name=model_name, instances=rows, batch_size=10)
    assert [p["key"] for p in by_version] == [f"k{i}" for i in range(5)]
    assert by_version == by_default
    assert hook.predict_in_chunks(model_name=model_name, instances=[], batch_size=2) == []
    with pytest.raises(MLEnginePredictionError, match="must not be negative"):
        hook.predict_in_chunks(model_name=model_name, instances=instances(4, bad_every=2), batch_size=2)

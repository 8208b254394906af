"""One identity for GCS and ml/v1 from Airflow tasks: the Airflow connection, against the real GCS emulator."""

from __future__ import annotations

import json

import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowNotFoundException
from google.auth.credentials import AnonymousCredentials

from tests.plugins.helpers import instances, write_lines

SA_EMAIL = "tasks@conn-project.iam.gserviceaccount.com"


def _service_account_key() -> dict:
    """A service-account key as a connection holds it (a fresh RSA key: nothing real, nothing sent)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {"type": "service_account", "project_id": "conn-project", "private_key_id": "k1",
            "private_key": pem.decode(), "client_email": SA_EMAIL, "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token"}


@pytest.fixture
def keyed_conn(monkeypatch):
    """A connection with its own service-account key and project, as on real GCP."""
    monkeypatch.setenv("AIRFLOW_CONN_KEYED", json.dumps({
        "conn_type": "google_cloud_platform",
        "extra": {"keyfile_dict": json.dumps(_service_account_key()), "project": "conn-project"}}))
    return "keyed"


def test_connection_client_reads_and_writes_the_emulator(ml_conn, bucket, gcs_prefix):
    from ml_engine.gcs import MLEngineGCSHook, storage_client

    client = storage_client("google_cloud_default")
    assert client is storage_client("google_cloud_default")  # one client per process and connection
    assert client.project == "test-project"  # the connection's project extra
    client.bucket(bucket.name).blob(f"{gcs_prefix}/a.txt").upload_from_string(b"via the connection")
    hook = MLEngineGCSHook(gcp_conn_id="google_cloud_default")
    assert hook.download(bucket_name=bucket.name, object_name=f"{gcs_prefix}/a.txt") == b"via the connection"


def test_keyed_connection_is_the_identity_on_gcp_and_never_reaches_the_emulator(keyed_conn, gcs_emulator,
                                                                                monkeypatch):
    from ml_engine.gcs import MLEngineGCSHook

    credentials, project = MLEngineGCSHook(gcp_conn_id=keyed_conn).get_credentials_and_project_id()
    assert isinstance(credentials, AnonymousCredentials) and project == "conn-project"  # emulator: no key sent

    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    credentials, project = MLEngineGCSHook(gcp_conn_id=keyed_conn).get_credentials_and_project_id()
    assert credentials.service_account_email == SA_EMAIL and project == "conn-project"


def test_undefined_connection_only_against_the_emulator(gcs_emulator, bucket, monkeypatch):
    from ml_engine.gcs import storage_client

    assert storage_client("not_defined").bucket(bucket.name).exists()  # anonymous: no identity to get wrong
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    with pytest.raises(AirflowNotFoundException):
        storage_client("not_defined")  # on GCS: never a silent fallback to another identity


def test_lifecycle_storage_runs_as_the_connection(keyed_conn, bucket, gcs_prefix, monkeypatch):
    from include.lifecycle import storage
    from include.trainer import gcs

    monkeypatch.setenv("ML_GCP_CONN_ID", keyed_conn)
    uri = f"gs://{bucket.name}/{gcs_prefix}/doc.json"
    assert storage.write_json(uri, {"a": 1}) == uri
    assert storage.read_json(uri) == {"a": 1} and storage.exists(uri) and storage.list_uris(
        f"gs://{bucket.name}/{gcs_prefix}") == [uri]
    assert list(storage.read_lines(uri)) == ['{', '  "a": 1', '}']
    with storage.connection_identity() as client:
        assert gcs.client() is client and client.project == "conn-project"  # not ADC, not GOOGLE_CLOUD_PROJECT
    assert gcs.client() is not client  # outside, the trainer's own client (the trainer runs as itself)


def test_predict_operator_reads_instances_through_the_connection(ml_conn, bucket, gcs_prefix):
    from ml_engine.operators import MLEnginePredictOperator

    uri = write_lines(bucket, f"{gcs_prefix}/in.json", instances(2))
    op = MLEnginePredictOperator(task_id="p", model_name="m", instances_uri=uri)
    assert [row["key"] for row in op._read_instances()] == ["k0", "k1"]
    bad = MLEnginePredictOperator(task_id="p", model_name="m", instances_uri="s3://elsewhere/x.json")
    with pytest.raises(AirflowException, match="instances_uri: not a gs:// URI"):
        bad._read_instances()


def test_ml_hook_computes_its_local_identity_once(ml_conn):
    from ml_engine.hooks import MLEngineHook

    hook = MLEngineHook()
    first = hook.get_credentials_and_project_id()
    assert first is hook.get_credentials_and_project_id()
    credentials, project = first
    assert project == "test-project"
    if ml_conn.token:  # the service's own token, never a Google credential
        assert credentials.token == ml_conn.token
    else:
        assert isinstance(credentials, AnonymousCredentials)

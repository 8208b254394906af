"""Fixtures for the ml_engine plugin tests: an Airflow home with a SQLite DB, the connection
to the local ml/v1 service, and a tiny SavedModel in the GCS emulator.

Airflow reads AIRFLOW_HOME when it is first imported, so the home is chosen here at
import time (unless the session already has one).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

if "airflow" not in sys.modules:
    _home = os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).parent / "dags"))

from tests.plugins.helpers import TEST_PROJECT

TEST_DAGS = Path(__file__).parent / "dags"


@pytest.fixture(scope="session")
def ml_conn(ml_service):
    """google_cloud_default pointing at the local service, anonymously, as the DAGs configure it."""
    os.environ["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"] = json.dumps(
        {
            "conn_type": "google_cloud_platform",
            "extra": {"ml_engine_endpoint": ml_service.url, "is_anonymous": True, "project": TEST_PROJECT},
        }
    )
    return ml_service


@pytest.fixture(scope="session")
def hook(ml_conn):
    from ml_engine.hooks import MLEngineHook

    return MLEngineHook(retry_deadline=30)


@pytest.fixture
def model_name(request) -> str:
    """A fresh model id for one test."""
    return f"m_{request.node.name[:24].replace('[', '_').replace(']', '').replace('-', '_')}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def tiny_model_uri(bucket, tmp_path_factory) -> str:
    """gs:// URI of tests/savedmodels.export_tiny_model (y = 2 * sum(x), key passed through)."""
    from tests.savedmodels import export_tiny_model, upload_dir

    local = export_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return upload_dir(bucket, local, f"plugin-tests/tiny-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def tiny_model_uri_v2(bucket, tmp_path_factory) -> str:
    """A second, different SavedModel (y = 3 * sum(x)) for promotion and conflict tests."""
    from tests.savedmodels import export_tiny_model, upload_dir

    local = export_tiny_model(tmp_path_factory.mktemp("tiny3") / "model", factor=3.0)
    return upload_dir(bucket, local, f"plugin-tests/tiny3-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated metadata DB (SQLite under AIRFLOW_HOME) for dag.test()."""
    from airflow.utils.db import initdb

    initdb()


@pytest.fixture
def dags_folder(airflow_db, monkeypatch):
    """Point the dags-folder bundle at tests/plugins/dags: dag.test() only runs DAGs it can find there."""
    from airflow import settings

    monkeypatch.setattr(settings, "DAGS_FOLDER", str(TEST_DAGS))
    return TEST_DAGS


class FakeTI:
    """Just enough of a task instance for operator.execute() outside a DAG run: records XCom pushes."""

    def __init__(self):
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


@pytest.fixture
def context():
    return {"ti": FakeTI()}


@pytest.fixture
def faults(ml_service):
    """Add fault rules to the service (POST /_local/faults); cleared after the test."""
    import requests

    def add(**rule):
        requests.post(f"{ml_service.url}_local/faults", json=rule, headers=ml_service.headers,
                      timeout=5).raise_for_status()

    yield add
    requests.delete(f"{ml_service.url}_local/faults", headers=ml_service.headers, timeout=5).raise_for_status()

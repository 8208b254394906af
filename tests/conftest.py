"""Session fixtures: the real GCS emulator and the real local ml/v1 service on loopback.

Both run as separate processes on free ports, started once per test session,
exactly as `make services` starts them.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")]

# Airflow reads its configuration when first imported: give the whole session a
# throw-away home (SQLite DB, logs) before any test module imports it.
if "airflow" not in sys.modules:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from include import devstack  # noqa: E402

TEST_PROJECT = "test-project"
TEST_BUCKET = "test-bucket"


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> str:
    """URL of an in-memory GCS emulator; STORAGE_EMULATOR_HOST points at it."""
    port = devstack.free_port()
    logs = tmp_path_factory.mktemp("gcs")
    server = devstack.gcs_emulator(port=port, data_dir=None, log_path=logs / "gcs.log").start()
    host = f"http://127.0.0.1:{port}"
    os.environ["STORAGE_EMULATOR_HOST"] = host
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", TEST_PROJECT)
    yield host
    server.stop()


@pytest.fixture(scope="session")
def gcs_client(gcs_emulator):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project=TEST_PROJECT, credentials=AnonymousCredentials())


@pytest.fixture(scope="session")
def bucket(gcs_client):
    """The shared test bucket; each test writes under its own `gcs_prefix`."""
    existing = gcs_client.bucket(TEST_BUCKET)
    return existing if existing.exists() else gcs_client.create_bucket(TEST_BUCKET)


@pytest.fixture
def gcs_prefix(request) -> str:
    """A fresh object prefix for one test, e.g. `test_predict-1a2b3c4d`."""
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@dataclass
class ServiceHandle:
    """The running local ml/v1 service, restartable (gracefully or by kill -9)."""

    server: devstack.LocalProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def restart(self, *, kill: bool = False) -> None:
        self.server.stop(sig=signal.SIGKILL if kill else signal.SIGTERM)
        self.server.start(timeout=120)

    def build_api(self):
        from google.auth.credentials import AnonymousCredentials
        from googleapiclient.discovery import build

        return build("ml", "v1", credentials=AnonymousCredentials(), cache_discovery=False,
                     client_options={"api_endpoint": self.url})


@pytest.fixture(scope="session")
def ml_service(gcs_emulator, tmp_path_factory) -> ServiceHandle:
    port = devstack.free_port()
    state = tmp_path_factory.mktemp("ml_engine_state")
    server = devstack.ml_service(port=port, state_dir=state, gcs_host=gcs_emulator,
                                 log_path=state / "service.log").start(timeout=120)
    handle = ServiceHandle(server=server, port=port)
    os.environ["ML_ENGINE_ENDPOINT"] = handle.url
    yield handle
    server.stop()


@pytest.fixture(scope="session")
def ml_api(ml_service):
    """googleapiclient's ml/v1 resource, unchanged, pointed at the local service."""
    return ml_service.build_api()


@pytest.fixture(scope="session")
def tiny_trainer_package(bucket, tmp_path_factory) -> str:
    """gs:// URI of a tiny trainer sdist (module `tinytrainer.task`, see tests/trainer_packages.py)."""
    from tests.trainer_packages import build_tiny_sdist

    sdist = build_tiny_sdist(tmp_path_factory.mktemp("tinytrainer"))
    blob = bucket.blob(f"packages/{uuid.uuid4().hex[:8]}/{sdist.name}")
    blob.upload_from_filename(str(sdist))
    return f"gs://{bucket.name}/{blob.name}"

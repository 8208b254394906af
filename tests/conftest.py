"""Session fixtures: the real GCS emulator and the real local ml/v1 service on loopback.

Both run as separate processes on free ports, started once per test session,
exactly as `make services` starts them.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
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

from tools import devstack  # noqa: E402

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
    token: str = field(default_factory=lambda: os.environ.get("ML_ENGINE_TOKEN", ""))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def restart(self, *, kill: bool = False) -> None:
        self.server.stop(sig=signal.SIGKILL if kill else signal.SIGTERM)
        self.server.start(timeout=120)

    @property
    def headers(self) -> dict[str, str]:
        """What a raw HTTP call to /v1 or /_local needs: the bearer token."""
        return devstack.auth_headers(self.token)

    def build_api(self):
        return devstack.ml_api(self.url, self.token)


def session_token_file() -> Path:
    """The test session's service token (0600 file), also exported as ML_ENGINE_TOKEN for every client."""
    token_file = devstack.service_token_file(Path(tempfile.gettempdir()) / f"ml-engine-token-{os.getpid()}")
    os.environ["ML_ENGINE_TOKEN"] = token_file.read_text().strip()
    return token_file


def start_service(gcs_host: str, state_dir: Path) -> ServiceHandle:
    """A service as `make services` runs it (the session's token required), with the fault switch on."""
    port = devstack.free_port()
    token_file = session_token_file()
    server = devstack.ml_service(port=port, state_dir=state_dir, gcs_host=gcs_host,
                                 log_path=state_dir / "service.log", token_file=token_file,
                                 enable_faults=True).start(timeout=120)
    return ServiceHandle(server=server, port=port, token=token_file.read_text().strip())


@pytest.fixture(scope="session")
def passable_dir():
    """A directory other users can pass through (pytest's own tmp dirs are closed to them), removed at the end:
    the session service's state lives there, so its trainers run as `ml-trainer` as with `make services`."""
    base = Path(tempfile.mkdtemp(prefix="ml-engine-tests-"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def ml_service(gcs_emulator, passable_dir) -> ServiceHandle:
    """The service as `make services` runs it (a bearer token in a 0600 file), plus the fault switch."""
    handle = start_service(gcs_emulator, passable_dir / "ml_engine_state")
    os.environ["ML_ENGINE_ENDPOINT"] = handle.url
    yield handle
    handle.server.stop()


def start_beam_service(gcs_host: str, state_dir: Path, beam_options: str = "") -> ServiceHandle:
    """The service with `--batch-engine beam` set by environment (ML_ENGINE_BATCH_ENGINE), as compose does."""
    port = devstack.free_port()
    token_file = session_token_file()
    server = devstack.ml_service(port=port, state_dir=state_dir, gcs_host=gcs_host,
                                 log_path=state_dir / "service.log", token_file=token_file, enable_faults=True)
    server.env.update(ML_ENGINE_BATCH_ENGINE="beam", ML_ENGINE_BEAM_OPTIONS=beam_options)
    return ServiceHandle(server=server.start(timeout=120), port=port, token=token_file.read_text().strip())


@pytest.fixture(scope="session")
def beam_service(gcs_emulator, tmp_path_factory) -> ServiceHandle:
    """A second service whose batch jobs run as Apache Beam pipelines on DirectRunner, in its own process."""
    handle = start_beam_service(gcs_emulator, tmp_path_factory.mktemp("ml_engine_beam_state"))
    yield handle
    handle.server.stop()


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

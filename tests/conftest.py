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

# The session service also serves Vertex AI; Google's clients in this process reach it through the route
# `make services` prints (a CONNECT proxy, its CA, a metadata server). google-auth and gRPC read these when
# first used, so they are set before anything imports them, with ports and a state dir chosen now.
PASSABLE_DIR = Path(tempfile.mkdtemp(prefix="ml-engine-tests-"))
PASSABLE_DIR.chmod(0o711)  # other users may pass through (pytest's own tmp dirs are closed to them)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


VERTEX_PORTS = {"vertex": _free_port(), "proxy": _free_port(), "metadata": _free_port()}
SESSION_STATE = PASSABLE_DIR / "ml_engine_state"
if "grpc" not in sys.modules and "google.auth" not in sys.modules:
    from tools.vertex_route import environment as _vertex_environment

    os.environ.update(_vertex_environment(proxy_port=VERTEX_PORTS["proxy"], metadata_port=VERTEX_PORTS["metadata"],
                                          ca_file=SESSION_STATE / "vertex_tls" / "ca.pem"))

from tools import devstack  # noqa: E402

TEST_PROJECT = "test-project"
TEST_BUCKET = "test-bucket"


def pytest_addoption(parser):
    parser.addoption("--database", choices=("sqlite", "postgresql"), default="sqlite",
                     help="the database of every service the tests start: SQLite in its state dir (default) or "
                          "a database of its own on one PostgreSQL server for the session (make test runs the "
                          "service tests both ways)")


class _PostgresBackend:
    """One PostgreSQL server for the test session, a database and an artifact prefix per service state dir."""

    def __init__(self):
        from tools.postgres import PostgresServer

        self.server = PostgresServer(Path(tempfile.mkdtemp(prefix="ml-engine-pg-"))).start()
        self._databases: dict[Path, dict[str, str]] = {}

    def __call__(self, state_dir: Path) -> dict[str, str]:
        key = Path(state_dir).resolve()
        if key not in self._databases:
            name = f"svc_{len(self._databases)}_{uuid.uuid4().hex[:6]}"
            _ensure_bucket(TEST_BUCKET)
            self._databases[key] = {"database_url": self.server.create_database(name),
                                    "artifact_uri": f"gs://{TEST_BUCKET}/artifacts/{name}"}
        return self._databases[key]

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.server.directory, ignore_errors=True)


def _ensure_bucket(name: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=TEST_PROJECT, credentials=AnonymousCredentials())
    if not client.bucket(name).exists():
        client.create_bucket(name)


def pytest_configure(config):
    if config.getoption("--database", default="sqlite") == "postgresql":
        devstack.service_backend = _PostgresBackend()


def pytest_unconfigure(config):
    if isinstance(devstack.service_backend, _PostgresBackend):
        devstack.service_backend.stop()
        devstack.service_backend = None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server on loopback for this session (the replica tests' shared database)."""
    from tools.postgres import PostgresServer, binaries

    if binaries() is None:
        pytest.fail("PostgreSQL's initdb is missing: `make test` installs Debian's postgresql")
    directory = Path(tempfile.mkdtemp(prefix="ml-engine-pg-replicas-"))
    server = PostgresServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


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


def start_service(gcs_host: str, state_dir: Path, vertex_port: int | None = None) -> ServiceHandle:
    """A service as `make services` runs it (the session's token required), with the fault switch on."""
    port = devstack.free_port()
    token_file = session_token_file()
    server = devstack.ml_service(port=port, state_dir=state_dir, gcs_host=gcs_host,
                                 log_path=state_dir / "service.log", token_file=token_file,
                                 enable_faults=True, vertex_port=vertex_port).start(timeout=120)
    return ServiceHandle(server=server, port=port, token=token_file.read_text().strip())


@pytest.fixture(scope="session")
def passable_dir():
    """A directory other users can pass through, removed at the end: the session service's state lives there,
    so its trainers run as `ml-trainer` as with `make services`."""
    yield PASSABLE_DIR
    shutil.rmtree(PASSABLE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def ml_service(gcs_emulator, passable_dir) -> ServiceHandle:
    """The service as `make services` runs it (a bearer token in a 0600 file), plus the fault switch; it also
    serves Vertex AI (see `vertex_route`)."""
    handle = start_service(gcs_emulator, SESSION_STATE, vertex_port=VERTEX_PORTS["vertex"])
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
def vertex(ml_service):
    """The route to the session service's Vertex AI surface (CONNECT proxy + metadata server), started; Google's
    clients in this process use it through the environment set above. Yields the ``parent`` of test resources."""
    route = devstack.vertex_route(vertex_port=VERTEX_PORTS["vertex"], proxy_port=VERTEX_PORTS["proxy"],
                                  metadata_port=VERTEX_PORTS["metadata"], token_file=session_token_file(),
                                  project=TEST_PROJECT, log_path=SESSION_STATE / "vertex-route.log").start()
    yield f"projects/{TEST_PROJECT}/locations/us-central1"
    route.stop()


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

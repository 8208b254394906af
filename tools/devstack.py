"""Start and stop the local stack: the GCS emulator and the ml/v1 service.

One place for both ``make services`` / ``make stop`` (the CLI below, with pid
files and logs under the state dir) and the test fixtures (``LocalProcess``),
so what the tests run is what users run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = PROJECT_ROOT / ".state"
DEFAULT_GCS_PORT = 9023
DEFAULT_ML_PORT = 8780
TOKEN_FILE_NAME = "ml_engine_token"


def secret_file(path: Path) -> str:
    """A random secret kept in a 0600 file, made on first use and reused, so restarts keep it valid."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def service_token_file(state_dir: Path) -> Path:
    """Where the local stack keeps the ml/v1 service's bearer token (created when missing)."""
    path = state_dir / TOKEN_FILE_NAME
    secret_file(path)
    return path


def service_credentials(token: str | None = None):
    """OAuth 2 credentials carrying the local service's token (ML_ENGINE_TOKEN if not given), else anonymous."""
    from google.auth.credentials import AnonymousCredentials
    from google.oauth2.credentials import Credentials

    token = token or os.environ.get("ML_ENGINE_TOKEN", "").strip()
    return Credentials(token=token) if token else AnonymousCredentials()


def auth_headers(token: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer ...`` for raw HTTP calls to the local service ({} when no token is set)."""
    token = token or os.environ.get("ML_ENGINE_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def ml_api(endpoint: str, token: str | None = None):
    """googleapiclient's ml/v1 resource for a local service, sending its bearer token.

    A local token cannot be refreshed, so a 401 is raised as the HttpError it is
    (no refresh attempt, which would fail with a less helpful RefreshError).
    """
    import google_auth_httplib2
    from googleapiclient.discovery import build
    from googleapiclient.http import build_http

    http = google_auth_httplib2.AuthorizedHttp(service_credentials(token), http=build_http(),
                                               refresh_status_codes=())
    return build("ml", "v1", http=http, cache_discovery=False, client_options={"api_endpoint": endpoint})


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers (any HTTP status), the process dies, or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@dataclass
class LocalProcess:
    """A server started in the background, with its log file and health URL."""

    name: str
    argv: list[str]
    health_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen | None = None

    def start(self, *, timeout: float = 60) -> LocalProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for_http(self.health_url, timeout=timeout, process=self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.name} failed to start; log tail:\n{self.log_tail()}") from None
        return self

    def stop(self, *, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def gcs_emulator(*, port: int, data_dir: Path | None, log_path: Path) -> LocalProcess:
    """
    The gcp-storage-emulator on loopback, not yet started.

    :param port: Loopback port to listen on.
    :param data_dir: Where objects are kept across restarts; None: in memory.
    :param log_path: File receiving the emulator's output.
    :return: the process handle; ``start()`` it.
    """
    argv = [str(Path(sys.executable).parent / "gcp-storage-emulator"), "start", "-H", "127.0.0.1", "--port", str(port)]
    if data_dir is None:
        argv.append("--in-memory")
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
    return LocalProcess(
        name="gcs-emulator",
        argv=argv,
        health_url=f"http://127.0.0.1:{port}/storage/v1/b?project=local",
        log_path=log_path,
        cwd=data_dir or log_path.parent,
    )


#: When set (the test session's ``--database postgresql``): the database settings of the service with a given
#: state dir, {"database_url": ..., "artifact_uri": ...}; every ``ml_service`` started without its own uses them.
service_backend: Callable[[Path], dict[str, str]] | None = None


def ml_service(*, port: int, state_dir: Path, gcs_host: str, log_path: Path, token_file: Path | None = None,
               enable_faults: bool = False, vertex_port: int | None = None, database_url: str = "",
               artifact_uri: str = "") -> LocalProcess:
    """
    The local ml/v1 service on loopback, not yet started.

    :param port: Loopback port to listen on.
    :param state_dir: The service's store, deployed models and job work.
    :param gcs_host: STORAGE_EMULATOR_HOST the service reads and writes GCS through.
    :param log_path: File receiving the service's output.
    :param token_file: File holding the bearer token callers must send; None: anonymous.
    :param enable_faults: Expose the fault switch (``/_local/faults``) for tests.
    :param vertex_port: Also serve Vertex AI's gRPC API on this loopback port.
    :param database_url: The service's database (default: SQLite in ``state_dir``, or ``service_backend``'s).
    :param artifact_uri: Where deployed models are kept for every replica (with a PostgreSQL database).
    :return: the process handle; ``start()`` it.
    """
    if not database_url and service_backend is not None:
        backend = service_backend(state_dir)
        database_url, artifact_uri = backend["database_url"], backend["artifact_uri"]
    argv = [sys.executable, "-m", "include.local_platform", "--host", "127.0.0.1",
            "--port", str(port), "--state-dir", str(state_dir)]
    if vertex_port is not None:
        argv += ["--vertex-port", str(vertex_port)]
    if token_file is not None:
        argv += ["--token-file", str(token_file)]
    if enable_faults:
        argv.append("--enable-faults")
    env = {"STORAGE_EMULATOR_HOST": gcs_host, "PYTHONPATH": str(PROJECT_ROOT)}
    if database_url:  # by environment: a password on the command line is visible to every local user
        env.update(ML_ENGINE_DATABASE_URL=database_url, ML_ENGINE_ARTIFACT_URI=artifact_uri)
    return LocalProcess(
        name="ml-engine-local",
        argv=argv,
        health_url=f"http://127.0.0.1:{port}/healthz",
        log_path=log_path,
        env=env,
        cwd=PROJECT_ROOT,
    )


# --- pid files: `make services` / `make airflow` and `make stop` ------------


def pid_file(state_dir: Path, name: str) -> Path:
    """Where the pid of the local service ``name`` is kept."""
    return state_dir / "run" / f"{name}.pid"


def _process_start_time(pid: int) -> float | None:
    """When a process started (epoch seconds), from /proc; None where /proc is not there."""
    try:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(after_name[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def running_pid(path: Path) -> int | None:
    """The pid in the pid file ``path`` if that process still runs and is the one the file was written for.

    A process that started after the file was written has merely reused the pid
    (after a reboot or a kill -9): it is not ours, so it is neither reported nor killed.
    """
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    started = _process_start_time(pid)
    if started is not None and started > path.stat().st_mtime + 2:
        return None
    return pid


def record_pid(path: Path, process: LocalProcess) -> None:
    """Write the pid file of a started process, for ``stop_recorded`` to find."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(process.process.pid))


def stop_recorded(pid_files: list[Path], *, timeout: float, prefix: str = "") -> None:
    """
    Stop recorded processes: SIGTERM every group at once, SIGKILL what is left after ``timeout``.

    Only processes the files were written for are signalled (see :func:`running_pid`);
    the pid files are removed afterwards.

    :param pid_files: Pid files written by :func:`record_pid`.
    :param timeout: Seconds between SIGTERM and SIGKILL.
    :param prefix: Put before each name in the "stopped" lines (e.g. ``airflow-``).
    """
    running = {path: pid for path in sorted(pid_files) if (pid := running_pid(path))}
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(running_pid(path) for path in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for path, pid in running.items():
        if running_pid(path):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        print(f"{prefix}{path.stem}: stopped (pid {pid})")
    for path in pid_files:
        path.unlink(missing_ok=True)


def vertex_route(*, vertex_port: int, proxy_port: int, metadata_port: int, token_file: Path, project: str,
                 log_path: Path) -> LocalProcess:
    """The CONNECT proxy and metadata server that route Google's clients to the Vertex AI surface (not started)."""
    argv = [sys.executable, "-m", "tools.vertex_route", "--target", f"127.0.0.1:{vertex_port}",
            "--proxy-port", str(proxy_port), "--metadata-port", str(metadata_port), "--token-file", str(token_file),
            "--project", project]
    return LocalProcess(name="vertex-route", argv=argv, health_url=f"http://127.0.0.1:{metadata_port}/healthz",
                        log_path=log_path, env={"PYTHONPATH": str(PROJECT_ROOT)}, cwd=PROJECT_ROOT)


def vertex_ports(ml_port: int) -> tuple[int, int, int]:
    """(Vertex AI surface, CONNECT proxy, metadata server) loopback ports: VERTEX_PORT, VERTEX_PROXY_PORT,
    VERTEX_METADATA_PORT, by default the three ports after the ml/v1 port."""
    return (int(os.environ.get("VERTEX_PORT", ml_port + 1)), int(os.environ.get("VERTEX_PROXY_PORT", ml_port + 2)),
            int(os.environ.get("VERTEX_METADATA_PORT", ml_port + 3)))


def vertex_environment(state_dir: Path, ml_port: int) -> dict[str, str]:
    """The environment a client needs to reach the stack's Vertex AI surface with Google's own code."""
    from tools.vertex_route import environment

    _, proxy_port, metadata_port = vertex_ports(ml_port)
    return environment(proxy_port=proxy_port, metadata_port=metadata_port,
                       ca_file=state_dir / "ml_engine" / "vertex_tls" / "ca.pem")


def start_services(state_dir: Path, gcs_port: int, ml_port: int) -> None:
    """
    Start the GCS emulator, the local service (ml/v1 and Vertex AI) and the Vertex AI route in the background
    (``make services``); running ones are kept.

    :param state_dir: Holds pid files (``run/``), logs, emulator data, the service's state and token.
    :param gcs_port: Loopback port of the GCS emulator.
    :param ml_port: Loopback port of the ml/v1 service (the Vertex AI ports follow it, see ``vertex_ports``).
    """
    gcs_host = f"http://127.0.0.1:{gcs_port}"
    logs = state_dir / "logs"
    token_file = service_token_file(state_dir)
    vertex_port, proxy_port, metadata_port = vertex_ports(ml_port)
    servers = [
        gcs_emulator(port=gcs_port, data_dir=state_dir / "gcs", log_path=logs / "gcs-emulator.log"),
        ml_service(port=ml_port, state_dir=state_dir / "ml_engine", gcs_host=gcs_host,
                   log_path=logs / "ml-engine-local.log", token_file=token_file, vertex_port=vertex_port),
        vertex_route(vertex_port=vertex_port, proxy_port=proxy_port, metadata_port=metadata_port,
                     token_file=token_file, project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local-project"),
                     log_path=logs / "vertex-route.log"),
    ]
    for server in servers:
        path = pid_file(state_dir, server.name)
        if pid := running_pid(path):
            print(f"{server.name}: already running (pid {pid}) -> {server.health_url}")
            continue
        started = time.monotonic()
        server.start(timeout=120)
        record_pid(path, server)
        print(f"{server.name}: listening on {server.health_url.split('/', 3)[:3][-1]} "
              f"(pid {server.process.pid}, up in {time.monotonic() - started:.1f} s), log {server.log_path}")
    print(f"export STORAGE_EMULATOR_HOST={gcs_host}")
    print(f"export ML_ENGINE_ENDPOINT=http://127.0.0.1:{ml_port}/")
    print(f"export ML_ENGINE_TOKEN=$(cat {state_dir / TOKEN_FILE_NAME})")
    print(f"Service pages (this link logs a browser in): {pages_login_url(state_dir, ml_port)}")
    print(f"Vertex AI (gRPC, TLS) on 127.0.0.1:{vertex_port}; Google's clients reach it as "
          "us-central1-aiplatform.googleapis.com with (docs/vertex-ai.md):")
    for key, value in vertex_environment(state_dir, ml_port).items():
        print(f"  export {key}={value}")


def pages_login_url(state_dir: Path, ml_port: int) -> str:
    """The link that logs a browser in to the service's pages (``/ui/login?token=...``: a session cookie)."""
    token = (state_dir / TOKEN_FILE_NAME).read_text().strip()
    return f"http://127.0.0.1:{ml_port}/ui/login?{urlencode({'token': token, 'next': '/ui'})}"


def stop_services(state_dir: Path) -> None:
    """Stop what ``start_services`` started (``make stop``)."""
    stop_recorded(list((state_dir / "run").glob("*.pid")), timeout=10)


def main(argv: list[str] | None = None) -> None:
    """``python -m tools.devstack start|stop|env`` (env: the exports Vertex AI clients need, for ``eval``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "env"])
    parser.add_argument("--state-dir", type=Path,
                        default=Path(os.environ.get("STATE_DIR", DEFAULT_STATE_DIR)))
    parser.add_argument("--gcs-port", type=int, default=int(os.environ.get("GCS_PORT", DEFAULT_GCS_PORT)))
    parser.add_argument("--ml-port", type=int, default=int(os.environ.get("ML_PORT", DEFAULT_ML_PORT)))
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    if args.action == "start":
        start_services(state_dir, args.gcs_port, args.ml_port)
    elif args.action == "env":
        import shlex

        for key, value in vertex_environment(state_dir, args.ml_port).items():
            print(f"export {key}={shlex.quote(value)}")
    else:
        stop_services(state_dir)


if __name__ == "__main__":
    main()

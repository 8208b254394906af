"""Start and stop Airflow 3 on this machine with the project's DAGs and plugins: ``make airflow`` / ``make stop``.

One place for the local Airflow stack: the CLI below (pid files and logs under
the state dir, like ``tools.devstack`` for the GCS emulator and the ml/v1
service) and the ``AirflowStack`` class the end-to-end tests start on free ports,
so what the tests run is what users run.

The stack: api-server (UI + REST API + execution API), scheduler (LocalExecutor),
dag-processor and triggerer, one SQLite metadata database under
``STATE_DIR/airflow``, SimpleAuthManager with the documented local user
``admin`` / ``admin`` (``AIRFLOW_ADMIN_PASSWORD`` changes the password). That
static password is for a loopback bind only: on any other address (``--host
0.0.0.0``) the stack generates a random one into ``STATE_DIR/airflow/admin_password``
(0600, kept across restarts) and refuses ``admin``. Every secret file is created
0600 from its first byte. Connections
come from the environment (``include.config.embedded_environment()``): with the
local services (default) the ``google_cloud_default`` connection points at the
emulator and the local ml/v1 service; with ``--services none`` whatever
``AIRFLOW_CONN_*``, ``ML_ENGINE_ENDPOINT``, ``STORAGE_EMULATOR_HOST`` and Google
credentials the caller exports are passed through unchanged (real GCS / ml/v1).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tools import devstack

log = logging.getLogger(__name__)
PROJECT_ROOT = devstack.PROJECT_ROOT
DEFAULT_PORT = 8080
DEFAULT_WORKER_LOG_PORT = 8793
DEFAULT_TRIGGER_LOG_PORT = 8794
ADMIN_USER = "admin"
DEFAULT_ADMIN_PASSWORD = "admin"  # loopback only; documented in README ("Airflow UI")
ADMIN_PASSWORD_FILE = "admin_password"  # under AIRFLOW_HOME: the generated password of a non-loopback bind
PASSWORDS_FILE = "simple_auth_manager_passwords.json"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: How long SQLite waits for another process's write lock. Python's default (5 s) made a trigger from the UI
#: or the REST API fail with a 500 while a running task wrote to the database.
SQLITE_CONNECT_ARGS = {"timeout": 60}
PROJECT_DAGS = ("model_lifecycle", "batch_prediction", "model_maintenance", "data_arrival")
#: Stack settings the caller's environment may change (e.g. AIRFLOW__CORE__PARALLELISM=8 make airflow).
TUNABLE = frozenset({
    "AIRFLOW__CORE__PARALLELISM", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "AIRFLOW__CORE__LOAD_EXAMPLES",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API__WORKERS", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL",
})
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


@dataclass
class AirflowStack:
    """
    Airflow's four components (and optionally the local services) for one state dir.

    :param state_dir: Holds AIRFLOW_HOME (``airflow/``), logs and the services' state.
    :param port: The api-server's port (UI, REST API, execution API).
    :param host: Address the api-server binds.
    :param gcs_port: Port of the GCS emulator (local services).
    :param ml_port: Port of the ml/v1 service (local services).
    :param worker_log_port: Port the task log server listens on.
    :param trigger_log_port: Port the triggerer's log server listens on.
    :param local_services: Point the connection at the local services; False: the environment's.
    :param start_local_services: Start the local services with the stack (the CLI starts them itself).
    :param unpause: Unpause the project's DAGs once they are registered.
    :param password: The ``admin`` user's password. None: ``admin`` on a loopback bind, else a random one
        kept in ``admin_password_file``; ``admin`` itself is refused on a non-loopback bind.
    :param extra_env: More environment for every component.
    """

    state_dir: Path
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    gcs_port: int = devstack.DEFAULT_GCS_PORT
    ml_port: int = devstack.DEFAULT_ML_PORT
    worker_log_port: int = DEFAULT_WORKER_LOG_PORT
    trigger_log_port: int = DEFAULT_TRIGGER_LOG_PORT
    local_services: bool = True
    start_local_services: bool = True
    unpause: bool = True
    password: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, devstack.LocalProcess] = field(default_factory=dict)
    services: list[devstack.LocalProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        if is_loopback(self.host):
            self.password = self.password or DEFAULT_ADMIN_PASSWORD
        elif self.password == DEFAULT_ADMIN_PASSWORD:
            raise ValueError(f"--host {self.host!r} is not loopback: the static password {DEFAULT_ADMIN_PASSWORD!r} "
                             "would let anyone who reaches the port in; unset AIRFLOW_ADMIN_PASSWORD to get a "
                             "generated one, or choose another")
        elif not self.password:  # other hosts can reach the UI: a random password, made once (0600) and kept
            self.password = devstack.secret_file(self.admin_password_file)

    @property
    def admin_password_file(self) -> Path:
        return self.airflow_home / ADMIN_PASSWORD_FILE

    def password_hint(self) -> str:
        """How the user gets the ``admin`` password, without printing a password that is not the documented one."""
        if self.password == DEFAULT_ADMIN_PASSWORD:
            return f"user {ADMIN_USER}, password {DEFAULT_ADMIN_PASSWORD}"
        path = self.admin_password_file
        if path.exists() and path.read_text().strip() == self.password:
            return f"user {ADMIN_USER}, generated password: cat {path}"
        return f"user {ADMIN_USER}, the password given (AIRFLOW_ADMIN_PASSWORD)"

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def url(self) -> str:
        return f"http://{'localhost' if self.host in ('127.0.0.1', '0.0.0.0') else self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}" if self.host in ("127.0.0.1", "0.0.0.0") else self.url

    # --- environment ------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """Every variable the Airflow components need.

        The caller's AIRFLOW__* variables pass through, but only the TUNABLE ones among those set here
        (a test session's DAGS_FOLDER, say, must not replace the project's).
        """
        home = self.airflow_home
        passwords = home / PASSWORDS_FILE
        env = {
            "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")]),
            "AIRFLOW_HOME": str(home),
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }
        defaults = {
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(not self.unpause),
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": self.host,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": devstack.secret_file(home / ".api_secret_key"),
            "AIRFLOW__API_AUTH__JWT_SECRET": devstack.secret_file(home / ".jwt_secret"),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        }
        for key, value in defaults.items():  # the stack owns folders, ports, auth and executor
            env[key] = os.environ.get(key, value) if key in TUNABLE else value
        if env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite"):
            for key in ("SQL_ALCHEMY_CONNECT_ARGS", "SQL_ALCHEMY_CONNECT_ARGS_ASYNC"):
                env[f"AIRFLOW__DATABASE__{key}"] = "tools.airflow_stack.SQLITE_CONNECT_ARGS"
        if self.local_services:
            env["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{self.gcs_port}"
            env["ML_ENGINE_ENDPOINT"] = f"http://127.0.0.1:{self.ml_port}/"
            # the connection carries the service's token (include.config reads ML_ENGINE_TOKEN)
            env["ML_ENGINE_TOKEN"] = devstack.secret_file(devstack.service_token_file(self.state_dir))
            if {**os.environ, **self.extra_env}.get("ML_PLATFORM") == "vertex":  # the route to local Vertex AI
                env.update(devstack.vertex_environment(self.state_dir, self.ml_port))
        env.update(self.extra_env)
        env.update(self._connection_env(env))
        return env

    def _connection_env(self, env: dict[str, str]) -> dict[str, str]:
        """The Google connection for the services in use.

        Local services: include.config's embedded connection (anonymous, local endpoint). Otherwise the
        caller's AIRFLOW_CONN_* wins; without one, a connection with Application Default Credentials,
        the project and, when ML_ENGINE_ENDPOINT is set, that endpoint. Nothing else is added, so an
        unset STORAGE_EMULATOR_HOST stays unset (real GCS).
        """
        merged = {**os.environ, **env}
        if self.local_services:
            from include import config

            connection_env = config.embedded_environment(config.load(merged))
            return _with_stack_token(connection_env, merged.get("ML_ENGINE_TOKEN", ""))
        conn_var = f"AIRFLOW_CONN_{merged.get('ML_GCP_CONN_ID', 'google_cloud_default').upper()}"
        if conn_var in merged:
            return {}
        extra = {"project": merged.get("GOOGLE_CLOUD_PROJECT", "")}
        if merged.get("ML_ENGINE_ENDPOINT"):
            extra["ml_engine_endpoint"] = merged["ML_ENGINE_ENDPOINT"]
        return {conn_var: json.dumps({"conn_type": "google_cloud_platform", "extra": extra})}

    def write_passwords(self) -> Path:
        """SimpleAuthManager's passwords file with the ``admin`` password, never readable by others."""
        path = self.airflow_home / PASSWORDS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_secret(path, json.dumps({ADMIN_USER: self.password}))
        return path

    # --- processes --------------------------------------------------------------

    def _airflow(self, *args: str) -> list[str]:
        return [str(Path(sys.executable).parent / "airflow"), *args]

    def _component(self, name: str, env: dict[str, str]) -> devstack.LocalProcess:
        argv = {
            "api-server": self._airflow("api-server", "--host", self.host, "--port", str(self.port)),
            "scheduler": self._airflow("scheduler"),
            "dag-processor": self._airflow("dag-processor"),
            "triggerer": self._airflow("triggerer"),
        }[name]
        return devstack.LocalProcess(name=f"airflow-{name}", argv=argv,
                                     health_url=f"{self.api_url}/api/v2/monitor/health",
                                     log_path=self.log_dir / f"airflow-{name}.log", env=env, cwd=PROJECT_ROOT)

    def start_services(self) -> None:
        """The GCS emulator and the local service; on Vertex AI (ML_PLATFORM=vertex) its gRPC surface and route."""
        gcs_host = f"http://127.0.0.1:{self.gcs_port}"
        vertex = {**os.environ, **self.extra_env}.get("ML_PLATFORM") == "vertex"
        vertex_port, proxy_port, metadata_port = devstack.vertex_ports(self.ml_port)
        token_file = devstack.service_token_file(self.state_dir)
        self.services = [
            devstack.gcs_emulator(port=self.gcs_port, data_dir=self.state_dir / "gcs",
                                  log_path=self.log_dir / "gcs-emulator.log"),
            devstack.ml_service(port=self.ml_port, state_dir=self.state_dir / "ml_engine", gcs_host=gcs_host,
                                log_path=self.log_dir / "ml-engine-local.log", token_file=token_file,
                                vertex_port=vertex_port if vertex else None),
        ]
        if vertex:
            self.services.append(devstack.vertex_route(
                vertex_port=vertex_port, proxy_port=proxy_port, metadata_port=metadata_port, token_file=token_file,
                project={**os.environ, **self.extra_env}.get("GOOGLE_CLOUD_PROJECT", "local-project"),
                log_path=self.log_dir / "vertex-route.log"))
        for server in self.services:
            server.start(timeout=120)

    def migrate(self, env: dict[str, str]) -> None:
        log = self.log_dir / "airflow-db-migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            done = subprocess.run(self._airflow("db", "migrate"), env={**os.environ, **env}, stdout=out,
                                  stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        if done.returncode:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"airflow db migrate failed ({log}):\n{tail}")
        conn = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        if conn.startswith("sqlite:///"):
            use_wal(Path(conn.removeprefix("sqlite:///")))

    def start(self, *, timeout: float = 240) -> AirflowStack:
        """Services (if local), DB migration, the four components; returns when all are healthy and DAGs parsed."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.local_services and self.start_local_services and not self.services:
            self.start_services()
        env = self.environment()
        self.write_passwords()
        self.migrate(env)
        self.processes = {name: self._component(name, env) for name in COMPONENTS}
        try:
            with ThreadPoolExecutor(len(self.processes)) as pool:
                for future in [pool.submit(p.start, timeout=timeout) for p in self.processes.values()]:
                    future.result()
            self.wait_healthy(timeout=timeout)
            dags = self.wait_dags(timeout=timeout)
            if self.unpause:
                self.unpause_dags(dags)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.processes:  # all at once: each component takes a few seconds to shut down cleanly
            with ThreadPoolExecutor(len(self.processes)) as pool:
                list(pool.map(lambda process: process.stop(timeout=20), self.processes.values()))
        for server in reversed(self.services):
            server.stop()

    # --- REST API ---------------------------------------------------------------

    def token(self) -> str:
        """A JWT for the REST API, as the UI gets one: POST /auth/token with the user's credentials."""
        body = json.dumps({"username": ADMIN_USER, "password": self.password}).encode()
        request = urllib.request.Request(f"{self.api_url}/auth/token", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["access_token"]

    def api(self, method: str, path: str, body: dict | None = None, *, token: str | None = None) -> dict:
        """One REST API v2 call (``path`` after /api/v2), JSON in and out."""
        request = urllib.request.Request(
            f"{self.api_url}/api/v2{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     "Authorization": f"Bearer {token or self.token()}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=10) as response:
            return json.load(response)

    def wait_healthy(self, *, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        health: dict = {}
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError, ValueError):
                health = self.health()
                if all((health.get(part) or {}).get("status") == "healthy"
                       for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                    return health
            time.sleep(1)
        raise TimeoutError(f"Airflow not healthy within {timeout:.0f} s: {health}")

    def wait_dags(self, *, timeout: float, dag_ids: tuple[str, ...] = PROJECT_DAGS) -> dict:
        """Until the dag-processor has parsed the project's DAGs; fails on import errors."""
        deadline = time.monotonic() + timeout
        token = self.token()
        while time.monotonic() < deadline:
            self._check_alive()
            errors = self.api("GET", "/importErrors", token=token)
            if errors.get("total_entries"):
                raise RuntimeError(f"DAG import errors: {json.dumps(errors['import_errors'], indent=1)}")
            dags = {d["dag_id"]: d for d in self.api("GET", "/dags?limit=100", token=token)["dags"]}
            if set(dag_ids) <= set(dags):
                return dags
            time.sleep(1)
        raise TimeoutError(f"DAGs {dag_ids} not parsed within {timeout:.0f} s")

    def unpause_dags(self, dags: dict) -> None:
        """Activate the project's DAGs, also those an earlier ``make run`` (``airflow dags test``) registered paused.

        DAGS_ARE_PAUSED_AT_CREATION only applies to DAGs new to the database, so it cannot express
        the stack's intent (schedules that fire) on a database ``make run`` has already used.
        """
        token = self.token()
        for dag_id in PROJECT_DAGS:
            if dags[dag_id]["is_paused"]:
                self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False}, token=token)
                log.info("Unpaused %s (registered paused before this stack started)", dag_id)

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.process is not None and process.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.process.returncode}:\n{process.log_tail()}")


def is_loopback(host: str) -> bool:
    """Whether an address to bind is reachable from this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # another name, or empty (all interfaces): it may be reachable from elsewhere
        return False


def write_secret(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in a file that is mode 0600 from its creation on.

    The text goes into a new file created with O_CREAT | O_EXCL and mode 0600 (so it cannot be
    another's file or a symlink, and no umask makes it readable by others), which then replaces
    ``path`` in one rename: the file at ``path`` never holds the text with wider permissions,
    whatever mode an older file there had.
    """
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()  # left by a crash of this pid's predecessor
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def use_wal(db_path: Path) -> None:
    """Switch the metadata database to SQLite's write-ahead log (the mode stays with the file).

    In SQLite's default rollback-journal mode a connection that merely holds a read
    transaction blocks every writer's commit. The api-server reads on one connection and
    writes on another within the same process, so under load a request could wait the whole
    busy timeout on itself: a REST trigger or a task's start hung 60 s, then failed with
    "database is locked". With WAL, readers never block the writer.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(db_path, timeout=SQLITE_CONNECT_ARGS["timeout"])) as db:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"{db_path}: SQLite kept journal_mode {mode!r}, not WAL")


def _with_stack_token(connection_env: dict[str, str], token: str) -> dict[str, str]:
    """The embedded connection carrying the stack's own service token.

    include.config reads ML_ENGINE_TOKEN from this process's environment, which may hold
    another service's token (a test session's); the stack's components get the stack's.
    """
    out = {}
    for key, value in connection_env.items():
        if key.startswith("AIRFLOW_CONN_"):
            connection = json.loads(value)
            connection["extra"].pop("ml_engine_token", None)
            if token.strip():
                connection["extra"]["ml_engine_token"] = token.strip()
            value = json.dumps(connection)
        out[key] = value
    return out


# --- CLI for `make airflow` / `make stop` ------------------------------------


def _pid_dir(state_dir: Path) -> Path:
    return state_dir / "run" / "airflow"


def _start(stack: AirflowStack) -> None:
    pid_dir = _pid_dir(stack.state_dir)
    running = [p.stem for p in pid_dir.glob("*.pid") if devstack.running_pid(p)]
    if running:
        print(f"Airflow already running ({', '.join(sorted(running))}): {stack.url}  (make stop to stop it)")
        return
    started = time.monotonic()
    if stack.local_services:  # as `make services` does, with their own pid files (already running: kept)
        devstack.start_services(stack.state_dir, stack.gcs_port, stack.ml_port)
    stack.start()
    for name, process in stack.processes.items():
        devstack.record_pid(pid_dir / f"{name}.pid", process)
    dags = stack.wait_dags(timeout=60)
    print(f"Airflow is up in {time.monotonic() - started:.0f} s: {stack.url}  ({stack.password_hint()})")
    for dag_id in PROJECT_DAGS:
        print(f"  {dag_id}: {'paused' if dags[dag_id]['is_paused'] else 'active'}, "
              f"schedule {dags[dag_id].get('timetable_summary')}")
    print(f"Logs: {stack.log_dir}/airflow-*.log; task logs under {stack.airflow_home / 'logs'}")
    if stack.local_services:
        print(f"The ml/v1 service's pages (the extra links; this link logs a browser in): "
              f"{devstack.pages_login_url(stack.state_dir, stack.ml_port)}")


def _stop(state_dir: Path) -> None:
    """SIGTERM to every component's process group at once, SIGKILL to what is left after 20 s."""
    devstack.stop_recorded(list(_pid_dir(state_dir).glob("*.pid")), timeout=20, prefix="airflow-")


def main(argv: list[str] | None = None) -> None:
    """``python -m tools.airflow_stack start|stop``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--state-dir", type=Path,
                        default=Path(os.environ.get("STATE_DIR", devstack.DEFAULT_STATE_DIR)))
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", DEFAULT_PORT)))
    parser.add_argument("--host", default=os.environ.get("AIRFLOW_HOST", "127.0.0.1"),
                        help="address the UI binds (0.0.0.0 to reach it from other machines)")
    parser.add_argument("--gcs-port", type=int, default=int(os.environ.get("GCS_PORT", devstack.DEFAULT_GCS_PORT)))
    parser.add_argument("--ml-port", type=int, default=int(os.environ.get("ML_PORT", devstack.DEFAULT_ML_PORT)))
    parser.add_argument("--services", choices=["local", "none"], default=os.environ.get("SERVICES", "local"),
                        help="local: start the GCS emulator and the ml/v1 service; none: use the environment's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    state_dir = args.state_dir.resolve()
    if args.action == "stop":
        _stop(state_dir)
        return
    try:
        stack = AirflowStack(
            state_dir=state_dir, port=args.port, host=args.host, gcs_port=args.gcs_port, ml_port=args.ml_port,
            worker_log_port=int(os.environ.get("AIRFLOW_WORKER_LOG_PORT", DEFAULT_WORKER_LOG_PORT)),
            trigger_log_port=int(os.environ.get("AIRFLOW_TRIGGER_LOG_PORT", DEFAULT_TRIGGER_LOG_PORT)),
            local_services=args.services == "local",
            start_local_services=False,  # _start starts them the `make services` way
            # None: `admin` on loopback, a generated password on any other address
            password=os.environ.get("AIRFLOW_ADMIN_PASSWORD") or None,
            # Active DAGs unless the user asked for paused ones.
            unpause=os.environ.get("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "").strip().lower()
            not in ("true", "1"),
        )
    except ValueError as error:
        print(f"Airflow not started: {error}", file=sys.stderr)
        sys.exit(1)
    try:
        _start(stack)
    except Exception as error:
        print(f"Airflow failed to start: {error}", file=sys.stderr)
        _stop(state_dir)
        sys.exit(1)


if __name__ == "__main__":
    main()

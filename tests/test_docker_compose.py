"""docker-compose.yaml checked without Docker: each service, command, mount, port and env var refers to something real.

No Docker engine runs here, so the file is parsed (with Compose's `${VAR:-default}`
interpolation applied to defaults) and each reference is resolved against the
project: folders that are mounted, the Dockerfile and what it copies, Airflow CLI
commands and config options, the project's settings in include/config.py, module
entry points and their flags, service names in URLs and the ports services listen on.
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yaml"
#: HAProxy's configuration: the `ml-engine` service, the load balancer in front of the ml/v1 replicas.
LB_CONFIG = ROOT / "tools" / "haproxy" / "ml-engine.cfg"
AIRFLOW_COMPONENTS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer": "triggerer",
}
#: The one-shot service that generates every secret before anything else starts.
INIT = "secrets-init"
#: The ml/v1 service: its replicas, the load balancer in front of them (the address Airflow calls), and the
#: one-shot service creating the replicas' role and database on the stack's Postgres.
REPLICAS = ("ml-engine-1", "ml-engine-2")
LB = "ml-engine"
DB_INIT = "ml-engine-db-init"
#: The official layout's services plus the project's (GCS emulator, the ml/v1 service) and the secrets' generator.
EXPECTED_SERVICES = {"postgres", "redis", "airflow-init", "airflow-cli", "gcs-emulator", LB, *REPLICAS, DB_INIT,
                     INIT, *AIRFLOW_COMPONENTS}
#: One-shot services: they run to completion, so they have no healthcheck.
ONE_SHOT = {"airflow-init", "airflow-cli", INIT, DB_INIT}
#: Services running Airflow (the x-airflow-common ones).
AIRFLOW_SERVICES = {*AIRFLOW_COMPONENTS, "airflow-init", "airflow-cli"}
#: Each volume holding secrets, and the services that may mount it besides secrets-init (which writes them all):
#: the ml/v1 replicas get their own token and database URL and nothing of Airflow's, Postgres and Redis their own
#: password (ml-engine-db-init uses Postgres's to create the replicas' role); the load balancer holds none.
SECRET_VOLUMES = {
    "airflow-secrets": AIRFLOW_SERVICES,
    "airflow-passwords": AIRFLOW_SERVICES,
    "ml-engine-token": AIRFLOW_SERVICES | set(REPLICAS),
    "ml-engine-database": {*REPLICAS, DB_INIT},
    "postgres-secrets": {"postgres", DB_INIT},
    "redis-secrets": {"redis"},
}
#: The users the postgres and redis images run their servers as (uid 999 in both Debian-based images).
IMAGE_SERVER_USER = "999:999"
#: Ports each service listens on inside the compose network.
LISTENS = {"postgres": 5432, "redis": 6379, "airflow-apiserver": 8080, "airflow-scheduler": 8974,
           "gcs-emulator": 9023, LB: 8780, **dict.fromkeys(REPLICAS, 8780)}
#: Environment variables read by code outside the project (Google libraries, Airflow's image, Celery, Postgres).
EXTERNAL_ENV = {"PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT",
                "DUMB_INIT_SETSID", "_AIRFLOW_DB_MIGRATE", "CONNECTION_CHECK_MAX_COUNT",
                "POSTGRES_USER", "POSTGRES_PASSWORD_FILE", "POSTGRES_DB",
                # read by secrets-init's script: values that win over the generated ones
                "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY"}
#: Secrets secrets-init generates into the airflow-secrets volume; components read them with `_CMD` options.
SECRETS_DIR = "/opt/airflow/secrets"
#: Where the Airflow containers and the ml/v1 replicas find the service's token (the ml-engine-token volume).
TOKEN_FILE = "/opt/airflow/ml-engine-token/ml_engine_token"
#: The ml/v1 replicas' PostgreSQL role and database (ml-engine-db-init creates them, secrets-init's URL names them).
ML_ENGINE_DB = "ml_engine"
#: [celery] options used (the Celery provider, in the official image, defines them; not installed here).
CELERY_OPTIONS = {"broker_url", "result_backend"}
#: Both are `sensitive: true` in the Celery provider's provider.yaml, so their `_CMD` twins are read.
CELERY_SENSITIVE = {("celery", option) for option in CELERY_OPTIONS}
#: Environment variables that hold (or name) a credential.
CREDENTIAL_KEY = re.compile(
    r"PASSWORD|SECRET|TOKEN|_KEY(_CMD)?$|SQL_ALCHEMY_CONN|BROKER_URL|RESULT_BACKEND|DATABASE_URL")
INTERPOLATION = re.compile(r"(?<!\$)\$\{(\w+)(:?-)([^}]*)\}")  # `$${X}` is an escaped `${X}`


def _defaults(value):
    """Compose's interpolation with an empty environment: `${X:-d}` and `${X-d}` become `d`; `$$` stays `$`."""
    if isinstance(value, str):
        return INTERPOLATION.sub(lambda m: m.group(3), value)
    if isinstance(value, list):
        return [_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: _defaults(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    raw = COMPOSE.read_text()
    for name in INTERPOLATION.findall(raw):
        assert name[1] in (":-", "-"), f"${{{name[0]}}} needs a default: the stack must start with no .env"
    return _defaults(yaml.safe_load(raw))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _argv(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """A service's mounts: target -> (source, read-only)."""
    out = {}
    for volume in service.get("volumes") or []:
        source, target, *options = volume.split(":")
        out[target] = (source, bool(options) and "ro" in options[0].split(","))
    return out


def _in_volume(service: dict, path: str) -> tuple[str, str]:
    """The named volume a path in the service's container lies in, and the file's name inside it."""
    for target, (source, _) in sorted(_mounts(service).items(), key=lambda item: -len(item[0])):
        if path.startswith(target.rstrip("/") + "/"):
            return source, path[len(target.rstrip("/")) + 1:]
    raise AssertionError(f"{path} lies in no volume the service mounts")


def _networks(service: dict) -> set[str]:
    """The networks a service is on (Compose's `default` when it names none; none with a network_mode)."""
    if "network_mode" in service:
        return set()
    return set(service.get("networks") or ["default"])


def _cat(value: str) -> str:
    """The file a `_CMD` option reads."""
    match = re.fullmatch(r"cat (/\S+)", value)
    assert match, f"{value!r} is not `cat FILE`"
    return match.group(1)


def test_services_are_the_official_layout_plus_the_project_services(services):
    assert set(services) == EXPECTED_SERVICES
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule.get("condition") == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{name} waits for {dependency}'s health"


def test_airflow_components_use_celery_and_real_commands(services):
    from airflow.cli import cli_config

    commands = {command.name for command in cli_config.core_commands} | {"celery"}  # celery: the image's provider
    for name, subcommand in AIRFLOW_COMPONENTS.items():
        service = services[name]
        assert _argv(service["command"]) == subcommand.split(), name
        assert subcommand.split()[0] in commands
        env = _env(service)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        # the URLs (with the generated passwords) are files secrets-init writes: see the tests further down
        assert env["AIRFLOW__CELERY__BROKER_URL_CMD"] == f"cat {SECRETS_DIR}/celery_broker_url"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"] == f"cat {SECRETS_DIR}/sql_alchemy_conn"
        assert service["build"] == "." and service["image"] == services[REPLICAS[0]]["image"]
    for name in ("airflow-dag-processor", "airflow-triggerer"):
        job_check = " ".join(_argv(services[name]["healthcheck"]["test"]))
        assert "airflow jobs check --job-type" in job_check and "jobs" in commands
    assert _argv(services["airflow-init"]["command"])[0] == "-c"
    assert "airflow version" in services["airflow-init"]["command"][1]


def test_env_vars_refer_to_real_settings(services):
    from airflow.configuration import conf, retrieve_configuration_description

    options = retrieve_configuration_description()
    # ML_* settings are read by include/config.py, the plugin's hook (ML_ENGINE_TOKEN_FILE) or the ml/v1
    # service's command line (ML_ENGINE_BATCH_ENGINE, ML_ENGINE_BEAM_OPTIONS, ML_ENGINE_INTRA_OP_THREADS,
    # ML_ENGINE_DATABASE_URL_FILE, ML_ENGINE_ARTIFACT_URI)
    config_source = "".join((ROOT / path).read_text() for path in (
        "include/config.py", "plugins/ml_engine/hooks.py", "include/local_platform/__main__.py"))
    for name, service in services.items():
        for key, value in _env(service).items():
            if key.startswith("AIRFLOW__"):
                section, option = key[len("AIRFLOW__"):].lower().split("__", 1)
                if option.endswith("_cmd"):  # Airflow runs the command only for its sensitive options
                    option = option.removesuffix("_cmd")
                    sensitive = conf.sensitive_config_values | CELERY_SENSITIVE
                    assert (section, option) in sensitive, f"{name}: {key} is not read"
                known = CELERY_OPTIONS if section == "celery" else set(options.get(section, {}).get("options", {}))
                assert option in known, f"{name}: {key} is no Airflow option"
            elif key.startswith("ML_"):
                assert f'"{key}"' in config_source, f"{name}: {key} is read by neither config nor hook"
            elif key.startswith("AIRFLOW_CONN_"):
                _check_connection(value, services)
            else:
                assert key in EXTERNAL_ENV, f"{name}: {key} is read by nothing known"
            for url in re.findall(r"[a-z+]+://[^\s\"',]+", value):
                _check_url(url, services, where=f"{name}.{key}", client=name)


def _check_url(url: str, services: dict, *, where: str, client: str | None = None) -> None:
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname
    if host in (None, "localhost", "127.0.0.1") or "." in host or parsed.scheme == "gs":  # gs://BUCKET: no host
        return
    assert host in services, f"{where}: {url} names no service"
    default_ports = {"redis": 6379, "postgresql": 5432}  # by dialect: `postgresql+psycopg2`, `db+postgresql`
    port = parsed.port or next((default_ports[p] for p in parsed.scheme.split("+") if p in default_ports), 80)
    assert LISTENS.get(host) == port, f"{where}: {url} is not the port {host} listens on"
    if client is not None:  # and the caller can reach it
        shared = _networks(services[client]) & _networks(services[host])
        assert shared, f"{where}: {client} shares no network with {host}"


def _check_connection(value: str, services: dict) -> None:
    """The Google connection: same extras as include.config.airflow_connection_json(), endpoint on ml-engine."""
    from airflow.models.connection import Connection

    from include import config

    conn = Connection(conn_id="google_cloud_default", uri=value)
    assert conn.conn_type == "google_cloud_platform"
    expected = json.loads(config.airflow_connection_json())
    # The token is no extra here: compose's containers read it from the secrets volume (ML_ENGINE_TOKEN_FILE).
    assert set(conn.extra_dejson) == set(expected["extra"]) - {"ml_engine_token"}
    endpoint = conn.extra_dejson["ml_engine_endpoint"]
    assert endpoint == "http://ml-engine:8780/"
    _check_url(endpoint, services, where="connection")


def test_mounts_exist_in_the_project_and_named_volumes_are_declared(compose, services):
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")) and (ROOT / source).is_file():  # a config file (the load balancer's)
                assert _mounts(service)[target] == (source, True), f"{name} may write {source}"
            elif source.startswith((".", "/")):
                assert (ROOT / source).resolve().is_dir(), f"{name} mounts missing {source}"
                assert target.startswith("/opt/airflow/"), f"{name}: {target}"
                assert (ROOT / source).name == Path(target).name
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
    common = _env(services["airflow-scheduler"])
    mounted = {v.split(":")[1] for v in services["airflow-scheduler"]["volumes"]}
    assert common["AIRFLOW__CORE__DAGS_FOLDER"] in mounted
    assert common["AIRFLOW__CORE__PLUGINS_FOLDER"] in mounted
    assert set(common["PYTHONPATH"].split(":")) <= mounted | {"/opt/airflow"}
    assert str(Path(common["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).parent) in mounted


def test_ports_match_what_services_listen_on(services):
    for name, service in services.items():
        for mapping in service.get("ports") or []:
            *host, container_port = str(mapping).split(":")
            assert int(container_port) == LISTENS[name], f"{name} publishes {mapping}"
            assert host[-1].isdigit() and (len(host) == 1 or host[0] == "127.0.0.1"), mapping
        for text in (" ".join(_argv(service.get("command"))), " ".join(_argv(service["healthcheck"]["test"]))
                     if service.get("healthcheck") else ""):
            for port in re.findall(r"(?:--port |localhost:|/dev/tcp/(?:localhost|127\.0\.0\.1)/)(\d+)", text):
                assert int(port) == LISTENS[name], f"{name}: {text}"


def test_project_services_run_real_entry_points(services):
    gcs = services["gcs-emulator"]
    assert gcs["entrypoint"] == ["gcp-storage-emulator"]
    assert re.search(r"^gcp-storage-emulator==", (ROOT / "requirements.txt").read_text(), re.M)
    assert "--in-memory" not in gcs["command"] and gcs["working_dir"] == "/data"
    endpoint = urllib.parse.urlsplit(_env(services["airflow-worker"])["ML_ENGINE_ENDPOINT"])
    assert endpoint.hostname == LB  # Airflow calls the load balancer, which passes the Host header on
    for name in REPLICAS:
        ml = services[name]
        entry = _argv(ml["entrypoint"])
        assert entry[:2] == ["python", "-m"]
        module = ROOT / Path(*entry[2].split(".")) / "__main__.py"
        assert module.exists(), module
        source = module.read_text()
        command = _argv(ml["command"])
        for flag in (a for a in command if a.startswith("--")):
            assert f'"{flag}"' in source, f"{entry[2]} has no {flag}"
        assert _env(ml)["STORAGE_EMULATOR_HOST"] == "http://gcs-emulator:9023"
        assert endpoint.hostname in command[command.index("--allowed-hosts") + 1].split(","), name


def test_dockerfile_builds_from_requirements_and_copies_real_paths():
    dockerfile = (ROOT / "Dockerfile").read_text()
    requirements = (ROOT / "requirements.txt").read_text()
    version = re.search(r"^apache-airflow==([\d.]+)$", requirements, re.M).group(1)
    assert f"ARG AIRFLOW_VERSION={version}" in dockerfile
    assert "FROM apache/airflow:${AIRFLOW_VERSION}" in dockerfile
    assert "-r /opt/airflow/requirements.txt -c /opt/airflow/constraints.txt" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY"):
            sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("requirements.txt", "constraints.txt", "dags", "plugins", "include"):
        assert needed not in ignored


def test_safe_by_default_loopback_ports(services):
    """Every published port binds 127.0.0.1 unless the user opts in (AIRFLOW_BIND for the UI)."""
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    assert raw["airflow-apiserver"]["ports"] == ["${AIRFLOW_BIND:-127.0.0.1}:${AIRFLOW_PORT:-8080}:8080"]
    for name, service in services.items():
        for mapping in service.get("ports") or []:
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"


def test_no_static_secret_in_the_file(services):
    """Fernet key, JWT secret and API secret come from files secrets-init generates, never from the file itself."""
    sensitive = ("FERNET_KEY", "JWT_SECRET", "SECRET_KEY", "SQL_ALCHEMY_CONN", "BROKER_URL", "RESULT_BACKEND")
    for name, service in services.items():
        env = _env(service)
        for key, value in env.items():
            if key.startswith("AIRFLOW__") and key.endswith(sensitive):
                pytest.fail(f"{name}: {key} is set in the file ({value!r}); use its _CMD twin")
            if key.startswith("AIRFLOW__") and key.removesuffix("_CMD").endswith(sensitive):
                assert re.fullmatch(rf"cat {SECRETS_DIR}/\w+", value), f"{name}: {key}={value}"
                assert f"airflow-secrets:{SECRETS_DIR}:ro" in service["volumes"], name
            if key.startswith("AIRFLOW_") and not key.startswith("AIRFLOW__") and key in EXTERNAL_ENV:
                assert value == "", f"{name}: {key} has a default value in the file"
        assert "admin:admin" not in json.dumps(env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS", ""))
    init_env = _env(services[INIT])
    assert init_env["AIRFLOW_ADMIN_PASSWORD"] == ""  # generated unless the user gives one


def _run_init(services: dict, root: Path, **given: str) -> tuple[str, dict[str, dict[str, str]]]:
    """secrets-init's script, run by bash with each volume it mounts moved to `root/<volume>` (no Docker here).

    Returns its output and, per volume, the files in it (name -> contents).
    """
    import os
    import subprocess
    import sys

    mounts = _mounts(services[INIT])
    script = services[INIT]["command"][1].replace("$$", "$")
    for target in sorted(mounts, key=len, reverse=True):  # /x/airflow-passwords before /x/airflow
        script = script.replace(target, str(root / mounts[target][0]))
    script = re.sub(r"^\s*chown .*$", "true", script, flags=re.M)  # test_init_gives_each_volume_to_its_reader
    for source, _ in mounts.values():
        (root / source).mkdir(parents=True, exist_ok=True)  # Docker creates the mount points
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **given}
    if "ML_ENGINE_TOKEN" not in given:  # the test session's own token is not a value given to init
        env.pop("ML_ENGINE_TOKEN", None)
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True)
    volumes = {source: {p.name: p.read_text() for p in (root / source).iterdir()} for source, _ in mounts.values()}
    return done.stdout, volumes


@pytest.fixture(scope="module")
def generated(services, tmp_path_factory) -> dict[str, dict[str, str]]:
    """What secrets-init writes on a first start, per volume."""
    return _run_init(services, tmp_path_factory.mktemp("volumes"))[1]


@pytest.mark.parametrize("replica", REPLICAS)
def test_ml_engine_requires_the_generated_token(services, generated, replica):
    ml_engine = services[replica]
    command = ml_engine["command"]
    token_file = command[command.index("--token-file") + 1]
    assert token_file == TOKEN_FILE
    assert _in_volume(ml_engine, token_file) == ("ml-engine-token", "ml_engine_token")
    assert _mounts(ml_engine)[str(Path(token_file).parent)] == ("ml-engine-token", True)  # read-only
    assert ml_engine["depends_on"][INIT]["condition"] == "service_completed_successfully"
    assert replica not in services[INIT].get("depends_on", {})  # no cycle: init writes the token first
    for name in AIRFLOW_SERVICES:  # the hook reads the same file
        assert _env(services[name])["ML_ENGINE_TOKEN_FILE"] == token_file, name
        assert _in_volume(services[name], token_file) == ("ml-engine-token", "ml_engine_token"), name
    assert set(generated["ml-engine-token"]) == {"ml_engine_token"}  # the token and nothing else
    assert len(generated["ml-engine-token"]["ml_engine_token"]) >= 40


def test_init_generates_secrets_once_and_prints_the_admin_password(services, tmp_path):
    from cryptography.fernet import Fernet

    out, volumes = _run_init(services, tmp_path)
    secrets = volumes["airflow-secrets"]
    passwords = json.loads(volumes["airflow-passwords"]["simple_auth_manager_passwords.json"])
    assert set(secrets) == {"fernet_key", "jwt_secret", "api_secret_key", "sql_alchemy_conn",
                            "celery_result_backend", "celery_broker_url"}
    assert set(volumes["ml-engine-database"]) == {"password", "database_url"}
    Fernet(secrets["fernet_key"])  # a valid key, no trailing newline
    assert all(len(value) >= 40 and "\n" not in value for value in secrets.values())
    assert passwords["admin"] != "admin" and len(passwords["admin"]) >= 40
    assert f"generated password {passwords['admin']}" in out
    for volume in volumes:
        for path in (tmp_path / volume).iterdir():
            assert oct(path.stat().st_mode)[-3:] == "600", path
    again = _run_init(services, tmp_path)  # a restart keeps them (a new Fernet key would lose connections)
    assert again[1] == volumes and "password" not in again[0]
    given = _run_init(services, tmp_path, AIRFLOW_ADMIN_PASSWORD='my "pw"', AIRFLOW_JWT_SECRET="jwt-from-env")
    assert json.loads(given[1]["airflow-passwords"]["simple_auth_manager_passwords.json"]) == {"admin": 'my "pw"'}
    assert given[1]["airflow-secrets"]["jwt_secret"] == "jwt-from-env"
    assert given[1]["airflow-secrets"]["fernet_key"] == secrets["fernet_key"] and "password" not in given[0]
    assert given[1]["postgres-secrets"] == volumes["postgres-secrets"]  # the database keeps its password
    assert given[1]["ml-engine-database"] == volumes["ml-engine-database"]  # and so does the ml_engine role


# --- security review: least privilege for secrets, networks and credentials -------------------------------


@pytest.mark.parametrize("volume", sorted(SECRET_VOLUMES))
def test_secret_volumes_are_mounted_only_by_their_readers(services, compose, volume):
    """Each secrets volume is mounted by secrets-init (which writes it) and its readers only, read-only
    where the reader never writes (SimpleAuthManager may add users to the passwords file)."""
    assert volume in compose["volumes"]
    mounted = {name: ro for name, service in services.items()
               for source, ro in _mounts(service).values() if source == volume}
    assert set(mounted) == SECRET_VOLUMES[volume] | {INIT}, volume
    assert mounted[INIT] is False
    if volume != "airflow-passwords":
        assert all(ro for name, ro in mounted.items() if name != INIT), mounted


#: What the ml/v1 service must not be handed: Airflow's secrets, the Airflow database's (its superuser's) and the
#: broker's credentials. The replicas' own database URL file (ml-engine-database) is theirs, not Airflow's.
ML_ENGINE_FORBIDDEN = ("airflow-secrets", "airflow-passwords", "postgres-secrets", "redis-secrets",
                       "/opt/airflow/secrets", "/opt/airflow/passwords", "FERNET", "JWT", "SECRET_KEY",
                       "SQL_ALCHEMY", "BROKER", "RESULT_BACKEND", "POSTGRES", "REDIS", "PASSWORD", "airflow:airflow")


@pytest.mark.parametrize("name", [LB, *REPLICAS])
@pytest.mark.parametrize("needle", ML_ENGINE_FORBIDDEN)
def test_ml_engine_gets_no_airflow_secret_and_no_database_credential(services, needle, name):
    ml_engine = services[name]
    for part in ("environment", "volumes", "secrets", "env_file", "command", "entrypoint"):
        assert needle.lower() not in json.dumps(ml_engine.get(part) or "").lower(), f"{name} {part}: {needle}"


REACHABLE = [
    *[(replica, server, reachable) for replica in REPLICAS
      for server, reachable in (("postgres", True), ("redis", False), ("gcs-emulator", True))],
    *[(LB, server, reachable) for server, reachable in
      (("postgres", False), ("redis", False), *((replica, True) for replica in REPLICAS))],
    (DB_INIT, "postgres", True),
    (DB_INIT, "redis", False),
    (DB_INIT, "gcs-emulator", False),
    ("gcs-emulator", "postgres", False),
    ("gcs-emulator", "redis", False),
    ("airflow-init", "postgres", True),
    *[(name, server, True) for name in [*sorted(AIRFLOW_COMPONENTS), "airflow-cli"]
      for server in ("postgres", "redis", LB, "gcs-emulator")],
]


@pytest.mark.parametrize(("client", "server", "reachable"), REACHABLE)
def test_networks_give_each_service_only_the_routes_it_needs(services, client, server, reachable):
    shared = _networks(services[client]) & _networks(services[server])
    assert bool(shared) is reachable, f"{client} -> {server}: shared networks {sorted(shared)}"


def test_networks_are_declared_and_the_backend_is_internal(compose, services):
    used = set().union(*(_networks(service) for service in services.values()))
    assert used <= set(compose.get("networks") or {}), used
    for name in ("postgres", "redis"):  # no published port, no way out: only their clients reach them
        for network in _networks(services[name]):
            assert compose["networks"][network].get("internal") is True, (name, network)
    assert services[INIT]["network_mode"] == "none"  # generates files, talks to no one
    on = {network: {name for name, service in services.items() if network in _networks(service)}
          for network in compose["networks"]}
    assert on["ml-database"] == {"postgres", DB_INIT, *REPLICAS}  # the replicas' own database, nothing else
    assert _networks(services["redis"]) == {"backend"} and _networks(services[DB_INIT]) == {"ml-database"}


def test_every_reader_of_a_secret_starts_after_secrets_init(services):
    """Through depends_on (no cycle): each service mounting a secrets volume waits for secrets-init to finish."""

    def after(name: str, seen: tuple[str, ...] = ()) -> set[str]:
        assert name not in seen, f"depends_on cycle: {' -> '.join((*seen, name))}"
        direct = services[name].get("depends_on") or {}
        return set(direct).union(*(after(dependency, (*seen, name)) for dependency in direct))

    for name, service in services.items():
        readers = {source for source, _ in _mounts(service).values() if source in SECRET_VOLUMES}
        if name != INIT and readers:
            assert INIT in after(name), f"{name} reads {sorted(readers)} but may start before {INIT}"
    assert not services[INIT].get("depends_on")
    for name in ("postgres", "redis", DB_INIT, *REPLICAS):
        assert services[name]["depends_on"][INIT]["condition"] == "service_completed_successfully", name


def _uncommented(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


#: Patterns of a credential written into the file itself.
LITERAL_CREDENTIALS = {
    "password in a URL": r"\w://[^\s/:@'\"]*:[^\s/@'\"$%]+@",
    "Redis password": r"requirepass\s+(?!%s)[^\s'\"]",
    "Postgres password": r"POSTGRES_PASSWORD\s*:",
    "static admin password": r"\"admin\":\s*\"admin\"|admin:admin@",
}


@pytest.mark.parametrize("pattern", LITERAL_CREDENTIALS.values(), ids=list(LITERAL_CREDENTIALS))
def test_no_literal_credential_in_the_file(pattern):
    found = re.findall(pattern, _uncommented(COMPOSE.read_text()))
    assert not found, found


def test_credential_variables_hold_no_value(services):
    """A credential variable is empty (given by the user), or names a file (`*_FILE`, `*_CMD: cat FILE`)."""
    for name, service in services.items():
        for key, value in _env(service).items():
            if not CREDENTIAL_KEY.search(key):
                continue
            if key.endswith("_FILE"):
                _in_volume(service, value)
            elif key.endswith("_CMD"):
                _in_volume(service, _cat(value))
            else:
                assert value == "", f"{name}: {key}={value!r} is a credential written in the file"


def test_init_gives_each_volume_to_its_reader(services):
    """secrets-init (root) hands each volume to the user its reader runs as: Airflow's or the image's server."""
    mounts = _mounts(services[INIT])
    owners = {}
    for line in services[INIT]["command"][1].splitlines():
        if line.strip().startswith("chown "):
            owner, *paths = _argv(line)[2:] if "-R" in line else _argv(line)[1:]
            for path in paths:
                owners[mounts[path][0]] = owner
    assert owners == {"airflow-secrets": "50000:0", "airflow-passwords": "50000:0", "ml-engine-token": "50000:0",
                      "postgres-secrets": IMAGE_SERVER_USER, "redis-secrets": IMAGE_SERVER_USER,
                      "ml-engine-database": IMAGE_SERVER_USER}  # ml-engine-db-init's; the replicas run as root
    assert services[INIT]["user"] == "0:0" and services[DB_INIT]["user"] == IMAGE_SERVER_USER
    for name in AIRFLOW_COMPONENTS:
        assert services[name]["user"] == "50000:0", name


def test_ml_engine_runs_training_jobs_as_the_images_unprivileged_user(services):
    """The service runs as root in its container only to hand each training job to `ml-trainer`, a user the
    image creates, which can read neither its token nor its state."""
    for name in REPLICAS:
        assert services[name]["user"] == "0:0", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "useradd --system" in dockerfile and "ml-trainer" in dockerfile
    assert dockerfile.rstrip().splitlines()[-1].startswith("COPY") and "USER airflow" in dockerfile


def test_postgres_password_is_generated(services, generated):
    postgres = services["postgres"]
    env = _env(postgres)
    assert "POSTGRES_PASSWORD" not in env
    volume, name = _in_volume(postgres, env["POSTGRES_PASSWORD_FILE"])
    password = generated[volume][name]
    assert re.fullmatch(r"[\w-]{40,}", password), password
    assert postgres["depends_on"][INIT]["condition"] == "service_completed_successfully"
    assert _argv(postgres["healthcheck"]["test"]) == ["CMD", "pg_isready", "-U", env["POSTGRES_USER"]]


def test_redis_requires_the_generated_password(services, generated):
    redis = services["redis"]
    command = _argv(redis["command"])
    assert command[0] == "redis-server" and len(command) == 2  # a config file, no password on the command line
    volume, name = _in_volume(redis, command[1])
    match = re.fullmatch(r"requirepass ([\w-]{40,})\n", generated[volume][name])
    assert match, generated[volume][name]
    assert generated[volume]["password"] == match.group(1)
    assert redis["depends_on"][INIT]["condition"] == "service_completed_successfully"


#: The credentials the Airflow containers read, and the password (volume, file) each must carry.
AIRFLOW_CREDENTIALS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": ("postgresql+psycopg2", ("postgres-secrets", "password")),
    "AIRFLOW__CELERY__RESULT_BACKEND_CMD": ("db+postgresql", ("postgres-secrets", "password")),
    "AIRFLOW__CELERY__BROKER_URL_CMD": ("redis", ("redis-secrets", "password")),
}


@pytest.mark.parametrize("name", sorted(AIRFLOW_SERVICES))
@pytest.mark.parametrize("key", sorted(AIRFLOW_CREDENTIALS))
def test_airflow_reads_database_and_broker_credentials_from_generated_files(services, generated, name, key):
    service = services[name]
    volume, file = _in_volume(service, _cat(_env(service)[key]))
    assert volume == "airflow-secrets"
    url = generated[volume][file]
    scheme, (password_volume, password_file) = AIRFLOW_CREDENTIALS[key]
    parsed = urllib.parse.urlsplit(url)
    assert parsed.scheme == scheme and parsed.password == generated[password_volume][password_file], url
    _check_url(url, services, where=f"{name}.{key}", client=name)


def test_generated_credentials_differ(generated):
    values = [generated["postgres-secrets"]["password"], generated["redis-secrets"]["password"],
              generated["ml-engine-database"]["password"],
              generated["ml-engine-token"]["ml_engine_token"], generated["airflow-secrets"]["jwt_secret"],
              generated["airflow-secrets"]["api_secret_key"]]
    assert len(set(values)) == len(values)


@pytest.mark.parametrize(("stored", "healthy"), [("right", True), ("wrong", False), ("", False)])
def test_redis_healthcheck_authenticates_with_the_generated_password(services, tmp_path, stored, healthy):
    """The healthcheck, run by sh against a stand-in redis-cli that answers PONG to the right password only
    (and exits 0 on NOAUTH, so the check must read the answer, not the exit code)."""
    import os
    import subprocess

    volumes = tmp_path / "volumes"
    _, generated = _run_init(services, volumes)
    redis = services["redis"]
    password = generated["redis-secrets"]["password"]
    if stored != "right":
        (volumes / "redis-secrets" / "password").write_text(stored)
    fake = tmp_path / "bin" / "redis-cli"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nif [ "$1" = ping ] && [ "$REDISCLI_AUTH" = "{password}" ]; then echo PONG;'
                    ' else echo "NOAUTH Authentication required."; fi\n')
    fake.chmod(0o755)
    kind, check = redis["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    check = check.replace("$$", "$")
    for target, (source, _) in _mounts(redis).items():
        check = check.replace(target, str(volumes / source))
    done = subprocess.run(["sh", "-c", check], env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=30)
    assert (done.returncode == 0) is healthy, done


# --- the ml/v1 service: replicas on their own database behind a load balancer --------------------------------


def _lb_sections() -> dict[str, list[str]]:
    """HAProxy's configuration without comments: `global`, `defaults`, `frontend NAME`... -> their lines."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in LB_CONFIG.read_text().splitlines():
        line = line.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not line[0].isspace():
            current = " ".join(line.split()[:2])
            sections[current] = []
        else:
            sections[current].append(" ".join(line.split()))
    return sections


def _lb_section(sections: dict[str, list[str]], kind: str) -> tuple[str, list[str]]:
    """The one section of a kind (`frontend`, `backend`): its name and lines."""
    (name,) = [name for name in sections if name.split()[0] == kind]
    return name.split()[1], sections[name]


def _seconds(value: str) -> float:
    """An HAProxy time (`650s`, `2m`, `500ms`, milliseconds when bare) in seconds."""
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 0.001}[unit]


def test_load_balancer_sends_calls_to_the_replicas_and_retries_only_unsent_ones(services):
    """tools/haproxy/ml-engine.cfg: one frontend on the port `ml-engine` publishes, one backend whose servers are
    exactly the replica services on the port they listen on, health-checked on /healthz; only a connection that
    failed before the request went out is retried (a POST that reached a replica may have started a job)."""
    lb = services[LB]
    assert lb["image"].startswith("haproxy:")
    assert _mounts(lb) == {"/usr/local/etc/haproxy/haproxy.cfg": (f"./{LB_CONFIG.relative_to(ROOT)}", True)}
    sections = _lb_sections()
    frontend_name, frontend = _lb_section(sections, "frontend")
    backend_name, backend = _lb_section(sections, "backend")
    defaults = sections["defaults"]
    assert f"bind :{LISTENS[LB]}" in frontend and f"default_backend {backend_name}" in frontend, frontend_name
    servers = {}
    for line in backend:
        if line.startswith("server "):
            _, name, address, *_ = line.split()
            host, port = address.rsplit(":", 1)
            servers[name] = (host, int(port))
    assert servers == {name: (name, LISTENS[name]) for name in REPLICAS}
    assert set(servers) == {name for name in services if name.startswith(f"{LB}-") and name != DB_INIT}
    assert "balance leastconn" in backend
    # /healthz: the service's route that answers without a token
    assert "option httpchk GET /healthz" in backend and "http-check expect status 200" in backend
    assert '@app.get("/healthz")' in (ROOT / "include/local_platform/api/local_routes.py").read_text()
    default_server = next(line for line in backend if line.startswith("default-server ")).split()[1:]
    for option in ("check", "inter", "fall", "rise", "resolvers", "init-addr"):
        assert option in default_server, option
    resolvers = default_server[default_server.index("resolvers") + 1]
    assert "nameserver dns 127.0.0.11:53" in sections[f"resolvers {resolvers}"]  # Docker's embedded DNS
    assert "mode http" in defaults and "option httplog" in defaults and "option forwardfor" in defaults
    assert "log stdout format raw local0" in sections["global"]
    # retried: only connections that failed before anything was sent, on another replica
    assert [line for lines in sections.values() for line in lines if line.startswith("retry-on")] == \
        ["retry-on conn-failure"]
    assert "retries 3" in defaults and any(line.split()[:2] == ["option", "redispatch"] for line in defaults)
    timeouts = {line.split()[1]: _seconds(line.split()[2]) for line in defaults if line.startswith("timeout ")}
    # idle connections outlive the service's own keep-alive; a request's headers get the service's deadline
    keep_alive = int(re.search(r"timeout_keep_alive=(\d+)",
                               (ROOT / "include/local_platform/__main__.py").read_text()).group(1))
    header_deadline = float(re.search(r'"ML_ENGINE_HEADER_TIMEOUT_S", "([\d.]+)"',
                                      (ROOT / "include/local_platform/api/http_protocol.py").read_text()).group(1))
    assert timeouts["connect"] == 5
    assert timeouts["client"] > keep_alive and timeouts["server"] > keep_alive, timeouts
    assert timeouts["http-keep-alive"] > keep_alive and timeouts["http-request"] <= header_deadline, timeouts


def test_load_balancer_config_is_valid_haproxy(tmp_path):
    """`haproxy -c` on the config, the replicas' names replaced by an address (no Docker DNS here)."""
    import shutil
    import subprocess

    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed here (the stack runs the haproxy:2.9 image); the config's settings "
                    "are checked by reading it (test_load_balancer_sends_calls_to_the_replicas...)")
    config = LB_CONFIG.read_text()
    for name in REPLICAS:
        config = config.replace(f" {name}:{LISTENS[name]}", f" 127.0.0.1:{LISTENS[name]}")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    done = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_only_the_load_balancer_publishes_the_ml_engine_port(services):
    """Callers reach the replicas through `ml-engine` only: it alone publishes the port, starts once both replicas
    are healthy, and is on `ml-services` only (no route to Postgres or Redis, nothing to read)."""
    lb = services[LB]
    assert lb["ports"] == [f"127.0.0.1:{LISTENS[LB]}:{LISTENS[LB]}"]
    for name in REPLICAS:
        assert not services[name].get("ports"), name
    assert lb["depends_on"] == {name: {"condition": "service_healthy"} for name in REPLICAS}
    assert _networks(lb) == {"ml-services"} and lb["restart"] == "always"
    for name in AIRFLOW_COMPONENTS:  # Airflow waits for the load balancer, not for one replica
        depends_on = services[name]["depends_on"]
        assert depends_on[LB]["condition"] == "service_healthy" and not set(REPLICAS) & set(depends_on), name


def _lb_monitor_uri() -> str:
    _, frontend = _lb_section(_lb_sections(), "frontend")
    return next(line.split()[1] for line in frontend if line.startswith("monitor-uri "))


@pytest.mark.parametrize(("answer", "healthy"), [(200, True), (503, False), (None, False)])
def test_load_balancer_healthcheck_asks_haproxy_without_curl(services, answer, healthy):
    """The haproxy image has bash but no curl: the check sends GET <monitor-uri> through /dev/tcp and wants a 200
    (HAProxy's monitor answers 503 when no replica is up). Run by bash against a stand-in on a free port."""
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tools.devstack import free_port

    monitor = _lb_monitor_uri()
    _, frontend = _lb_section(_lb_sections(), "frontend")
    assert any(line.startswith("monitor fail if") and "nbsrv(" in line for line in frontend), frontend
    kind, *argv = services[LB]["healthcheck"]["test"]
    assert kind == "CMD" and argv[:2] == ["bash", "-c"] and "curl" not in argv[2]
    assert monitor in argv[2]
    seen = []

    class Monitor(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(answer if self.path == monitor else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = None
    port = free_port()
    if answer is not None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Monitor)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check = argv[2].replace("$$", "$").replace(f"/{LISTENS[LB]}", f"/{port}")
        done = subprocess.run(["bash", "-c", check], capture_output=True, text=True, timeout=30)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    assert (done.returncode == 0) is healthy, done
    assert seen == ([monitor] if answer is not None else [])


@pytest.mark.parametrize("replica", REPLICAS)
def test_each_replica_has_its_own_state_and_reads_its_database_url_from_a_file(services, compose, tmp_path,
                                                                              replica):
    """Each replica's state dir is a volume of its own; they share the ml_engine database (the URL in a file
    secrets-init writes: password included, never in the environment or on a command line) and the artifact
    store, and start once ml-engine-db-init has created the role and database."""
    from include.local_platform.api.security import read_token

    ml = services[replica]
    command = _argv(ml["command"])
    state, _ = _in_volume(ml, f"{command[command.index('--state-dir') + 1]}/state.sqlite")
    assert state == f"{replica}-state" and state in compose["volumes"]
    assert {name for name, service in services.items()
            for source, _ in _mounts(service).values() if source == state} == {replica}
    assert "ml-engine-state" not in compose["volumes"]  # the single service's volume is gone
    env = _env(ml)
    url_file = env["ML_ENGINE_DATABASE_URL_FILE"]
    assert _in_volume(ml, url_file) == ("ml-engine-database", "database_url")
    assert _mounts(ml)[str(Path(url_file).parent)] == ("ml-engine-database", True)
    assert "ML_ENGINE_DATABASE_URL" not in env and not any(a.startswith("--database-url") for a in command)
    assert env["ML_ENGINE_ARTIFACT_URI"].startswith("gs://")
    assert {_env(services[name])["ML_ENGINE_ARTIFACT_URI"] for name in REPLICAS} == {env["ML_ENGINE_ARTIFACT_URI"]}
    assert "ML_ENGINE_REPLICA_ID" not in env  # the container's host name
    assert ml["depends_on"][DB_INIT]["condition"] == "service_completed_successfully"
    assert ml["depends_on"]["gcs-emulator"]["condition"] == "service_healthy"

    _, volumes = _run_init(services, tmp_path)
    url = volumes["ml-engine-database"]["database_url"]
    password = volumes["ml-engine-database"]["password"]
    parsed = urllib.parse.urlsplit(url)
    assert (parsed.scheme, parsed.hostname, parsed.port) == ("postgresql", "postgres", LISTENS["postgres"]), url
    assert parsed.username == ML_ENGINE_DB and parsed.path == f"/{ML_ENGINE_DB}", url
    assert parsed.password == password and re.fullmatch(r"[\w-]{40,}", password)
    assert password != volumes["postgres-secrets"]["password"]  # not Airflow's
    _check_url(url, services, where=f"{replica}.{url_file}", client=replica)
    # the service reads it as it reads its token: one line, owner-only (mode 600)
    assert read_token(tmp_path / "ml-engine-database" / "database_url") == url


def _db_init_script(services: dict, volumes: Path | None = None) -> str:
    """ml-engine-db-init's bash script (Compose's `$$` unescaped), its mounts moved to `volumes/<volume>`."""
    db_init = services[DB_INIT]
    assert _argv(db_init["entrypoint"]) == ["/bin/bash"] and db_init["command"][0] == "-c"
    script = db_init["command"][1].replace("$$", "$")
    if volumes is not None:
        for target, (source, _) in sorted(_mounts(db_init).items(), key=lambda item: -len(item[0])):
            script = script.replace(target, str(volumes / source))
    return script


def test_ml_engine_db_init_keeps_passwords_off_command_lines(services, tmp_path):
    """The script runs psql as the database's superuser with PGPASSWORD from postgres-secrets, and psql reads
    the ml_engine role's password from its file itself: no password in any argv (stand-ins record what they
    get). It also takes PUBLIC's CONNECT on Airflow's database away, so the ml_engine role cannot open it."""
    import os
    import subprocess

    db_init, postgres_env = services[DB_INIT], _env(services["postgres"])
    assert db_init["image"] == services["postgres"]["image"] and db_init["user"] == IMAGE_SERVER_USER
    assert all(ro for _, ro in _mounts(db_init).values()), _mounts(db_init)
    assert db_init["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                     INIT: {"condition": "service_completed_successfully"}}
    script = _db_init_script(services)
    assert "set -euo pipefail" in script
    assert not re.search(r"-v\s*pw\s*=", script) and not re.search(r"PASSWORD\s+'", script, re.I), script
    assert re.search(rf"^REVOKE CONNECT ON DATABASE {postgres_env['POSTGRES_DB']} FROM PUBLIC;$", script, re.M)

    volumes = tmp_path / "volumes"
    _, generated = _run_init(services, volumes)
    record = tmp_path / "record"
    record.mkdir()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "psql").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}/psql.argv\n'
                               f'printf "%s" "$PGPASSWORD" > {record}/psql.pgpassword\ncat > {record}/psql.stdin\n')
    (fake / "pg_isready").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}/pg_isready.argv\n')
    for program in fake.iterdir():
        program.chmod(0o755)
    done = subprocess.run(["bash", "-c", _db_init_script(services, volumes)], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}, timeout=60)
    assert done.returncode == 0, done
    argv = (record / "psql.argv").read_text().splitlines()
    sql = (record / "psql.stdin").read_text()
    passwords = (generated["postgres-secrets"]["password"], generated["ml-engine-database"]["password"])
    for password in passwords:
        for recorded in ("psql.argv", "pg_isready.argv", "psql.stdin"):
            assert password not in (record / recorded).read_text(), recorded
        assert password not in done.stdout + done.stderr
    assert (record / "psql.pgpassword").read_text() == generated["postgres-secrets"]["password"]
    for flag, value in (("-h", "postgres"), ("-U", postgres_env["POSTGRES_USER"]),
                        ("-d", postgres_env["POSTGRES_DB"]), ("-v", "ON_ERROR_STOP=1")):
        assert argv[argv.index(flag) + 1] == value, argv
    assert f"\\set pw `cat {volumes / 'ml-engine-database' / 'password'}`" in sql.splitlines()
    assert "CREATE ROLE ml_engine LOGIN PASSWORD %L', :'pw'" in sql and "ALTER ROLE ml_engine" in sql
    assert f"CREATE DATABASE {ML_ENGINE_DB} OWNER {ML_ENGINE_DB}" in sql


def test_ml_engine_db_init_on_a_real_postgres(services, tmp_path, monkeypatch):
    """The script against a real PostgreSQL (tools/postgres.py's, its superuser named as the image's
    POSTGRES_USER): twice (idempotent), then with a new password file (the role takes it). The ml_engine role
    opens its own database, owns it, is no superuser, and cannot open Airflow's."""
    import os
    import shutil
    import subprocess
    import tempfile

    psycopg = pytest.importorskip("psycopg")
    from tools import postgres as pg

    if pg.binaries() is None or not shutil.which("psql") or not shutil.which("pg_isready"):
        pytest.skip("PostgreSQL's initdb, psql or pg_isready is missing (`make database` installs them)")
    postgres_env = _env(services["postgres"])
    superuser, airflow_db = postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_DB"]
    monkeypatch.setattr(pg, "SUPERUSER", superuser)
    server = pg.PostgresServer(Path(tempfile.mkdtemp(prefix="ml-engine-db-init-"))).start()
    try:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{airflow_db}"')
        volumes = tmp_path / "volumes"
        _, generated = _run_init(services, volumes)
        (volumes / "postgres-secrets" / "password").write_text(server.password_file.read_text())
        script = _db_init_script(services, volumes).replace("-h postgres", f"-h 127.0.0.1 -p {server.port}")

        def run() -> None:
            done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "PGCONNECT_TIMEOUT": "5"})
            assert done.returncode == 0, done

        def connect(password: str, dbname: str = ML_ENGINE_DB):
            return psycopg.connect(host="127.0.0.1", port=server.port, user=ML_ENGINE_DB, password=password,
                                   dbname=dbname, autocommit=True, connect_timeout=5)

        run()
        run()  # a restart: the role and database exist
        password = generated["ml-engine-database"]["password"]
        with connect(password) as conn:
            conn.execute("CREATE TABLE replica_state (id int)")  # the role owns its database
            assert conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                                "WHERE rolname = current_user").fetchone() == (False, False, False)
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            connect(password, airflow_db)
        with psycopg.connect(server.url(airflow_db)):  # Airflow's own role still opens it
            pass
        (volumes / "ml-engine-database" / "password").write_text("a-new-password-for-the-ml-engine-role")
        run()
        connect("a-new-password-for-the-ml-engine-role").close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(password)
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)

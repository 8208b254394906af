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
AIRFLOW_COMPONENTS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer": "triggerer",
}
#: The official layout's services plus the project's two.
EXPECTED_SERVICES = {"postgres", "redis", "airflow-init", "airflow-cli", "gcs-emulator", "ml-engine",
                     *AIRFLOW_COMPONENTS}
#: Ports each service listens on inside the compose network.
LISTENS = {"postgres": 5432, "redis": 6379, "airflow-apiserver": 8080, "airflow-scheduler": 8974,
           "gcs-emulator": 9023, "ml-engine": 8780}
#: Environment variables read by code outside the project (Google libraries, Airflow's image, Celery, Postgres).
EXTERNAL_ENV = {"PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT",
                "DUMB_INIT_SETSID", "_AIRFLOW_DB_MIGRATE", "CONNECTION_CHECK_MAX_COUNT",
                "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB",
                # read by airflow-init's script: values that win over the generated ones
                "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY"}
#: Secrets airflow-init generates into the airflow-secrets volume; components read them with `_CMD` options.
SECRETS_DIR = "/opt/airflow/secrets"
#: [celery] options used (the Celery provider, in the official image, defines them; not installed here).
CELERY_OPTIONS = {"broker_url", "result_backend"}
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


def test_services_are_the_official_layout_plus_the_project_services(services):
    assert set(services) == EXPECTED_SERVICES
    for name, service in services.items():
        if name not in ("airflow-init", "airflow-cli"):
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
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert service["build"] == "." and service["image"] == services["ml-engine"]["image"]
    for name in ("airflow-dag-processor", "airflow-triggerer"):
        job_check = " ".join(_argv(services[name]["healthcheck"]["test"]))
        assert "airflow jobs check --job-type" in job_check and "jobs" in commands
    assert _argv(services["airflow-init"]["command"])[0] == "-c"
    assert "airflow version" in services["airflow-init"]["command"][1]


def test_env_vars_refer_to_real_settings(services):
    from airflow.configuration import conf, retrieve_configuration_description

    options = retrieve_configuration_description()
    # ML_* settings are read by include/config.py, the plugin's hook (ML_ENGINE_TOKEN_FILE) or the ml/v1
    # service's command line (ML_ENGINE_BATCH_ENGINE, ML_ENGINE_BEAM_OPTIONS, ML_ENGINE_INTRA_OP_THREADS)
    config_source = "".join((ROOT / path).read_text() for path in (
        "include/config.py", "plugins/ml_engine/hooks.py", "include/local_platform/__main__.py"))
    for name, service in services.items():
        for key, value in _env(service).items():
            if key.startswith("AIRFLOW__"):
                section, option = key[len("AIRFLOW__"):].lower().split("__", 1)
                if option.endswith("_cmd"):  # Airflow runs the command only for its sensitive options
                    option = option.removesuffix("_cmd")
                    assert (section, option) in conf.sensitive_config_values, f"{name}: {key} is not read"
                known = CELERY_OPTIONS if section == "celery" else set(options.get(section, {}).get("options", {}))
                assert option in known, f"{name}: {key} is no Airflow option"
            elif key.startswith("ML_"):
                assert f'"{key}"' in config_source, f"{name}: {key} is read by neither config nor hook"
            elif key.startswith("AIRFLOW_CONN_"):
                _check_connection(value, services)
            else:
                assert key in EXTERNAL_ENV, f"{name}: {key} is read by nothing known"
            for url in re.findall(r"[a-z+]+://[^\s\"',]+", value):
                _check_url(url, services, where=f"{name}.{key}")


def _check_url(url: str, services: dict, *, where: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname
    if host in (None, "localhost", "127.0.0.1") or "." in host:
        return
    assert host in services, f"{where}: {url} names no service"
    port = parsed.port or {"redis": 6379, "postgresql": 5432}.get(parsed.scheme.split("+")[-1], 80)
    assert LISTENS.get(host) == port, f"{where}: {url} is not the port {host} listens on"


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
            if source.startswith((".", "/")):
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
            for port in re.findall(r"(?:--port |localhost:)(\d+)", text):
                assert int(port) == LISTENS[name], f"{name}: {text}"


def test_project_services_run_real_entry_points(services):
    gcs = services["gcs-emulator"]
    assert gcs["entrypoint"] == ["gcp-storage-emulator"]
    assert re.search(r"^gcp-storage-emulator==", (ROOT / "requirements.txt").read_text(), re.M)
    assert "--in-memory" not in gcs["command"] and gcs["working_dir"] == "/data"
    ml = services["ml-engine"]
    entry = _argv(ml["entrypoint"])
    assert entry[:2] == ["python", "-m"]
    module = ROOT / Path(*entry[2].split(".")) / "__main__.py"
    assert module.exists(), module
    source = module.read_text()
    for flag in (a for a in _argv(ml["command"]) if a.startswith("--")):
        assert f'"{flag}"' in source, f"{entry[2]} has no {flag}"
    assert _env(ml)["STORAGE_EMULATOR_HOST"] == "http://gcs-emulator:9023"


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
    """Fernet key, JWT secret and API secret come from files airflow-init generates, never from the file itself."""
    sensitive = ("FERNET_KEY", "JWT_SECRET", "SECRET_KEY")
    for name, service in services.items():
        env = _env(service)
        for key, value in env.items():
            if key.startswith("AIRFLOW__") and key.endswith(sensitive):
                pytest.fail(f"{name}: {key} is set in the file ({value!r}); use its _CMD twin")
            if key.startswith("AIRFLOW__") and key.removesuffix("_CMD").endswith(sensitive):
                assert re.fullmatch(rf"cat {SECRETS_DIR}/\w+", value), f"{name}: {key}={value}"
                assert f"airflow-secrets:{SECRETS_DIR}" in service["volumes"], name
            if key.startswith("AIRFLOW_") and not key.startswith("AIRFLOW__") and key in EXTERNAL_ENV:
                assert value == "", f"{name}: {key} has a default value in the file"
        assert "admin:admin" not in json.dumps(env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS", ""))
    init_env = _env(services["airflow-init"])
    assert init_env["AIRFLOW_ADMIN_PASSWORD"] == ""  # generated unless the user gives one


def _run_init(services: dict, root: Path, **given: str) -> tuple[str, dict[str, str], dict]:
    """airflow-init's script, run by bash with /opt/airflow moved under `root` (no Docker here)."""
    import os
    import subprocess
    import sys

    script = services["airflow-init"]["command"][1].replace("$$", "$").replace("/opt/airflow", str(root))
    script = script.replace("exec /entrypoint airflow version", "true")
    script = re.sub(r'chown -R "[^"]*"', "true", script)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **given}
    if "ML_ENGINE_TOKEN" not in given:  # the test session's own token is not a value given to init
        env.pop("ML_ENGINE_TOKEN", None)
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True)
    secrets = {p.name: p.read_text() for p in (root / "secrets").iterdir()}
    passwords = json.loads((root / "passwords" / "simple_auth_manager_passwords.json").read_text())
    return done.stdout, secrets, passwords


def test_ml_engine_requires_the_generated_token(services):
    ml_engine, common = services["ml-engine"], services["airflow-scheduler"]
    command = ml_engine["command"]
    token_file = command[command.index("--token-file") + 1]
    assert token_file == f"{SECRETS_DIR}/ml_engine_token"
    assert f"airflow-secrets:{SECRETS_DIR}:ro" in ml_engine["volumes"]
    assert ml_engine["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "ml-engine" not in services["airflow-init"]["depends_on"]  # no cycle: init writes the token first
    assert _env(common)["ML_ENGINE_TOKEN_FILE"] == token_file


def test_init_generates_secrets_once_and_prints_the_admin_password(services, tmp_path):
    from cryptography.fernet import Fernet

    out, secrets, passwords = _run_init(services, tmp_path)
    assert set(secrets) == {"fernet_key", "jwt_secret", "api_secret_key", "ml_engine_token"}
    Fernet(secrets["fernet_key"])  # a valid key, no trailing newline
    assert all(len(value) >= 40 and "\n" not in value for value in secrets.values())
    assert passwords["admin"] != "admin" and len(passwords["admin"]) >= 40
    assert f"generated password {passwords['admin']}" in out
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in (tmp_path / "secrets").iterdir())
    again = _run_init(services, tmp_path)  # a restart keeps them (a new Fernet key would lose connections)
    assert again[1:] == (secrets, passwords) and "password" not in again[0]
    given = _run_init(services, tmp_path, AIRFLOW_ADMIN_PASSWORD='my "pw"', AIRFLOW_JWT_SECRET="jwt-from-env")
    assert given[2] == {"admin": 'my "pw"'} and given[1]["jwt_secret"] == "jwt-from-env"
    assert given[1]["fernet_key"] == secrets["fernet_key"] and "password" not in given[0]

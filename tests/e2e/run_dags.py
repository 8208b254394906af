"""Run DAGs in sequence with dag.test() in one fresh interpreter; print one JSON line per run.

The e2e tests call this as a subprocess so that the Airflow metadata database
(SQLite in a temporary AIRFLOW_HOME) is chosen before Airflow is first imported,
whatever other tests imported in the pytest process. After each run the ml/v1
model is read back (default version, versions and their labels), so the tests
can check the state between runs.

    python tests/e2e/run_dags.py steps.json   # [{"dag_id", "conf", "logical_date", "expect"}, ...]

`run_scenario()` is that call, for the tests: a fresh Airflow home, the settings, the subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

PREFIX = "E2E_STEP "
RETRIES = 8  # googleapiclient retries 429/5xx: the fault test answers 20 % of ml/v1 requests so


def _model_state(model_name: str) -> dict:
    if os.environ.get("ML_PLATFORM") == "vertex":
        return _vertex_state(model_name)
    from tools import devstack

    api = devstack.ml_api(os.environ["ML_ENGINE_ENDPOINT"])
    name = f"projects/{os.environ['GOOGLE_CLOUD_PROJECT']}/models/{model_name}"
    try:
        model = api.projects().models().get(name=name).execute(num_retries=RETRIES)
    except Exception as error:  # no model yet
        return {"error": str(error)}
    versions = api.projects().models().versions().list(parent=name).execute(num_retries=RETRIES).get(
        "versions", [])
    return {
        "default": (model.get("defaultVersion") or {}).get("name", "").rsplit("/", 1)[-1] or None,
        "versions": {v["name"].rsplit("/", 1)[-1]: {"state": v.get("state"), "labels": v.get("labels", {})}
                     for v in versions},
    }


def _vertex_state(model_name: str) -> dict:
    """The same report from Vertex AI (through the DAGs' registry), plus each endpoint's traffic by version."""
    from include import config
    from include.vertex.registry import Registry
    from include.vertex.serving import Endpoints

    settings = config.load()
    registry = Registry(gcp_conn_id=settings.gcp_conn_id, project=settings.project, region=settings.region)
    versions = registry.list_versions(model_name=model_name)
    if not versions:
        return {"error": f"model {model_name} has no versions"}
    endpoints = Endpoints(registry)
    traffic = {}
    for variant in ("serving", *(f"staging-{v}" for v in settings.variants)):
        if (endpoint := endpoints.get(model_name, variant)) is not None:
            traffic[variant] = {d.version: d.share for d in endpoints.deployments(endpoint)}
    return {
        "default": next((v["name"].rsplit("/", 1)[-1] for v in versions if v["isDefault"]), None),
        "versions": {v["name"].rsplit("/", 1)[-1]: {"state": v["state"], "labels": v["labels"]} for v in versions},
        "endpoints": traffic,
    }


def _task_states(dag_id: str, run_id: str) -> tuple[str, dict]:
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one()
        tis = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id).all()
        states = {}
        for ti in tis:
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            states[key] = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
        decision = None
        from airflow.models.xcom import XComModel

        row = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id="gate",
                                                 key="decision").one_or_none()
        if row is not None:
            decision = row.value if not isinstance(row.value, str | bytes) else json.loads(row.value)
        from airflow.models.asset import AssetEvent

        events = [{"task_id": e.source_task_id, "extra": e.extra}
                  for e in session.query(AssetEvent).filter_by(source_dag_id=dag_id, source_run_id=run_id)]
        state = str(run.state.value if hasattr(run.state, "value") else run.state)
        return state, {"tasks": states, "decision": decision, "asset_events": events}


def main(path: str) -> int:
    from airflow.dag_processing.dagbag import DagBag

    with open(path) as handle:
        steps = json.load(handle)
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        print(PREFIX + json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}), flush=True)
        return 2
    for number, step in enumerate(steps):
        dag = bag.dags[step["dag_id"]]
        started = time.monotonic()
        when = datetime.fromisoformat(step["logical_date"])
        run = dag.test(run_after=when, logical_date=when, run_conf=step.get("conf") or {})
        state, details = _task_states(dag.dag_id, run.run_id)
        report = {"step": number, "name": step.get("name"), "dag_id": dag.dag_id, "run_id": run.run_id,
                  "state": state, "seconds": round(time.monotonic() - started, 1), **details,
                  "model": _model_state(step["model_name"])}
        print(PREFIX + json.dumps(report, default=str), flush=True)
        if state != step.get("expect", "success"):
            return 1
    return 0


ROOT = Path(__file__).resolve().parents[2]


def settings_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a DAG run in `home` (SQLite Airflow home) with `settings` (ML_*, endpoints)."""
    from include import config

    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **settings,
    }
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        env.update(config.embedded_environment(config.load()))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return env


def migrate(env: dict[str, str], *, copy_from: Path | None = None) -> None:
    """A migrated metadata DB in the env's home: `airflow db migrate`, or a copy of one already migrated."""
    home = Path(env["AIRFLOW_HOME"])
    if copy_from is not None:
        shutil.copy(copy_from / "airflow.db", home / "airflow.db")
        return
    done = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@dataclass
class Scenario:
    returncode: int
    reports: dict[str, dict]
    log_path: Path
    stdout: str = ""  # the task logs of dag.test()

    def failure(self) -> str:
        return (f"scenario stopped (exit {self.returncode}) after {list(self.reports)}: "
                f"{json.dumps(list(self.reports.values())[-1:], indent=1)[:4000]}\n"
                f"log tail:\n{self.log_path.read_text()[-6000:]}\n"
                f"task log tail:\n{self.stdout[-8000:]}")


def run_scenario(steps: list[dict], env: dict[str, str], *, timeout: float = 900) -> Scenario:
    """Run `steps` with this script in a fresh interpreter; the reports by step name (also in reports.json)."""
    home = Path(env["AIRFLOW_HOME"])
    steps_file = home / "steps.json"
    steps_file.write_text(json.dumps(steps))
    log_path = home / "run_dags.log"
    with open(log_path, "w") as log:
        result = subprocess.run([sys.executable, str(Path(__file__)), str(steps_file)], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout)
    reports = {}
    for line in result.stdout.splitlines():
        if line.startswith(PREFIX):
            report = json.loads(line[len(PREFIX):])
            reports[report.get("name") or "import"] = report
    (home / "reports.json").write_text(json.dumps(reports, indent=1))  # kept for a look after a failure
    (home / "task_logs.txt").write_text(result.stdout)
    return Scenario(result.returncode, reports, log_path, result.stdout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

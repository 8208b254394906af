"""Run DAGs in sequence with dag.test() in one fresh interpreter; print one JSON line per run.

The e2e tests call this as a subprocess so that the Airflow metadata database
(SQLite in a temporary AIRFLOW_HOME) is chosen before Airflow is first imported,
whatever other tests imported in the pytest process. After each run the ml/v1
model is read back (default version, versions and their labels), so the tests
can check the state between runs.

    python tests/e2e/run_dags.py steps.json   # [{"dag_id", "conf", "logical_date", "expect"}, ...]
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime

PREFIX = "E2E_STEP "


def _model_state(model_name: str) -> dict:
    from include import devstack

    api = devstack.ml_api(os.environ["ML_ENGINE_ENDPOINT"])
    name = f"projects/{os.environ['GOOGLE_CLOUD_PROJECT']}/models/{model_name}"
    try:
        model = api.projects().models().get(name=name).execute()
    except Exception as error:  # no model yet
        return {"error": str(error)}
    versions = api.projects().models().versions().list(parent=name).execute().get("versions", [])
    return {
        "default": (model.get("defaultVersion") or {}).get("name", "").rsplit("/", 1)[-1] or None,
        "versions": {v["name"].rsplit("/", 1)[-1]: {"state": v.get("state"), "labels": v.get("labels", {})}
                     for v in versions},
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

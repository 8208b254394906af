"""Parse one DAG file the way Airflow's DAG processor does, in a fresh interpreter; print a JSON report.

Airflow and the ml_engine plugin (which Airflow's plugin manager loads before any
DAG file) are imported first, and a trivial DAG file with an Asset is parsed to
warm up the DagBag machinery (the first Asset of a process makes Airflow discover
every provider's asset URI handlers, importing the Google provider's GCS hook:
a once-per-process cost of Airflow's, not of the DAG file), so the time measured
is the DAG file's own cost.

    python tests/dags/parse_probe.py dags/model_lifecycle.py
"""

from __future__ import annotations

import json
import sys
import time


def main(path: str) -> None:
    import tempfile
    from pathlib import Path

    import airflow.sdk  # noqa: F401
    import ml_engine.operators  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag

    with tempfile.TemporaryDirectory() as tmp:
        warm_up = Path(tmp) / "warm_up_dag.py"
        warm_up.write_text("from airflow.sdk import Asset, Param, dag, task\n\n"
                           "@dag(schedule=None, params={'n': Param(1, type='integer')})\ndef warm_up():\n"
                           "    @task(outlets=[Asset('warm-up://asset')])\n    def noop():\n        pass\n"
                           "    noop()\n\nwarm_up()\n")
        DagBag(dag_folder=str(warm_up))

    started, cpu_started = time.perf_counter(), time.process_time()
    bag = DagBag(dag_folder=path)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    heavy = sorted(m for m in ("tensorflow", "keras", "include.trainer.task", "include.trainer.data")
                   if m in sys.modules)
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "tags": sorted(dag.tags or []),
            "retries": {t.task_id: t.retries for t in dag.tasks},
            "schedule": type(dag.timetable).__name__,
            "doc_md": bool(dag.doc_md),
        }
    print(json.dumps({"path": path, "seconds": seconds, "cpu_seconds": cpu_seconds,
                      "errors": {k: str(v) for k, v in bag.import_errors.items()},
                      "heavy_modules": heavy, "dags": dags}))


if __name__ == "__main__":
    main(sys.argv[1])

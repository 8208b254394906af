"""Parse one DAG file the way Airflow's DAG processor does, in a fresh interpreter; print a JSON report.

Airflow and the ml_engine plugin (which Airflow's plugin manager loads before any
DAG file) are imported first, so the time measured is the DAG file's own cost.

    python tests/dags/parse_probe.py dags/model_lifecycle.py
"""

from __future__ import annotations

import json
import sys
import time


def main(path: str) -> None:
    import airflow.sdk  # noqa: F401
    import ml_engine.operators  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=path)
    seconds = time.perf_counter() - started
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
    print(json.dumps({"path": path, "seconds": seconds, "errors": {k: str(v) for k, v in bag.import_errors.items()},
                      "heavy_modules": heavy, "dags": dags}))


if __name__ == "__main__":
    main(sys.argv[1])

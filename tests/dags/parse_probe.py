"""Parse one DAG file the way Airflow's DAG processor does, in a fresh interpreter; print a JSON report.

Only what the DAG processor has loaded before it parses a file is imported first
(Airflow's SDK and DagBag); nothing is warmed up, so every one-time cost the file
triggers (provider discovery for an Asset URI scheme, the plugin package, ...) is
counted, as in Airflow's own `last_parse_duration`.

    python tests/dags/parse_probe.py dags/model_lifecycle.py
"""

from __future__ import annotations

import json
import sys
import time


def main(path: str) -> None:
    import airflow.sdk  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag

    started, cpu_started = time.perf_counter(), time.process_time()
    bag = DagBag(dag_folder=path)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    heavy = sorted(m for m in ("tensorflow", "keras", "include.trainer.task", "include.trainer.data",
                               "google.cloud.aiplatform", "google.cloud.aiplatform_v1") if m in sys.modules)
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "tags": sorted(dag.tags or []),
            "retries": {t.task_id: t.retries for t in dag.tasks},
            "schedule": type(dag.timetable).__name__,
            "doc_md": bool(dag.doc_md),
            "tasks": sorted(dag.task_ids),
        }
    print(json.dumps({"path": path, "seconds": seconds, "cpu_seconds": cpu_seconds,
                      "provider_discovery": "airflow.providers.google.cloud.hooks.gcs" in sys.modules,
                      "errors": {k: str(v) for k, v in bag.import_errors.items()},
                      "heavy_modules": heavy, "dags": dags}))


if __name__ == "__main__":
    main(sys.argv[1])

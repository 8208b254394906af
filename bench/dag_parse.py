"""DAG file parse time as Airflow's dag-processor pays it: a fresh interpreter per file, no warm-up.

The child imports `airflow.sdk` and DagBag first (the processor has them loaded
already), then times `DagBag(dag_folder=<file>)` alone, in CPU and wall seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys, time
import airflow.sdk  # noqa: F401
from airflow.dag_processing.dagbag import DagBag
cpu, wall = time.process_time(), time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "dags": len(bag.dags), "import_errors": len(bag.import_errors)}))
"""


def parse_file(path: Path, airflow_home: str) -> dict:
    env = {**os.environ, "AIRFLOW_HOME": airflow_home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(path.parent),
           "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")])}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=PROJECT_ROOT)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"file": path.name, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return {"file": path.name, **json.loads(lines[-1])}


def parse_times(dag_folder: Path = PROJECT_ROOT / "dags") -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-airflow-home-") as home:
        return [parse_file(path, home) for path in sorted(dag_folder.glob("*.py"))]


if __name__ == "__main__":
    for row in parse_times():
        print(row)

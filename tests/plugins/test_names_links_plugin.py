"""Id normalisation, link URLs, and how Airflow loads the plugin folder (no service needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "version_id", "job_id"),
    [
        ("v1", "v1", "v1"),
        ("20240301T000000", "v_20240301T000000", "job_20240301T000000"),
        ("2024-03-01-b", "v_2024_03_01_b", "job_2024_03_01_b"),
        ("run.with spaces/and-dashes", "run_with_spaces_and_dashes", "run_with_spaces_and_dashes"),
        ("_hidden", "v_hidden", "job_hidden"),
        ("projects/p/models/m/versions/v9", "v9", "v9"),
    ],
)
def test_ids_normalised_to_ml_v1_rule(raw, version_id, job_id):
    from ml_engine.names import is_valid_id, normalize_job_id, normalize_version_id

    assert normalize_version_id(raw) == version_id
    assert normalize_job_id(raw) == job_id
    assert is_valid_id(version_id) and is_valid_id(job_id)
    assert normalize_version_id(version_id) == version_id  # idempotent: re-runs find the same name


def test_long_ids_stay_distinct_and_valid():
    from ml_engine.names import MAX_ID_LENGTH, is_valid_id, normalize_id

    a, b = normalize_id("x" * 200 + "a"), normalize_id("x" * 200 + "b")
    assert a != b
    assert len(a) == MAX_ID_LENGTH and is_valid_id(a)
    with pytest.raises(ValueError, match="cannot be empty"):
        normalize_id("  ")


def test_links_local_service_or_cloud_console():
    from ml_engine.links import job_url, version_url

    local = "http://127.0.0.1:8780"
    assert version_url(endpoint=local, project_id="p", model_name="m", version_name="v1") == (
        "http://127.0.0.1:8780/ui/projects/p/models/m/versions/v1"
    )
    assert job_url(endpoint=local, project_id="p", job_id="j") == "http://127.0.0.1:8780/ui/projects/p/jobs/j"
    for endpoint in (None, "https://us-central1-ml.googleapis.com/"):
        assert version_url(endpoint=endpoint, project_id="p", model_name="m", version_name="v1") == (
            "https://console.cloud.google.com/ai-platform/models/m/versions/v1/details?project=p"
        )
        assert job_url(endpoint=endpoint, project_id="p", job_id="j") == (
            "https://console.cloud.google.com/ai-platform/jobs/j?project=p"
        )


def test_plugin_folder_loads_only_the_plugin_and_operators_import_light(tmp_path):
    """Airflow imports every .py under plugins/ by bare name unless ignored; DAG files must parse fast."""
    code = """
import sys, time
import airflow.sdk
start = time.monotonic()
import ml_engine.operators
print("IMPORT", round(time.monotonic() - start, 3))
print("HEAVY", [m for m in ("tensorflow", "googleapiclient", "ml_engine.hooks") if m in sys.modules])
from airflow._shared.module_loading import find_path_from_directory
files = [p for p in find_path_from_directory(sys.argv[1], ".airflowignore")]
print("FILES", [f.rsplit("/", 1)[-1] for f in files if "ml_engine" in f])
from airflow import plugins_manager
links = plugins_manager.get_operator_extra_links()
print("LINKS", sorted(type(link).__name__ for link in links if type(link).__module__ == "ml_engine.links"))
print("ERRORS", plugins_manager.get_import_errors())
"""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}",
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    }
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "plugins")], capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.split(" ", 1)[0].isupper())
    assert lines["FILES"] == "['ml_engine_plugin.py']"
    assert lines["LINKS"] == "['MLEngineJobLink', 'MLEngineVersionLink']"
    assert lines["ERRORS"] == "{}"
    assert lines["HEAVY"] == "[]"
    assert float(lines["IMPORT"]) < 1.0

"""include/trainer as a package of its own: an sdist that installs and runs as `python -m trainer.task`."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from include.lifecycle import packaging


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The sdist built from include/trainer, pip-installed (no dependencies) into a directory of its own."""
    root = tmp_path_factory.mktemp("trainer_package")
    sdist = packaging.build_sdist(root / "dist")
    assert sdist.name == "trainer-0.1.0.tar.gz"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                    "--disable-pip-version-check", "--target", str(root / "site"), str(sdist)], check=True)
    return root


def _run_trainer(installed, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed / "site")}  # not the project: only the installed package
    return subprocess.run([sys.executable, "-m", "trainer.task", *args], cwd=installed, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_package_never_imports_the_project():
    for path in packaging.TRAINER_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith(("include", "airflow")), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith(("include", "airflow")) for a in node.names), path.name


def test_installed_package_runs_and_fails_with_a_nonzero_status(installed, gcs_emulator, bucket):
    helped = _run_trainer(installed, "--help")
    assert helped.returncode == 0 and "--job-dir" in helped.stdout
    missing = _run_trainer(installed, "--data-uri", f"gs://{bucket.name}/absent-{uuid.uuid4().hex}",
                           "--job-dir", f"gs://{bucket.name}/job-{uuid.uuid4().hex}", "--no-generate-if-missing")
    assert missing.returncode != 0
    assert "FileNotFoundError: no training data under" in missing.stderr


def test_staged_package_is_content_hashed_and_built_once(gcs_emulator, bucket, gcs_prefix, tmp_path):
    base = f"gs://{bucket.name}/{gcs_prefix}/packages"
    uri = packaging.ensure_package(base)
    assert uri == f"{base}/trainer/{packaging.source_hash()[:16]}/trainer-0.1.0.tar.gz"
    name = uri[len(f"gs://{bucket.name}/"):]
    generation = bucket.get_blob(name).generation
    assert packaging.ensure_package(base) == uri  # same sources: nothing rebuilt or uploaded
    assert bucket.get_blob(name).generation == generation

    copy = tmp_path / "trainer"
    shutil.copytree(packaging.TRAINER_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "task.py").write_text((copy / "task.py").read_text() + "\n# changed\n")
    assert packaging.package_uri(base, copy) != uri  # changed sources: a new name


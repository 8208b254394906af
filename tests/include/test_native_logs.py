"""TensorFlow's native start-up banner stays out of stderr (Airflow logs stderr lines as errors)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def test_banner_lines_are_logged_and_other_stderr_passes_through():
    done = _run(
        "import logging, os, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format='%(levelname)s %(message)s')\n"
        "from include.native_logs import capture_native_stderr\n"
        "with capture_native_stderr():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written\\n')\n"
        "    os.write(2, b'I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "    os.write(2, b'a real problem\\n')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "a real problem\n"
    assert "DEBUG WARNING: All log messages before absl::InitializeLog()" in done.stdout
    assert "DEBUG I0000 00:00:1.0 1 port.cc:153] oneDNN" in done.stdout


def test_importing_tensorflow_through_the_project_prints_no_banner():
    done = _run("import include.trainer.model, tensorflow as tf; print(float(tf.reduce_sum(tf.ones(3))))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3.0"
    assert "absl::InitializeLog" not in done.stderr and "oneDNN" not in done.stderr, done.stderr

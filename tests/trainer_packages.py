"""A tiny trainer package built as a real sdist, for training-job tests (service and operators)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TINY_TRAINER = '''
"""A trainer that does what the test asks: write its args and environment to --job-dir, fail, or tick."""
import argparse, json, os, sys, time

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--require", help="fail unless this gs:// object exists")
    parser.add_argument("--extra", action="append", default=[])
    args = parser.parse_args()
    print(f"tiny trainer pid={os.getpid()} mode={args.mode}", flush=True)
    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    if args.mode == "fail":
        raise ValueError("learning rate must be positive, got -1")
    if args.require:
        bucket, _, name = args.require[5:].partition("/")
        if not client.bucket(bucket).blob(name).exists():
            raise FileNotFoundError(f"required input {args.require} is missing")
    deadline = time.monotonic() + args.seconds
    tick = 0
    while time.monotonic() < deadline:
        tick += 1
        print(f"tick {tick}", flush=True)
        time.sleep(0.2)
    bucket, _, prefix = args.job_dir[5:].partition("/")
    result = {"argv": sys.argv[1:], "CLOUD_ML_JOB": json.loads(os.environ["CLOUD_ML_JOB"]),
              "TF_CONFIG": json.loads(os.environ["TF_CONFIG"]),
              "STORAGE_EMULATOR_HOST": os.environ.get("STORAGE_EMULATOR_HOST"),
              "module_file": __file__}
    client.bucket(bucket).blob(prefix.rstrip("/") + "/result.json").upload_from_string(json.dumps(result))
    print("epoch 1/1 loss=0.5 done", flush=True)


if __name__ == "__main__":
    main()
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "tinytrainer"
version = "0.1"
dependencies = ["google-cloud-storage"]

[tool.setuptools]
packages = ["tinytrainer"]
"""


def build_tiny_sdist(root: Path) -> Path:
    """`tinytrainer-0.1.tar.gz` (module tinytrainer.task), built with setuptools' PEP 517 backend."""
    (root / "tinytrainer").mkdir(parents=True)
    (root / "tinytrainer" / "__init__.py").write_text("")
    (root / "tinytrainer" / "task.py").write_text(TINY_TRAINER)
    (root / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    out = root / "dist"
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
                   cwd=root, check=True, capture_output=True)
    return out / "tinytrainer-0.1.tar.gz"

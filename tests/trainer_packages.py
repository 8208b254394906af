"""A tiny trainer package built as a real sdist, for training-job tests (service and operators)."""

from __future__ import annotations

import os
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


PROBE_TRAINER = '''
"""A trainer that reports what it can see and touch, then (with --hold) leaves a setsid child and waits."""
import argparse, json, os, resource, subprocess, sys, sysconfig, time

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage


def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as error:
        return type(error).__name__


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--secret", action="append", default=[], help="a file the trainer must not read")
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args()
    venv_file = os.path.join(sysconfig.get_paths()["purelib"], "probe-was-here.txt")
    report = {
        "uid": os.getuid(), "env": sorted(os.environ), "cwd": os.getcwd(), "home": os.environ.get("HOME"),
        "read": {path: attempt(lambda path=path: open(path, "rb").read(1)) for path in args.secret},
        "list": {path: attempt(lambda path=path: os.listdir(os.path.dirname(path))) for path in args.secret},
        "write_venv": attempt(lambda: open(venv_file, "w").write("x")),
        "limits": {name: resource.getrlimit(getattr(resource, name))[0]
                   for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_NPROC")},
        "setup_env": open(os.path.join(os.environ["HOME"], "setup_env.json")).read()
        if os.path.exists(os.path.join(os.environ["HOME"], "setup_env.json")) else None,
    }
    if args.hold:
        child = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(600)"])
        report["child"] = child.pid
    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    bucket, _, prefix = args.job_dir[5:].partition("/")
    client.bucket(bucket).blob(prefix.rstrip("/") + "/probe.json").upload_from_string(json.dumps(report))
    print("probe written", flush=True)
    while args.hold:
        time.sleep(0.2)


if __name__ == "__main__":
    main()
'''

PROBE_SETUP = '''
import json, os
from setuptools import setup

# Runs while the service builds the package: record what the build could see, where the trainer finds it.
with open(os.path.join(os.environ.get("HOME", "."), "setup_env.json"), "w") as out:
    json.dump({"uid": os.getuid(), "env": sorted(os.environ)}, out)
setup()
'''


def build_probe_sdist(root: Path) -> Path:
    """`probetrainer-0.1.tar.gz` (module probetrainer.task): reports its identity, environment and access."""
    (root / "probetrainer").mkdir(parents=True)
    (root / "probetrainer" / "__init__.py").write_text("")
    (root / "probetrainer" / "task.py").write_text(PROBE_TRAINER)
    (root / "setup.py").write_text(PROBE_SETUP)
    (root / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT).replace("tinytrainer", "probetrainer"))
    out = root / "dist"
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
                   cwd=root, check=True, capture_output=True, env={**os.environ, "HOME": str(root)})
    return out / "probetrainer-0.1.tar.gz"


VERTEX_TRAINER = '''
"""A Vertex AI trainer: reports Vertex AI's variables and copies a ready SavedModel into AIP_MODEL_DIR."""
import argparse, json, os

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="gs:// folder of a SavedModel to publish as the model")
    parser.add_argument("--mode", default="ok")
    args = parser.parse_args()
    if args.mode == "fail":
        raise RuntimeError("this trainer was asked to fail")
    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    source_bucket, _, source = args.source[5:].partition("/")
    target_bucket, _, target = os.environ["AIP_MODEL_DIR"][5:].partition("/")
    for blob in client.list_blobs(source_bucket, prefix=source.rstrip("/") + "/"):
        name = target.rstrip("/") + "/" + blob.name[len(source.rstrip("/")) + 1:]
        client.bucket(source_bucket).copy_blob(blob, client.bucket(target_bucket), name)
    seen = {key: os.environ.get(key) for key in ("AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "CLOUD_ML_PROJECT_ID",
                                                 "CLUSTER_SPEC", "TF_CONFIG", "ML_RUN")}
    client.bucket(target_bucket).blob(target.rstrip("/").rsplit("/", 1)[0] + "/env.json").upload_from_string(
        json.dumps(seen))
    print("published", args.source, "to", os.environ["AIP_MODEL_DIR"], flush=True)


if __name__ == "__main__":
    main()
'''


def build_vertex_sdist(root: Path) -> Path:
    """`vertextrainer-0.1.tar.gz` (module vertextrainer.task): publishes a given SavedModel as its model."""
    (root / "vertextrainer").mkdir(parents=True)
    (root / "vertextrainer" / "__init__.py").write_text("")
    (root / "vertextrainer" / "task.py").write_text(VERTEX_TRAINER)
    (root / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT).replace("tinytrainer", "vertextrainer"))
    out = root / "dist"
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
                   cwd=root, check=True, capture_output=True)
    return out / "vertextrainer-0.1.tar.gz"

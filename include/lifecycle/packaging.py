"""The trainer as an sdist on GCS, for ml/v1 training jobs: built once per content, uploaded under its hash.

`gcloud ai-platform jobs submit training --package-path trainer` built an sdist
and staged it in GCS; this does the same with setuptools' PEP 517 backend
(no network: setuptools is in the environment). The object name carries a hash
of the sources, so a re-run, a cleared task or another run with the same code
finds the package already there and builds nothing.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from include.lifecycle import storage
from include.trainer import gcs

log = logging.getLogger(__name__)

TRAINER_DIR = Path(__file__).resolve().parents[1] / "trainer"
TRAINER_MODULE = "trainer.task"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def _sources(source_dir: Path) -> list[Path]:
    return sorted(p for p in source_dir.rglob("*") if p.is_file() and (p.suffix == ".py" or p.name == "pyproject.toml")
                  and "__pycache__" not in p.parts)


def source_hash(source_dir: Path = TRAINER_DIR) -> str:
    """sha256 over the package's files (relative names and bytes): same code, same hash."""
    digest = hashlib.sha256()
    for path in _sources(source_dir):
        digest.update(path.relative_to(source_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def package_name(source_dir: Path = TRAINER_DIR) -> tuple[str, str]:
    """(name, version) from the package's pyproject.toml."""
    project = tomllib.loads((source_dir / "pyproject.toml").read_text())["project"]
    return project["name"], project["version"]


def package_uri(base_uri: str, source_dir: Path = TRAINER_DIR) -> str:
    """`base/<name>/<hash16>/<name>-<version>.tar.gz`: the hash in the folder keeps the sdist's own file name."""
    name, version = package_name(source_dir)
    return gcs.join(base_uri, name, source_hash(source_dir)[:16], f"{name}-{version}.tar.gz")


def build_sdist(out_dir: Path, source_dir: Path = TRAINER_DIR) -> Path:
    """Build the sdist from a copy of the sources (the tree itself may be read-only and stays clean)."""
    with tempfile.TemporaryDirectory(prefix="trainer-build-") as tmp:
        work = Path(tmp) / "src"
        shutil.copytree(source_dir, work, ignore=_IGNORED)
        out_dir.mkdir(parents=True, exist_ok=True)
        script = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out_dir)!r}))"
        built = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True, check=False)
        if built.returncode != 0:
            raise RuntimeError(f"building the trainer sdist failed: {built.stderr[-2000:]}")
        return out_dir / built.stdout.strip().splitlines()[-1]


def ensure_package(base_uri: str, source_dir: Path = TRAINER_DIR) -> str:
    """The gs:// URI of the trainer sdist for the current sources, built and uploaded only when missing."""
    uri = package_uri(base_uri, source_dir)
    if storage.exists(uri):
        log.info("Trainer package for these sources already staged: %s", uri)
        return uri
    with tempfile.TemporaryDirectory(prefix="trainer-dist-") as tmp, storage.connection_identity():
        sdist = build_sdist(Path(tmp), source_dir)
        gcs.upload_file(sdist, uri)
        log.info("Built %s (%s bytes) and staged it at %s", sdist.name, sdist.stat().st_size, uri)
    return uri

"""The trainer as an sdist on GCS, for ml/v1 training jobs: built reproducibly, uploaded under its hash.

`gcloud ai-platform jobs submit training --package-path trainer` built an sdist
and staged it in GCS; this does the same with setuptools' PEP 517 backend
(no network: setuptools is in the environment). The object name carries a hash
of the sources, so a re-run, a cleared task or another run with the same code
finds the package already there and uploads nothing.

The name alone proves nothing: whoever can write to the bucket (the default
emulator takes writes from anyone) can put an object there first, and the
training job would install and run it. So the sdist is always built here, with
the same bytes for the same sources (`build_sdist` rewrites the archive with
fixed times, owners and order), and a staged object is reused only when the
sha256 of its bytes is the build's. Anything else is overwritten with the
build, with a warning. The digest is also recorded in the object's metadata
(`sha256`), for people and tools; the reuse check never trusts it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from google.cloud.storage.retry import DEFAULT_RETRY

from include.lifecycle import storage
from include.trainer import gcs

log = logging.getLogger(__name__)

TRAINER_DIR = Path(__file__).resolve().parents[1] / "trainer"
TRAINER_MODULE = "trainer.task"
DIGEST_METADATA = "sha256"
# Every member of the sdist gets this time (2000-01-01): no build time leaks into the bytes, and it is
# after 1980, the earliest time a zip (a wheel built from the sdist) can hold.
SDIST_MTIME = 946684800
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


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reproducible(sdist: Path) -> None:
    """Rewrite the .tar.gz in place with members sorted by name, fixed times, owners and modes, and a
    gzip header without time or file name: the same files give the same bytes on every build."""
    out = io.BytesIO()
    with (
        tarfile.open(sdist, "r:gz") as src,
        gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in sorted(src.getmembers(), key=lambda m: m.name):
            content = src.extractfile(member) if member.isfile() else None
            member.mtime = SDIST_MTIME
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            member.mode = 0o755 if member.isdir() or member.mode & 0o111 else 0o644
            member.pax_headers = {}
            dst.addfile(member, content)
    sdist.write_bytes(out.getvalue())


def build_sdist(out_dir: Path, source_dir: Path = TRAINER_DIR) -> Path:
    """Build the sdist from a copy of the sources (the tree itself may be read-only and stays clean);
    the same sources always give the same bytes."""
    with tempfile.TemporaryDirectory(prefix="trainer-build-") as tmp:
        work = Path(tmp) / "src"
        shutil.copytree(source_dir, work, ignore=_IGNORED)
        out_dir.mkdir(parents=True, exist_ok=True)
        script = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out_dir)!r}))"
        built = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True, check=False)
        if built.returncode != 0:
            raise RuntimeError(f"building the trainer sdist failed: {built.stderr[-2000:]}")
        sdist = out_dir / built.stdout.strip().splitlines()[-1]
    _reproducible(sdist)
    return sdist


def _staged_sha256(uri: str, size: int) -> str | None:
    """sha256 of the bytes stored at `uri` (None: no object), reading at most `size` + 1 bytes of it.

    An object of another size, or one the server would transcode (a Content-Encoding), cannot be the
    build: it is not downloaded and gets a description instead of a digest.
    """
    bucket, path = gcs.parse_uri(uri)
    staged = gcs.client().bucket(bucket).get_blob(path)
    if staged is None:
        return None
    if staged.size != size:
        return f"not computed, {staged.size} bytes instead of {size}"
    if staged.content_encoding:
        return f"not computed, Content-Encoding {staged.content_encoding}"
    return sha256_hex(staged.download_as_bytes(start=0, end=size, raw_download=True))


def ensure_package(base_uri: str, source_dir: Path = TRAINER_DIR) -> str:
    """The gs:// URI of the trainer sdist for the current sources: the staged object when its bytes are
    those built here (sha256), else (missing, or anything else at that name) the build, uploaded there."""
    uri = package_uri(base_uri, source_dir)
    with tempfile.TemporaryDirectory(prefix="trainer-dist-") as tmp, storage.connection_identity():
        sdist = build_sdist(Path(tmp), source_dir)
        data = sdist.read_bytes()
        digest = sha256_hex(data)
        staged = _staged_sha256(uri, len(data))
        if staged == digest:
            log.info("Trainer package for these sources already staged and verified (sha256 %s): %s", digest, uri)
            return uri
        if staged is not None:
            log.warning("The object at %s is not the trainer sdist built from these sources (staged: sha256 %s; "
                        "built: sha256 %s): something else wrote it. Not using it; overwriting it with the build.",
                        uri, staged, digest)
        target = gcs.blob(uri)
        target.metadata = {DIGEST_METADATA: digest}
        target.upload_from_string(data, content_type="application/gzip", retry=DEFAULT_RETRY)
        log.info("Built %s (%s bytes, sha256 %s) and staged it at %s", sdist.name, len(data), digest, uri)
    return uri

"""The staged trainer sdist is reused only when its bytes are the ones built here (security review).

The object's name carries a hash of the sources, but anyone who can write to the
bucket (the default emulator accepts writes from anyone) can put an object at that
name first. `ensure_package` must then never hand that object to a training job:
it hashes the object's bytes against the sdist it built and overwrites a mismatch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tarfile

import pytest

from include.lifecycle import packaging, storage


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> bytes:
    """The bytes of the trainer sdist as built from include/trainer."""
    return packaging.build_sdist(tmp_path_factory.mktemp("sdist")).read_bytes()


@pytest.fixture
def base(gcs_emulator, bucket, gcs_prefix) -> str:
    storage.client()  # Airflow, imported here first, sets up logging once: before caplog, not under it
    return f"gs://{bucket.name}/{gcs_prefix}/packages"


def _object_name(bucket, uri: str) -> str:
    return uri[len(f"gs://{bucket.name}/"):]


def _malicious_sdist() -> bytes:
    """A well-formed sdist whose trainer/task.py does something else: what a planter would stage."""
    payload = b"import os\nos.system('echo pwned')\n"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("trainer-0.1.0/trainer/task.py")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def test_the_sdist_build_is_reproducible(tmp_path, built):
    """Same sources, same bytes: what makes 'hash what was built, compare with what is staged' workable."""
    again = packaging.build_sdist(tmp_path / "again").read_bytes()
    assert _sha256(again) == _sha256(built)
    with tarfile.open(fileobj=io.BytesIO(again), mode="r:gz") as tar:
        assert "trainer-0.1.0/task.py" in tar.getnames()

    checkout = tmp_path / "checkout"  # another checkout (another worker): same files, other times
    shutil.copytree(packaging.TRAINER_DIR, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    for path in checkout.iterdir():
        os.utime(path, (1_700_000_000, 1_700_000_000))
    assert _sha256(packaging.build_sdist(tmp_path / "other", checkout).read_bytes()) == _sha256(built)


@pytest.mark.parametrize("planted", ["malicious_sdist", "one_byte_changed", "garbage"])
def test_a_planted_object_at_the_hash_path_is_never_reused(planted, bucket, base, built, caplog):
    uri = packaging.package_uri(base)
    name = _object_name(bucket, uri)
    if planted == "malicious_sdist":
        data = _malicious_sdist()
    elif planted == "one_byte_changed":  # same size as the real one: a size check alone is not enough
        data = bytearray(built)
        data[len(data) // 2] ^= 0xFF
        data = bytes(data)
    else:
        data = b"not an sdist"
    blob = bucket.blob(name)
    blob.metadata = {"sha256": _sha256(built)}  # metadata is as writable as the bytes: it proves nothing
    blob.upload_from_string(data)

    with caplog.at_level(logging.WARNING, logger=packaging.__name__):
        staged = packaging.ensure_package(base)

    staged_bytes = bucket.blob(_object_name(bucket, staged)).download_as_bytes()
    assert staged_bytes != data
    assert _sha256(staged_bytes) == _sha256(built)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "sha256" in warnings[0].getMessage() and uri in warnings[0].getMessage()


def test_staging_records_the_digest_and_a_rerun_uploads_nothing(bucket, base, built):
    uri = packaging.ensure_package(base)
    name = _object_name(bucket, uri)
    first = bucket.get_blob(name)
    generation = first.generation
    assert first.metadata == {"sha256": _sha256(built)}
    assert first.download_as_bytes() == built

    assert packaging.ensure_package(base) == uri  # same sources: the verified object is reused
    assert bucket.get_blob(name).generation == generation


def test_after_replacing_a_planted_object_a_rerun_uploads_nothing(bucket, base, built):
    uri = packaging.package_uri(base)
    bucket.blob(_object_name(bucket, uri)).upload_from_string(_malicious_sdist())
    staged = packaging.ensure_package(base)
    generation = bucket.get_blob(_object_name(bucket, staged)).generation

    assert packaging.ensure_package(base) == staged
    assert bucket.get_blob(_object_name(bucket, staged)).generation == generation
    assert bucket.get_blob(_object_name(bucket, staged)).download_as_bytes() == built

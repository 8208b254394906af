"""gcs.py against the real emulator: URI handling, text, whole directories."""

from __future__ import annotations

import re

import pytest

from include.trainer import gcs
from include.trainer.paths import UnsafePathError, safe_join


def test_parse_and_join():
    assert gcs.parse_uri("gs://b/a/c.txt") == ("b", "a/c.txt")
    assert gcs.parse_uri("gs://b") == ("b", "")
    assert gcs.join("gs://b/x/", "/y/", "z.json") == "gs://b/x/y/z.json"
    for bad in ("/local/path", "gs:///nobucket", "s3://b/k"):
        with pytest.raises(ValueError):
            gcs.parse_uri(bad)


def test_text_round_trip_and_exists(bucket, gcs_prefix):
    uri = f"gs://{bucket.name}/{gcs_prefix}/hello.txt"
    assert not gcs.exists(uri)
    gcs.write_text(uri, "héllo\n")
    assert gcs.exists(uri)
    assert gcs.read_text(uri) == "héllo\n"
    # The module's client and the fixture's client see the same emulator.
    assert bucket.blob(f"{gcs_prefix}/hello.txt").download_as_text() == "héllo\n"


def test_directory_round_trip(bucket, gcs_prefix, tmp_path):
    src = tmp_path / "src"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"\x00\x01pb")
    (src / "variables" / "variables.index").write_bytes(b"index")
    uri = f"gs://{bucket.name}/{gcs_prefix}/model"

    uploaded = gcs.upload_dir(src, uri)

    assert sorted(uploaded) == gcs.list_uris(uri) == [f"{uri}/saved_model.pb", f"{uri}/variables/variables.index"]
    out = gcs.download_dir(uri + "/", tmp_path / "dst")
    assert (out / "saved_model.pb").read_bytes() == b"\x00\x01pb"
    assert (out / "variables" / "variables.index").read_bytes() == b"index"


def test_download_dir_of_nothing_fails(bucket, gcs_prefix, tmp_path):
    with pytest.raises(FileNotFoundError):
        gcs.download_dir(f"gs://{bucket.name}/{gcs_prefix}/missing", tmp_path)


@pytest.mark.parametrize("evil", ["/tmp/x", "a//x", "nul\x00x", "a/./b", "a\\b"])
def test_download_dir_refuses_object_names_that_leave_the_directory(bucket, gcs_prefix, tmp_path, evil):
    """A name like `prefix//tmp/x` is a valid object: none may be written outside (or beside) `dst`."""
    bucket.blob(f"{gcs_prefix}/model/ok.txt").upload_from_string(b"ok")
    bucket.blob(f"{gcs_prefix}/model/{evil}").upload_from_string(b"evil")
    uri = f"gs://{bucket.name}/{gcs_prefix}/model"
    assert f"{uri}/{evil}" in gcs.list_uris(uri)  # the emulator really holds the name
    with pytest.raises(UnsafePathError):
        gcs.download_dir(uri, tmp_path / "deep" / "dst")
    assert not (tmp_path / "deep" / "dst").exists()  # checked before any byte is written
    assert not any(p.read_bytes() == b"evil" for p in tmp_path.rglob("*") if p.is_file())


def test_download_dir_refuses_dot_dot_names(bucket, gcs_prefix, tmp_path, monkeypatch):
    """Real GCS stores `a/../../x`; the emulator refuses such names on upload, so the listing adds it here."""
    bucket.blob(f"{gcs_prefix}/model/ok.txt").upload_from_string(b"ok")
    uri = f"gs://{bucket.name}/{gcs_prefix}/model"
    real = gcs.list_uris
    monkeypatch.setattr(gcs, "list_uris", lambda prefix: [*real(prefix), f"{uri}/a/../../x"])
    with pytest.raises(UnsafePathError, match=re.escape("a/../../x")):
        gcs.download_dir(uri, tmp_path / "deep" / "dst")
    assert not (tmp_path / "deep").exists()


def test_safe_join_keeps_plain_names_and_refuses_symlink_escapes(tmp_path):
    assert safe_join(tmp_path, "variables/variables.index") == tmp_path.resolve() / "variables" / "variables.index"
    (tmp_path / "link").symlink_to("/")
    for bad in ("", "a//b", "link/etc/passwd", "/etc/passwd", "..", "."):
        with pytest.raises(UnsafePathError):
            safe_join(tmp_path, bad)

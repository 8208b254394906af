"""gcs.py against the real emulator: URI handling, text, whole directories."""

from __future__ import annotations

import pytest

from include.trainer import gcs


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

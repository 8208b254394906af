"""The beam engine's results writer on the GCS emulator: bundle files composed into the job's shards."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from include.local_platform import gcs
from include.local_platform.workers import beam_engine


@pytest.fixture(autouse=True)
def beam_on_the_emulator(gcs_emulator):
    """Beam's GCS client anonymous at once (the fixture set STORAGE_EMULATOR_HOST after beam_gcs was imported)."""
    beam_engine.beam_gcs.use_emulator_without_credentials()


def test_compose_concatenates_past_one_requests_32_sources_in_order(bucket, gcs_prefix):
    parts = [f"gs://{bucket.name}/{gcs_prefix}/part-{n:03d}" for n in range(70)]
    for n, uri in enumerate(parts):
        gcs.write_small(uri, f"row {n}\n")

    gcs.compose(parts, f"gs://{bucket.name}/{gcs_prefix}/whole")

    assert bucket.blob(f"{gcs_prefix}/whole").download_as_text() == "".join(f"row {n}\n" for n in range(70))
    with pytest.raises(gcs.GcsError, match="another bucket"):
        gcs.compose([f"gs://other-bucket/{gcs_prefix}/x"], f"gs://{bucket.name}/{gcs_prefix}/y")


def test_more_bundle_files_than_shards_are_composed_and_removed(bucket, gcs_prefix):
    temp = f"gs://{bucket.name}/{gcs_prefix}/beam-temp-prediction.results-0a1b"
    written = [f"{temp}/bundle-{n}.prediction.results" for n in range(5)]
    for n, uri in enumerate(written):
        gcs.write_small(uri, f"bundle {n}\n")

    merged = beam_engine._merge_into_shards(None, reversed(written), 2)

    assert len(merged) == 2
    contents = [bucket.blob(uri[len(f"gs://{bucket.name}/"):]).download_as_text() for uri in merged]
    assert sorted("".join(contents).splitlines()) == [f"bundle {n}" for n in range(5)]
    assert all(contents)
    assert sorted(gcs.list_objects(temp)) == sorted(merged)  # the bundle files are gone


def test_fewer_bundle_files_than_shards_get_empty_shards(bucket, gcs_prefix):
    options = PipelineOptions([f"--beam_plugins={beam_engine.beam_gcs.__name__}"])
    prefix = f"gs://{bucket.name}/{gcs_prefix}/prediction.results"
    with beam.Pipeline(runner=beam_engine._direct_runner(options), options=options) as pipeline:
        _ = (pipeline | beam.Create(['{"key": "a"}', '{"key": "b"}'], reshuffle=False)
             | beam_engine.WriteTextInBundles(prefix, 3))

    files = {blob.name.rsplit("/", 1)[1]: blob.download_as_bytes() for blob in bucket.list_blobs(prefix=gcs_prefix)}
    assert sorted(files) == [f"prediction.results-0000{n}-of-00003" for n in range(3)]
    assert b"".join(files.values()) == b'{"key": "a"}\n{"key": "b"}\n'

"""The data by period on the real GCS emulator: which folder a run uses, and the local feed writing one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from include.lifecycle import datafeed, periods, storage
from include.trainer import data as datasets

pytestmark = pytest.mark.usefixtures("ml_conn")


def test_a_period_is_generated_once_with_its_drift_and_seed(bucket, gcs_prefix):
    root = f"gs://{bucket.name}/{gcs_prefix}/data"
    chosen = datafeed.choose(root, wanted="latest", run_period="2026-01-12")
    assert chosen == periods.PeriodData("2026-01-12", f"{root}/2026-01-12")  # nothing yet: the run's own period
    written = datafeed.ensure(chosen, num_examples=20, image_size=16, drift_per_week=1.0)
    assert written["generated"] and written["drift"] == 1.0 and written["seed"] == periods.seed("2026-01-12")
    assert (written["num_examples"], written["eval_examples"]) == (20, 4)
    again = datafeed.ensure(chosen, num_examples=99, image_size=16, drift_per_week=5.0)  # a re-run keeps it
    assert not again["generated"] and again["num_examples"] == 20
    datafeed.ensure(periods.PeriodData("2026-01-19", f"{root}/2026-01-19"), num_examples=20, image_size=16,
                    drift_per_week=1.0)
    assert datafeed.choose(root, wanted="latest", run_period="2026-01-18").period == "2026-01-12"
    assert datafeed.choose(root, wanted="latest", run_period="2026-01-19").period == "2026-01-19"
    assert storage.listing(root) == (["2026-01-12", "2026-01-19"], False)
    with storage.connection_identity():
        held_out = datasets.read_held_out(chosen.data_uri, limit=3)
    assert len(held_out.jpegs) == len(held_out.keys) == 3 and held_out.heatmaps.shape == (3, 16, 16)
    assert held_out.jpegs[0][:2] == b"\xff\xd8" and held_out.keys[0].startswith("img-")


def test_drift_brightens_then_grows_the_spots():
    from include.trainer import synthetic

    def stats(drift):
        images, heatmaps = synthetic.make_examples(64, 32, seed=5, drift=drift)
        return images.mean(), (heatmaps >= 0.5).mean()

    (bright0, spots0), (bright1, spots1), (_, spots2) = stats(0.0), stats(1.0), stats(2.0)
    assert bright1 > bright0 * 1.2 and spots1 == spots0  # the gain changes the images, not the labels
    assert spots2 > spots1 * 1.5  # then the spots grow
    assert np.array_equal(synthetic.make_examples(4, 16, seed=5)[0], synthetic.make_examples(4, 16, seed=5, drift=0)[0])


def test_a_root_without_periods_is_one_dataset_and_user_data_is_kept(bucket, gcs_prefix):
    root = f"gs://{bucket.name}/{gcs_prefix}/flat"
    storage.write_json(f"{root}/summary.json", {"num_examples": 8})
    assert datafeed.choose(root, wanted="latest", run_period="2026-01-12") == periods.PeriodData(None, root)
    user = periods.PeriodData("2026-02-02", f"gs://{bucket.name}/{gcs_prefix}/user/2026-02-02")
    with storage.connection_identity():
        datasets.gcs.write_bytes(f"{user.data_uri}/part-0.tfrecord", b"records of the user's own pipeline")
    kept = datafeed.ensure(user, num_examples=20, image_size=16, drift_per_week=1.0)
    assert kept == {"period": "2026-02-02", "data_uri": user.data_uri, "generated": False}


def test_an_unfinished_generation_is_written_again(bucket, gcs_prefix):
    chosen = periods.PeriodData("2026-01-05", f"gs://{bucket.name}/{gcs_prefix}/d/2026-01-05")
    with storage.connection_identity():
        datasets.gcs.write_bytes(f"{chosen.data_uri}/train-00000-of-00001.tfrecord", b"cut short")
    written = datafeed.ensure(chosen, num_examples=10, image_size=16, drift_per_week=1.0)
    assert written["generated"] and json.loads(storage.read_text(f"{chosen.data_uri}/summary.json"))["drift"] == 0.0


def test_a_fresh_bucket_is_made_on_the_emulator(gcs_client, gcs_prefix):
    name = f"fresh-{gcs_prefix.lower().replace('_', '-')[-20:]}"
    chosen = datafeed.choose(f"gs://{name}/data", wanted="latest", run_period="2026-01-05")
    assert chosen.period == "2026-01-05" and gcs_client.bucket(name).exists()


def test_with_a_real_feed_a_missing_period_fails_clearly(bucket, gcs_prefix):
    chosen = periods.PeriodData("2026-03-02", f"gs://{bucket.name}/{gcs_prefix}/feed/2026-03-02")
    with pytest.raises(datafeed.MissingData, match=r"No data for period 2026-03-02 under gs://.*ML_GENERATE_DATA"):
        datafeed.ensure(chosen, num_examples=10, image_size=16, drift_per_week=1.0, generate=False)
    assert storage.list_uris(chosen.data_uri) == []  # nothing written in its place

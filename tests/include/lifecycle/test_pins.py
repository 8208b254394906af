"""Pinned versions read back from real GCS objects (emulator) and the real ml/v1 jobs list."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from include.lifecycle import pins


def test_unfinished_batch_run_pins_its_version(hook, bucket, gcs_prefix):
    base = f"gs://{bucket.name}/{gcs_prefix}/batch"
    runs = {"running": ("m", "v_running", False), "finished": ("m", "v_done", True),
            "other_model": ("n", "v_other", False)}
    for job_id, (model, version, finished) in runs.items():
        prefix = f"{gcs_prefix}/batch/m/{job_id}"
        bucket.blob(f"{prefix}/target.json").upload_from_string(json.dumps({"model": model, "version": version}))
        if finished:
            bucket.blob(f"{prefix}/outputs/summary.json").upload_from_string("{}")
    now = datetime.now(UTC)
    assert pins.pinned_versions(hook, model="m", batch_uri=base, now=now, max_age=timedelta(hours=1)) == {"v_running"}
    later = now + timedelta(hours=2)  # a run left unfinished longer than the pin window no longer pins
    assert pins.pinned_versions(hook, model="m", batch_uri=base, now=later, max_age=timedelta(hours=1)) == set()

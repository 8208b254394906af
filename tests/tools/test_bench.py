"""`make bench` in miniature: the real harness end to end, checking the latest.json contract (not the speed)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PER_VARIANT = ("batch_raw_per_s", "batch_service_per_s", "batch_ratio", "online_raw_p50_ms",
               "online_service_p50_ms", "online_p50_overhead_ms", "online_raw_p95_ms", "online_service_p95_ms",
               "peak_rss_mb", "engine", "batch_raw_matched_per_s", "batch_ratio_matched",
               "online_raw_matched_p50_ms", "online_p50_overhead_matched_ms", "online_floor_p50_ms")


@pytest.mark.slow
def test_bench_writes_every_figure_for_both_variants(tmp_path):
    if not shutil.which("wrk") and not os.environ.get("CI"):
        pytest.skip("wrk missing: `make test` installs it as root or on CI (apt-get install wrk)")
    output = tmp_path / "latest.json"
    env = {**os.environ, "STATE_DIR": str(tmp_path / "state"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("ML_ENGINE_INTRA_OP_THREADS", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--instances", "128", "--rounds", "1", "--online-requests", "10",
         "--memory-instances", "256", "--no-dag-parse", "--beam-modes=", "--concurrency-seconds", "1",
         "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "matched raw reference" in done.stdout
    report = json.loads(output.read_text())
    assert report["cpu_count"] == os.cpu_count()
    assert report["service_intra_op_threads"] == 1 and report["predict_in_flight"] >= 2
    assert set(report["variants"]) == {"b64", "instances"}
    for variant, figures in report["variants"].items():
        missing = [key for key in PER_VARIANT if key not in figures]
        assert not missing, f"{variant}: {missing}"
        assert figures["engine"] == "local"
        # an overhead is a difference of two noisy medians: any finite number (10 calls on a busy machine can
        # make it negative); every rate, latency and size is positive
        assert all(math.isfinite(figures[key]) for key in PER_VARIANT if "overhead" in key), figures
        assert all(figures[key] > 0 for key in PER_VARIANT if key != "engine" and "overhead" not in key), figures
        assert figures["large_instances"] == 256 and figures["large_peak_rss_mb"] > 0
    # many callers (wrk): every level, each figure positive, and a ratio that is the quotient of the rates
    levels = report["online_concurrency"]
    assert [row["connections"] for row in levels] == [1, 8, 32, 128]
    for row in levels:
        assert all(row[key] > 0 for key in ("service_per_s", "raw_per_s", "p50_ms", "p99_ms", "requests")), row
        assert row["ratio"] == pytest.approx(row["service_per_s"] / row["raw_per_s"])
        assert row["p99_ms"] >= row["p50_ms"]
    assert "online, many callers" in done.stdout
    # replicas: PostgreSQL beside SQLite on the same model, a take-over after kill -9, claims by 1 and 4 processes
    replicas = report["replicas"]
    online, takeover, claims = replicas["online"], replicas["takeover"], replicas["claims"]
    assert online["sqlite_p50_ms"] > 0 and online["postgresql_p50_ms"] > 0
    assert math.isfinite(online["postgresql_minus_sqlite_p50_ms"])
    # not before the dead replica's lease ran out (it renewed at most a second before it died)
    assert replicas["lease_seconds"] - 1.5 < takeover["dead_to_taken_s"] < takeover["dead_to_succeeded_s"]
    assert takeover["instances"] == 8192
    assert min(claims["one_claimer_per_s"], claims["four_claimers_per_s"], claims["four_claimers_own_names_per_s"]) > 0
    assert "replicas (PostgreSQL" in done.stdout

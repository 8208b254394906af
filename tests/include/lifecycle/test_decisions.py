"""The decisions behind the DAGs: names, metric labels, the gate, retention, rollback target, batch outputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include import config
from include.lifecycle import batch_outputs, gate, labels, naming, pins, retention, smoke
from include.lifecycle.errors import InvalidRequest


def test_names_are_deterministic_and_valid_ml_ids():
    key = naming.run_key(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert key == "20260102T030405"
    assert naming.version_id(key, "b64") == "v20260102T030405_b64"
    job = naming.job_id("batch_prediction", "scheduled__2026-01-02T00:00:00+00:00")
    assert job == "batch_prediction_scheduled__2026_01_02T00_00_00_00_00"
    assert naming.ml_id("2026-01-02") == "v_2026_01_02"
    for value in (job, naming.ml_id("x" * 300)):
        assert len(value) <= 128 and value[0].isalpha()


def test_metric_label_round_trip_is_lowercase_digits():
    encoded = labels.version_labels(metric=0.81234, variant="b64", key="20260102T030405", dag_id="model_lifecycle")
    assert encoded[config.METRIC_LABEL] == "8123"
    assert all(v == v.lower() for v in encoded.values())
    assert labels.decode_metric(encoded) == pytest.approx(0.8123)
    assert labels.decode_metric({}) is None
    assert labels.decode_metric({config.METRIC_LABEL: "n/a"}) is None


@pytest.mark.parametrize(("policy", "candidate", "current", "promote"), [
    ("better", 0.8, 0.7, True),
    ("better", 0.7, 0.7, False),
    ("better", 0.6, 0.7, False),
    ("not_worse", 0.7, 0.7, True),
    ("not_worse", 0.69, 0.7, False),
    ("always", 0.1, 0.9, True),
    ("never", 0.99, 0.1, False),
])
def test_gate_policies(policy, candidate, current, promote):
    decision = gate.decide(candidate=candidate, current=current, current_version="v1_b64", policy=policy)
    assert decision.promote is promote
    assert decision.reason


def test_gate_first_deployment_minimum_and_unknown_policy():
    assert gate.decide(candidate=0.3, current=None, current_version=None, policy="better").promote
    assert gate.decide(candidate=0.3, current=None, current_version="old", policy="better").promote
    own = gate.decide(candidate=0.3, current=None, current_version=None, policy="better", own_default="v1_b64")
    assert own.promote and "own version" in own.reason
    low = gate.decide(candidate=0.3, current=None, current_version=None, policy="always", min_metric=0.5)
    assert not low.promote and "minimum" in low.reason
    with pytest.raises(InvalidRequest, match="unknown promotion policy"):
        gate.decide(candidate=0.3, current=0.1, current_version="v", policy="sometimes")


def _version(name: str, created: str, *, default: bool = False, state: str = "READY", **labels_) -> dict:
    return {"name": f"projects/p/models/m/versions/{name}", "createTime": created, "isDefault": default,
            "state": state, "labels": labels_}


def test_retention_keeps_newest_default_and_protected():
    versions = [_version(f"v{i}", f"2026-01-0{i}T00:00:00Z", default=(i == 1)) for i in range(1, 7)]
    assert retention.beyond_newest(versions, keep=2) == ["v4", "v3", "v2"]
    assert retention.beyond_newest(versions, keep=2, protect={"v3"}) == ["v4", "v2"]
    assert retention.beyond_newest(versions, keep=10) == []
    with pytest.raises(ValueError):
        retention.beyond_newest(versions, keep=0)


def test_delete_by_age_never_touches_the_default():
    versions = [_version("old", "2025-01-01T00:00:00Z"), _version("olddefault", "2025-01-01T00:00:00Z", default=True),
                _version("new", "2026-01-09T00:00:00Z")]
    now = datetime(2026, 1, 10, tzinfo=UTC)
    assert retention.older_than(versions, days=30, now=now) == ["old"]


def test_rollback_target_follows_the_promotion_trail_then_the_variant():
    versions = [
        _version("vA_b64", "2026-01-01T00:00:00Z", variant="b64"),
        _version("vB_b64", "2026-01-02T00:00:00Z", variant="b64"),
        _version("vC_b64", "2026-01-03T00:00:00Z", default=True, variant="b64", promoted_from="va_b64"),
        _version("vC_url", "2026-01-03T00:00:00Z", variant="url"),
    ]
    assert retention.previous_default(versions, current_default="vC_b64") == "vA_b64"
    assert retention.previous_of_variant(versions, current_default="vC_b64") == "vB_b64"
    assert retention.previous_default(versions, current_default="vB_b64") is None
    assert retention.previous_of_variant(versions, current_default="vA_b64") is None


def test_errors_stats_lines_are_python_tuples():
    text = "('Prediction failed: bad jpeg', 3)\n(\"it's quoted\", 1)\n\nnot a tuple\n"
    counts = batch_outputs.parse_errors_stats(text)
    assert counts == {"Prediction failed: bad jpeg": 3, "it's quoted": 1, "not a tuple": 1}


def test_batch_summary_from_files():
    files = {
        "gs://b/out/prediction.results-00000-of-00002": '{"key": "a", "heatmap": []}\n{"key": "b", "heatmap": []}\n',
        "gs://b/out/prediction.results-00001-of-00002": "",
        "gs://b/out/prediction.errors_stats-00000-of-00002": "",
        "gs://b/out/prediction.errors_stats-00001-of-00002": "('not a jpeg', 2)\n",
        "gs://b/out/summary.json": "{}",
    }
    summary = batch_outputs.summarize(job_id="j", output_path="gs://b/out",
                                      prediction_output={"predictionCount": "2", "errorCount": "2"},
                                      list_uris=lambda prefix: sorted(files), read_lines=_lines_of(files))
    assert (summary.prediction_count, summary.error_count, summary.result_lines) == (2, 2, 2)
    assert summary.error_types == {"not a jpeg": 2}
    assert summary.error_rate == 0.5
    assert len(summary.result_files) == 2 and len(summary.errors_stats_files) == 2
    assert summary.sample_keys == ["a", "b"] and summary.ignored_files == []


def test_vertex_batch_summary_from_its_files():
    out = "gs://b/out/prediction-m-2026_01_01T00_00_00_000Z"
    files = {
        f"{out}/predictions_00001.jsonl": '{"instance": {}, "prediction": {"key": "a"}}\n{"instance": {}}\n\n'
                                          '{"instance": {}, "prediction": {"key": "c"}}\n',
        f"{out}/errors_00001.jsonl": '{"instance": {}, "error": {"code": 3, "message": "not a jpeg"}}\nnot json\n',
        f"{out}/other.txt": "ignored\n",
    }
    job = {"outputInfo": {"gcsOutputDirectory": out}, "completionStats": {"successfulCount": "3", "failedCount": "2"}}
    summary = batch_outputs.summarize_vertex(job_id="j", output_path="gs://b/out", job=job,
                                             list_uris=lambda prefix: sorted(files), read_lines=_lines_of(files))
    assert (summary.prediction_count, summary.error_count, summary.result_lines) == (3, 2, 3)
    assert summary.sample_keys == ["a", "c"]  # a line without a prediction gives no key
    assert summary.error_types == {"not a jpeg": 1, "not json": 1}
    assert summary.result_files == [f"{out}/predictions_00001.jsonl"] and summary.output_path == out


def _lines_of(files: dict[str, str]):
    """A streaming reader over in-memory files that records what was read."""

    def read_lines(uri: str):
        yield from files[uri].splitlines()

    return read_lines


def test_batch_summary_counts_only_the_jobs_own_shard_set():
    """Shards of an earlier run (another -of-N, a half-written set, a nested dir) are never added in."""
    files = {
        # an earlier run over 3 files, one shard of it missing (its writer crashed)
        "gs://b/out/prediction.results-00000-of-00003": '{"key": "old0"}\n{"key": "old1"}\n',
        "gs://b/out/prediction.results-00002-of-00003": '{"key": "old2"}\n',
        "gs://b/out/prediction.errors_stats-00000-of-00003": "('old error', 5)\n",
        # an earlier complete run over 1 file with another count
        "gs://b/out/prediction.results-00000-of-00001": '{"key": "x"}\n',
        "gs://b/out/prediction.errors_stats-00000-of-00001": "",
        # this job: 2 files, 3 predictions, 1 error
        "gs://b/out/prediction.results-00000-of-00002": '{"key": "a"}\n{"key": "b"}\n',
        "gs://b/out/prediction.results-00001-of-00002": '{"key": "c"}\n',
        "gs://b/out/prediction.errors_stats-00000-of-00002": "",
        "gs://b/out/prediction.errors_stats-00001-of-00002": "('bad', 1)\n",
        # another job's outputs nested below: not this output path's shards
        "gs://b/out/sub/prediction.results-00000-of-00001": '{"key": "nested"}\n',
    }
    summary = batch_outputs.summarize(job_id="j", output_path="gs://b/out",
                                      prediction_output={"predictionCount": "3", "errorCount": "1"},
                                      list_uris=lambda prefix: sorted(files), read_lines=_lines_of(files))
    assert summary.result_lines == 3 and summary.sample_keys == ["a", "b", "c"]
    assert summary.error_types == {"bad": 1}
    assert summary.result_files == ["gs://b/out/prediction.results-00000-of-00002",
                                    "gs://b/out/prediction.results-00001-of-00002"]
    assert len(summary.ignored_files) == 5 and not any("-of-00002" in uri for uri in summary.ignored_files)
    # a single set is read once, whatever its count
    only = {uri: text for uri, text in files.items() if "-of-00002" in uri}
    reads: list[str] = []

    def counting(uri: str):
        reads.append(uri)
        yield from only[uri].splitlines()

    summary = batch_outputs.summarize(job_id="j", output_path="gs://b/out/",
                                      prediction_output={"predictionCount": "7"},
                                      list_uris=lambda prefix: sorted(only), read_lines=counting)
    assert summary.result_lines == 3 and len(reads) == 4  # 2 results + 2 errors_stats, each once


def test_smoke_check_accepts_good_and_rejects_bad_predictions():
    heat = [[0.1, 0.9], [0.0, 1.0]]
    report = smoke.check_predictions([{"key": "a"}], [{"heatmap": heat, "key": "a"}])
    assert report["heatmap_shape"] == [2, 2] and report["keys_checked"] == 1
    assert smoke.check_predictions([{"examples": {}}], [{"heatmap": heat, "key": "k"}], keys=["k"])["keys_checked"]
    for instances, predictions in [
        ([{"key": "a"}], []),
        ([{"key": "a"}], [{"heatmap": heat, "key": "b"}]),
        ([{"key": "a"}], [{"heatmap": [[2.0]], "key": "a"}]),
        ([{"key": "a"}], [{"heatmap": [0.1, 0.2], "key": "a"}]),
        ([{"key": "a"}], [{"scores": heat, "key": "a"}]),
    ]:
        with pytest.raises(smoke.SmokeTestError):
            smoke.check_predictions(instances, predictions)


def test_config_defaults_fit_the_embedded_stack(monkeypatch):
    for name in ("GOOGLE_CLOUD_PROJECT", "ML_BUCKET", "ML_ENGINE_ENDPOINT", "ML_MODEL_NAME", "ML_VARIANTS"):
        monkeypatch.delenv(name, raising=False)
    settings = config.load()
    assert settings.ml_engine_endpoint == "http://127.0.0.1:8780/"
    assert settings.data_uri == "gs://ml-lifecycle/data/default"
    assert settings.variants == config.VARIANTS and settings.serving_variant in settings.variants
    monkeypatch.setenv("ML_VARIANTS", "b64, tfexample")
    monkeypatch.setenv("ML_BUCKET", "other")
    settings = config.load()
    assert settings.variants == ("b64", "tfexample") and settings.runs_uri == "gs://other/runs"
    env = config.embedded_environment(settings)
    assert '"is_anonymous": true' in env["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"]


def _three_runs() -> list[dict]:
    """Run 1 promoted, run 2 rejected by the gate, run 3 promoted (two variants each), as ml/v1 lists them."""
    return [
        _version("v20260101T000000_b64", "2026-01-01T00:10:00Z", variant="b64", promoted_run="20260101t000000"),
        _version("v20260101T000000_tfexample", "2026-01-01T00:10:01Z", variant="tfexample"),
        _version("v20260102T000000_b64", "2026-01-02T00:10:00Z", variant="b64"),
        _version("v20260102T000000_tfexample", "2026-01-02T00:10:01Z", variant="tfexample"),
        _version("v20260103T000000_b64", "2026-01-03T00:10:00Z", default=True, variant="b64",
                 promoted_from="v20260101t000000_b64", promoted_run="20260103t000000"),
        _version("v20260103T000000_tfexample", "2026-01-03T00:10:01Z", variant="tfexample"),
    ]


def test_retention_keeps_the_rollback_target_of_the_default():
    """Issue 8: keeping the 4 newest used to delete run 1's promoted version; rollback then chose run 2's reject."""
    versions = _three_runs()
    doomed = retention.beyond_newest(versions, keep=4, protect={"v20260103T000000_b64", "v20260103T000000_tfexample"})
    assert doomed == ["v20260101T000000_tfexample"]
    left = [v for v in versions if naming.short_name(v["name"]) not in doomed]
    assert retention.previous_default(left, current_default="v20260103T000000_b64") == "v20260101T000000_b64"
    assert retention.older_than(versions, days=1, now=datetime(2026, 2, 1, tzinfo=UTC)) == [
        "v20260101T000000_tfexample", "v20260102T000000_b64", "v20260102T000000_tfexample",
        "v20260103T000000_tfexample"]


def test_rollback_trail_follows_promoted_from_and_stops_at_a_loop_or_a_gap():
    versions = [*_three_runs(), _version("vX", "2026-01-04T00:00:00Z", promoted_from="v20260103t000000_b64")]
    assert retention.rollback_trail(versions, current_default="v20260103T000000_b64") == [
        "v20260103T000000_b64", "v20260101T000000_b64"]
    looped = [_version("a", "2026-01-01T00:00:00Z", promoted_from="b"),
              _version("b", "2026-01-02T00:00:00Z", default=True, promoted_from="a"),
              _version("c", "2026-01-03T00:00:00Z", promoted_from="gone")]
    assert retention.rollback_trail(looped, current_default="b") == ["b", "a"]
    assert retention.rollback_trail(looped, current_default="c") == ["c"]
    assert retention.protected(looped) == {"a", "b"}  # isDefault when models.get gave no default
    assert retention.protected(looped, current_default="c", protect={"z"}) == {"c", "z"}
    assert retention.beyond_newest(looped, keep=1) == []
    assert retention.beyond_newest(looped, keep=1, current_default="c") == ["a"]  # b: still flagged isDefault


def test_the_protected_rollback_trail_is_bounded():
    """A model promoted every week for a year: retention keeps the default and ROLLBACK_DEPTH earlier defaults,
    not all 52 (their artifacts would grow without bound)."""
    chain = [_version(f"v{week:02d}", f"2026-{1 + week // 28:02d}-{1 + week % 28:02d}T00:00:00Z", default=week == 51,
                      **({"promoted_from": f"v{week - 1:02d}"} if week else {})) for week in range(52)]
    assert len(retention.rollback_trail(chain, current_default="v51")) == 52
    assert retention.protected(chain) == {f"v{week:02d}" for week in range(51 - retention.ROLLBACK_DEPTH, 52)}
    assert len(retention.beyond_newest(chain, keep=1)) == 52 - 1 - retention.ROLLBACK_DEPTH


def test_pinned_versions_come_from_unfinished_recent_batch_runs_and_active_jobs():
    now = datetime(2026, 1, 10, 12, tzinfo=UTC)
    hour = timedelta(hours=1)
    base = "gs://b/batch/m"
    objects = {
        f"{base}/running/target.json": now - hour,
        f"{base}/running/inputs/x.jsonl": now - hour,
        f"{base}/done/target.json": now - hour,
        f"{base}/done/outputs/summary.json": now - hour / 2,
        f"{base}/stale/target.json": now - 72 * hour,
        f"{base}/running/outputs/nested/target.json.bak": now,
    }
    assert pins.open_targets(objects, now=now, max_age=48 * hour) == [f"{base}/running/target.json"]
    assert pins.open_targets(objects, now=now, max_age=100 * hour) == [f"{base}/running/target.json",
                                                                          f"{base}/stale/target.json"]
    jobs = [{"predictionInput": {"versionName": "projects/p/models/m/versions/v1"}},
            {"predictionInput": {"versionName": "projects/p/models/other/versions/v2"}},
            {"predictionInput": {"modelName": "projects/p/models/m"}},  # the default: protected anyway
            {"trainingInput": {}}]
    assert pins.versions_of_jobs(jobs, model="m") == {"v1"}

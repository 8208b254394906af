"""The fair gate's pieces: periods, the IoU of predictions, the bootstrap interval, decisions on it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from include.lifecycle import datafeed, evaluation, gate, periods
from include.lifecycle.errors import CheckFailed, InvalidRequest
from include.lifecycle.naming import label_value


def test_latest_is_the_newest_period_on_or_before_the_run():
    present = ["2026-01-05", "2026-01-12", "2026-01-19", "notes"]
    chosen = periods.resolve("gs://b/data/", present, wanted="latest", run_period="2026-01-15")
    assert chosen == periods.PeriodData("2026-01-12", "gs://b/data/2026-01-12")
    assert periods.resolve("gs://b/data", [], wanted="latest", run_period="2026-02-01").period == "2026-02-01"
    assert periods.resolve("gs://b/data", present, wanted="2026-01-05", run_period="2026-01-20").period == "2026-01-05"
    for bad in ("last", "2026-13-01", "2026-1-5"):
        with pytest.raises(InvalidRequest, match="data_period"):
            periods.resolve("gs://b/data", present, wanted=bad, run_period="2026-01-20")


def test_the_local_feed_drifts_weekly_in_a_cycle_with_its_own_seed():
    weeks = [periods.drift(f"2026-{m:02d}-{d:02d}", per_week=1.0)
             for m, d in ((1, 5), (1, 12), (1, 19), (1, 26), (2, 2), (1, 11))]
    assert weeks == [0.0, 1.0, 2.0, 3.0, 0.0, 0.0]  # origin Monday 2026-01-05; Sunday 01-11 still week 0
    assert periods.drift("2025-12-29", per_week=0.5) == 1.5  # before the origin: the cycle runs backwards too
    assert periods.seed("2026-01-05") == periods.seed("2026-01-05") != periods.seed("2026-01-12")


def test_overlap_is_trainings_threshold_iou():
    from include.trainer.model import ThresholdIoU

    rng = np.random.default_rng(3)
    targets, predicted = rng.random((6, 8, 8)).astype(np.float32), rng.random((6, 8, 8)).astype(np.float32)
    metric = ThresholdIoU()
    metric.update_state(targets, predicted)
    assert evaluation.overlap(targets, predicted).iou == pytest.approx(float(metric.result()), abs=1e-6)
    empty = np.zeros((2, 4, 4), np.float32)
    assert evaluation.overlap(empty, empty).iou == 1.0  # nothing marked anywhere: a perfect score, as in training
    with pytest.raises(CheckFailed, match="shape"):
        evaluation.overlap(targets, predicted[:, :4])


def _overlap(intersection, union):
    return evaluation.Overlap(np.asarray(intersection), np.asarray(union))


def test_bootstrap_interval_of_the_difference():
    same = _overlap([5, 3, 0, 7], [9, 6, 2, 7])
    assert evaluation.difference_interval(same, same, seed=1) == (0.0, 0.0)
    rng = np.random.default_rng(0)
    union = rng.integers(20, 40, 200)
    good, poor = _overlap((union * 0.8).astype(int), union), _overlap((union * 0.5).astype(int), union)
    low, high = evaluation.difference_interval(good, poor, seed=7)
    assert 0.25 < low <= high < 0.35
    assert evaluation.difference_interval(good, poor, seed=7) == (low, high)  # seeded: a re-run agrees
    noisy = _overlap(rng.integers(0, 20, 200), union)
    low, high = evaluation.difference_interval(noisy, _overlap(rng.integers(0, 20, 200), union), seed=7)
    assert low < 0 < high
    with pytest.raises(CheckFailed, match="no held-out examples"):
        evaluation.difference_interval(_overlap([], []), _overlap([], []), seed=1)


def _found(**fields) -> dict:
    base = {"period": "2026-01-12", "data_uri": "gs://b/d/2026-01-12", "examples": 200, "candidate_version": "v2",
            "candidate_iou": 0.61, "baseline_version": "v1", "baseline_iou": 0.33, "difference": 0.28,
            "interval": [0.25, 0.31], "confidence": 0.95, "seed": 1, "own_default": None}
    return {**base, **fields}


@pytest.mark.parametrize(("policy", "interval", "margin", "promote", "words"), [
    ("better", [0.25, 0.31], 0.0, True, "clears the margin 0.0000"),
    ("better", [0.0, 0.0], 0.0, False, "not better"),
    ("better", [0.01, 0.05], 0.02, False, "not better"),
    ("not_worse", [-0.03, 0.01], 0.0, True, "not worse"),
    ("not_worse", [-0.08, -0.03], 0.02, False, "worse, the whole interval is below -0.0200"),
])
def test_gate_decides_on_the_interval(policy, interval, margin, promote, words):
    decision = gate.on_evaluation(_found(interval=interval), policy=policy, min_metric=0.0, margin=margin)
    assert decision.promote is promote
    assert words in decision.reason and f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" in decision.reason
    assert decision.interval == interval and decision.current_version == "v1"
    assert "200 held-out examples of period 2026-01-12" in decision.evaluation


def test_gate_on_evaluation_keeps_min_metric_and_the_first_deployment():
    low = gate.on_evaluation(_found(candidate_iou=0.2), policy="better", min_metric=0.3, margin=0.0)
    assert not low.promote and "below the minimum metric" in low.reason
    first = _found(baseline_version=None, baseline_iou=None, difference=None, interval=None)
    assert gate.on_evaluation(first, policy="better", min_metric=0.0, margin=0.0).promote
    own = gate.on_evaluation({**first, "own_default": "v2"}, policy="better", min_metric=0.0, margin=0.0)
    assert own.promote and "this run's own version" in own.reason


def test_evaluation_labels_are_valid_ml_v1_labels():
    changes = evaluation.label_changes(_found(interval=[-0.0123, 0.05]))
    assert changes["eval_diff_low_x10000"] == "-123" and changes["eval_iou_x10000"] == "6100"
    assert changes["eval_period"] == "2026-01-12" and changes["eval_examples"] == "200"
    assert all(label_value(v) == v for v in changes.values() if v is not None)
    first = evaluation.label_changes(_found(baseline_version=None, baseline_iou=None, interval=None))
    assert first["eval_baseline"] is first["eval_diff_low_x10000"] is None  # removed on a re-label


def test_compare_scores_both_versions_on_the_same_examples():
    targets = np.zeros((3, 4, 4), np.float32)
    targets[:, :2] = 1.0
    answers = {"v1": targets * 0.0, "v2": targets}  # v1 marks nothing, v2 is perfect
    asked = []

    def predict(version, instances):
        asked.append((version, [i["key"] for i in instances]))
        return [{"heatmap": h.tolist(), "key": i["key"]} for h, i in zip(answers[version], instances, strict=True)]

    def instances_for(variant):
        return [{"key": f"{variant}-{n}"} for n in range(3)]

    found = evaluation.compare(predict, instances_for, targets, candidate=evaluation.Deployed("v2", "b64"),
                               baseline=evaluation.Deployed("v1", "url"), period="p", data_uri="gs://b/p", seed=4)
    assert asked == [("v2", ["b64-0", "b64-1", "b64-2"]), ("v1", ["url-0", "url-1", "url-2"])]
    assert (found.candidate_iou, found.baseline_iou, found.difference, found.interval) == (1.0, 0.0, 1.0, [1.0, 1.0])
    with pytest.raises(CheckFailed, match="2 predictions for 3 instances"):
        evaluation.compare(lambda v, i: predict(v, i)[:2], instances_for, targets,
                           candidate=evaluation.Deployed("v2", "b64"), baseline=None, period=None, data_uri="x",
                           seed=1)


def test_request_size_stays_under_the_online_limit():
    assert evaluation.request_size([{"image_bytes": {"b64": "x" * 900}}]) == evaluation.MAX_REQUEST_INSTANCES
    assert evaluation.request_size([{"image": "x" * 100_000}]) == 9


def test_the_newest_data_event_names_the_period():
    events = {"asset": [SimpleNamespace(extra={"period": "2026-01-05", "data_uri": "gs://b/d/2026-01-05"}),
                        SimpleNamespace(extra={"period": "2026-01-12", "data_uri": "gs://b/d/2026-01-12"})],
              "other": [SimpleNamespace(extra={"model": "heatmap"})]}
    assert datafeed.from_events(events) == periods.PeriodData("2026-01-12", "gs://b/d/2026-01-12")
    assert datafeed.from_events(None) is None and datafeed.from_events({"a": []}) is None


def test_the_canary_watch_counts_failures_and_who_answered():
    from include.lifecycle import canary

    now = [0.0]
    answers = iter(["v2", "v1", RuntimeError("boom"), "v1"] * 50)

    def probe(instances):
        assert len(instances) == 1
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    seen = canary.watch(probe, [{"key": "a"}, {"key": "b"}], seconds=3, min_probes=5, per_second=10,
                        clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert seen.requests == 31 and seen.failures == 8 and seen.answered_by == {"v2": 8, "v1": 15}
    assert seen.errors == ["RuntimeError: boom"]  # each message once
    ok, why = canary.verdict(seen, candidate="v2", max_error_rate=0.3)
    assert ok and why.startswith("canary passed: 31 probes in 3 s, 8 failed (25.8%")
    assert not canary.verdict(seen, candidate="v2", max_error_rate=0.1)[0]
    assert "answered none" in canary.verdict(seen, candidate="v3", max_error_rate=0.5)[1]


def test_the_canary_watch_goes_on_until_a_small_share_has_answered():
    """A 10 % share can miss every probe of a short watch: the watch goes on until the candidate answered
    MIN_CANDIDATE_ANSWERS times, and a candidate that never answers ends it at MAX_PROBES."""
    from include.lifecycle import canary

    now = [0.0]
    kwargs = {"seconds": 2, "per_second": 10, "clock": lambda: now[0],
              "sleep": lambda s: now.__setitem__(0, now[0] + s)}

    def rare(instances):  # the candidate answers every 25th probe: none of the first 20
        rare.count += 1
        return "v2" if rare.count % 25 == 0 else "v1"

    rare.count = 0
    seen = canary.watch(rare, [{"key": "a"}], candidate="v2", **kwargs)
    assert seen.requests == 25 * canary.MIN_CANDIDATE_ANSWERS and seen.answered_by["v2"] == 3
    assert canary.verdict(seen, candidate="v2", max_error_rate=0.01)[0]

    never = canary.watch(lambda instances: "v1", [{"key": "a"}], candidate="v2", **kwargs)
    assert never.requests == canary.MAX_PROBES
    assert "answered none" in canary.verdict(never, candidate="v2", max_error_rate=0.01)[1]
    assert canary.watch(lambda instances: "v1", [{"key": "a"}], **kwargs).requests == 21  # no candidate: 2 s, as before

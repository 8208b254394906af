"""The fair gate's evidence: the candidate and the current default scored on the same held-out examples.

As TFX's Evaluator does, both models predict the same examples (the held-out split of
the run's data period) through their deployed versions, with real online predictions;
both are scored with the metric training reports (IoU of heatmaps thresholded at
IOU_THRESHOLD, summed over all pixels of all examples: ``val_iou``), and the decision
rests on the difference candidate - default with a bootstrap confidence interval over
examples. The resampling is seeded from the run, so a re-run computes the same interval.

Platform-neutral: ``compare`` takes a ``predict(version, instances)`` callable, so the
same evaluation serves ml/v1 versions (``on_ml_engine``) and Vertex AI endpoints.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from include.lifecycle.errors import CheckFailed

log = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5  # include/trainer/model.py's ThresholdIoU: the same definition as training
CONFIDENCE = 0.95
RESAMPLES = 2000
#: Bytes of JSON instances per online request: under ml/v1's 1.5 MB request limit with room to spare.
REQUEST_BYTES = 1_000_000
MAX_REQUEST_INSTANCES = 64

Predict = Callable[[str, list], list]


@dataclass(frozen=True)
class Deployed:
    """A version to score, and the serving variant that says what its instances look like."""

    version: str
    variant: str


@dataclass(frozen=True)
class Overlap:
    """Per example: pixels both target and prediction mark, and pixels either marks."""

    intersection: np.ndarray
    union: np.ndarray

    @property
    def iou(self) -> float:
        return float(_ratio(self.intersection.sum(), self.union.sum()))


@dataclass(frozen=True)
class Evaluation:
    """What the gate decides on; written to GCS, shown in the log, recorded in the candidate's labels."""

    period: str | None
    data_uri: str
    examples: int
    candidate_version: str
    candidate_iou: float
    baseline_version: str | None = None
    baseline_iou: float | None = None
    difference: float | None = None
    interval: list[float] | None = None  # [low, high] of candidate - baseline
    confidence: float = CONFIDENCE
    seed: int = 0
    own_default: str | None = None  # the default is one of the run's own versions: nothing to compare

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the task log and the run summary."""
        where = f"{self.examples} held-out examples of period {self.period or self.data_uri}"
        if self.baseline_version is None:
            return f"candidate {self.candidate_version} IoU {self.candidate_iou:.4f} on {where}; no default to compare"
        low, high = self.interval
        return (f"candidate {self.candidate_version} IoU {self.candidate_iou:.4f} vs default "
                f"{self.baseline_version} {self.baseline_iou:.4f} on {where}: difference {self.difference:+.4f}, "
                f"{self.confidence:.0%} interval [{low:+.4f}, {high:+.4f}]")


def _ratio(intersection, union):
    """IoU from pixel counts; 1.0 where neither marks a pixel (as ThresholdIoU scores an empty epoch)."""
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def overlap(targets: np.ndarray, predicted: np.ndarray, *, threshold: float = IOU_THRESHOLD) -> Overlap:
    """Per-example overlap of target and predicted heatmaps [N, S, S], both thresholded at ``threshold``."""
    if targets.shape != predicted.shape:
        raise CheckFailed(f"predicted heatmaps have shape {list(predicted.shape)}, "
                          f"the held-out targets {list(targets.shape)}")
    target, marked = targets >= threshold, predicted >= threshold
    axes = tuple(range(1, targets.ndim))
    return Overlap((target & marked).sum(axis=axes).astype(np.int64), (target | marked).sum(axis=axes).astype(np.int64))


def difference_interval(candidate: Overlap, baseline: Overlap, *, seed: int, resamples: int = RESAMPLES,
                        confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of IoU(candidate) - IoU(baseline), resampling examples (paired)."""
    count = len(candidate.intersection)
    if count == 0:
        raise CheckFailed("no held-out examples to evaluate on")
    picks = np.random.default_rng(seed).integers(0, count, size=(resamples, count))
    differences = (_ratio(candidate.intersection[picks].sum(1), candidate.union[picks].sum(1))
                   - _ratio(baseline.intersection[picks].sum(1), baseline.union[picks].sum(1)))
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(differences, [tail, 1.0 - tail])
    return float(low), float(high)


def request_size(instances: list) -> int:
    """Instances per online request, from the size of the first one's JSON."""
    one = len(json.dumps(instances[0], separators=(",", ":"))) if instances else 1
    return max(1, min(MAX_REQUEST_INSTANCES, REQUEST_BYTES // max(one, 1)))


def heatmaps_of(predictions: list, count: int) -> np.ndarray:
    """The predicted heatmaps as float32 [N, S, S]; a wrong count or a prediction without one is a CheckFailed."""
    if len(predictions) != count:
        raise CheckFailed(f"{len(predictions)} predictions for {count} instances")
    try:
        return np.asarray([p["heatmap"] for p in predictions], np.float32)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckFailed(f"a prediction has no usable 'heatmap' ({error}): {str(predictions[0])[:200]}") from None


def seed_of(*parts: str) -> int:
    """The bootstrap seed of a run: the same run resamples the same way."""
    return zlib.crc32("/".join(parts).encode()) % 2**31


def compare(predict: Predict, instances_for: Callable[[str], list], targets: np.ndarray, *, candidate: Deployed,
            baseline: Deployed | None, period: str | None, data_uri: str, seed: int,
            own_default: str | None = None) -> Evaluation:
    """Score the candidate (and the baseline, when there is one) on the same examples; the difference's interval.

    :param predict: online predictions of a version for instances, in order.
    :param instances_for: the held-out examples as instances of a serving variant.
    :param targets: the held-out target heatmaps [N, S, S], in the instances' order.
    """
    def scored(deployed: Deployed) -> Overlap:
        instances = instances_for(deployed.variant)
        predictions = predict(deployed.version, instances)
        result = overlap(targets, heatmaps_of(predictions, len(instances)))
        log.info("Scored %s (%s variant) on %s examples: IoU %.4f", deployed.version, deployed.variant,
                 len(instances), result.iou)
        return result

    ours = scored(candidate)
    common = {"period": period, "data_uri": data_uri, "examples": len(targets), "seed": seed,
              "candidate_version": candidate.version, "candidate_iou": round(ours.iou, 6)}
    if baseline is None:
        return Evaluation(**common, own_default=own_default)
    theirs = scored(baseline)
    low, high = difference_interval(ours, theirs, seed=seed)
    return Evaluation(**common, baseline_version=baseline.version, baseline_iou=round(theirs.iou, 6),
                      difference=round(ours.iou - theirs.iou, 6), interval=[round(low, 6), round(high, 6)])


def label_changes(evaluation: dict) -> dict[str, str | None]:
    """The candidate's labels that record its evaluation (metrics in ten-thousandths, as val_iou_x10000)."""
    from include.lifecycle.labels import encode_metric

    low, high = evaluation.get("interval") or (None, None)
    return {
        "eval_period": evaluation.get("period") or "flat",
        "eval_iou_x10000": encode_metric(evaluation["candidate_iou"]),
        "eval_examples": str(evaluation["examples"]),
        "eval_baseline": evaluation.get("baseline_version"),
        "eval_baseline_iou_x10000": None if evaluation.get("baseline_iou") is None
        else encode_metric(evaluation["baseline_iou"]),
        "eval_diff_low_x10000": None if low is None else encode_metric(low),
        "eval_diff_high_x10000": None if high is None else encode_metric(high),
    }


def instance_builder(held_out, *, images_uri: str) -> Callable[[str], list]:
    """Instances of the held-out examples per serving variant, built once each (url images uploaded once)."""
    built: dict[str, list] = {}

    def build(variant: str) -> list:
        if variant not in built:
            from include.lifecycle import storage
            from include.trainer import instances

            with storage.connection_identity():
                urls = instances.upload_images(held_out.jpegs, held_out.keys, images_uri) if variant == "url" else None
            built[variant] = instances.build_instances(variant, held_out.jpegs, held_out.keys,
                                                       image_size=held_out.heatmaps.shape[-1], image_urls=urls)
        return built[variant]

    return build


def for_run(hook, *, plan: dict, data: dict, limit: int) -> Evaluation:
    """A model_lifecycle run's evaluation: its serving version against the model's default version.

    :param hook: an MLEngineHook, or on Vertex AI include.vertex.registry.Registry (the same calls).
    :param plan: the run's plan (include.lifecycle.planning).
    :param data: the run's data (include.lifecycle.datafeed.ensure): period and prefix.
    :param limit: at most this many held-out examples.
    """
    from include.lifecycle import gate, storage
    from include.trainer import data as datasets

    base = gate.baseline(hook, model=plan["model"], own_versions=set(plan["versions"].values()))
    with storage.connection_identity():
        held_out = datasets.read_held_out(data["data_uri"], limit=limit)

    def predict(version: str, instances: list) -> list:
        return hook.predict_in_chunks(model_name=plan["model"], version_name=version, instances=instances,
                                      batch_size=request_size(instances))

    candidate = Deployed(plan["serving_version"], plan["serving_variant"])
    baseline = Deployed(base.version, base.variant or candidate.variant) if base.version else None
    return compare(predict, instance_builder(held_out, images_uri=f"{plan['evaluation_uri']}/images"),
                   held_out.heatmaps, candidate=candidate, baseline=baseline, period=data.get("period"),
                   data_uri=data["data_uri"], seed=seed_of(plan["model"], plan["key"]),
                   own_default=base.own_default)

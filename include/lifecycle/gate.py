"""The promotion gate: is the candidate better than the current default, by the chosen policy?

model_lifecycle judges on an evaluation (include/lifecycle/evaluation.py): both models
scored on the same held-out examples, and a bootstrap interval [low, high] of the
difference candidate - default. Policies (metric: higher is better):
- better:    the interval's lower bound clears the margin (low > margin)
- not_worse: the upper bound does not fall below -margin (high >= -margin)
- always:    promote whatever the metrics say (still subject to min_metric)
- never:     deploy and smoke-test only; a person promotes later (model_maintenance)
Without an interval (``judge``: two recorded numbers) better is candidate > current and
not_worse candidate >= current. A candidate below `min_metric` is never promoted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from include.config import PROMOTION_POLICIES
from include.lifecycle.errors import InvalidRequest
from include.lifecycle.labels import decode_metric
from include.lifecycle.promotion import current_default


@dataclass(frozen=True)
class Baseline:
    """What the candidate is judged against: the model's default and the metric its labels record."""

    version: str | None = None
    metric: float | None = None
    own_default: str | None = None
    variant: str | None = None  # its serving variant (its `variant` label): what its instances look like


@dataclass(frozen=True)
class Decision:
    """The gate's verdict, with the reason a person reads in the task log and in gate.json."""

    promote: bool
    reason: str
    candidate: float
    current: float | None
    current_version: str | None
    policy: str
    interval: list[float] | None = None
    margin: float = 0.0
    evaluation: str | None = None  # the evaluation's one-line summary

    def to_dict(self) -> dict:
        """The decision as JSON for XCom and gate.json."""
        return asdict(self)


def decide(*, candidate: float, current: float | None, current_version: str | None, policy: str,
           min_metric: float = 0.0, own_default: str | None = None, interval: list[float] | None = None,
           margin: float = 0.0, evaluation: str | None = None) -> Decision:
    """`own_default`: the model's default is one of the candidate run's own versions (ml/v1 makes the
    first READY version the default, and a re-run finds its own promotion): no baseline to beat.
    `interval`: the bootstrap interval of candidate - current on the same examples (see the module)."""
    if policy not in PROMOTION_POLICIES:
        raise InvalidRequest(f"unknown promotion policy {policy!r}; choose one of {PROMOTION_POLICIES}")
    if candidate is None or math.isnan(candidate):
        raise ValueError("the candidate has no metric")

    def done(promote: bool, reason: str) -> Decision:
        return Decision(promote, reason, candidate, current, current_version, policy, interval, margin, evaluation)

    if candidate < min_metric:
        return done(False, f"candidate {candidate:.4f} is below the minimum metric {min_metric:.4f}")
    if policy == "never":
        return done(False, "policy 'never': versions deployed, promotion left to a person")
    if policy == "always":
        return done(True, f"policy 'always' (candidate {candidate:.4f}, current {current})")
    if current_version is None and own_default:
        return done(True, f"the default {own_default} is this run's own version (first deployment or a re-run): "
                          f"nothing to beat, candidate {candidate:.4f}")
    if current_version is None:
        return done(True, f"no current default version: candidate {candidate:.4f} becomes the first")
    if interval is not None:
        return done(*_on_interval(candidate, current, current_version, policy, interval, margin))
    if current is None:
        return done(True, f"current default {current_version} records no metric: candidate {candidate:.4f} wins")
    if policy == "better" and candidate > current:
        return done(True, f"candidate {candidate:.4f} > current {current:.4f} ({current_version})")
    if policy == "not_worse" and candidate >= current:
        return done(True, f"candidate {candidate:.4f} >= current {current:.4f} ({current_version})")
    relation = "is not better than" if policy == "better" else "is worse than"
    return done(False, f"candidate {candidate:.4f} {relation} current {current:.4f} ({current_version})")


def _on_interval(candidate: float, current: float, current_version: str, policy: str, interval: list[float],
                 margin: float) -> tuple[bool, str]:
    low, high = interval
    scores = (f"candidate {candidate:.4f} vs current {current:.4f} ({current_version}) on the same examples, "
              f"difference interval [{low:+.4f}, {high:+.4f}]")
    if policy == "better":
        if low > margin:
            return True, f"{scores}: its lower bound clears the margin {margin:.4f}"
        return False, f"{scores}: not better, the lower bound does not clear the margin {margin:.4f}"
    if high >= -margin:
        return True, f"{scores}: not worse, the upper bound is not below -{margin:.4f}"
    return False, f"{scores}: worse, the whole interval is below -{margin:.4f}"


def on_evaluation(evaluation: dict, *, policy: str, min_metric: float, margin: float) -> Decision:
    """The gate on an evaluation (include.lifecycle.evaluation.Evaluation as a dict)."""
    from include.lifecycle.evaluation import Evaluation

    summary = Evaluation(**evaluation).summary()
    return decide(candidate=evaluation["candidate_iou"], current=evaluation["baseline_iou"],
                  current_version=evaluation["baseline_version"], policy=policy, min_metric=min_metric,
                  own_default=evaluation["own_default"], interval=evaluation["interval"], margin=margin,
                  evaluation=summary)


def baseline(hook, *, model: str, own_versions: set[str]) -> Baseline:
    """The default to beat, read from ml/v1; none when the model has no default.

    ml/v1 makes a model's first READY version its default, and a re-run finds its own
    promotion: a default among the run's `own_versions` is no baseline (`own_default`).
    """
    default = current_default(hook, model=model)
    if default is None or default in own_versions:
        return Baseline(own_default=default)
    labels = (hook.get_version(model_name=model, version_name=default) or {}).get("labels") or {}
    return Baseline(version=default, metric=decode_metric(labels), variant=labels.get("variant"))


def judge(hook, *, model: str, own_versions: set[str], candidate: float, policy: str,
          min_metric: float) -> Decision:
    """The gate in one call: read the baseline from ml/v1, then `decide`."""
    base = baseline(hook, model=model, own_versions=own_versions)
    return decide(candidate=candidate, current=base.metric, current_version=base.version, policy=policy,
                  min_metric=min_metric, own_default=base.own_default)

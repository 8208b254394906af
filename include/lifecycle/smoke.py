"""Checks on a version's online predictions: one per instance, keys passed through, a sane heatmap."""

from __future__ import annotations

import math

from include.lifecycle.errors import CheckFailed

#: Instances per online request: a 32x32 image as JSON floats is ~32 KB.
REQUEST_SIZE = 8


class SmokeTestError(CheckFailed):
    """The version answered, but not with what the model promises."""


def _shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _flat(value):
    if isinstance(value, list):
        for item in value:
            yield from _flat(item)
    else:
        yield value


def check_predictions(instances: list, predictions: list, *, keys: list[str] | None = None) -> dict:
    """Raise SmokeTestError unless every instance got a [S, S] heatmap in [0, 1] and its key back.

    `keys` are the expected pass-through keys in order (needed for tfexample, whose
    instances carry the key inside the serialized example); otherwise instance["key"].
    """
    if keys is not None and len(keys) != len(instances):
        raise SmokeTestError(f"{len(keys)} expected keys for {len(instances)} instances")
    if len(predictions) != len(instances):
        raise SmokeTestError(f"{len(predictions)} predictions for {len(instances)} instances")
    shapes = set()
    total, count, keys_checked = 0.0, 0, 0
    for index, (instance, prediction) in enumerate(zip(instances, predictions, strict=True)):
        if not isinstance(prediction, dict) or "heatmap" not in prediction:
            raise SmokeTestError(f"prediction {index} has no 'heatmap': {str(prediction)[:200]}")
        shape = _shape(prediction["heatmap"])
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
            raise SmokeTestError(f"prediction {index}: heatmap shape {shape} is not [S, S]")
        shapes.add(tuple(shape))
        values = [float(v) for v in _flat(prediction["heatmap"])]
        if any(math.isnan(v) or v < 0.0 or v > 1.0 for v in values):
            raise SmokeTestError(f"prediction {index}: heatmap values outside [0, 1]")
        total += sum(values)
        count += len(values)
        expected = keys[index] if keys else (instance.get("key") if isinstance(instance, dict) else None)
        if expected is not None:
            if prediction.get("key") != expected:
                raise SmokeTestError(f"prediction {index}: key {prediction.get('key')!r} != {expected!r}")
            keys_checked += 1
    if len(shapes) > 1:
        raise SmokeTestError(f"heatmaps of different shapes: {sorted(shapes)}")
    return {"predictions": len(predictions), "heatmap_shape": list(shapes.pop()) if shapes else [],
            "mean_heatmap": round(total / max(count, 1), 6), "keys_checked": keys_checked}


def run(hook, *, model: str, version: str, instances: list, keys: list[str] | None = None,
        request_size: int = REQUEST_SIZE) -> dict:
    """Online predictions from `version` for `instances`, in requests of `request_size`, then the checks.

    :param hook: an MLEngineHook (its ``predict_in_chunks`` keeps the order and the count).
    :param request_size: instances per request: stays under ml/v1's 1.5 MB per online request.
    :return: the check report (see ``check_predictions``).
    """
    predictions = hook.predict_in_chunks(model_name=model, version_name=version, instances=instances,
                                         batch_size=request_size)
    return check_predictions(instances, predictions, keys=keys)

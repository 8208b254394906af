"""Where an ml/v1 ``:predict`` request becomes predictions: body -> READY version -> loaded model -> rows.

``projects.predict`` names a model (its default version serves) or a version.
The body's ``instances`` go through the version's signature (``serving``); a
failure caused by the instances is answered HTTP 200 ``{"error": "..."}``, as the
hosted service did, and a request the API refuses raises ``ApiError``.
``ml_v1_http`` calls this on the event loop for small requests to a loaded model
(``inline``), else in a worker thread.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from include.local_platform.api.calls import Call
from include.local_platform.context import Context
from include.local_platform.errors import ApiError, PredictionError, invalid_argument
from include.local_platform.resources import models
from include.local_platform.serving import numeric_json, prediction
from include.local_platform.serving.saved_model import BadModel

log = logging.getLogger("local_platform")
PREDICT_LIMIT_BYTES = 1_572_864  # ml/v1's online prediction payload limit (1.5 MB)
#: A call on the event loop stalls every other request while it runs: a version whose call took longer
#: than this is answered in a worker thread from then on (measured, not guessed: most models take ~1-3 ms).
INLINE_BUDGET_S = float(os.environ.get("ML_ENGINE_INLINE_BUDGET_MS", "10")) / 1000
_slow_versions: set[str] = set()


def predict(ctx: Context, call: Call) -> dict:
    return predict_call(ctx, call)


def predict_call(ctx: Context, call: Call, *, inline: bool = False) -> dict | None:
    """Answer one predict call. ``inline`` (on the event loop): None instead of anything that
    could block, i.e. a model not loaded yet or inputs to stage from GCS."""
    if len(call.raw) > PREDICT_LIMIT_BYTES:
        raise invalid_argument(f"Request payload size exceeds the limit: {PREDICT_LIMIT_BYTES} bytes.")
    body = call.json(numeric_json.loads)  # image-sized number arrays skip Python floats
    if not isinstance(body, dict) or "instances" not in body:
        raise invalid_argument('The request body must be a JSON object with "instances".')
    version = models.resolve_for_prediction(ctx, call.params["name"])
    try:
        if inline:
            if version["name"] in _slow_versions or (loaded := ctx.models.peek(version["name"])) is None:
                return None
        else:
            loaded = ctx.models.get(version["name"], Path(version["_path"]))
        signature = loaded.signature(body.get("signature_name") or body.get("signatureName"))
        if signature.stages_files and inline:
            return None
        staging = ctx.scratch_dir if signature.stages_files else None
        started = time.perf_counter()
        predictions = prediction.predict(signature, body["instances"], staging)
        if time.perf_counter() - started > INLINE_BUDGET_S and version["name"] not in _slow_versions:
            _slow_versions.add(version["name"])
            log.info("version %s took %.0f ms to predict: its calls run in worker threads from now on",
                     version["name"], (time.perf_counter() - started) * 1000)
        return {"predictions": predictions}
    except PredictionError as error:
        return {"error": str(error)}
    except BadModel as error:
        raise ApiError(500, "INTERNAL", f"Version {version['name']} cannot be loaded: {error}") from None

"""Where an ml/v1 ``:predict`` request becomes predictions: body -> READY version -> loaded model -> rows.

``projects.predict`` names a model (its default version serves) or a version.
The body's ``instances`` go through the version's signature (``serving``); a
failure caused by the instances is answered HTTP 200 ``{"error": "..."}``, as the
hosted service did, and a request the API refuses raises ``ApiError``.
``ml_v1_http`` calls this on the event loop for small requests to a loaded model
(``inline``): their inputs are prepared there and join the signature's batch queue
(``serving.batching``); anything else runs whole in a worker thread, alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from include.local_platform.api.calls import Call
from include.local_platform.context import Context
from include.local_platform.errors import ApiError, PredictionError, invalid_argument
from include.local_platform.resources import artifacts, models
from include.local_platform.serving import batching, numeric_json, prediction
from include.local_platform.serving.saved_model import BadModel, Signature
from include.local_platform.serving.tensors import PreparedBatch, prepare

log = logging.getLogger("local_platform")
PREDICT_LIMIT_BYTES = 1_572_864  # ml/v1's online prediction payload limit (1.5 MB)


@dataclass
class Pending:
    """A call whose inputs are ready: its rows come from the signature's batch queue (``batched``)."""

    version: str
    signature: Signature
    batch: PreparedBatch


def predict(ctx: Context, call: Call) -> dict:
    return predict_call(ctx, call)


def predict_call(ctx: Context, call: Call, *, inline: bool = False) -> dict | Pending | None:
    """Answer one predict call. ``inline`` (on the event loop): the prepared inputs to batch, or None
    for anything that could block, i.e. a model not loaded yet or inputs to stage from GCS."""
    if len(call.raw) > PREDICT_LIMIT_BYTES:
        raise invalid_argument(f"Request payload size exceeds the limit: {PREDICT_LIMIT_BYTES} bytes.")
    body = call.json(numeric_json.loads)  # image-sized number arrays skip Python floats
    if not isinstance(body, dict) or "instances" not in body:
        raise invalid_argument('The request body must be a JSON object with "instances".')
    version = models.resolve_for_prediction(ctx, call.params["name"])
    try:
        if inline:
            if (loaded := ctx.models.peek(version["name"])) is None:
                return None
        else:
            loaded = ctx.models.get(version["name"], artifacts.local_dir(ctx, version))
        signature = loaded.signature(body.get("signature_name") or body.get("signatureName"))
        if inline:
            return None if signature.stages_files else Pending(version["name"], signature,
                                                               prepare(signature, body["instances"]))
        staging = ctx.scratch_dir if signature.stages_files else None
        started = time.perf_counter()
        predictions = prediction.predict(signature, body["instances"], staging)
        _batcher(ctx, version["name"], signature).note_duration(time.perf_counter() - started)
        return {"predictions": predictions}
    except PredictionError as error:
        return {"error": str(error)}
    except BadModel as error:
        raise ApiError(500, "INTERNAL", f"Version {version['name']} cannot be loaded: {error}") from None


async def batched(ctx: Context, pending: Pending) -> dict:
    """A prepared call's answer, from whichever batch of its signature it joins."""
    try:
        rows = await _batcher(ctx, pending.version, pending.signature).predict(pending.batch)
    except PredictionError as error:
        return {"error": str(error)}
    return {"predictions": rows}


def _batcher(ctx: Context, version: str, signature: Signature) -> batching.Batcher:
    return batching.batcher_for(version, signature, ctx.batching, ctx.batch_threads)

"""Batch prediction jobs: QUEUED -> PREPARING -> RUNNING -> SUCCEEDED, FAILED or CANCELLED, and resumed after a restart.

This module owns the job's life; an engine does the predicting: ``local_engine``
(in this process, the default) or ``beam_engine`` (an Apache Beam pipeline), both
reading and predicting through ``batch_instances``, so they write the same files.

Crash safety: state moves only by compare-and-set (a cancel is never written
over); every start of a job is counted (``_attempts``) and a job interrupted
MAX_ATTEMPTS times ends FAILED; a run first deletes the shards an earlier run
of the same output path left, so one set of ``-of-N`` shards is ever there.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from include.local_platform import gcs
from include.local_platform.context import Context
from include.local_platform.errors import ApiError, PredictionError
from include.local_platform.resources import artifacts, jobs, models
from include.local_platform.serving.saved_model import BadModel, LoadedModel, Signature
from include.local_platform.state.clock import now_rfc3339
from include.local_platform.workers import deployment, local_engine
from include.local_platform.workers.batch_instances import (
    JobCancelled,
    JobFailed,
    ServiceStopping,
    Totals,
    batch_size,
)
from include.local_platform.workers.recovery import MAX_ATTEMPTS

log = logging.getLogger(__name__)
SHARD_NAME = re.compile(r"prediction\.(results|errors_stats)-\d{5}-of-\d{5}$")
ACTIVE = ("PREPARING", "RUNNING")


def submit(ctx: Context, name: str) -> None:
    ctx.jobs.submit(_run_logged, ctx, name)


def _run_logged(ctx: Context, name: str) -> None:
    try:
        run_job(ctx, name)
    except Exception:
        log.exception("job %s crashed", name)


def _start_attempt(ctx: Context, name: str) -> tuple[str, int]:
    """QUEUED -> PREPARING (or CANCELLED if asked meanwhile), counting this start; ("", 0) if not QUEUED."""
    with ctx.store.transaction():
        job = ctx.store.get(name) or {}
        if ctx.store.transition(name, ("CANCELLING",), state="CANCELLED", endTime=now_rfc3339()) is not None:
            return "CANCELLED", 0
        attempt = int(job.get("_attempts", 0)) + 1
        if ctx.store.transition(name, ("QUEUED",), state="PREPARING", startTime=job.get("startTime") or now_rfc3339(),
                      _attempts=attempt) is None:
            return "", 0
    return "PREPARING", attempt


def _end(ctx: Context, name: str, state: str, **fields) -> str:
    """Move an active job to its final state; a cancel asked meanwhile wins (it is never lost)."""
    with ctx.store.transaction():
        if ctx.store.transition(name, ACTIVE, state=state, endTime=now_rfc3339(), **fields) is not None:
            return state
        if ctx.store.transition(name, ("CANCELLING",), state="CANCELLED", endTime=now_rfc3339(),
                      **{k: v for k, v in fields.items() if k != "errorMessage"}) is not None:
            return "CANCELLED"
    return (ctx.store.get(name) or {}).get("state", "")


def _check_cancel(ctx: Context, name: str) -> None:
    if ctx.cancel_event(name).is_set():
        raise JobCancelled()
    if ctx.stopping.is_set():
        raise ServiceStopping()


def run_job(ctx: Context, name: str) -> None:
    job = ctx.store.get(name)
    if job is None:
        return
    prediction_input = job["predictionInput"]
    output_path = prediction_input["outputPath"].rstrip("/")
    totals = Totals()
    state, attempt = _start_attempt(ctx, name)
    if state == "CANCELLED":
        ctx.cancel_events.pop(name, None)
    if state != "PREPARING":
        return
    if attempt > MAX_ATTEMPTS:
        message = (f"The job was interrupted {attempt - 1} times (the service stopped while running it, e.g. an "
                   "input that crashes the model); it is not run again.")
        _end(ctx, name, "FAILED", errorMessage=message, predictionOutput=totals.output(output_path))
        log.warning("job %s FAILED: %s", name, message)
        return
    scratch = ctx.scratch_dir / name.replace("/", "_")
    try:
        signature = _load_signature(ctx, prediction_input, scratch)
        inputs = _expand_inputs(prediction_input["inputPaths"])
        ctx.crash.reach("batch.preparing")
        _check_cancel(ctx, name)
        stale = gcs.delete_matching(output_path, SHARD_NAME)
        if stale:
            log.info("job %s: deleted %d output shard(s) an earlier run left in %s", name, len(stale), output_path)
        if ctx.store.transition(name, ("PREPARING",), state="RUNNING") is None:
            raise JobCancelled()  # the only move away from PREPARING is a cancel
        log.info("job %s RUNNING (attempt %d): %d input file(s), batch size %d", name, attempt, len(inputs),
                 batch_size(prediction_input))
        if ctx.batch_engine == "beam":
            from include.local_platform.workers import beam_engine  # Apache Beam loads only when used

            beam_engine.run_pipeline(ctx, name, prediction_input, inputs, totals, scratch, signature)
        else:
            for shard, uri in enumerate(inputs):
                _check_cancel(ctx, name)
                local_engine.run_shard(ctx, name, signature, uri, prediction_input, shard, len(inputs), totals, scratch)
        _check_cancel(ctx, name)
    except JobCancelled:
        _end(ctx, name, "CANCELLED", predictionOutput=totals.output(output_path))
        log.info("job %s CANCELLED after %d predictions", name, totals.predictions)
        return
    except ServiceStopping:  # its attempt was given back by recovery.release_attempts
        log.info("job %s interrupted by shutdown; it restarts when the service starts again", name)
        return
    except (JobFailed, gcs.GcsError, BadModel, PredictionError, ApiError) as error:
        message = error.message if isinstance(error, ApiError) else str(error)
        final = _end(ctx, name, "FAILED", errorMessage=message, predictionOutput=totals.output(output_path))
        log.warning("job %s %s: %s", name, final, message)
        return
    except Exception as error:
        _end(ctx, name, "FAILED", errorMessage=f"Internal error: {error}", predictionOutput=totals.output(output_path))
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        ctx.cancel_events.pop(name, None)
    final = _end(ctx, name, "SUCCEEDED", predictionOutput=totals.output(output_path))
    elapsed = time.monotonic() - totals.started
    log.info("job %s %s: %d predictions, %d errors in %.1f s (%.0f instances/s) -> %s", name, final,
             totals.predictions, totals.errors, elapsed, totals.predictions / max(elapsed, 1e-9), output_path)


def _load_signature(ctx: Context, prediction_input: dict, scratch: Path) -> Signature:
    if prediction_input.get("uri"):
        target = scratch / "model"
        if gcs.download_prefix(prediction_input["uri"], target, max_files=1000,
                               max_bytes=deployment.max_artifact_bytes(None)) == 0:
            raise JobFailed(f"Model directory {prediction_input['uri']} is empty or does not exist.")
        loaded = LoadedModel(target)
    else:
        version = models.resolve_for_prediction(ctx, prediction_input.get("versionName")
                                                or prediction_input["modelName"])
        loaded = ctx.models.get(version["name"], artifacts.local_dir(ctx, version))
    return loaded.signature(prediction_input.get("signatureName"))


def _expand_inputs(patterns: list[str]) -> list[str]:
    inputs: list[str] = []
    for pattern in patterns:
        inputs.extend(gcs.expand_pattern(pattern))
    if not inputs:
        raise JobFailed(f"No input files match {patterns}.")
    return inputs


def pending(ctx: Context) -> list[str]:
    """Batch prediction jobs not ended (running here, on another replica, or on none since a crash)."""
    return [job["_name"] for job in ctx.store.list("job", states=jobs.UNFINISHED_STATES) if "trainingInput" not in job]


def adopt(ctx: Context, name: str) -> None:
    """A job this replica just took over runs again from the start (its earlier shards are deleted first)."""
    if ctx.store.transition(name, ("CANCELLING",), state="CANCELLED", endTime=now_rfc3339()) is not None:
        return
    job = ctx.store.get(name) or {}
    if ctx.store.transition(name, ("QUEUED", "PREPARING", "RUNNING"), state="QUEUED") is not None:
        log.info("job %s was %s when its worker stopped (attempt %s); queued again", name, job.get("state"),
                 job.get("_attempts", 0))
        submit(ctx, name)
